"""Fits on a `dask.distributed` cluster, through joblib's Dask backend.

A leaf module of the optional `dask` extra: only `retrainer.main` imports it, and only
when `dask_scheduler` is set. Per search, `DaskFits.fits` connects a client to the
scheduler, makes every worker run torch on one thread (`OneTorchThread`, a worker
plugin, so workers that join later get it too), scatters the training rows to every
worker ONCE (joblib's `scatter`: each fit then names them by key instead of shipping
them), and runs scikit-learn's joblib calls as Dask tasks; the client closes with the
search, so nothing is held between requests and a restarted scheduler costs nothing.

Dask's protocol pickles: the tasks, the rows and the fitted estimators travel as
pickles between the retrainer and the workers, so whoever reaches the scheduler runs
code here. `DaskFits` refuses a `tcp://` scheduler on another host unless told
`allow_insecure` (a private network that only the retrainers and workers reach), and
speaks mutual TLS to a `tls://` one with the `DaskTls` files, through
`distributed.security.Security`. No model read from a store ever travels this way:
champions are scored in-process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from distributed import Client, WorkerPlugin
from distributed.security import Security
from joblib import parallel_config  # type: ignore[import-untyped]

# The class joblib registers as backend="dask" (joblib keeps it in a private module).
from joblib._dask import DaskDistributedBackend  # type: ignore[import-untyped]
from numpy.typing import NDArray

from retrainer.settings import INSECURE_DASK_MESSAGE, DaskTls, loopback_scheduler

log = logging.getLogger(__name__)

#: Most seconds to wait for the scheduler to answer when a search starts.
CONNECT_TIMEOUT_S: Final = 30.0
#: Most seconds to wait for a first worker when the cluster has none.
WORKER_WAIT_S: Final = 60.0


class OneTorchThread(WorkerPlugin):
    """Sets torch to one intra-op thread in each worker process it is registered on.

    Each worker thread runs one fit at a time; more torch threads per fit would only
    fight the other workers for the machine's cores. (`SlaNet.fit` also runs its own
    fit on one thread; this covers the worker's other torch work and matches the local
    backend.) Needs slaops importable on the workers, as the fits themselves do.
    """

    name = "slaops-one-torch-thread"
    idempotent = True

    def setup(self, worker: Any) -> None:
        import torch

        torch.set_num_threads(1)


class _ClusterBackend(DaskDistributedBackend):
    """joblib's Dask backend, never falling back to running fits in the caller.

    joblib runs a call sequentially in the calling process when the backend offers one
    worker; a cluster of one single-threaded worker must still do the fits.
    """

    def effective_n_jobs(self, n_jobs: int) -> int:
        return max(2, int(super().effective_n_jobs(n_jobs)))


@dataclass(frozen=True)
class DaskFits:
    """The fits of each search as tasks of the Dask scheduler at `address`.

    Same seed, same scores and winner as `LocalFits`, provided each worker has one
    thread (`dask worker ADDRESS --nthreads 1`): fits in threads of one process would
    share torch's global RNG. A worker with more is logged, not refused. Raises
    `OSError` when the scheduler does not answer within `connect_timeout_s`, and
    `TimeoutError` when it has no worker for `worker_wait_s`.

    A `tls://` address needs `tls` (mutual TLS: the scheduler checks our certificate,
    we check its); a `tcp://` one must be loopback unless `allow_insecure`. Both are
    checked here, at construction, so nothing connects to a scheduler it should not.
    """

    address: str
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    worker_wait_s: float = WORKER_WAIT_S
    tls: DaskTls | None = None
    allow_insecure: bool = False

    def __post_init__(self) -> None:
        if self.address.startswith("tls://"):
            if self.tls is None:
                raise ValueError("a tls:// dask scheduler needs the TLS files (DaskTls)")
        elif self.tls is not None:
            raise ValueError("TLS files given for a scheduler address that is not tls://")
        elif not self.allow_insecure and not loopback_scheduler(self.address):
            raise ValueError(INSECURE_DASK_MESSAGE)

    def security(self) -> Security | None:
        """distributed's `Security` for a tls:// scheduler (encryption required), else None."""
        if self.tls is None:
            return None
        return Security(
            require_encryption=True,
            tls_ca_file=str(self.tls.ca_file),
            tls_client_cert=str(self.tls.cert_file),
            tls_client_key=None if self.tls.key_file is None else str(self.tls.key_file),
        )

    @contextmanager
    def fits(self, X: NDArray[np.float32], y: NDArray[np.float32], n_jobs: int) -> Iterator[int]:
        with Client(
            self.address,
            timeout=f"{self.connect_timeout_s}s",
            set_as_default=False,
            security=self.security(),
        ) as client:
            client.register_plugin(OneTorchThread(), name=OneTorchThread.name)
            threads = client.nthreads()
            crowded = sorted(worker for worker, n in threads.items() if n > 1)
            if crowded:
                log.warning(
                    "dask workers with more than one thread: %s; their fits share torch's "
                    "RNG, so a seed no longer reproduces a search (start them with "
                    "--nthreads 1)",
                    crowded,
                )
            log.info(
                "fits on dask scheduler=%s workers=%d threads=%d",
                self.address,
                len(threads),
                sum(threads.values()),
            )
            backend = _ClusterBackend(
                client=client, scatter=[X, y], wait_for_workers_timeout=self.worker_wait_s
            )
            with parallel_config(backend=backend):
                yield -1  # every worker thread the cluster has

    def describe(self) -> str:
        return f"dask {self.address}"
