"""Per-tenant store lookups on the Hub: time and HTTP requests, 10 vs 10,000 tenants.

    python bench/bench_store_lookup.py               # 10 and 10,000 tenants
    python bench/bench_store_lookup.py --tenants 10 1000 --lookups 50

Against the loopback Hub server of the tests (`testkit/hub_server.py`), driven by the
real `huggingface_hub` client through `HubStore`. The repo is built quickly by seeding
the server's storage directly (`testkit/store_seed.py`): each tenant gets what a publish
writes (three model files and the tenant's index, made by the store's own
`next_index`), 100 tenants per commit, so 10,000 tenants are 100 commits and 40,000
files. Then one measured tenant is published twice through `HubStore` on top.

Figures per repo size: `head()` (newest version, its count, and the served messages
the retrainer's dedupe reads) and a publish's lookups (`publish` of a third version),
each as median wall milliseconds over `--lookups` runs and HTTP requests per call.
Target: requests equal for 10 and 10,000 tenants; time within noise of each other.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

from pydantic import SecretStr

from kernel.store import HubStore, StoreOptions, open_store
from testkit.hub_server import running_hub_server
from testkit.store_seed import seed_tenants

REPO = "bench-org/sla-models"
MEASURED = "5e" * 32
FILES = {"safetensors": b"w" * 4096, "pt": b"p" * 4096, "card": b'{"bench": true}'}


def measure(tenants: int, lookups: int) -> dict[str, float]:
    with running_hub_server() as hub:
        started = time.perf_counter()
        seed_tenants(hub, REPO, tenants, per_commit=100)
        seed_s = time.perf_counter() - started
        store = open_store(
            f"hf://{REPO}",
            StoreOptions(token=SecretStr(hub.token), endpoint=hub.endpoint, backoff_s=0.01),
        )
        assert isinstance(store, HubStore)
        first = store.publish(MEASURED, FILES, message="bench v1", parent=None)
        store.publish(MEASURED, FILES, message="bench v2", parent=first.revision)

        times, requests = [], []
        for _ in range(lookups):
            before = len(hub.requests)
            t0 = time.perf_counter()
            head = store.head(MEASURED)
            times.append(time.perf_counter() - t0)
            requests.append(len(hub.requests) - before)
            assert head is not None and head.version == 2
        publish_times, publish_requests = [], []
        for i in range(max(3, lookups // 10)):
            parent = store.latest(MEASURED)
            assert parent is not None
            before = len(hub.requests)
            t0 = time.perf_counter()
            store.publish(MEASURED, FILES, message=f"bench p{i}", parent=parent.revision)
            publish_times.append(time.perf_counter() - t0)
            publish_requests.append(len(hub.requests) - before)
        return {
            "tenants": tenants,
            "commits": len(hub.commits(REPO)),
            "seed_s": seed_s,
            "head_ms": statistics.median(times) * 1000,
            "head_requests": max(requests),
            "publish_ms": statistics.median(publish_times) * 1000,
            "publish_requests": max(publish_requests),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, nargs="+", default=[10, 10_000])
    parser.add_argument("--lookups", type=int, default=30)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = [measure(n, args.lookups) for n in args.tenants]
    print(
        f"{'tenants':>8} {'commits':>8} {'seed s':>7} {'head ms':>8} {'head req':>9} "
        f"{'publish ms':>11} {'publish req':>12}"
    )
    for r in rows:
        print(
            f"{r['tenants']:>8} {r['commits']:>8} {r['seed_s']:>7.2f} {r['head_ms']:>8.1f} "
            f"{r['head_requests']:>9} {r['publish_ms']:>11.1f} {r['publish_requests']:>12}"
        )
    same = len({(r["head_requests"], r["publish_requests"]) for r in rows}) == 1
    print(f"target: the same requests per lookup and per publish at every size -> {same}")


if __name__ == "__main__":
    main()
