"""`strandline consume retrain`: start retraining when a policy says so, and record what trained what.

Per policy and dataset there is one *slot*: at most one run at a time. A version that qualifies
while a run is going, or during the cooldown after the last start, becomes the slot's pending
version (a newer one replaces it: coalescing, not a queue); when the run ends and the cooldown
has passed, one more run starts on the newest pending version. Slots, pending versions and
runs live in the consumer's SQLite state, so a restart neither forgets nor repeats a run; a run
cut short by a stop is recorded ``interrupted`` and its version pending again.

Commands run in worker threads as argument lists (never through a shell); the event reaches
them only through environment variables and a JSON file, so a file named ``$(reboot)`` is only
a string in a JSON document.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from consumers.profile_index import USABLE_STATUSES
from consumers.retrain_actions import ActionOutcome, RunContext, run_command, run_http_action
from consumers.runner import ConsumedEvent
from consumers.state import ConsumerState
from daemon.events import cloud_event, event_id
from daemon.outbox import OutboxMessage
from schemas.config import CommandAction, RetrainPolicy, StrandlineConfig
from schemas.events import DriftDetected, RetrainFinished, RetrainStarted, RetrainTrigger, VersionCreated

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Candidate:
    dataset: str
    version: int
    version_id: str
    trigger: RetrainTrigger
    rows: int | None
    event: str | None = None  # the triggering event's JSON, handed to the action


class RunRow(BaseModel):
    """One retraining run as recorded (``strandline lineage`` prints these)."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    policy: int
    dataset: str
    version: int
    version_id: str
    trigger: str
    action: str
    coalesced: int
    rows: int | None
    started_at: float
    finished_at: float | None
    status: str | None
    exit_code: int | None
    http_status: int | None
    reason: str | None
    model_path: str | None
    model_hash: str | None


_RUN_COLUMNS = ", ".join(RunRow.model_fields)


def create_tables(state: ConsumerState) -> None:
    with state.transaction() as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS retrain_runs (run_id TEXT PRIMARY KEY, policy INTEGER NOT NULL,"
            " dataset TEXT NOT NULL, version INTEGER NOT NULL, version_id TEXT NOT NULL, trigger TEXT NOT NULL,"
            " action TEXT NOT NULL, coalesced INTEGER NOT NULL, rows INTEGER, started_at REAL NOT NULL,"
            " finished_at REAL, status TEXT, exit_code INTEGER, http_status INTEGER, reason TEXT,"
            " model_path TEXT, model_hash TEXT, event TEXT)"
        )
        db.execute("CREATE INDEX IF NOT EXISTS retrain_runs_by_version ON retrain_runs (dataset, version)")
        db.execute(
            "CREATE TABLE IF NOT EXISTS retrain_slots (policy INTEGER NOT NULL, dataset TEXT NOT NULL,"
            " running TEXT, last_started REAL, pending_version INTEGER, pending_version_id TEXT,"
            " pending_trigger TEXT, pending_rows INTEGER, pending_event TEXT, pending_count INTEGER NOT NULL DEFAULT 0,"
            " PRIMARY KEY (policy, dataset))"
        )


def runs_for_version(state: ConsumerState, dataset: str, version: int) -> list[RunRow]:
    rows = state.execute(
        f"SELECT {_RUN_COLUMNS} FROM retrain_runs WHERE dataset = ? AND version = ? ORDER BY started_at",  # noqa: S608 (column names are constants)
        (dataset, version),
    )
    return [RunRow(**dict(zip(RunRow.model_fields, r, strict=True))) for r in rows]


def run_by_id(state: ConsumerState, run_id: str) -> RunRow | None:
    rows = state.execute(f"SELECT {_RUN_COLUMNS} FROM retrain_runs WHERE run_id = ?", (run_id,))  # noqa: S608
    return RunRow(**dict(zip(RunRow.model_fields, rows[0], strict=True))) if rows else None


class RetrainHandler:
    name: ClassVar[str] = "retrain"

    def __init__(self, config: StrandlineConfig, state: ConsumerState, *, runs_dir: Path | None = None) -> None:
        self.config = config
        self.policies = config.retrain.policies
        self.state = state
        self.runs_dir = runs_dir or state.path.parent / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._done: queue.Queue[tuple[str, ActionOutcome]] = queue.Queue()
        self._threads: dict[str, threading.Thread] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping = threading.Event()
        create_tables(state)
        self._recovered = self._recover()

    @property
    def topics(self) -> tuple[str, ...]:
        return (self.config.kafka.versions_topic, self.config.kafka.drift_topic)

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset({"dataset.version.created", "dataset.drift.detected"})

    # -- deciding ----------------------------------------------------------------------------

    def handle(self, event: ConsumedEvent) -> Sequence[OutboxMessage]:
        if event.type == "dataset.drift.detected":
            drift = event.parse(DriftDetected)
            candidate = _Candidate(
                drift.dataset,
                drift.version,
                drift.version_id,
                "drift",
                drift.report.current_rows,
                event.value.decode("utf-8", "replace"),
            )
        else:
            created = event.parse(VersionCreated)
            if created.status not in USABLE_STATUSES:
                return ()
            rows = created.table.rows if created.table is not None else None
            candidate = _Candidate(
                created.dataset,
                created.version,
                created.version_id,
                "version",
                rows,
                event.value.decode("utf-8", "replace"),
            )
        messages: list[OutboxMessage] = []
        for index, policy in enumerate(self.policies):
            if not any(fnmatch.fnmatchcase(candidate.dataset, p) for p in policy.datasets):
                continue
            trigger = self._qualifies(index, policy, candidate)
            if trigger is not None:
                messages += self._request(index, policy, _replace_trigger(candidate, trigger))
        return messages

    def _qualifies(self, index: int, policy: RetrainPolicy, c: _Candidate) -> RetrainTrigger | None:
        if policy.on == "drift":
            return "drift" if c.trigger == "drift" else None
        if c.trigger != "version":
            return None
        if policy.on == "version":
            return "version"
        if c.rows is None:
            return None
        last = self.state.execute(
            "SELECT rows FROM retrain_runs WHERE policy = ? AND dataset = ? AND rows IS NOT NULL"
            " ORDER BY started_at DESC LIMIT 1",
            (index, c.dataset),
        )
        if not last:
            return "rows"
        before = int(last[0][0])
        change = abs(c.rows - before) / max(before, 1)
        return "rows" if change >= policy.min_row_change else None

    def _request(self, index: int, policy: RetrainPolicy, c: _Candidate) -> list[OutboxMessage]:
        rows = self.state.execute(
            "SELECT running, last_started, pending_version, pending_count FROM retrain_slots"
            " WHERE policy = ? AND dataset = ?",
            (index, c.dataset),
        )
        running, last_started, pending_version, pending_count = rows[0] if rows else (None, None, None, 0)
        cooling = last_started is not None and time.time() - last_started < policy.cooldown_seconds
        if running is None and not cooling and pending_version is None:
            return self._start(index, policy, c, coalesced=0)
        if pending_version is None or c.version >= pending_version:
            self.state.execute(
                "INSERT INTO retrain_slots (policy, dataset, running, last_started, pending_version,"
                " pending_version_id, pending_trigger, pending_rows, pending_event, pending_count)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (policy, dataset) DO UPDATE SET pending_version = excluded.pending_version,"
                " pending_version_id = excluded.pending_version_id, pending_trigger = excluded.pending_trigger,"
                " pending_rows = excluded.pending_rows, pending_event = excluded.pending_event,"
                " pending_count = excluded.pending_count",
                (
                    index,
                    c.dataset,
                    running,
                    last_started,
                    c.version,
                    c.version_id,
                    c.trigger,
                    c.rows,
                    c.event,
                    pending_count + 1,
                ),
            )
        log.info(
            "retrain of %s@%d waits (%s): one run will follow on the newest version",
            c.dataset,
            c.version,
            "a run is going" if running else "cooldown",
        )
        return []

    # -- running -----------------------------------------------------------------------------

    def _start(self, index: int, policy: RetrainPolicy, c: _Candidate, *, coalesced: int) -> list[OutboxMessage]:
        run_id = uuid.uuid4().hex[:16]
        now = time.time()
        action = policy.action.type
        self.state.execute(
            f"INSERT INTO retrain_runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * len(RunRow.model_fields))})",  # noqa: S608
            (
                run_id,
                index,
                c.dataset,
                c.version,
                c.version_id,
                c.trigger,
                action,
                coalesced,
                c.rows,
                now,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
            ),
        )
        self.state.execute("UPDATE retrain_runs SET event = ? WHERE run_id = ?", (c.event, run_id))
        self.state.execute(
            "INSERT INTO retrain_slots (policy, dataset, running, last_started, pending_count)"
            " VALUES (?, ?, ?, ?, 0) ON CONFLICT (policy, dataset) DO UPDATE SET running = excluded.running,"
            " last_started = excluded.last_started, pending_version = NULL, pending_version_id = NULL,"
            " pending_trigger = NULL, pending_rows = NULL, pending_event = NULL, pending_count = 0",
            (index, c.dataset, run_id, now),
        )
        context = RunContext(
            run_id=run_id,
            dataset=c.dataset,
            version=c.version,
            version_id=c.version_id,
            trigger=c.trigger,
            coalesced=coalesced,
            runs_dir=self.runs_dir,
            event=_json_or_none(c.event),
        )
        log.info("retrain run %s started on %s@%d (%s, %s)", run_id, c.dataset, c.version, c.trigger, action)
        thread = threading.Thread(target=self._execute, args=(policy, context), name=f"retrain-{run_id}", daemon=True)
        self._threads[run_id] = thread
        thread.start()
        started = RetrainStarted(
            run_id=run_id,
            dataset=c.dataset,
            version=c.version,
            version_id=c.version_id,
            trigger=c.trigger,
            action=action,
            coalesced=coalesced,
            started_at=datetime.fromtimestamp(now, UTC),
            host=self.config.host,
        )
        return [self._message("model.retrain.started", started, run_id, c.dataset, c.version)]

    def _execute(self, policy: RetrainPolicy, context: RunContext) -> None:
        try:
            if isinstance(policy.action, CommandAction):
                outcome = run_command(
                    policy.action,
                    context,
                    on_start=lambda p: self._procs.__setitem__(context.run_id, p),
                    stopping=self._stopping,
                )
            else:
                outcome = run_http_action(policy.action, context)
        except Exception as exc:  # a bug must not leave the slot busy for ever
            log.exception("retrain run %s crashed", context.run_id)
            outcome = ActionOutcome(status="failed", reason=f"{type(exc).__name__}: {exc}")
        finally:
            self._procs.pop(context.run_id, None)
        self._done.put((context.run_id, outcome))

    def tick(self) -> Sequence[OutboxMessage]:
        messages, self._recovered = list(self._recovered), []
        while True:
            try:
                run_id, outcome = self._done.get_nowait()
            except queue.Empty:
                break
            self._threads.pop(run_id, None)
            messages += self._finish(run_id, outcome)
        messages += self._start_due()
        return messages

    def _finish(self, run_id: str, outcome: ActionOutcome) -> list[OutboxMessage]:
        run = run_by_id(self.state, run_id)
        if run is None:
            return []
        now = time.time()
        self.state.execute(
            "UPDATE retrain_runs SET finished_at = ?, status = ?, exit_code = ?, http_status = ?, reason = ?,"
            " model_path = ?, model_hash = ? WHERE run_id = ?",
            (
                now,
                outcome.status,
                outcome.exit_code,
                outcome.http_status,
                outcome.reason,
                outcome.model_path,
                outcome.model_hash,
                run_id,
            ),
        )
        self.state.execute(
            "UPDATE retrain_slots SET running = NULL WHERE policy = ? AND dataset = ? AND running = ?",
            (run.policy, run.dataset, run_id),
        )
        if outcome.status == "interrupted":  # do it again at the next start, unless a newer version waits
            self._requeue(run)
        level = logging.INFO if outcome.status == "succeeded" else logging.WARNING
        log.log(
            level,
            "retrain run %s on %s@%d %s%s",
            run_id,
            run.dataset,
            run.version,
            outcome.status,
            f": {outcome.reason}" if outcome.reason else "",
        )
        finished = RetrainFinished(
            run_id=run_id,
            dataset=run.dataset,
            version=run.version,
            version_id=run.version_id,
            trigger=run.trigger,
            action=run.action,
            status=outcome.status,
            started_at=datetime.fromtimestamp(run.started_at, UTC),
            finished_at=datetime.fromtimestamp(now, UTC),
            exit_code=outcome.exit_code,
            http_status=outcome.http_status,
            reason=outcome.reason,
            model_path=outcome.model_path,
            model_hash=outcome.model_hash,
            host=self.config.host,
        )
        if self.config.retrain.mlflow_tracking_uri and outcome.mlflow_run_id:
            from consumers.mlflow_lineage import log_dataset_input

            # In its own thread: an MLflow server that does not answer retries for minutes, and the
            # poll loop must come back to Kafka well within max.poll.interval.ms.
            threading.Thread(
                target=log_dataset_input,
                args=(self.config.retrain.mlflow_tracking_uri, outcome.mlflow_run_id, run),
                name=f"mlflow-{run_id}",
                daemon=True,
            ).start()
        return [self._message("model.retrain.finished", finished, run_id, run.dataset, run.version)]

    def _requeue(self, run: RunRow) -> None:
        event = self.state.execute("SELECT event FROM retrain_runs WHERE run_id = ?", (run.run_id,))[0][0]
        self.state.execute(
            "UPDATE retrain_slots SET pending_version = ?, pending_version_id = ?, pending_trigger = ?,"
            " pending_rows = ?, pending_event = ?, pending_count = pending_count + 1"
            " WHERE policy = ? AND dataset = ? AND (pending_version IS NULL OR pending_version < ?)",
            (run.version, run.version_id, run.trigger, run.rows, event, run.policy, run.dataset, run.version),
        )

    def _start_due(self) -> list[OutboxMessage]:
        if self._stopping.is_set():
            return []
        messages: list[OutboxMessage] = []
        rows = self.state.execute(
            "SELECT policy, dataset, last_started, pending_version, pending_version_id, pending_trigger,"
            " pending_rows, pending_event, pending_count FROM retrain_slots"
            " WHERE running IS NULL AND pending_version IS NOT NULL"
        )
        for index, dataset, last_started, version, version_id, trigger, rows_, event, count in rows:
            if index >= len(self.policies):
                continue
            policy = self.policies[index]
            if last_started is not None and time.time() - last_started < policy.cooldown_seconds:
                continue
            candidate = _Candidate(dataset, version, version_id, trigger, rows_, event)
            messages += self._start(index, policy, candidate, coalesced=max(0, count - 1))
        return messages

    # -- restart and stop --------------------------------------------------------------------

    def _recover(self) -> list[OutboxMessage]:
        """Runs left without an end by a crash are interrupted; their versions run again."""
        messages: list[OutboxMessage] = []
        with self.state.transaction():
            for (run_id,) in self.state.execute("SELECT run_id FROM retrain_runs WHERE status IS NULL"):
                outcome = ActionOutcome(status="interrupted", reason="the retrain consumer stopped during the run")
                messages += self._finish(run_id, outcome)
        return messages

    def close(self) -> Sequence[OutboxMessage]:
        """Stop running commands (SIGTERM, then SIGKILL after the grace period) and record them."""
        self._stopping.set()
        for run_id, proc in list(self._procs.items()):
            log.info("stopping retrain run %s (pid %d)", run_id, proc.pid)
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + self.config.retrain.stop_grace_seconds
        for thread in list(self._threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))
        for proc in list(self._procs.values()):
            _signal_group(proc, signal.SIGKILL)
        for thread in list(self._threads.values()):
            thread.join(5.0)
        return self.tick()

    def _message(self, event_type: str, value: BaseModel, run_id: str, dataset: str, version: int) -> OutboxMessage:
        return cloud_event(
            self.config.kafka.models_topic,
            dataset,
            event_type,
            value,
            ce_id=event_id(event_type, run_id),
            source=f"strandline://{self.config.host}/consumers/retrain",
            subject=f"{dataset}@{version}",
            time=datetime.now(UTC),
        )


def _replace_trigger(c: _Candidate, trigger: RetrainTrigger) -> _Candidate:
    return _Candidate(c.dataset, c.version, c.version_id, trigger, c.rows, c.event)


def _json_or_none(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
