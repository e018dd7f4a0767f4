"""The pure core of `slaops alerts`: warning edges in, the alerts Alertmanager should hold out.

`AlertBook` keeps one active warning per tenant and the ids of warnings that ended, so
the edges of `sla.warnings` can be applied in topic order, replayed from the start after
a restart, and repeated (the consumer re-sends the same edge, same id, after its own
restart) without a warning that ended ever being sent as active again. It makes no
network call and reads no clock: the caller passes the times.

An alert's identity in Alertmanager is its label set (`alert_labels`: alertname, tenant,
severity, service and the extra labels), so one tenant has one alert however often it
is re-sent; the warning's facts are annotations. Its `startsAt` comes from the topic
(the raise's event time, never later than the record's own timestamp), so a replay
after a restart sends the same `startsAt` again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from schemas import WarningCleared, WarningRaised

Outcome = Literal["raised", "replaced", "cleared", "repeat", "unknown_clear", "full"]


@dataclass(frozen=True, slots=True)
class AlertShape:
    """What every alert carries besides its warning: the settings' labels and links."""

    alertname: str = "SlaBreachExpected"
    severity: str = "warning"
    service: str = "slaops"
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    runbook_url: str = ""
    generator_url: str = ""


@dataclass(frozen=True, slots=True)
class ActiveWarning:
    raised: WarningRaised
    starts_at: datetime


@dataclass(frozen=True, slots=True)
class EndedWarning:
    """A warning to send as resolved: its tenant, its raise if known, when it ended."""

    tenant: str
    warning_id: str
    ends_at: datetime
    starts_at: datetime
    raised: WarningRaised | None = None
    cleared: WarningCleared | None = None


class AlertBook:
    """Active warnings by tenant (at most `max_active`) and ended ids (at most `max_ended`).

    `apply` never raises for an edge that passed its schema; it says what it did.
    """

    def __init__(self, max_active: int = 10_000, max_ended: int = 100_000) -> None:
        if max_active < 1 or max_ended < 1:
            raise ValueError("max_active and max_ended must be >= 1")
        self.max_active = max_active
        self.max_ended = max_ended
        self._active: dict[str, ActiveWarning] = {}
        self._ended_ids: OrderedDict[str, None] = OrderedDict()
        self._ended: OrderedDict[str, EndedWarning] = OrderedDict()  # by tenant

    def __len__(self) -> int:
        return len(self._active)

    def active(self) -> list[ActiveWarning]:
        return list(self._active.values())

    def is_active(self, tenant: str) -> bool:
        return tenant in self._active

    def take_ended(self) -> list[EndedWarning]:
        """The warnings that ended since the last call, the latest of each tenant (oldest
        first; at most `max_ended`)."""
        ended, self._ended = list(self._ended.values()), OrderedDict()
        return ended

    def _end(self, ended: EndedWarning) -> None:
        self._ended.pop(ended.tenant, None)
        self._ended[ended.tenant] = ended
        while len(self._ended) > self.max_ended:
            self._ended.popitem(last=False)

    def _remember_ended(self, warning_id: str) -> None:
        self._ended_ids[warning_id] = None
        self._ended_ids.move_to_end(warning_id)
        while len(self._ended_ids) > self.max_ended:
            self._ended_ids.popitem(last=False)

    def apply(self, edge: WarningRaised | WarningCleared, record_time: datetime) -> Outcome:
        """Apply one edge; `record_time` is when it was written (the Kafka timestamp, on
        the writer's wall clock), which bounds the alert's start and is its end."""
        if isinstance(edge, WarningRaised):
            return self._raise(edge, record_time)
        return self._clear(edge, record_time)

    def _raise(self, edge: WarningRaised, record_time: datetime) -> Outcome:
        if edge.warning_id in self._ended_ids:
            return "repeat"  # a replayed raise of a warning that already ended
        current = self._active.get(edge.tenant)
        if current is not None and current.raised.warning_id == edge.warning_id:
            return "repeat"
        if current is None and len(self._active) >= self.max_active:
            return "full"
        starts_at = min(edge.ts, record_time)
        if current is not None:
            # The tenant's earlier warning ended without a clear we saw: the same
            # alert (same labels) goes on with the new warning's facts.
            self._remember_ended(current.raised.warning_id)
            starts_at = min(starts_at, current.starts_at)
        self._active[edge.tenant] = ActiveWarning(edge, starts_at)
        return "raised" if current is None else "replaced"

    def _clear(self, edge: WarningCleared, record_time: datetime) -> Outcome:
        if edge.warning_id in self._ended_ids:
            return "repeat"
        current = self._active.get(edge.tenant)
        if current is not None and current.raised.warning_id != edge.warning_id:
            # Ends a warning we never saw active while another is on: keep that one.
            self._remember_ended(edge.warning_id)
            return "unknown_clear"
        self._remember_ended(edge.warning_id)
        if current is None:
            # Its raise is before what we read (or was dropped when full): say it ended,
            # which Alertmanager takes as a no-op when it holds no such alert.
            starts_at = min(edge.ts, record_time)
            self._end(
                EndedWarning(edge.tenant, edge.warning_id, record_time, starts_at, None, edge)
            )
            return "unknown_clear"
        del self._active[edge.tenant]
        ends_at = max(record_time, current.starts_at)
        self._end(
            EndedWarning(
                edge.tenant, edge.warning_id, ends_at, current.starts_at, current.raised, edge
            )
        )
        return "cleared"


def alert_labels(shape: AlertShape, tenant: str) -> dict[str, str]:
    """The label set that names a tenant's alert in Alertmanager.

    >>> alert_labels(AlertShape(extra_labels={"team": "sre"}), "acme")["tenant"]
    'acme'
    """
    return {
        **shape.extra_labels,
        "alertname": shape.alertname,
        "tenant": tenant,
        "severity": shape.severity,
        "service": shape.service,
    }


def _number(value: float) -> str:
    return format(value, ".6g")


def raise_annotations(shape: AlertShape, raised: WarningRaised) -> dict[str, str]:
    """summary, description and the warning's facts, as Alertmanager annotations."""
    horizon = f"{raised.horizon} intervals"
    if raised.horizon_s is not None:
        horizon += f" (~{raised.horizon_s / 60:.0f} min)"
    lead = raised.policy.median_lead
    notes = {
        "summary": f"tenant {raised.tenant}: an SLA breach is expected within {horizon} "
        f"(p={raised.probability:.2f})",
        "description": (
            f"The {raised.forecaster} forecaster (model v{raised.model_version}) gives "
            f"{raised.probability:.2f} for a breach within the next {horizon}, at or "
            f"above its threshold {raised.policy.threshold:.2f}. Out of fold it warned "
            + (
                "with an unknown lead."
                if lead is None
                else f"a median {_number(lead)} intervals ahead of a breach."
            )
            + " Look at the tenant's latency and errors now; the alert resolves when "
            "the risk passes or the breach starts."
        ),
        "probability": _number(raised.probability),
        "threshold": _number(raised.policy.threshold),
        "horizon": str(raised.horizon),
        "expected_lead": "unknown" if lead is None else _number(lead),
        "model_revision": raised.model_revision,
        "model_version": str(raised.model_version),
        "forecaster": raised.forecaster,
        "warning_id": raised.warning_id,
        "raised_at": raised.ts.isoformat(),
    }
    if raised.horizon_s is not None:
        notes["horizon_s"] = _number(raised.horizon_s)
        if lead is not None:
            notes["expected_lead_s"] = _number(lead * raised.horizon_s / raised.horizon)
    if raised.policy.false_per_day is not None:
        notes["false_warnings_per_day"] = _number(raised.policy.false_per_day)
    if shape.runbook_url:
        notes["runbook_url"] = shape.runbook_url
    return notes


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _alert(
    shape: AlertShape,
    tenant: str,
    annotations: dict[str, str],
    starts_at: datetime,
    ends_at: datetime,
) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "labels": alert_labels(shape, tenant),
        "annotations": annotations,
        "startsAt": _stamp(min(starts_at, ends_at)),
        "endsAt": _stamp(ends_at),
    }
    if shape.generator_url:
        alert["generatorURL"] = shape.generator_url
    return alert


def active_alert(shape: AlertShape, warning: ActiveWarning, ends_at: datetime) -> dict[str, Any]:
    """The postable alert of an active warning; `ends_at` is now + a few resends."""
    notes = raise_annotations(shape, warning.raised)
    return _alert(shape, warning.raised.tenant, notes, warning.starts_at, ends_at)


def resolved_alert(shape: AlertShape, ended: EndedWarning, now: datetime) -> dict[str, Any]:
    """The postable alert of an ended warning: the same labels, `endsAt` when it ended
    (never after `now`, so Alertmanager takes it as resolved at once)."""
    notes = {} if ended.raised is None else raise_annotations(shape, ended.raised)
    notes["warning_id"] = ended.warning_id
    if ended.cleared is not None:
        notes["cleared_reason"] = ended.cleared.reason
        notes["cleared_at"] = ended.cleared.ts.isoformat()
    ends_at = min(ended.ends_at, now)
    return _alert(shape, ended.tenant, notes, ended.starts_at, ends_at)


def lifetime(resend_interval_s: float, resends_until_end: int) -> timedelta:
    return timedelta(seconds=resend_interval_s * resends_until_end)
