"""`slaops alerts`: `sla.warnings` edges to Alertmanager (being written)."""

from __future__ import annotations

from slaops.alerts_settings import AlertsSettings


def run_alerts(settings: AlertsSettings) -> int:
    raise NotImplementedError("slaops alerts is not finished yet")
