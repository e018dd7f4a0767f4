"""One root exception for slaops; one small subclass per area."""


class SlaopsError(Exception):
    """Root of every error slaops raises on purpose."""


class ConfigError(SlaopsError, ValueError):
    """A setting is missing or invalid; the message names it and says what to fix."""


class BrokerError(SlaopsError, RuntimeError):
    """The Kafka broker refused or failed an operation we cannot continue without."""
