"""Revocation stops a search promptly, in the search thread and in joblib worker
processes alike, and a cancel belongs to one run: it never stops the request's next run
(after a re-assignment) the way an id kept in a cancelled set did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kernel.store import open_store
from retrainer.cancel import CancelToken
from retrainer.dataset import build_pairs
from retrainer.errors import Cancelled
from retrainer.search import SearchConfig, run_search
from schemas import ModelPublished
from testkit.request_handlers import handler
from testkit.retrain_data import request_for, tenant_rows

#: Twelve candidates x 3 folds: a search of many seconds if nothing stops it.
LONG_GRID: dict[str, list[Any]] = {
    "lr": [0.01, 0.003, 0.001],
    "module__hidden_layers": [1, 2],
    "module__width": [32, 64],
}


@pytest.mark.parametrize("n_jobs", [1, 2], ids=["search-thread", "worker-processes"])
def test_a_cancelled_search_stops_within_its_first_epoch(
    n_jobs: int, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    rows = tenant_rows(600, seed=1)
    data = build_pairs(rows.ts, rows.features, rows.labels, min_rows=100)
    token = CancelToken(tmp_path / "cancel")
    token.cancel()  # the revocation came as the search began
    config = SearchConfig(grid=LONG_GRID, n_jobs=n_jobs, n_splits=3, max_epochs=50, cancel=token)
    with caplog.at_level("INFO"), pytest.raises(Cancelled):
        run_search(data, config)
    assert "search done" not in caplog.text
    token.close()
    assert not token.cancelled


def test_a_cancel_of_one_run_does_not_stop_the_next_run_of_the_request(tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'models'}"
    serve = handler((uri, open_store(uri)))
    revoked_run = CancelToken(tmp_path / "run-1")
    revoked_run.cancel()  # run 1 finished, then its partition was revoked
    with pytest.raises(Cancelled):
        serve.handle(request_for("acme"), revoked_run)
    # Re-assigned, the member serves the same request again with a fresh token.
    outcome = serve.handle(request_for("acme"), CancelToken(tmp_path / "run-2"))
    assert outcome.kind == "published"
    assert isinstance(outcome.events[0][2], ModelPublished)
