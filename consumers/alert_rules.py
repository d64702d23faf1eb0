"""Which events raise or clear which alert, and what the alert says. Pure.

One problem per dataset and kind, keyed ``strandline/<dataset>/<kind>``: a validation failure is
raised by ``dataset.validation.failed`` and cleared by the next valid version; drift by
``dataset.drift.detected`` / ``dataset.drift.cleared``; a retraining failure by a failed or
interrupted ``model.retrain.finished`` and cleared by a successful one.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from schemas.alerts import Alert, AlertKindName, AlertSeverity
from schemas.events import (
    DaemonHealth,
    DriftCleared,
    DriftDetected,
    RetrainFinished,
    ValidationFailed,
    VersionCreated,
)

ALERT_EVENT_TYPES: dict[str, type[BaseModel]] = {
    "dataset.validation.failed": ValidationFailed,
    "dataset.version.created": VersionCreated,
    "dataset.drift.detected": DriftDetected,
    "dataset.drift.cleared": DriftCleared,
    "model.retrain.finished": RetrainFinished,
    "daemon.degraded": DaemonHealth,
    "daemon.recovered": DaemonHealth,
}

MAX_REASONS = 20


def alert_key(dataset: str | None, kind: AlertKindName) -> str:
    return f"strandline/{dataset or '-'}/{kind}"


def _alert(
    kind: AlertKindName,
    action: str,
    severity: AlertSeverity,
    dataset: str,
    version: int | None,
    summary: str,
    reasons: list[str],
    *,
    source: str,
    event_id: str,
    event_type: str,
    at: datetime,
    details: dict[str, object] | None = None,
) -> Alert:
    cut = reasons[:MAX_REASONS]
    if len(reasons) > MAX_REASONS:
        cut.append(f"... and {len(reasons) - MAX_REASONS} more")
    return Alert.model_validate(
        {
            "key": alert_key(dataset, kind),
            "action": action,
            "kind": kind,
            "severity": severity,
            "dataset": dataset,
            "version": version,
            "summary": summary[:1024],
            "reasons": tuple(cut),
            "source": source,
            "event_id": event_id,
            "event_type": event_type,
            "occurred_at": at,
            "details": details or {},
        }
    )


def alert_for(event_type: str, event: BaseModel, event_id: str) -> Alert | None:
    """The alert ``event`` raises or clears; None when it concerns no alert."""
    if isinstance(event, DaemonHealth):
        degraded = event_type == "daemon.degraded"
        summary = (
            f"Strandline on {event.host} cannot deliver events to Kafka since {event.since:%Y-%m-%d %H:%M:%S} UTC"
            f" ({event.backlog} waiting; versioning goes on)"
            if degraded
            else f"Strandline on {event.host} delivers to Kafka again ({event.reason})"
        )
        return Alert(
            key=f"strandline/{event.host}/daemon/{event.component}",
            action="trigger" if degraded else "resolve",
            kind="daemon",
            severity="critical" if degraded else "info",
            summary=summary,
            reasons=(event.reason,),
            source=event.host,
            event_id=event_id,
            event_type=event_type,
            occurred_at=event.at,
            details={"component": event.component, "backlog": event.backlog},
        )
    if isinstance(event, ValidationFailed):
        reasons: list[str] = []
        if event.validation is not None:
            for f in event.validation.failures:
                column = f" on {f.column}" if f.column else ""
                observed = f" (observed {f.observed_value!r})" if f.observed_value is not None else ""
                reasons.append(f"{f.expectation}{column}{observed}")
        reasons += [f"{p.path}: {p.reason}" for p in event.problems]
        return _alert(
            "validation",
            "trigger",
            "error",
            event.dataset,
            event.version,
            f"{event.dataset}@{event.version} is {event.status}: {event.reason}",
            reasons or [event.reason],
            source=event.host,
            at=event.created_at,
            details={"version_id": event.version_id},
            event_id=event_id,
            event_type=event_type,
        )
    if isinstance(event, VersionCreated):
        if event.status != "valid":
            return None
        return _alert(
            "validation",
            "resolve",
            "info",
            event.dataset,
            event.version,
            f"{event.dataset}@{event.version} is valid again",
            [],
            source=event.host,
            at=event.created_at,
            event_id=event_id,
            event_type=event_type,
        )
    if isinstance(event, DriftDetected | DriftCleared):
        report = event.report
        detected = isinstance(event, DriftDetected)
        summary = (
            f"{event.dataset}@{event.version} drifted from @{report.reference_version}: "
            f"{report.drifted_columns} of {report.tested_columns} columns"
            if detected
            else f"{event.dataset}@{event.version} is back within bounds of @{report.reference_version}"
        )
        reasons = list(report.reasons) if detected else []
        return _alert(
            "drift",
            "trigger" if detected else "resolve",
            "warning" if detected else "info",
            event.dataset,
            event.version,
            summary,
            reasons,
            source=event.host,
            at=event.detected_at,
            details={"share": report.share, "drifted_columns": [c.name for c in report.columns if c.drifted]},
            event_id=event_id,
            event_type=event_type,
        )
    if isinstance(event, RetrainFinished):
        if event.status == "succeeded":
            return _alert(
                "retrain",
                "resolve",
                "info",
                event.dataset,
                event.version,
                f"retraining on {event.dataset}@{event.version} succeeded (run {event.run_id})",
                [],
                source=event.host,
                at=event.finished_at,
                event_id=event_id,
                event_type=event_type,
            )
        return _alert(
            "retrain",
            "trigger",
            "error",
            event.dataset,
            event.version,
            f"retraining on {event.dataset}@{event.version} {event.status} (run {event.run_id})",
            [event.reason or event.status],
            source=event.host,
            at=event.finished_at,
            details={"run_id": event.run_id, "exit_code": event.exit_code},
            event_id=event_id,
            event_type=event_type,
        )
    return None
