"""Composes one consumer process: state, handler, runner, metrics endpoint, signals."""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

from consumers.metrics import ConsumerMetrics, serve_metrics
from consumers.runner import ConsumerRunner, Handler
from consumers.state import ConsumerState
from daemon.config import state_dir
from daemon.sdnotify import Notifier, WatchdogPinger
from daemon.signals import install_stop_handlers
from schemas.config import StrandlineConfig

log = logging.getLogger(__name__)

ConsumerKind = Literal["drift", "retrain", "alerts"]

# The longest one try to reach Kafka takes: bootstrap timeouts (5 s each for the admin client and
# the consumer), the diagnostic connection after a failed login, an OAuth token request.
_START_ATTEMPT_SECONDS = 60.0
CONSUMER_KINDS: tuple[ConsumerKind, ...] = ("drift", "retrain", "alerts")


def consumer_state_dir(config: StrandlineConfig) -> Path:
    return (config.consumers.state_dir or state_dir(config) / "consumers").resolve()


def state_path(config: StrandlineConfig, kind: ConsumerKind) -> Path:
    return consumer_state_dir(config) / f"{kind}.sqlite"


def group_id(config: StrandlineConfig, kind: ConsumerKind) -> str:
    return f"{config.consumers.group_prefix}-{kind}"


def make_handler(config: StrandlineConfig, kind: ConsumerKind, state: ConsumerState) -> Handler:
    if kind == "drift":
        from consumers.drift_service import DriftHandler

        return DriftHandler(config.kafka, config.drift, state, host=config.host)
    if kind == "retrain":
        from consumers.retrain_service import RetrainHandler

        return RetrainHandler(config, state)
    from consumers.alert_service import AlertHandler

    return AlertHandler(config, state)


def install_signal_handlers(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT finishes the event in hand and stops; a second one exits at once."""
    install_stop_handlers(stop.set, stop.is_set)


def run_consumer(
    config: StrandlineConfig,
    kind: ConsumerKind,
    stop: threading.Event,
    *,
    idle_timeout: float | None = None,
    metrics_port: int | None = None,
) -> ConsumerMetrics:
    """Run one consumer of ``kind`` until ``stop`` (or ``idle_timeout`` without records)."""
    with ExitStack() as stack:
        state = stack.enter_context(ConsumerState(state_path(config, kind)))
        handler = make_handler(config, kind, state)
        metrics = ConsumerMetrics(kind)
        port = metrics_port if metrics_port is not None else config.consumers.metrics_port
        if port is not None:
            server = serve_metrics(metrics, port)
            stack.callback(server.shutdown)
            log.info("metrics for consumer %s on http://%s:%d/metrics", kind, *server.server_address[:2])
        runner = ConsumerRunner(
            config.kafka, config.consumers, handler, state, group_id=group_id(config, kind), metrics=metrics
        )
        # systemd (Type=notify): READY=1 only once Kafka was reached, since a consumer without it does
        # nothing; until then each wait says why and asks for more start time (the start has not
        # hung, it waits). Watchdog pings while the poll loop, or the wait, keeps coming round.
        notifier = Notifier.from_environ()
        stack.enter_context(WatchdogPinger(notifier, lambda: metrics.healthy))
        stack.callback(notifier.stopping)

        def waiting(reason: str, retry_in: float) -> None:
            notifier.status(f"consumer {kind}: waiting for Kafka, next try in {retry_in:.0f} s: {reason}")
            notifier.extend_timeout(retry_in + _START_ATTEMPT_SECONDS)

        runner.run(
            stop,
            idle_timeout=idle_timeout,
            on_connected=lambda: notifier.ready(
                f"consumer {kind}: group {runner.group_id} on {config.kafka.bootstrap}"
            ),
            on_waiting=waiting,
        )
        return metrics
    raise AssertionError("unreachable")  # pragma: no cover  (mypy: ExitStack may swallow)
