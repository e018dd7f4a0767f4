"""One time rule on every read path: the consumer (tests/consumer), the replay, the report."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np

from kernel.time_rule import ACCEPTED, FUTURE, PAST, TimeRule
from retrainer.replay import tenant_rows
from slaops.fleet_data import TenantEvents, TopicRead, _judge_times
from testkit.streams import START, RawRecord, telemetry_values


def _stamped(value: bytes, ts: str) -> bytes:
    event = json.loads(value)
    event["ts"] = ts
    return json.dumps(event).encode()


def test_the_rule_judges_against_the_clock_and_the_tenants_newest_event() -> None:
    rule = TimeRule(max_future_s=300, span_s=3_600, max_past_s=0)
    now = 10_000.0
    codes, newest = rule.judge(np.array([9_000.0, 10_400, 5_000, 9_500, 10_200]), 8_000.0, now)
    assert codes.tolist() == [ACCEPTED, FUTURE, PAST, ACCEPTED, ACCEPTED]
    assert newest == 10_200.0
    # Without max_past_s a first event has nothing to be judged against but the clock.
    assert rule.judge(np.array([-6e10]), None, now)[0].tolist() == [ACCEPTED]
    assert TimeRule(max_past_s=86_400).judge(np.array([-6e10]), None, now)[0].tolist() == [PAST]
    # Read at once (a replay), the newest believable event is the reference for all.
    assert rule.judge_all(np.array([-6e10, 9_000, 9_900, 3e10]), now).tolist() == [
        PAST,
        ACCEPTED,
        ACCEPTED,
        FUTURE,
    ]


def test_the_replay_skips_and_counts_events_stamped_2999_or_0001() -> None:
    values = telemetry_values("acme", 300, seed=1)
    values[10] = _stamped(values[10], "2999-01-01T00:00:00Z")
    values[0] = _stamped(values[0], "0001-01-02T00:00:00Z")
    records = [RawRecord(b"acme", v, 0, i) for i, v in enumerate(values)]
    now = (START + timedelta(hours=6)).timestamp()
    rows = tenant_rows(records, tenant="acme", max_bytes=65_536, rule=TimeRule(), now=now)
    assert (len(rows), rows.out_of_time) == (298, 2)
    assert rows.ts.min() >= START.timestamp() and rows.ts.max() <= now
    # Without a rule (as before), both reach the training rows.
    assert len(tenant_rows(records, tenant="acme", max_bytes=65_536)) == 300


def test_the_report_drops_telemetry_the_rule_refuses_before_any_plot() -> None:
    read = TopicRead()
    base = START.timestamp()
    ts = [base + 60.0 * i for i in range(100)] + [3.2e10, -6.2e10]
    read.tenants["acme"] = TenantEvents(ts=ts, p99=[1.0] * 102, breached=[False] * 102)
    _judge_times(read, TimeRule(), base + 6_000.0)
    events = read.tenants["acme"]
    assert read.out_of_time == 2 and len(events.ts) == len(events.p99) == 100
    assert max(events.ts) < base + 6_000.0 and min(events.ts) == base
