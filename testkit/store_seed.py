"""Seed a loopback Hub with many tenants' versions quickly (tests and the lookup bench).

Each tenant gets what ``HubStore.publish`` writes (the three model files and the
tenant's index, built by the store's own ``next_index``), but ``per_commit`` tenants
share one commit pushed straight into the server's storage: 10,000 tenants take a
second instead of 10,000 round trips.
"""

from __future__ import annotations

import hashlib
import secrets

from kernel.store.index import next_index
from kernel.store.paths import index_path, model_paths
from testkit.hub_server import HubServer


def seeded_hash(i: int) -> str:
    return hashlib.sha256(f"seeded-tenant-{i}".encode()).hexdigest()


def seed_tenants(
    hub: HubServer, repo_id: str, count: int, *, start: int = 0, per_commit: int = 100
) -> list[str]:
    """Versions of tenants ``start .. start+count-1`` (their hashes), ``per_commit`` a commit."""
    hub.create_repo(repo_id)
    hashes = [seeded_hash(i) for i in range(start, start + count)]
    for first in range(0, count, per_commit):
        title = f"seeded tenants {start + first}..{start + first + per_commit - 1}"
        files: dict[str, bytes] = {}
        for thash in hashes[first : first + per_commit]:
            paths = model_paths(thash)
            files[paths["safetensors"]] = b"w" * 64 + thash.encode()
            files[paths["pt"]] = b"p" * 64 + thash.encode()
            files[paths["card"]] = b'{"seeded": "' + thash.encode() + b'"}'
            files[index_path(thash)] = next_index(None, thash, title, secrets.token_hex(16))
        hub.push_commit(repo_id, files, title)
    return hashes
