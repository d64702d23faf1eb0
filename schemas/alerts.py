"""Alert contract, version 1: what the alerts consumer sends to on-call channels.

The generic webhook receives this model's JSON as its body; Slack and PagerDuty receive it
rendered in their own formats (``consumers.channels``). ``key`` is stable per dataset and
problem, so a receiver (and PagerDuty, as ``dedup_key``) groups repeats and matches a
``resolve`` with its ``trigger``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

AlertAction = Literal["trigger", "resolve"]
AlertSeverity = Literal["critical", "error", "warning", "info"]
AlertKindName = Literal["validation", "drift", "retrain", "daemon"]


class Alert(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    key: str = Field(description="Stable per dataset and problem, e.g. 'strandline/sales/drift'.")
    action: AlertAction
    kind: AlertKindName
    severity: AlertSeverity
    dataset: str | None = Field(None, description="The dataset concerned; null for a daemon-wide problem.")
    version: int | None = Field(None, ge=1, description="The dataset version that raised or cleared the problem.")
    summary: str = Field(max_length=1024, description="One line that says what is wrong (or that it cleared).")
    reasons: tuple[str, ...] = Field((), description="Why, one line each: failed expectations, drifted columns...")
    source: str = Field(description="The host the event came from.")
    event_id: str = Field(description="CloudEvents id of the event that raised this alert.")
    event_type: str
    occurred_at: datetime
    occurrences: int = Field(1, ge=1, description="Events grouped into this notification (repeats while rate-limited).")
    details: dict[str, JsonValue] = Field(default_factory=dict, description="Extra facts for the receiver.")
