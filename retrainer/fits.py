"""Where a search's fits run: the `FitBackend` contract and its default, local processes.

`run_search` enters `backend.fits(X, y, n_jobs)` once per search, around every parallel
step (the CV search and the threshold's out-of-fold fits), so scikit-learn's joblib
calls inside run where the backend says. The refits of the winner run in the calling
process whatever the backend. Another backend is one class here or in a leaf module
(`retrainer.dask_fits`) and one entry in `retrainer.main.FIT_BACKENDS`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray


class FitBackend(Protocol):
    """Runs one search's fits somewhere.

    `fits(X, y, n_jobs)` is entered once per search with the training rows every fit
    slices its folds from, and yields the `n_jobs` to hand scikit-learn inside it.
    Promises: every fit is the same seeded, single-threaded `SlaNet.fit` the local
    backend runs, so the same seed gives the same scores and winner; it never sees a
    model read from a store. Raises what its transport raises (e.g. `OSError` when a
    cluster cannot be reached); `describe` names where fits run, without credentials.
    """

    def fits(
        self, X: NDArray[np.float32], y: NDArray[np.float32], n_jobs: int
    ) -> AbstractContextManager[int]: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class LocalFits:
    """joblib's default backend: `n_jobs` worker processes on this machine."""

    def fits(
        self, X: NDArray[np.float32], y: NDArray[np.float32], n_jobs: int
    ) -> AbstractContextManager[int]:
        return nullcontext(n_jobs)

    def describe(self) -> str:
        return "local"
