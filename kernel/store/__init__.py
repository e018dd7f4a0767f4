"""The model store: where published model files live, chosen by URI.

``hf://OWNER/REPO`` -> :class:`HubStore` (Hugging Face Hub through an ``HfApi``,
injected or built from :class:`StoreOptions`); ``file://DIR`` -> :class:`FileStore`
(the embedded default). Both keep the same layout, one atomic version per publish::

    sla_models/{tenant_hash}_sla_model.safetensors   kind "safetensors"
    sla_models/{tenant_hash}_sla_model.pt            kind "pt"
    sla_models/{tenant_hash}_sla_model.json          kind "card"
    sla_models/{tenant_hash}_sla_model.md            kind "report" (optional, with the
    sla_models/{tenant_hash}_sla_model.*.png         "plot_*" kinds: ``REPORT_KINDS``)
    sla_models/{tenant_hash}_sla_index.json          the tenant's index (Hub; see below)

Each version also carries the tenant's index (``kernel.store.index``): its version
count, its parent and its newest served commit messages, so that finding a tenant's
newest version and whether a request was served cost a fixed number of reads,
however many tenants and versions the store holds. The index is a cache: its count
and messages are checked against the store's own history (the commit graph on the
Hub, the version directories' parents in a file store) before they are believed, and
rebuilt from that history by the next publish when they disagree.

FileStore on disk (``DIR``)::

    sla_models/...                      mirror of each tenant's newest version, for
                                        humans and tools; the API never reads it
    .revisions/{tenant_hash}/HEAD       newest revision id, replaced atomically LAST:
                                        this is the commit point
    .revisions/{tenant_hash}/{rev}/     immutable copy of one version: the three
                                        files + meta.json (message, parent revision)
                                        + index.json
    .revisions/{tenant_hash}/.lock      flock held while publishing: the tenant's own
                                        compare-and-swap (``publish(parent=...)``)

A version directory is written under a temporary name, fsynced, then renamed, and
only then does HEAD move, so a reader never sees a card without its weights.

HubStore: one ``create_commit`` per publish with the three files and the index, and
``parent_commit`` = the repo head the tenant was read at. The Hub answers 412 when
any writer moved the head; the store then reads the tenant again and, if only other
tenants moved, commits again on the new head (bounded), so retrainers of different
tenants share one repo without failing each other. If the tenant itself moved past
the caller's ``parent``, :class:`StoreConflict`. A tenant's newest version is its
card's last commit (``get_paths_info(..., expand=True)``, one request); the index
beside it gives the count and the served messages once the history agrees (the
version before a commit is the card's last commit at the commit's parent, which the
first page of the commit list names). The commit title is the caller's
message; the description carries ``slaops-tenant:`` and ``slaops-publish:`` trailers
for humans, and the index carries the publish id, which is how a retry after a lost
response recognises that its commit already landed.
Transient failures (429, 5xx, connection errors, timeouts) are retried with capped,
jittered exponential backoff; then :class:`StoreUnavailable`. Note that
``huggingface_hub`` itself retries some calls (preupload, commit listing,
download metadata) with real sleeps before our own retry loop sees an error.

Backends are chosen by the URI's scheme in :data:`SCHEMES`; a new backend is one
module with a class keeping the ``ModelStore`` contract and an opener
``(rest of the URI, StoreOptions) -> store``, plus one line in that table.
"""

from __future__ import annotations

from collections.abc import Callable

from kernel.errors import StoreConflict, StoreError, StoreNotFound, StoreUnavailable
from kernel.store.file import FileStore, open_file_store
from kernel.store.hub import HubStore, open_hub_store
from kernel.store.hub_http import configure_hub_http
from kernel.store.options import StoreOptions
from kernel.store.paths import (
    _URI_FORBIDDEN,
    _URI_SCHEME_RE,
    KINDS,
    MODEL_DIR,
    REPORT_KINDS,
    model_paths,
    report_paths,
)
from kernel.store.protocol import ANY_PARENT, AnyParent, ModelStore, PublishedFiles, TenantHead

__all__ = [
    "ANY_PARENT",
    "KINDS",
    "MODEL_DIR",
    "SCHEMES",
    "FileStore",
    "AnyParent",
    "HubStore",
    "ModelStore",
    "PublishedFiles",
    "REPORT_KINDS",
    "StoreConflict",
    "StoreError",
    "StoreNotFound",
    "StoreOptions",
    "StoreUnavailable",
    "TenantHead",
    "configure_hub_http",
    "model_paths",
    "open_store",
    "report_paths",
]

#: Opens a store from what follows ``SCHEME://`` in its URI; raises ``ValueError``.
StoreOpener = Callable[[str, StoreOptions], ModelStore]

#: URI scheme -> its backend's opener: the one place a backend is registered.
SCHEMES: dict[str, StoreOpener] = {
    "file": open_file_store,
    "hf": open_hub_store,
}


def open_store(uri: str, options: StoreOptions | None = None) -> ModelStore:
    """Build the store a URI names: ``file://DIR`` or ``hf://OWNER/REPO`` (``SCHEMES``).

    ``options`` (client, credentials, retries: :class:`StoreOptions`) go to the
    backend. Raises ``ValueError`` for anything else, saying what a valid URI looks
    like, without echoing credentials.
    """
    known = " or ".join(f"{scheme}://" for scheme in SCHEMES)
    if not isinstance(uri, str) or not uri:
        raise ValueError(
            "model store URI must be a non-empty string: file://DIR or hf://OWNER/REPO"
        )
    scheme, sep, rest = uri.partition("://")
    if not sep:
        raise ValueError("model store URI must look like file://DIR or hf://OWNER/REPO")
    if "@" in rest:
        raise ValueError(
            "model store URI must not embed credentials (user:token@...); "
            "pass the token separately (HF_TOKEN / settings)"
        )
    if _URI_SCHEME_RE.fullmatch(scheme) is None:
        raise ValueError(f"unsupported model store scheme: use {known}")
    bad = sorted({c for c in rest if c in _URI_FORBIDDEN or c.isspace() or not c.isprintable()})
    if bad:
        raise ValueError(
            f"model store URI contains forbidden character(s): {bad!r}; "
            "use letters, digits, '-', '_', '.' and '/'"
        )
    opener = SCHEMES.get(scheme)
    if opener is None:
        raise ValueError(f"unsupported model store scheme {scheme!r}: use {known}")
    return opener(rest, options if options is not None else StoreOptions())
