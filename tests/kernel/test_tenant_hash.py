"""tenant_hash: a keyed, stable, non-reversible-by-guessing tenant id; the local key."""

from __future__ import annotations

import doctest
import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest
from pydantic import SecretStr

import kernel.tenant_hash as tenant_hash_mod
from kernel.tenant_hash import KEY_FILE_NAME, load_or_create_local_key, tenant_hash

KEY = SecretStr("k" * 64)


def test_doctests() -> None:
    assert doctest.testmod(tenant_hash_mod).failed == 0


def test_stable_for_a_key_and_hex_64() -> None:
    first = tenant_hash("acme-prod", KEY)
    assert first == tenant_hash("acme-prod", KEY)
    assert first == tenant_hash("acme-prod", KEY.get_secret_value().encode())
    assert len(first) == 64
    assert set(first) <= set("0123456789abcdef")


def test_differs_across_keys_and_tenants() -> None:
    assert tenant_hash("acme-prod", KEY) != tenant_hash("acme-prod", SecretStr("j" * 64))
    assert tenant_hash("acme-prod", KEY) != tenant_hash("acme-dev", KEY)


def test_is_not_a_plain_hash_of_the_slug() -> None:
    slug = "acme-prod"
    assert tenant_hash(slug, KEY) != hashlib.sha256(slug.encode()).hexdigest()
    assert (
        tenant_hash(slug, KEY)
        != hashlib.sha256(KEY.get_secret_value().encode() + b"acme-prod").hexdigest()
    )


def test_known_vector() -> None:
    # RFC 4231 test case 2: HMAC-SHA256(key="Jefe", "what do ya want for nothing?")
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert tenant_hash("what do ya want for nothing?", b"Jefe") == expected


@pytest.mark.parametrize(("tenant", "key"), [("", KEY), ("acme", b""), ("acme", SecretStr(""))])
def test_rejects_empty_inputs(tenant: str, key: SecretStr | bytes) -> None:
    with pytest.raises(ValueError):
        tenant_hash(tenant, key)


def test_local_key_created_once_with_0600_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key = load_or_create_local_key(data_dir)
    path = data_dir / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key.get_secret_value()) == 64
    assert key.get_secret_value() not in repr(key) and key.get_secret_value() not in str(key)

    mtime = path.stat().st_mtime_ns
    again = load_or_create_local_key(data_dir)
    assert again.get_secret_value() == key.get_secret_value()
    assert path.stat().st_mtime_ns == mtime
    assert [p.name for p in data_dir.iterdir()] == [KEY_FILE_NAME]  # no temp files left
    assert load_or_create_local_key(tmp_path / "other").get_secret_value() != key.get_secret_value()


def test_local_key_racing_creators_agree(tmp_path: Path) -> None:
    keys: list[str] = []
    lock = threading.Lock()

    def load() -> None:
        value = load_or_create_local_key(tmp_path).get_secret_value()
        with lock:
            keys.append(value)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1


def test_local_key_refuses_a_readable_or_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    load_or_create_local_key(tmp_path)
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError):
        load_or_create_local_key(tmp_path)
    os.chmod(path, 0o600)
    path.write_text("not hex\n")
    with pytest.raises(ValueError):
        load_or_create_local_key(tmp_path)


def test_key_is_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG"):
        key = load_or_create_local_key(tmp_path)
        tenant_hash("acme", key)
    assert key.get_secret_value() not in caplog.text
