"""The model store: where published model files live, chosen by URI.

``hf://OWNER/REPO`` -> :class:`HubStore` (Hugging Face Hub through an injected
``HfApi``); ``file://DIR`` -> :class:`FileStore` (the embedded default). Both keep
the same layout, one atomic version per publish::

    sla_models/{tenant_hash}_sla_model.safetensors   kind "safetensors"
    sla_models/{tenant_hash}_sla_model.pt            kind "pt"
    sla_models/{tenant_hash}_sla_model.json          kind "card"
    sla_models/{tenant_hash}_sla_model.md            kind "report" (optional, with the
    sla_models/{tenant_hash}_sla_model.*.png         "plot_*" kinds: ``REPORT_KINDS``)

FileStore on disk (``DIR``)::

    sla_models/...                      mirror of each tenant's newest version, for
                                        humans and tools; the API never reads it
    .revisions/{tenant_hash}/HEAD       newest revision id, replaced atomically LAST:
                                        this is the commit point
    .revisions/{tenant_hash}/{rev}/     immutable copy of one version: the three
                                        files + meta.json (message, parent revision)
    .revisions/{tenant_hash}/.lock      flock held while publishing

A version directory is written under a temporary name, fsynced, then renamed, and
only then does HEAD move, so a reader never sees a card without its weights.

HubStore: one ``create_commit`` per publish with all three files and
``parent_commit`` = the head read just before (the Hub answers 412 if it moved:
:class:`StoreConflict`, the caller may simply publish again). The commit title is
the caller's message; the description carries ``slaops-tenant:`` and
``slaops-publish:`` trailers, which is how :meth:`HubStore.latest` and
:meth:`HubStore.revision_messages` find a tenant's versions in the commit list, and
how a retry after a lost response recognises that its commit already landed.
Transient failures (429, 5xx, connection errors, timeouts) are retried with capped,
jittered exponential backoff; then :class:`StoreUnavailable`. Note that
``huggingface_hub`` itself retries some calls (preupload, commit listing,
download metadata) with real sleeps before our own retry loop sees an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import HfApi
from pydantic import SecretStr

from kernel.errors import StoreConflict, StoreError, StoreNotFound, StoreUnavailable
from kernel.store.file import FileStore
from kernel.store.hub import HubStore
from kernel.store.hub_http import configure_hub_http
from kernel.store.paths import (
    _URI_FORBIDDEN,
    _URI_SCHEME_RE,
    KINDS,
    MODEL_DIR,
    REPORT_KINDS,
    _check_endpoint,
    _check_repo_id,
    model_paths,
    report_paths,
)
from kernel.store.protocol import ModelStore, PublishedFiles

__all__ = [
    "KINDS",
    "MODEL_DIR",
    "FileStore",
    "HubStore",
    "ModelStore",
    "PublishedFiles",
    "REPORT_KINDS",
    "StoreConflict",
    "StoreError",
    "StoreNotFound",
    "StoreUnavailable",
    "configure_hub_http",
    "model_paths",
    "open_store",
    "report_paths",
]


def open_store(
    uri: str,
    *,
    hf_api: HfApi | None = None,
    token: SecretStr | None = None,
    endpoint: str | None = None,
    private: bool = True,
    max_attempts: int = 5,
    backoff_s: float = 0.5,
    max_backoff_s: float = 8.0,
    http_timeout_s: float | None = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> ModelStore:
    """Build the store a URI names: ``file://DIR`` or ``hf://OWNER/REPO``.

    For ``hf://`` the token and endpoint go to ``HfApi`` only (``None`` leaves
    huggingface_hub's own defaults); ``http_timeout_s`` bounds every
    huggingface_hub request process-wide (see :func:`configure_hub_http`).
    Raises ``ValueError`` for anything else, without echoing credentials.
    """
    if not isinstance(uri, str) or not uri:
        raise ValueError("model store URI must be a non-empty string")
    scheme, sep, rest = uri.partition("://")
    if not sep:
        raise ValueError("model store URI must look like file://DIR or hf://OWNER/REPO")
    if "@" in rest:
        raise ValueError(
            "model store URI must not embed credentials (user:token@...); "
            "pass the token separately (HF_TOKEN / settings)"
        )
    if _URI_SCHEME_RE.fullmatch(scheme) is None:
        raise ValueError("unsupported model store scheme: use file:// or hf://")
    bad = sorted({c for c in rest if c in _URI_FORBIDDEN or c.isspace() or not c.isprintable()})
    if bad:
        raise ValueError(f"model store URI contains forbidden character(s): {bad!r}")
    if scheme == "file":
        if not rest or ".." in rest.split("/"):
            raise ValueError("file:// store URI needs a directory without '..' segments")
        return FileStore(Path(rest))
    if scheme == "hf":
        repo_id = rest
        _check_repo_id(repo_id)
        if hf_api is None:
            if endpoint is not None:
                _check_endpoint(endpoint)
            secret = token.get_secret_value() if token is not None else None
            hf_api = HfApi(endpoint=endpoint, token=secret, library_name="slaops")
        elif token is not None or endpoint is not None:
            raise ValueError("pass either hf_api or token/endpoint, not both")
        if http_timeout_s is not None:
            configure_hub_http(http_timeout_s)
        return HubStore(
            hf_api,
            repo_id,
            private=private,
            max_attempts=max_attempts,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            sleep=sleep,
            request_timeout_s=http_timeout_s,
        )
    raise ValueError(f"unsupported model store scheme {scheme!r}: use file:// or hf://")
