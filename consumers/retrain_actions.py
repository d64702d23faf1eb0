"""What a retraining run does: run a command (argument list, no shell) or call an HTTP endpoint.

A command gets the run's facts only as environment variables and as a JSON file
(``STRANDLINE_EVENT_FILE``); it may report the model it wrote by writing
``{"model_path": "...", "mlflow_run_id": "..."}`` to ``STRANDLINE_RESULT_FILE``. Its output goes
to ``<runs_dir>/<run_id>.log``; the last lines are the reason of a failed run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import xxhash
from pydantic import BaseModel, ConfigDict, ValidationError

from consumers.channels import HttpPoster, sign_body
from daemon.errors import DeliveryError
from daemon.fingerprint import hash_file
from schemas.config import AirflowAction, CommandAction, RetrainWebhookAction

_TAIL_BYTES = 2000


@dataclass(frozen=True)
class RunContext:
    run_id: str
    dataset: str
    version: int
    version_id: str
    trigger: str
    coalesced: int
    runs_dir: Path
    event: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The run's facts; ``event`` is the triggering event's data as published (file names included)."""
        return {
            "run_id": self.run_id,
            "dataset": self.dataset,
            "version": self.version,
            "version_id": self.version_id,
            "trigger": self.trigger,
            "coalesced": self.coalesced,
            "event": self.event,
        }

    def environment(self) -> dict[str, str]:
        return {
            "STRANDLINE_RUN_ID": self.run_id,
            "STRANDLINE_DATASET": self.dataset,
            "STRANDLINE_VERSION": str(self.version),
            "STRANDLINE_VERSION_ID": self.version_id,
            "STRANDLINE_TRIGGER": self.trigger,
            "STRANDLINE_EVENT_FILE": str(self.runs_dir / f"{self.run_id}.event.json"),
            "STRANDLINE_RESULT_FILE": str(self.runs_dir / f"{self.run_id}.result.json"),
        }


@dataclass(frozen=True)
class ActionOutcome:
    status: Literal["succeeded", "failed", "interrupted"]
    reason: str | None = None
    exit_code: int | None = None
    http_status: int | None = None
    model_path: str | None = None
    model_hash: str | None = None
    mlflow_run_id: str | None = None


class CommandResult(BaseModel):
    """What a command may write to STRANDLINE_RESULT_FILE."""

    model_config = ConfigDict(extra="ignore")

    model_path: str | None = None
    mlflow_run_id: str | None = None


def model_hash(path: Path) -> str | None:
    """XXH3-128 of a model file; of a folder, of its sorted (relative path, file hash) lines."""
    try:
        if path.is_file():
            return hash_file(path)[0]
        if path.is_dir():
            lines = []
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                lines.append(f"{file.relative_to(path).as_posix()}\0{hash_file(file)[0]}\n")
            return xxhash.xxh3_128_hexdigest("".join(lines).encode("utf-8", "surrogateescape"))
    except OSError:
        return None
    return None


def _inherited_environment() -> dict[str, str]:
    """The consumer's environment minus its own secrets and service plumbing.

    The consumer's STRANDLINE_* variables hold Kafka passwords and alert webhook URLs, and a run's
    log tail goes into events and alerts: a training script that prints its environment must not
    publish them. NOTIFY_SOCKET/WATCHDOG_* belong to the consumer's systemd unit, not to the run.
    """
    private = ("STRANDLINE_", "NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_FDS", "LISTEN_PID", "CREDENTIALS_DIRECTORY")
    return {k: v for k, v in os.environ.items() if not k.startswith(private)}


def _tail(log_path: Path) -> str:
    try:
        with log_path.open("rb") as fh:
            fh.seek(max(0, log_path.stat().st_size - _TAIL_BYTES))
            lines = fh.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-5:])


def _result(context: RunContext, cwd: Path | None) -> tuple[str | None, str | None, str | None]:
    result_file = context.runs_dir / f"{context.run_id}.result.json"
    if not result_file.exists():
        return None, None, None
    try:
        result = CommandResult.model_validate_json(result_file.read_bytes())
    except (OSError, ValidationError):
        return None, None, None
    if result.model_path is None:
        return None, None, result.mlflow_run_id
    path = Path(result.model_path)
    if not path.is_absolute() and cwd is not None:
        path = cwd / path
    return result.model_path, model_hash(path), result.mlflow_run_id


def run_command(
    action: CommandAction,
    context: RunContext,
    *,
    on_start: Callable[[subprocess.Popen[bytes]], None],
    stopping: threading.Event,
) -> ActionOutcome:
    """Run ``action.argv`` to completion (or its timeout, or a stop) and say how it ended."""
    event_file = context.runs_dir / f"{context.run_id}.event.json"
    event_file.write_text(json.dumps(context.as_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    log_path = context.runs_dir / f"{context.run_id}.log"
    env = {**_inherited_environment(), **action.env, **context.environment()}
    with log_path.open("wb") as log_file:
        try:
            proc = subprocess.Popen(  # an argument list, never a shell: event data stays data
                list(action.argv),
                cwd=action.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a stop signals the whole run
            )
        except OSError as exc:
            return ActionOutcome(status="failed", reason=f"cannot start {action.argv[0]!r}: {exc.strerror or exc}")
        on_start(proc)
        deadline = time.monotonic() + action.timeout_seconds
        while True:
            try:
                code = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return ActionOutcome(
                        status="failed",
                        reason=f"killed after the {action.timeout_seconds:g} s timeout",
                        exit_code=proc.returncode,
                    )
    if stopping.is_set() and code != 0:
        return ActionOutcome(status="interrupted", reason="stopped with the consumer", exit_code=code)
    model_path, digest, mlflow_run_id = _result(context, action.cwd)
    if code != 0:
        tail = _tail(log_path)
        return ActionOutcome(
            status="failed",
            reason=f"exit status {code}" + (f": {tail}" if tail else ""),
            exit_code=code,
            model_path=model_path,
            model_hash=digest,
        )
    return ActionOutcome(
        status="succeeded", exit_code=0, model_path=model_path, model_hash=digest, mlflow_run_id=mlflow_run_id
    )


def airflow_request(action: AirflowAction, context: RunContext) -> tuple[str, bytes, dict[str, str]]:
    """URL, body and headers of Airflow's "trigger a new DAG run" (stable REST API v1)."""
    import base64

    base = action.url.get_secret_value().rstrip("/")
    url = f"{base}/api/v1/dags/{action.dag_id}/dagRuns"
    body = json.dumps({"dag_run_id": f"strandline-{context.run_id}", "conf": context.as_dict()}).encode()
    headers = {"Content-Type": "application/json"}
    if action.token is not None:
        headers["Authorization"] = f"Bearer {action.token.get_secret_value()}"
    elif action.username is not None:
        password = action.password.get_secret_value() if action.password is not None else ""
        headers["Authorization"] = "Basic " + base64.b64encode(f"{action.username}:{password}".encode()).decode()
    return url, body, headers


def run_http_action(action: AirflowAction | RetrainWebhookAction, context: RunContext) -> ActionOutcome:
    """Call the endpoint once; a 2xx answer is a triggered (succeeded) run."""
    if isinstance(action, AirflowAction):
        url, body, headers = airflow_request(action, context)
        secrets = [s.get_secret_value() for s in (action.password, action.token) if s is not None]
        label = f"Airflow DAG {action.dag_id}"
    else:
        url = action.url.get_secret_value()
        body = json.dumps({"schema_version": 1, **context.as_dict()}).encode()
        headers = {"Content-Type": "application/json"}
        if action.secret is not None:
            headers.update(sign_body(body, action.secret.get_secret_value().encode(), now=int(time.time())))
        secrets = [action.secret.get_secret_value()] if action.secret is not None else []
        label = "retrain webhook"
    poster = HttpPoster(label, url, secrets, action.timeout_seconds)
    try:
        status = poster.post(body, headers)
    except DeliveryError as exc:
        return ActionOutcome(status="failed", reason=str(exc))
    return ActionOutcome(status="succeeded", http_status=status, reason=f"{label} answered HTTP {status}")
