"""Topic names: the one place every service and test reads them from."""

TELEMETRY = "sla.telemetry"
TELEMETRY_DLQ = "sla.telemetry.dlq"
RETRAIN = "sla.retrain"
RETRAIN_FAILURES = "sla.retrain.failures"
RETRAIN_DECISIONS = "sla.retrain.decisions"
MODELS = "sla.models"
FORECASTS = "sla.forecasts"
WARNINGS = "sla.warnings"
CONSUMER_CHECKPOINTS = "slaops.consumer.checkpoints"

#: Kafka's own limit on topic names: legal characters and length.
TOPIC_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"
