"""Searches on a Dask cluster (`retrainer.dask_fits`), against a real `LocalCluster`."""

from __future__ import annotations

import ast
import os
import re
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from kernel.errors import ConfigError
from kernel.settings import load_settings
from retrainer.dataset import SupervisedSet
from retrainer.fits import LocalFits
from retrainer.main import fit_backend, training_config
from retrainer.search import SearchConfig, run_search
from retrainer.settings import RetrainerSettings
from slaops.cli import main
from testkit.layers import LAYERS
from testkit.paths import ROOT

distributed = pytest.importorskip("distributed")
from retrainer.dask_fits import DaskFits, _ClusterBackend  # noqa: E402


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Two single-threaded worker processes on loopback, no dashboard.

    Their torch would run 2 threads (OMP_NUM_THREADS, MKL_NUM_THREADS), so one thread
    there is the plugin's doing.
    """
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        env={"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
    )
    try:
        yield cluster
    finally:
        cluster.close()


def _torch_threads(client: Any) -> list[int]:
    """torch's thread count in each worker process (asked on its main thread)."""
    return sorted(client.run(torch.get_num_threads).values())


def _torch_threads_in_tasks(client: Any) -> list[int]:
    """torch's thread count where the workers run tasks (their executor threads)."""
    futures = [
        client.submit(torch.get_num_threads, pure=False, workers=[worker])
        for worker in sorted(client.nthreads())
    ]
    return [int(f.result(timeout=60)) for f in futures]


def _fits_in(key: str) -> int:
    """Fits in one joblib task: its key is `batch_of__fit_and_score_<N>_calls-<uuid>`."""
    match = re.match(r"batch_of__fit_and_score_(\d+)_calls-", key)
    assert match is not None, key
    return int(match.group(1))


@pytest.mark.slow
def test_dask_search_equals_local_runs_on_the_workers_and_scatters_once(
    cluster: Any,
    data: SupervisedSet,
    tiny_config: SearchConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local = run_search(data, tiny_config)

    scattered: list[tuple[Any, dict[str, Any]]] = []
    original = distributed.Client.scatter

    def recording_scatter(self: Any, payload: Any, *args: Any, **kwargs: Any) -> Any:
        scattered.append((payload, kwargs))
        return original(self, payload, *args, **kwargs)

    with distributed.Client(cluster, set_as_default=False) as client:
        worker_pids = client.run(os.getpid)
        assert _torch_threads(client) == [2, 2]  # before the plugin
        monkeypatch.setattr(distributed.Client, "scatter", recording_scatter)
        dask_config = replace(tiny_config, fits=DaskFits(cluster.scheduler_address))
        with distributed.get_task_stream(client) as stream, ThreadPoolExecutor(1) as thread:
            # beside the caller's thread, as the retrainer service runs its searches
            remote = thread.submit(run_search, data, dask_config).result(timeout=240)
        monkeypatch.undo()
        tasks = list(stream.data)
        assert _torch_threads(client) == [1, 1]  # OneTorchThread, in every worker
        assert _torch_threads_in_tasks(client) == [1, 1]

    # Same seed, same everything.
    assert remote.best_params == local.best_params
    assert [r["mean_val_score"] for r in remote.cv_table] == [
        r["mean_val_score"] for r in local.cv_table
    ]
    a, b = local.module.state_dict(), remote.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Every fit ran as a task on a worker process, and both workers got some.
    assert sum(_fits_in(t["key"]) for t in tasks) == remote.n_fits
    assert {t["worker"] for t in tasks} == set(worker_pids)
    assert len(set(worker_pids.values())) == 2 and os.getpid() not in worker_pids.values()

    # The training rows went out once, to every worker, for both parallel steps.
    X_train, y_train = data.X[remote.rows], data.y[remote.rows]

    def carries_rows(payload: Any) -> bool:
        items = payload if isinstance(payload, list | tuple) else [payload]
        return any(
            isinstance(item, np.ndarray) and item.dtype == np.float32 and len(item) == len(X_train)
            for item in items
        )

    with_rows = [(payload, kwargs) for payload, kwargs in scattered if carries_rows(payload)]
    assert len(with_rows) == 1
    payload, kwargs = with_rows[0]
    assert kwargs.get("broadcast") is True
    np.testing.assert_array_equal(payload[0], X_train)
    np.testing.assert_array_equal(payload[1], y_train)


def test_a_one_thread_cluster_still_gets_the_fits() -> None:
    """joblib runs n_jobs=1 in the caller; one worker thread must not mean that."""

    class OneThread:
        def ncores(self) -> dict[str, int]:
            return {"tcp://127.0.0.1:1": 1}

    backend = object.__new__(_ClusterBackend)
    backend.client = OneThread()
    backend.wait_for_workers_timeout = 0
    assert backend.effective_n_jobs(1) == 2


def test_the_setting_chooses_where_fits_run(monkeypatch: pytest.MonkeyPatch) -> None:
    assert training_config(RetrainerSettings()).search.fits == LocalFits()
    monkeypatch.setenv("SLAOPS_DASK_SCHEDULER", "tcp://dask-scheduler:8786")
    assert training_config(RetrainerSettings()).search.fits == LocalFits()  # not asked for
    monkeypatch.setenv("SLAOPS_SEARCH_BACKEND", "dask")
    monkeypatch.setenv("SLAOPS_DASK_ALLOW_INSECURE", "true")  # compose's private network
    fits = training_config(RetrainerSettings()).search.fits
    # Nothing connects before a search.
    assert fits == DaskFits("tcp://dask-scheduler:8786", allow_insecure=True)
    assert fits.describe() == "dask tcp://dask-scheduler:8786"


@pytest.mark.parametrize(
    "address",
    [
        "dask-scheduler:8786",
        "http://dask-scheduler:8786",
        "tcp://dask-scheduler",
        "tcp://dask-scheduler:99999",
        "tcp://user:s3cret-pw@dask-scheduler:8786",
        "tcp://dask-scheduler:8786/path",
    ],
)
def test_bad_scheduler_addresses_fail_naming_the_setting(address: str) -> None:
    with pytest.raises(ConfigError, match=r"dask_scheduler \(SLAOPS_DASK_SCHEDULER") as info:
        load_settings(RetrainerSettings, {"search_backend": "dask", "dask_scheduler": address})
    assert "tcp://HOST:PORT" in str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:8786", "tls://[::1]:8786", "tcp://a.b:1"])
def test_good_scheduler_addresses_load(address: str) -> None:
    # The address's form only: whether it may be used (loopback, TLS files) is
    # tests/retrainer/test_dask_security.py's.
    settings = load_settings(RetrainerSettings, {"dask_scheduler": address})
    assert settings.dask_scheduler == address


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"search_backend": "dask"}, "search_backend=dask needs dask_scheduler"),
        ({"search_backend": "ray"}, "search_backend"),
    ],
)
def test_backend_and_scheduler_go_together(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(RetrainerSettings, overrides)


def test_a_missing_dask_extra_stops_start_up_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails
    monkeypatch.delitem(sys.modules, "retrainer.dask_fits")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"pip install 'slaops\[dask\]'"):
        fit_backend(RetrainerSettings(search_backend="dask", dask_scheduler="tcp://127.0.0.1:8786"))
    argv = ["--search-backend", "dask", "--dask-scheduler", "tcp://127.0.0.1:8786"]
    assert main(["retrain", *argv]) == 2
    assert "pip install 'slaops[dask]'" in capsys.readouterr().err


def test_only_the_leaf_module_imports_dask_and_only_lazily_is_it_imported() -> None:
    """Dask is an optional extra: the core runs without it."""
    importers, eager = set(), set()
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = (
                        [a.name for a in node.names]
                        if isinstance(node, ast.Import)
                        else [node.module or ""]
                    )
                    if any(n.split(".")[0] in ("dask", "distributed") for n in names):
                        importers.add(path.relative_to(ROOT).as_posix())
            for node in tree.body:  # module level only
                if isinstance(node, ast.ImportFrom) and node.module == "retrainer.dask_fits":
                    eager.add(path.relative_to(ROOT).as_posix())
    assert importers == {"retrainer/dask_fits.py"}
    assert eager == set()
