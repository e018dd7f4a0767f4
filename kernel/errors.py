"""The kernel's errors: one small subclass of the root ``SlaopsError`` per area.

The root lives in ``schemas.errors`` (the contracts raise ``InvalidTelemetry``); each
service has its own module beside these (``consumer.errors``, ``retrainer.errors``).
Each inherits the matching built-in too, so callers may catch either, and each
message a user can meet says what to do about it.
"""

from __future__ import annotations

from schemas.errors import SlaopsError

__all__ = [
    "ArtifactError",
    "BrokerError",
    "ConfigError",
    "ModelRefused",
    "REFUSAL_KINDS",
    "SlaopsError",
    "StoreConflict",
    "StoreError",
    "StoreNotFound",
    "StoreUnavailable",
    "is_transient",
]


def is_transient(exc: BaseException) -> bool:
    """THE failure policy's one question: may the same operation succeed if tried again?

    Yes for an error slaops marks `transient` (a broker or store outage, 429, 5xx, a
    concurrent writer) and for the built-in connection and timeout errors that escaped
    an adapter unwrapped. No for everything else: a refusal (401/403, a repo that may
    not be created), data that cannot train, a bug. Callers retry transient errors in
    place with backoff and give up on the others after a bounded number of attempts.

    >>> is_transient(StoreUnavailable("503")), is_transient(StoreError("403"))
    (True, False)
    """
    if isinstance(exc, SlaopsError):
        return exc.transient
    return isinstance(exc, ConnectionError | TimeoutError)


class ConfigError(SlaopsError, ValueError):
    """A setting is missing or invalid; the message names it and says what to fix."""


class BrokerError(SlaopsError, RuntimeError):
    """The Kafka broker refused or failed an operation we cannot continue without."""

    transient = True


class ArtifactError(SlaopsError, ValueError):
    """A model file or card is malformed, tampered with or not what it claims to be."""


class StoreError(SlaopsError):
    """The model store failed or refused an operation (permanent unless a subclass says)."""


class StoreConflict(StoreError):
    """The store moved between reading its head and committing (parent_commit)."""

    transient = True


class StoreUnavailable(StoreError, ConnectionError):
    """Transient failure (429, 5xx, connection, timeout) that outlived the retries."""

    transient = True


class StoreNotFound(StoreError, LookupError):
    """No such repository, revision or file."""


#: Why an announced model was refused, in few words (a bounded metric label).
REFUSAL_KINDS = (
    "foreign_store",
    "foreign_tenant",
    "foreign_paths",
    "not_in_store",
    "not_newest",
    "sha256_mismatch",
    "unloadable",
    "older_version",
    "other",
)


class ModelRefused(SlaopsError):
    """An announced model that will not be loaded; the message says why (one line).

    `kind` is one of `REFUSAL_KINDS`: the reason in few words, for counting. The
    tenant keeps the model it had: a refusal is logged and counted, never fatal.
    """

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind if kind in REFUSAL_KINDS else "other"
