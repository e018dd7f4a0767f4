"""The retrainer speaks to a Dask scheduler only where a rogue worker cannot reach it.

Dask's protocol carries pickles: whoever reaches the scheduler runs code in the
retrainer, which holds the Hub token and the tenant key. A `tcp://` scheduler on another
host is refused at start-up unless `dask_allow_insecure`; a `tls://` one is spoken to
with mutual TLS (the files of `deploy/dask/make-certs.sh`, through distributed's
`Security`), against a real TLS `LocalCluster` on loopback.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kernel.errors import ConfigError
from kernel.settings import load_settings
from retrainer.main import fit_backend
from retrainer.settings import DaskTls, RetrainerSettings, loopback_scheduler
from testkit.paths import ROOT

MAKE_CERTS = ROOT / "deploy" / "dask" / "make-certs.sh"


def _settings(**overrides: Any) -> RetrainerSettings:
    return load_settings(RetrainerSettings, {"search_backend": "dask", **overrides})


@pytest.mark.parametrize(
    "address",
    [
        "tcp://dask-scheduler:8786",
        "tcp://10.0.0.7:8786",
        "tcp://[2001:db8::1]:8786",
        "tcp://0.0.0.0:8786",
    ],
)
def test_a_tcp_scheduler_on_another_host_stops_start_up_saying_what_to_fix(
    address: str,
) -> None:
    with pytest.raises(ConfigError) as info:
        _settings(dask_scheduler=address)
    message = str(info.value)
    assert "pickles" in message
    assert "tls://" in message and "SLAOPS_DASK_TLS_" in message
    assert "SLAOPS_DASK_ALLOW_INSECURE" in message
    assert address not in message  # the value is never echoed


@pytest.mark.parametrize(
    "address",
    ["tcp://127.0.0.1:8786", "tcp://127.3.0.1:1", "tcp://[::1]:8786", "tcp://localhost:8786"],
)
def test_a_loopback_tcp_scheduler_loads(address: str) -> None:
    assert loopback_scheduler(address)
    assert _settings(dask_scheduler=address).dask_scheduler == address


def test_a_name_is_not_resolved_to_decide_loopback() -> None:
    # Whoever controls DNS decides where a name points: only literals count.
    assert not loopback_scheduler("tcp://localhost.attacker.example:8786")
    assert not loopback_scheduler("tcp://127.0.0.1.nip.io:8786")


def test_the_explicit_setting_allows_a_private_network(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed")
    monkeypatch.setenv("SLAOPS_DASK_ALLOW_INSECURE", "true")
    settings = _settings(dask_scheduler="tcp://dask-scheduler:8786")
    assert settings.dask_allow_insecure
    fits = fit_backend(settings)  # nothing connects before a search
    assert fits.describe() == "dask tcp://dask-scheduler:8786"


def test_the_fits_refuse_an_insecure_scheduler_themselves() -> None:
    pytest.importorskip("distributed")
    from retrainer.dask_fits import DaskFits

    with pytest.raises(ValueError, match="pickles"):
        DaskFits("tcp://dask-scheduler:8786")
    with pytest.raises(ValueError, match="TLS files"):
        DaskFits("tls://dask-scheduler:8786")
    assert DaskFits("tcp://dask-scheduler:8786", allow_insecure=True).security() is None


def test_tls_needs_the_ca_and_a_client_certificate(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dask_tls_ca_file and dask_tls_cert_file"):
        _settings(dask_scheduler="tls://dask-scheduler:8786")
    with pytest.raises(ConfigError, match="dask_tls_ca_file, dask_tls_cert_file: not a readable"):
        _settings(
            dask_scheduler="tls://dask-scheduler:8786",
            dask_tls_ca_file=tmp_path / "missing-ca.pem",
            dask_tls_cert_file=tmp_path,
        )
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ConfigError, match="dask_scheduler is tcp://"):
        _settings(dask_scheduler="tcp://127.0.0.1:8786", dask_tls_ca_file=ca)


# -- a real TLS cluster, with the certificates the deployment script makes ----------
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folders = {}
    for name in ("ours", "rogue"):
        folder = tmp_path_factory.mktemp(f"dask-certs-{name}")
        subprocess.run(  # noqa: S603
            ["sh", str(MAKE_CERTS), str(folder)], check=True, capture_output=True, timeout=60
        )
        folders[name] = folder
    return folders


@pytest.fixture(scope="module")
def tls_cluster(certs: dict[str, Path]) -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    from distributed.security import Security

    ours = certs["ours"]
    security = Security(
        require_encryption=True,
        tls_ca_file=str(ours / "ca.pem"),
        tls_scheduler_cert=str(ours / "scheduler.pem"),
        tls_scheduler_key=str(ours / "scheduler.key"),
        tls_worker_cert=str(ours / "worker.pem"),
        tls_worker_key=str(ours / "worker.key"),
        tls_client_cert=str(ours / "worker.pem"),
        tls_client_key=str(ours / "worker.key"),
    )
    cluster = distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tls://",
        host="127.0.0.1",
        dashboard_address=None,
        security=security,
    )
    try:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        yield cluster
    finally:
        cluster.close()


def _square(x: int) -> int:
    return x * x


def test_the_retrainer_runs_fits_over_mutual_tls(
    certs: dict[str, Path], tls_cluster: Any, tmp_path: Path
) -> None:
    from joblib import Parallel, delayed  # type: ignore[import-untyped]

    ours = certs["ours"]
    settings = _settings(
        dask_scheduler=tls_cluster.scheduler_address,
        dask_tls_ca_file=ours / "ca.pem",
        dask_tls_cert_file=ours / "retrainer.pem",
        dask_tls_key_file=ours / "retrainer.key",
    )
    assert settings.dask_tls() == DaskTls(
        ours / "ca.pem", ours / "retrainer.pem", ours / "retrainer.key"
    )
    fits = fit_backend(settings)
    rows = np.zeros((4, 2), dtype=np.float32)
    with fits.fits(rows, rows[:, 0], n_jobs=1):
        results = Parallel()(delayed(_square)(i) for i in range(4))
    assert results == [0, 1, 4, 9]


def test_a_certificate_of_another_ca_is_refused_by_the_scheduler(
    certs: dict[str, Path], tls_cluster: Any
) -> None:
    from retrainer.dask_fits import DaskFits

    rogue = certs["rogue"]
    fits = DaskFits(
        tls_cluster.scheduler_address,
        connect_timeout_s=3.0,
        tls=DaskTls(rogue / "ca.pem", rogue / "retrainer.pem", rogue / "retrainer.key"),
    )
    rows = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(OSError), fits.fits(rows, rows[:, 0], n_jobs=1):
        pass
