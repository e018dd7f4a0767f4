"""The tenant hash: the only tenant identifier that reaches the model store.

Model files are published under ``sla_models/{tenant_hash}_sla_model.*``. A plain
hash of the slug would be reversible by hashing guessed slugs, so the hash is an
HMAC-SHA256 of the slug under a secret key::

    >>> tenant_hash("acme", b"k" * 32) == tenant_hash("acme", b"k" * 32)
    True
    >>> len(tenant_hash("acme", b"k" * 32))
    64

Anything else the store keeps about a tenant's versions is keyed the same way: a
retrain request's ``event_id`` is an unkeyed hash of the slug and the request's
trigger (``schemas.retrain.retrain_event_id``), so the store only ever sees
:func:`request_ref`, an HMAC of the ``event_id`` under the same key::

    >>> len(request_ref("0" * 32, b"k" * 32))
    32
    >>> request_ref("0" * 32, b"k" * 32) != request_ref("0" * 32, b"j" * 32)
    True

The key comes from settings (a ``SecretStr``). Only the explicit local/embedded
mode may use :func:`load_or_create_local_key`, which keeps a random key in
``data_dir/tenant.key`` (mode 0600). The key is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from pydantic import SecretStr

from kernel.durable import fsync_dir, write_durable

logger = logging.getLogger(__name__)

KEY_FILE_NAME = "tenant.key"
_KEY_BYTES = 32
#: A configured key needs this many characters, and this many distinct non-space ones.
MIN_KEY_CHARS = 16
MIN_DISTINCT_KEY_CHARS = 8


def weak_key_problem(key: str) -> str | None:
    """Why `key` is too weak to be the tenant-hash secret, or None (never echoes it).

    Length alone lets "                " or "aaaaaaaaaaaaaaaa" through; a guessable key
    lets anyone confirm a slug from its hash. A random hex key (what
    `load_or_create_local_key` makes) passes.

    >>> weak_key_problem(" " * 16) is not None, weak_key_problem("a" * 40) is not None
    (True, True)
    >>> weak_key_problem("0123456789abcdef") is None
    True
    """
    if len(key) < MIN_KEY_CHARS:
        return f"use at least {MIN_KEY_CHARS} characters"
    distinct = {c for c in key if not c.isspace()}
    if len(distinct) < MIN_DISTINCT_KEY_CHARS:
        return (
            f"use a random secret: at least {MIN_DISTINCT_KEY_CHARS} distinct non-space "
            "characters (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    return None


def tenant_hash(tenant: str, key: SecretStr | bytes) -> str:
    """HMAC-SHA256(key, tenant slug) as 64 lowercase hex characters."""
    if not tenant:
        raise ValueError("tenant slug must not be empty")
    raw = _raw_key(key)
    return hmac.new(raw, tenant.encode(), hashlib.sha256).hexdigest()


def request_ref(event_id: str, key: SecretStr | bytes) -> str:
    """HMAC-SHA256(key, domain + event_id), 32 lowercase hex: the store's name for a request.

    Written into commit messages and card lineage instead of the ``event_id``, which
    anyone can recompute from a guessed slug and the (public) offsets it names.
    """
    if not event_id:
        raise ValueError("event_id must not be empty")
    raw = _raw_key(key)
    material = f"slaops.request-ref.v1\x00{event_id}".encode()
    return hmac.new(raw, material, hashlib.sha256).hexdigest()[:32]


def _raw_key(key: SecretStr | bytes) -> bytes:
    raw = key.get_secret_value().encode() if isinstance(key, SecretStr) else bytes(key)
    if not raw:
        raise ValueError("tenant hash key must not be empty")
    return raw


def load_or_create_local_key(data_dir: Path) -> SecretStr:
    """Return the local tenant-hash key, creating it once (local/embedded mode only).

    The key is 32 random bytes as hex, created with ``O_CREAT | O_EXCL`` and mode
    0600 so that two processes racing here agree on one key and nobody else can
    read it. A file with wider permissions or unexpected content is refused.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEY_FILE_NAME
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    key = secrets.token_hex(_KEY_BYTES)
    tmp = data_dir / f".{KEY_FILE_NAME}.{secrets.token_hex(8)}.tmp"
    try:
        write_durable(tmp, f"{key}\n".encode("ascii"), mode=0o600)
        try:
            # link() fails if the key exists: the first creator wins, atomically.
            os.link(tmp, path)
            created = True
        except FileExistsError:
            created = False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(data_dir)
    if created:
        logger.info("created local tenant-hash key path=%s", path)
    return _read_key(path)


def _read_key(path: Path) -> SecretStr:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(
            f"{path} must be readable by its owner only (mode {mode:o}): run `chmod 600 {path}`"
        )
    text = path.read_text(encoding="ascii").strip()
    if len(text) != 2 * _KEY_BYTES or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(
            f"{path} does not hold a {_KEY_BYTES}-byte hex key: restore it from a backup, or "
            "delete it to make a new one (models published under the old key are then not "
            "found again)"
        )
    return SecretStr(text)
