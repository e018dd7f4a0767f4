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
alone, is never read), and counts only if its newest served message is that
version's; an earlier version's index adds one. The newest version is never the
index's word: it is the store's (the card's last commit on the Hub, ``HEAD``
in a file store), and :func:`head_from` only adds the count and the served list.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from kernel.store.paths import MAX_MESSAGE_LEN
from kernel.store.protocol import PublishedFiles, TenantHead

logger = logging.getLogger(__name__)

#: Served messages an index keeps, newest first.
MAX_SERVED = 64
#: An index is refused unread above this size (64 messages of <= 1000 chars fit).
MAX_INDEX_BYTES = 128 * 1024

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


def head_from(files: PublishedFiles, message: str, index: TenantIndex | None) -> TenantHead:
    """The tenant's head: the store's newest version ``files`` and its ``message``, counted.

    ``index`` is the index as of that same version. Written with it (its newest
    served message is the version's), it gives the count, the served list and the
    parent as they are. Older (the newest version came from a writer that kept no
    index), the newest counts as one more and its parent is unknown. Without one, the
    newest is version 1 as far as the store can say.
    """
    if index is not None and index.served[0] == message:
        return TenantHead(files, index.version, index.served, index.parent)
    if index is not None:
        logger.warning(
            "the index beside revision=%s is an earlier version's: counting one more",
            files.revision,
        )
        recent = (message, *index.served)[:MAX_SERVED]
        return TenantHead(files, index.version + 1, recent, None)
    return TenantHead(files, 1, (message,), None)
