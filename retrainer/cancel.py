"""Stopping a search whose partition moved to another member, promptly.

A revocation must stop the search at once, or two members train one tenant together.
Fits run in joblib worker processes (or in the search thread), so the flag is a marker
file that any of them can poll cheaply: every fit checks it after each epoch
(`retrainer.estimator.SlaNet`'s `cancel`), and the handler between its phases. Fits on
a remote Dask worker cannot see the file; there the check after the search catches it.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from retrainer.errors import Cancelled


class CancelToken:
    """One job's cancel flag. Picklable: a copy in a worker process sees the same flag.

    `cancel` may be called from any thread; `check` raises `Cancelled` once it was.
    A token belongs to ONE run of a request: a later run of the same request gets a
    new one, so a cancel that came after a job finished never blocks its next run.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        if path is None:
            path = Path(tempfile.gettempdir()) / f"slaops-cancel-{uuid.uuid4().hex}"
        self.path = str(path)

    def cancel(self) -> None:
        Path(self.path).touch()

    @property
    def cancelled(self) -> bool:
        return os.path.exists(self.path)

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled(
                f"cancelled ({self.path}): the request's partition moved to another member, "
                "which serves it; nothing to do"
            )

    def close(self) -> None:
        """Remove the flag's file (the job is over)."""
        Path(self.path).unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"CancelToken({self.path!r})"
