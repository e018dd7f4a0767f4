"""One root exception for slaops (``SlaopsError``); one small subclass per area.

Each inherits the matching built-in too, so callers may catch either.
"""

from __future__ import annotations

from schemas.errors import SlaopsError

__all__ = [
    "ArtifactError",
    "BrokerError",
    "ConfigError",
    "SlaopsError",
    "StoreConflict",
    "StoreError",
    "StoreNotFound",
    "StoreUnavailable",
]


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
