"""Retrain requests per tenant while a consumer catches up on a backlog.

    python bench/bench_catchup.py             # both backlogs of issue 12
    python bench/bench_catchup.py --search-s 5

The consumer core with the default settings (`ConsumerSettings()`) works through a
backlog at 30-second intervals in polls of `--batch` events, on an injected clock that
advances `batch / --rate` seconds per poll (the consumer's catch-up speed through a
broker). Two backlogs, as measured in issue 12:

- 20,000 events of 5 tenants, no retrainer (no request is ever answered);
- 12,000 events of 4 tenants, a retrainer answering: one search at a time, each
  `--search-s` seconds of the clock, a tenant's waiting requests coalesced into one run
  (as `slaops retrain` does); each answer is a `ChampionKept` (no model goes live), the
  case that lets a tenant ask again soonest.

Figures: requests per tenant by reason. Before the in-flight gate ran on wall-clock
time, both backlogs re-issued each tenant's cold start every `request_timeout_s` of
event time (15 and 11 per tenant).
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass

from consumer.core import IngestCore
from consumer.main import core_config
from consumer.settings import ConsumerSettings
from schemas import RetrainRequested
from simulator.model import TelemetrySimulator
from testkit.streams import RawRecord

INTERVAL_S = 30.0


@dataclass
class Retrainer:
    """One search at a time; a tenant's waiting requests are served by one run."""

    search_s: float
    queue: list[RetrainRequested]
    busy_until: float = 0.0
    serving: list[RetrainRequested] | None = None
    runs: int = 0

    def answers(self, now: float) -> list[RetrainRequested]:
        """The requests answered by `now` (each starts a search when the last ends)."""
        done: list[RetrainRequested] = []
        while True:
            if self.serving is not None:
                if now < self.busy_until:
                    return done
                done += self.serving
                self.serving = None
            if not self.queue:
                return done
            tenant = self.queue[0].tenant
            self.serving = [r for r in self.queue if r.tenant == tenant]
            self.queue = [r for r in self.queue if r.tenant != tenant]
            self.busy_until = max(self.busy_until, now) + self.search_s
            self.runs += 1


def run_backlog(
    tenants: int, events: int, *, batch: int, rate: float, search_s: float | None
) -> tuple[Counter[tuple[str, str]], int]:
    simulator = TelemetrySimulator(tenants, seed=12, interval_s=INTERVAL_S)
    stream = list(simulator.events(events // tenants))
    records = [RawRecord(k, v, 0, i) for i, (k, v, _m) in enumerate(stream)]
    core = IngestCore(core_config(ConsumerSettings()))
    # The backlog's newest event is an hour old when the consumer starts.
    now = simulator.event_time(events // tenants).timestamp() + 3_600.0
    retrainer = None if search_s is None else Retrainer(search_s, [])
    requests: list[RetrainRequested] = []
    for start in range(0, len(records), batch):
        if retrainer is not None:
            for answered in retrainer.answers(now):
                core.resolve(answered.tenant, answered.event_id)
        result = core.process(records[start : start + batch], now=now)
        requests += result.requests
        if retrainer is not None:
            retrainer.queue += result.requests
        now += batch / rate
    counts: Counter[tuple[str, str]] = Counter((r.tenant, r.reason) for r in requests)
    return counts, 0 if retrainer is None else retrainer.runs


def show(title: str, counts: Counter[tuple[str, str]], tenants: int, runs: int) -> None:
    per_reason: Counter[str] = Counter()
    for (_tenant, reason), n in counts.items():
        per_reason[reason] += n
    total = sum(counts.values())
    per_tenant = {t: sum(n for (tt, _r), n in counts.items() if tt == t) for t, _ in counts}
    print(f"{title}")
    print(
        f"  requests={total} per tenant={total / tenants:.1f} "
        f"(max {max(per_tenant.values(), default=0)}) by reason="
        + ", ".join(f"{r}: {n / tenants:.1f}/tenant" for r, n in sorted(per_reason.items()))
        + (f"; searches run={runs}" if runs else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1_000, help="events per poll")
    parser.add_argument("--rate", type=float, default=5_000.0, help="events/s of catch-up")
    parser.add_argument("--search-s", type=float, default=20.0, help="seconds per search")
    args = parser.parse_args()
    counts, runs = run_backlog(5, 20_000, batch=args.batch, rate=args.rate, search_s=None)
    show("backlog 20,000 events, 5 tenants, 30 s intervals, no retrainer:", counts, 5, runs)
    counts, runs = run_backlog(4, 12_000, batch=args.batch, rate=args.rate, search_s=args.search_s)
    show(
        f"backlog 12,000 events, 4 tenants, 30 s intervals, retrainer ({args.search_s:.0f} s "
        "a search, answers ChampionKept):",
        counts,
        4,
        runs,
    )


if __name__ == "__main__":
    main()
