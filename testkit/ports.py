"""Free loopback ports that no other pytest-xdist worker, and no ephemeral port, can take.

A port found free by binding port 0 comes from the kernel's ephemeral range, which
every process draws from: closed again, it may be handed to another worker's broker
or to an outgoing connection before the server meant for it binds it. So each worker
draws from a block of its own below that range (Linux's starts at 32768), never the
same port twice in a process, and takes only ports it can bind itself. A random start
inside the block keeps two test runs on one machine apart too.
"""

from __future__ import annotations

import os
import random
import re
import socket

BASE = 20_000
BLOCK = 500
#: Blocks below the ephemeral range: workers gw0..gw23, then they share blocks again.
BLOCKS = 24


def worker_index() -> int:
    """The pytest-xdist worker number (`gw3` -> 3); 0 outside xdist."""
    match = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    return int(match.group(1)) if match else 0


_next = random.randrange(BLOCK)


def free_port() -> int:
    """A port on 127.0.0.1 that is free now and that this run hands out once only."""
    global _next
    first = BASE + (worker_index() % BLOCKS) * BLOCK
    for _ in range(BLOCK):
        port = first + _next % BLOCK
        _next += 1
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}..{first + BLOCK - 1}")
