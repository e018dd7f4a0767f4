"""Each tenant's newest verified model, the store deciding, and THE way to load a version.

:func:`load_version` is the one place a published version is read back and loaded:
the card and the safetensors weights at one revision, through the safe loader (which
checks the weights' sha256 against the card before deserialising anything). The
retrainer loads its champion with it, the demo a published model, and
:class:`ModelAuthority` each tenant's newest one.

:meth:`ModelAuthority.newest` is the public answer to "which model is this tenant's
now?" for any service, with or without Kafka: the store's newest revision for the
tenant (one bounded ``ModelStore.head`` lookup), verified and loaded. An announcement
(``ModelPublished``) passed beside it is only a hint: it must name the store's newest
revision, and when it does the files must match its sha256s too.
``kernel.model_follower`` follows ``sla.models`` with it.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import SecretStr

from kernel.artifacts import ModelCard, load_model, sha256_hex
from kernel.errors import ArtifactError, ModelRefused, StoreError
from kernel.mlp import SlaMLP
from kernel.store import ModelStore, PublishedFiles, model_paths
from kernel.tenant_hash import tenant_hash
from schemas import ModelPublished

__all__ = ["FileCheck", "LoadedKind", "ModelAuthority", "VerifiedModel", "load_version"]

#: The files of a version that `load_version` reads, in the order it reads them.
LoadedKind = Literal["card", "safetensors"]
#: Sees each file of a version as it is read (kind, bytes) and raises to refuse it.
FileCheck = Callable[[LoadedKind, bytes], None]


def load_version(
    store: ModelStore, files: PublishedFiles, *, check: FileCheck | None = None
) -> tuple[SlaMLP, ModelCard]:
    """The model of one published version: its card and safetensors weights, loaded.

    Reads the card, then the weights, at ``files.revision`` (``check``, when given,
    sees each one before the next read, so a refused card costs no weights download),
    and loads them with :func:`~kernel.artifacts.load_model`: the weights' sha256 is
    checked against the card before they are deserialised, and never with pickle.
    Raises ``StoreError`` (``StoreNotFound``, a transient ``StoreUnavailable``) for a
    file the store cannot give, ``ArtifactError`` for one that is not a usable model,
    and whatever ``check`` raises.
    """
    card = store.read(files.paths["card"], revision=files.revision)
    if check is not None:
        check("card", card)
    weights = store.read(files.paths["safetensors"], revision=files.revision)
    if check is not None:
        check("safetensors", weights)
    return load_model(card, weights, "safetensors")


@dataclass(frozen=True, eq=False)
class VerifiedModel:
    """A tenant's model as the store has it: its newest revision, verified, loaded."""

    tenant: str
    tenant_hash: str
    revision: str
    #: The store's count of this tenant's versions (1 = the first).
    version: int
    module: SlaMLP
    card: ModelCard


_MISMATCH: dict[LoadedKind, str] = {
    "card": "card does not match its announced sha256",
    "safetensors": "weights do not match their announced sha256",
}


def _matches(announced: ModelPublished) -> FileCheck:
    """A `FileCheck` refusing any file whose sha256 is not the announced one."""

    def check(kind: LoadedKind, data: bytes) -> None:
        if sha256_hex(data) != announced.sha256.get(kind):
            raise ModelRefused(_MISMATCH[kind], "sha256_mismatch")

    return check


@dataclass(frozen=True)
class ModelAuthority:
    """The store as the one authority on each tenant's newest model.

    Promises: `newest` answers with the store's newest revision of a tenant or
    nothing, never with a revision an announcement names that the store does not
    call newest, so a forged or replayed announcement cannot roll a tenant back.
    Raises only `ModelRefused` (with its `kind`), never a store or artifact error.
    """

    store: ModelStore
    store_uri: str
    tenant_key: SecretStr

    def check(self, event: ModelPublished) -> str:
        """Cheap checks of an announcement, without touching the store: its tenant hash.

        Raises `ModelRefused` when it names another store, another tenant's hash, or
        paths that are not the tenant's own.
        """
        if event.store_uri != self.store_uri:
            raise ModelRefused(
                f"names store {event.store_uri!r}, not ours ({self.store_uri!r}): "
                "check the announcer's store setting (SLAOPS_STORE)",
                "foreign_store",
            )
        expected = tenant_hash(event.tenant, self.tenant_key)
        if not hmac.compare_digest(event.tenant_hash, expected):
            raise ModelRefused(
                "tenant_hash is not this tenant's: the announcer uses another tenant key "
                "(SLAOPS_TENANT_KEY), or the event is forged",
                "foreign_tenant",
            )
        if dict(event.paths) != model_paths(expected):
            raise ModelRefused("paths are not this tenant's model paths", "foreign_paths")
        return expected

    def newest(
        self,
        tenant: str,
        *,
        announced: ModelPublished | None = None,
        live_revision: str | None = None,
    ) -> VerifiedModel | None:
        """The store's newest version of `tenant`, verified and loaded.

        None when the store holds nothing for the tenant (and nothing was announced)
        or its newest is `live_revision` already (nothing is read then). Raises
        `ModelRefused` when the announcement is not the store's newest, or the newest
        fails verification; the reason is one line.
        """
        thash = tenant_hash(tenant, self.tenant_key)
        head = None
        try:
            newest = self.store.head(thash)
            head = newest.files if newest is not None else None
            if newest is None or head is None:
                if announced is None:
                    return None
                raise ModelRefused(
                    f"revision {announced.revision!r} is not in the store: "
                    "it holds no version of this tenant",
                    "not_in_store",
                )
            if head.revision == live_revision:
                if announced is not None and announced.revision != head.revision:
                    raise ModelRefused(
                        f"revision {announced.revision!r} is not the store's newest "
                        f"({head.revision}, live already)",
                        "not_newest",
                    )
                return None
            named = announced is not None and announced.revision == head.revision
            check = _matches(announced) if announced is not None and named else None
            module, card = load_version(self.store, head, check=check)
        except ModelRefused:
            raise
        except (StoreError, ArtifactError, ValueError) as exc:
            which = head.revision if head is not None else "newest"
            detail = " ".join(str(exc).split())[:300]
            raise ModelRefused(f"cannot load revision {which!r}: {detail}", "unloadable") from exc
        return VerifiedModel(tenant, thash, head.revision, max(newest.version, 1), module, card)
