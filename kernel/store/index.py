"""Each tenant's index: its version count and served requests, in bounded lookups.

Finding a tenant's newest version, and whether a request was already served, must
not cost more as the store grows. So every publish writes, in the same atomic
version as the model files, a small JSON index next to them
(``sla_models/{tenant_hash}_sla_index.json``)::

    {"format": 1, "tenant_hash": "...", "version": 7, "parent": "<revision of v6>",
     "served": ["<message of v7>", "<message of v6>", ...], "publish_id": "..."}

``served`` keeps the newest :data:`MAX_SERVED` commit messages (each names the
request it served by its keyed ``request_ref``); a request redelivered after that many
newer versions of its tenant would be served again. ``publish_id`` lets a writer whose
commit response was lost recognise its own commit.

Anyone with write access may have written an index, so it is read with a size cap
(:data:`MAX_INDEX_BYTES`), validated by :class:`TenantIndex`, and ignored when it is
not this tenant's. It is read as of the newest version (an index committed later,
alone, is never read). The newest version is never the index's word: it is the
store's (the card's last commit on the Hub, ``HEAD`` in a file store).

The index is a cache of the store's history, and :func:`verified_head` checks it
against that history before its count or its served list is believed:

* Each backend can name the version before any version from its own history (the
  card's last commit before that commit on the Hub; ``meta.json``'s parent, written
  by the store under its lock, in a file store). :func:`verified_head` walks back
  from the newest version until it meets a version this process has already
  verified (:class:`VerifiedHeads`; then the count and the messages follow exactly),
  the tenant's first version (exact too), or :data:`VERIFY_DEPTH` versions.
* There, the index may vouch for the rest only if it agrees with every version
  walked (their messages, its parent), has as many served messages as its count
  allows, counts at most :data:`MAX_TRUSTED_VERSION`, and agrees with the index
  :data:`VERIFY_DEPTH` versions back (its count that many lower, its served list the
  same further down). A forger would have to have written both, that many versions
  apart, unseen by any reader in between.
* Otherwise the whole history is walked and counted. The head that results is what
  the next publish builds its index from, so a disagreeing index is rebuilt by the
  tenant's next version; until then it is logged.

So a count of ``2**53``, a count reset to 1 over five versions and a trimmed served
list are each counted from the history instead; every verified head is remembered by
revision, so a lookup that finds nothing new costs one read of the store.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from kernel.store.paths import MAX_MESSAGE_LEN
from kernel.store.protocol import PublishedFiles, TenantHead

__all__ = [
    "MAX_INDEX_BYTES",
    "MAX_SERVED",
    "MAX_TRUSTED_VERSION",
    "VERIFY_DEPTH",
    "TenantIndex",
    "Version",
    "VerifiedHeads",
    "next_index",
    "parse_index",
    "published_head",
    "verified_head",
]

logger = logging.getLogger(__name__)

#: Served messages an index keeps, newest first.
MAX_SERVED = 64
#: An index is refused unread above this size (64 messages of <= 1000 chars fit).
MAX_INDEX_BYTES = 128 * 1024
#: Versions of history a lookup walks before an agreeing index may vouch for the rest.
VERIFY_DEPTH: Final = 4
#: A count above this is no count: 2**31 versions are one a second for 68 years, and
#: a count trusted up to here leaves 2**53 (``TenantIndex.version``) far out of reach.
MAX_TRUSTED_VERSION: Final = 2**31
#: Tenants whose verified head a store remembers (the least recently used is dropped).
VERIFIED_KEPT: Final = 1024

_Message = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_MESSAGE_LEN, pattern=r"^[^\r\n]+$"),
]
_Revision = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


class TenantIndex(BaseModel):
    """The stored index of one tenant's newest version (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    format: Literal[1] = 1
    tenant_hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    version: int = Field(ge=1, le=2**53)
    parent: _Revision | None
    served: tuple[_Message, ...] = Field(min_length=1, max_length=MAX_SERVED)
    publish_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


def next_index(head: TenantHead | None, tenant_hash: str, message: str, publish_id: str) -> bytes:
    """The index to commit with a new version on top of ``head`` (None: the first)."""
    index = TenantIndex(
        tenant_hash=tenant_hash,
        version=1 if head is None else head.version + 1,
        parent=None if head is None else head.revision,
        served=(message, *(head.recent if head is not None else ()))[:MAX_SERVED],
        publish_id=publish_id,
    )
    return index.model_dump_json().encode()


def parse_index(data: bytes, tenant_hash: str) -> TenantIndex | None:
    """A validated index of ``tenant_hash``, or None (logged) for anything else."""
    if len(data) > MAX_INDEX_BYTES:
        logger.warning("ignoring the index of tenant_hash=%s: too large", tenant_hash)
        return None
    try:
        index = TenantIndex.model_validate_json(data)
    except ValidationError as exc:
        logger.warning(
            "ignoring the index of tenant_hash=%s: %d bad fields", tenant_hash, exc.error_count()
        )
        return None
    if index.tenant_hash != tenant_hash:
        logger.warning("ignoring the index of tenant_hash=%s: it names another tenant", tenant_hash)
        return None
    return index


@dataclass(frozen=True)
class Version:
    """One version in the store's own history: its revision and its commit message."""

    revision: str
    message: str


class VerifiedHeads:
    """The heads a store verified against its history, by tenant: bounded, thread-safe.

    A verified head stays true of its revision for ever (versions are immutable), so a
    lookup whose newest version is the remembered one needs nothing else, and a walk
    back through history stops where it meets it.
    """

    def __init__(self, capacity: int = VERIFIED_KEPT) -> None:
        self._capacity = capacity
        self._heads: OrderedDict[str, TenantHead] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, tenant_hash: str) -> TenantHead | None:
        with self._lock:
            head = self._heads.get(tenant_hash)
            if head is not None:
                self._heads.move_to_end(tenant_hash)
            return head

    def put(self, tenant_hash: str, head: TenantHead) -> None:
        with self._lock:
            self._heads[tenant_hash] = head
            self._heads.move_to_end(tenant_hash)
            while len(self._heads) > self._capacity:
                self._heads.popitem(last=False)


def published_head(files: PublishedFiles, message: str, before: TenantHead | None) -> TenantHead:
    """The head a publish of ``message`` on top of ``before`` (None: the first) made."""
    if before is None:
        return TenantHead(files, 1, (message,), None)
    recent = (message, *before.recent)[:MAX_SERVED]
    return TenantHead(files, before.version + 1, recent, before.revision)


def verified_head(
    tenant_hash: str,
    newest: PublishedFiles,
    message: str,
    index: TenantIndex | None,
    *,
    previous: Callable[[str], Version | None],
    index_at: Callable[[str], TenantIndex | None],
    known: TenantHead | None,
    depth: int = VERIFY_DEPTH,
) -> TenantHead:
    """The tenant's head, counted from the store's history (see the module docstring).

    ``newest`` and ``message`` are the store's newest version; ``index`` the index as
    of it (None: none, or refused). ``previous(revision)`` names the version before
    ``revision`` from the store's history (None: it is the first); ``index_at``
    reads the index as of an older version; ``known`` is this tenant's head as last
    verified. Raises whatever the two readers raise.
    """
    if known is not None and known.revision == newest.revision:
        return known
    walked = [Version(newest.revision, message)]  # newest first, at most MAX_SERVED + 1
    count, seen, limit = 1, {newest.revision}, depth
    current = walked[0]
    head: TenantHead | None = None
    parent: str | None
    while head is None:
        if limit and count > limit:
            head = _vouched(newest, walked, index, index_at)
            if head is None:
                logger.warning(
                    "the index of tenant_hash=%s does not agree with its newest %d versions: "
                    "counting its whole history",
                    tenant_hash,
                    count,
                )
                limit = 0
            continue
        before = previous(current.revision)
        if before is not None and known is not None and before.revision == known.revision:
            recent = (*(v.message for v in walked), *known.recent)[:MAX_SERVED]
            parent = walked[1].revision if count > 1 else known.revision
            head = TenantHead(newest, known.version + count, recent, parent)
        elif before is None or before.revision in seen:
            if before is not None:
                logger.warning(
                    "the history of tenant_hash=%s loops at revision=%s: counting it once",
                    tenant_hash,
                    before.revision,
                )
            parent = walked[1].revision if count > 1 else None
            head = TenantHead(newest, count, tuple(v.message for v in walked), parent)
        else:
            seen.add(before.revision)
            count += 1
            current = before
            if len(walked) < MAX_SERVED:
                walked.append(before)
    if index is not None and (index.version, index.served) != (head.version, head.recent):
        logger.warning(
            "the index of tenant_hash=%s says version %d with %d served, its history %d with "
            "%d: counting by the history (the next publish writes the index again)",
            tenant_hash,
            index.version,
            len(index.served),
            head.version,
            len(head.recent),
        )
    return head


def _vouched(
    newest: PublishedFiles,
    walked: list[Version],
    index: TenantIndex | None,
    index_at: Callable[[str], TenantIndex | None],
) -> TenantHead | None:
    """The head as ``index`` says it, if it agrees with the versions walked and the
    index as of the deepest of them; else None."""
    depth = len(walked) - 1
    if index is None or not depth + 1 <= index.version <= MAX_TRUSTED_VERSION:
        return None
    served = index.served
    if len(served) != min(index.version, MAX_SERVED) or index.parent != walked[1].revision:
        return None
    if any(served[i] != walked[i].message for i in range(min(len(served), depth + 1))):
        return None
    deep = index_at(walked[-1].revision)
    if (
        deep is None
        or deep.version != index.version - depth
        or deep.served[0] != walked[-1].message
    ):
        return None
    if served[depth:] != deep.served[: len(served) - depth]:
        return None
    return TenantHead(newest, index.version, served, walked[1].revision)
