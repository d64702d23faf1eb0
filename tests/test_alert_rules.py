"""Which events raise or clear which alert, and how the alerts consumer groups them in time.

No broker: the handler is driven directly with parsed events, a clock the test moves, and a real
HTTP receiver on loopback.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from consumers.alert_rules import alert_for
from consumers.alert_service import AlertHandler
from consumers.runner import ConsumedEvent
from consumers.state import ConsumerState
from schemas.config import StrandlineConfig
from schemas.events import RetrainFinished, ValidationFailed, VersionCreated, VersionTotals
from tests.helpers import Receiver

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _failed(version: int) -> ValidationFailed:
    return ValidationFailed(
        dataset="sales",
        version=version,
        version_id="v" * 32,
        created_at=NOW,
        host="h",
        status="invalid",
        reason="expect_column_values_to_not_be_null(id): 3 unexpected",
    )


def _valid(version: int) -> VersionCreated:
    return VersionCreated(
        dataset="sales",
        version=version,
        version_id="w" * 32,
        created_at=NOW,
        host="h",
        root="/d",
        totals=VersionTotals(files=1, bytes=1, added=0, modified=1, removed=0),
        changes=(),
        status="valid",
    )


def _finished(status: str) -> RetrainFinished:
    return RetrainFinished(
        run_id="r1",
        dataset="sales",
        version=4,
        version_id="v" * 32,
        trigger="version",
        action="command",
        status=status,
        started_at=NOW,
        finished_at=NOW,
        exit_code=0 if status == "succeeded" else 3,  # type: ignore[arg-type]
        reason=None if status == "succeeded" else "exit status 3: out of memory",
        host="trainer",
    )


def test_each_problem_has_its_own_stable_key_and_its_clearing_event() -> None:
    raised = alert_for("dataset.validation.failed", _failed(3), "e1")
    cleared = alert_for("dataset.version.created", _valid(4), "e2")
    assert raised is not None and cleared is not None
    assert (raised.action, cleared.action) == ("trigger", "resolve")
    assert raised.key == cleared.key == "strandline/sales/validation"
    assert raised.severity == "error" and "sales@3 is invalid" in raised.summary
    failed_run = alert_for("model.retrain.finished", _finished("failed"), "e3")
    good_run = alert_for("model.retrain.finished", _finished("succeeded"), "e4")
    assert failed_run is not None and good_run is not None
    assert failed_run.key == good_run.key == "strandline/sales/retrain" != raised.key
    assert (failed_run.action, good_run.action) == ("trigger", "resolve")
    assert failed_run.reasons == ("exit status 3: out of memory",)
    unvalidated = _valid(5).model_copy(update={"status": "unvalidated"})
    assert alert_for("dataset.version.created", unvalidated, "e5") is None, "no suite: nothing to clear"


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def receiver():  # type: ignore[no-untyped-def]
    r = Receiver(202)
    yield r
    r.close()


def _handler(tmp_path: Path, receiver: Receiver, clock: _Clock) -> AlertHandler:
    config = StrandlineConfig(
        state_dir=tmp_path,
        alerts={
            "channels": {"pd": {"type": "pagerduty", "routing_key": "k" * 32, "events_url": receiver.url}},
            "routes": [{"channels": ["pd"]}],
            "min_interval_seconds": 300,
            "repeat_interval_seconds": 3600,
        },
    )
    return AlertHandler(config, ConsumerState(tmp_path / "alerts.sqlite"), clock=clock)


def _event(event_type: str, model: Any, n: int) -> ConsumedEvent:
    return ConsumedEvent("t", 0, n, "sales", f"id-{n}", event_type, "s", model.model_dump_json().encode())


def test_a_change_within_the_window_waits_for_its_end_and_a_long_problem_is_repeated(
    tmp_path: Path, receiver: Receiver
) -> None:
    clock = _Clock()
    handler = _handler(tmp_path, receiver, clock)
    handler.handle(_event("dataset.validation.failed", _failed(1), 1))
    assert [r.json()["event_action"] for r in receiver.requests] == ["trigger"]
    clock.now += 10
    handler.handle(_event("dataset.version.created", _valid(2), 2))
    handler.tick()
    assert len(receiver.requests) == 1, "the resolve waits: a trigger went out 10 s ago"
    clock.now += 300
    handler.tick()
    assert [r.json()["event_action"] for r in receiver.requests] == ["trigger", "resolve"]
    # Still failing an hour later: one reminder, with the failures grouped meanwhile counted.
    clock.now += 400
    for n in range(3, 6):
        handler.handle(_event("dataset.validation.failed", _failed(n), n))
        clock.now += 10
    assert [r.json()["event_action"] for r in receiver.requests] == ["trigger", "resolve", "trigger"]
    clock.now += 3600
    handler.handle(_event("dataset.validation.failed", _failed(6), 6))
    actions = [r.json()["event_action"] for r in receiver.requests]
    assert actions == ["trigger", "resolve", "trigger", "trigger"]
    assert receiver.requests[-1].json()["payload"]["custom_details"]["occurrences"] == 3


def test_a_resolve_for_a_problem_never_raised_sends_nothing(tmp_path: Path, receiver: Receiver) -> None:
    handler = _handler(tmp_path, receiver, _Clock())
    handler.handle(_event("dataset.version.created", _valid(1), 1))
    handler.tick()
    assert receiver.requests == []
