"""The contract every model store backend keeps (``FileStore``, ``HubStore``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final, Protocol, runtime_checkable


@dataclass(frozen=True)
class PublishedFiles:
    """One published version: the revision to read it by, and kind -> path in the store."""

    revision: str
    paths: dict[str, str]


@dataclass(frozen=True)
class TenantHead:
    """A tenant's newest version, as one bounded lookup finds it (:meth:`ModelStore.head`).

    ``version`` counts the tenant's versions (1 = the first); ``recent`` holds the
    commit messages of its newest versions, newest first (``recent[0]`` is this
    version's), at most :data:`~kernel.store.index.MAX_SERVED`; ``parent`` is the
    previous version's revision where the store knows it.
    """

    files: PublishedFiles
    version: int
    recent: tuple[str, ...]
    parent: str | None = None

    @property
    def revision(self) -> str:
        return self.files.revision


class AnyParent(Enum):
    """``publish(parent=ANY_PARENT)``: on top of whatever version is newest."""

    ANY = "any"


ANY_PARENT: Final = AnyParent.ANY


class ModelStore(Protocol):
    """Versioned storage of each tenant's model files, addressed by the tenant's HMAC hash.

    Promises:

    * **Atomicity.** ``publish`` writes the three kinds (``safetensors``, ``pt``,
      ``card``), any report kinds given (``REPORT_KINDS``: the Markdown card and
      plots) and the tenant's index as ONE version: a reader sees all of a version
      or none of it. The returned paths are the three model paths. A version
      published without report files may still show an older version's at its
      revision on the Hub (a commit keeps untouched files), so a reader checks a
      report against its card.
    * **Ordering.** Versions of one tenant form a chain. ``head`` names the newest, its
      version count and its newest messages; ``latest`` is ``head``'s files;
      ``revision_messages`` walks the whole chain, newest first. The store, not any
      event, decides which version is newest.
    * **Compare-and-swap per tenant.** ``publish(parent=r)`` commits only if ``r`` is
      still the tenant's newest revision (``None``: the tenant has none yet), else
      ``StoreConflict``. Writers of *other* tenants never make it fail: a backend that
      commits the whole store at once (the Hub) settles those races itself.
    * **Bounded lookups.** ``head`` and ``latest`` cost a fixed number of backend
      requests, however many tenants and versions the store holds (one when nothing
      changed since the store's last look; ``VERIFY_DEPTH`` versions of history more
      when a reader verifies a tenant for the first time), unless the tenant's index
      disagrees with its history, which is then walked whole, once;
      ``revision_messages`` costs one or two per version of that tenant (tools and
      tests, not every request).
    * **Immutability.** ``read(path, revision=r)`` returns the same bytes for ever.
    * **Isolation.** A tenant's versions are found by its hash only; nothing in the
      store names a tenant slug.

    Raises (all :class:`~kernel.errors.StoreError`, a ``SlaopsError``):

    * ``publish``: ``StoreConflict`` (the tenant's newest version is no longer
      ``parent``: another writer published this tenant, or the backend kept losing
      races), ``StoreUnavailable`` (transient: the backend failed after the retries),
      ``StoreError`` (permanent: permissions, a full disk); ``ValueError``/``TypeError``
      for a malformed hash, kinds, message or parent.
    * ``read``: ``StoreNotFound`` (no such path or revision), ``StoreUnavailable``,
      ``StoreError`` (a refused path or revision, an I/O failure, a file over
      ``max_bytes``, a file store entry that is not a regular file).
    * ``head``, ``latest`` and ``revision_messages``: ``StoreUnavailable``,
      ``StoreError``; a tenant with nothing published gives ``None``/``[]``, never an
      error.

    The index is read back from a store anyone with write access may have written: it
    is size-capped, validated, ignored (with a warning) when it is not this tenant's,
    and treated as a cache of the store's history: its count and served messages are
    believed only when they agree with that history
    (``kernel.store.index.verified_head``), else the history counts, and the next
    publish writes the index again. The newest version itself is always the store's
    own answer (the card's last commit, the file store's ``HEAD``), never the index's.

    Bounded: ``read`` holds at most ``max_bytes`` (default the loader's
    ``MAX_ARTIFACT_BYTES``) of a file in memory; a larger one is refused, by its size
    before it is read where the backend knows it (``FileStore``: ``fstat``;
    ``HubStore``: the file's metadata, then the downloaded file before it is read).
    ``FileStore`` opens only regular files: a symlink, FIFO or device is refused
    without being followed, waited on or read.

    Never: follows a path outside ``sla_models/``, logs a token, or unpickles.
    """

    uri: str

    def publish(
        self,
        tenant_hash: str,
        files: Mapping[str, bytes],
        *,
        message: str,
        parent: str | None | AnyParent = ANY_PARENT,
    ) -> PublishedFiles: ...

    def read(self, path: str, *, revision: str, max_bytes: int = ...) -> bytes: ...

    def head(self, tenant_hash: str) -> TenantHead | None: ...

    def latest(self, tenant_hash: str) -> PublishedFiles | None: ...

    def revision_messages(self, tenant_hash: str) -> list[str]: ...


#: The repo's root README (the Hub's landing page): the index of the tenants' cards.
ROOT_README = "README.md"
#: The largest root README a store writes.
MAX_ROOT_README_BYTES = 4 * 1024 * 1024


def root_readme_bytes(text: str) -> bytes:
    """The root README's bytes, refused over ``MAX_ROOT_README_BYTES``."""
    data = text.encode("utf-8")
    if len(data) > MAX_ROOT_README_BYTES:
        raise ValueError(f"root README of {len(data)} bytes, over {MAX_ROOT_README_BYTES}")
    return data


@runtime_checkable
class RootReadme(Protocol):
    """A store that keeps a root ``README.md`` beside ``sla_models/`` (both backends).

    ``write_root_readme`` replaces it in its own write (on the Hub, one commit of that
    file alone, which no tenant's version includes: a tenant's head, count and
    history are its card's, untouched by it). Written only by ``slaops models
    publish-index``, in batches, never with a model version. An unchanged text writes
    nothing (the Hub skips an unchanged commit; the file store compares first).
    Raises ``ValueError`` for a text over ``MAX_ROOT_README_BYTES``, and the store
    errors of ``publish``.
    """

    uri: str

    def write_root_readme(self, text: str) -> None: ...
