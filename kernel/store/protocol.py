"""The contract every model store backend keeps (``FileStore``, ``HubStore``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class PublishedFiles:
    """One published version: the revision to read it by, and kind -> path in the store."""

    revision: str
    paths: dict[str, str]


class ModelStore(Protocol):
    """Versioned storage of each tenant's model files, addressed by the tenant's HMAC hash.

    Promises:

    * **Atomicity.** ``publish`` writes the three kinds (``safetensors``, ``pt``,
      ``card``), and any report kinds given (``REPORT_KINDS``: the Markdown card and
      plots), as ONE version: a reader sees all of a version or none of it. The
      returned paths are the three model paths. A version published without report
      files may still show an older version's at its revision on the Hub (a commit
      keeps untouched files), so a reader checks a report against its card.
    * **Ordering.** Versions of one tenant form a chain; ``latest`` names the newest
      and ``revision_messages`` lists the commit messages newest first. The store,
      not any event, decides which version is newest.
    * **Immutability.** ``read(path, revision=r)`` returns the same bytes for ever.
    * **Isolation.** A tenant's versions are found by its hash only; nothing in the
      store names a tenant slug.

    Raises (all :class:`~kernel.errors.StoreError`, a ``SlaopsError``):

    * ``publish``: ``StoreConflict`` (transient: another writer moved the head
      first; publish again), ``StoreUnavailable`` (transient: the backend failed
      after the retries), ``StoreError`` (permanent: permissions, a full disk);
      ``ValueError``/``TypeError`` for a malformed hash, kinds or message.
    * ``read``: ``StoreNotFound`` (no such path or revision), ``StoreUnavailable``,
      ``StoreError`` (a refused path or revision, an I/O failure, a file over
      ``max_bytes``, a file store entry that is not a regular file).
    * ``latest`` and ``revision_messages``: ``StoreUnavailable``, ``StoreError``;
      a tenant with nothing published gives ``None`` and ``[]``, never an error.

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
        self, tenant_hash: str, files: Mapping[str, bytes], *, message: str
    ) -> PublishedFiles: ...

    def read(self, path: str, *, revision: str, max_bytes: int = ...) -> bytes: ...

    def latest(self, tenant_hash: str) -> PublishedFiles | None: ...

    def revision_messages(self, tenant_hash: str) -> list[str]: ...
