"""slaops: per-tenant SLA-breach forecasting models kept fresh by drift-triggered retraining."""
