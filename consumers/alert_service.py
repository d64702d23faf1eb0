"""`strandline consume alerts`: page the right channels, once per problem, and say when it clears.

Rate limiting and grouping, per alert key (dataset and problem):

* a trigger while the problem is already notified as open is grouped (counted, not sent), and
  re-sent as a reminder after ``repeat_interval_seconds``;
* a change of state (trigger after resolve, or resolve after trigger) is sent at once unless a
  notification for that key went out less than ``min_interval_seconds`` ago; then it waits, and
  when the window ends only the state the key is in *then* is sent, with the number of events
  grouped into it. A dataset that flaps fifty times in five minutes pages once;
* a resolve for a problem never notified is not sent.

Each notification becomes one delivery row per routed channel, sent at once and, when the
channel fails, retried with backoff on the loop's ticks; a delivery still failing after
``_GIVE_UP_SECONDS`` goes to the dead-letter topic. Nothing is sent twice to a channel that
accepted it, even when another channel of the same notification fails.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from consumers.alert_rules import ALERT_EVENT_TYPES, alert_for
from consumers.channels import Channel, make_channel
from consumers.runner import ConsumedEvent, dead_letter
from consumers.state import ConsumerState
from daemon.errors import DeliveryError
from daemon.outbox import OutboxMessage
from schemas.alerts import Alert
from schemas.config import StrandlineConfig

log = logging.getLogger(__name__)

_GIVE_UP_SECONDS = 3600.0
_MAX_BACKOFF_SECONDS = 300.0


class AlertHandler:
    name: ClassVar[str] = "alerts"

    def __init__(self, config: StrandlineConfig, state: ConsumerState, *, clock: Any = time.time) -> None:
        self.config = config
        self.alerts = config.alerts
        self.state = state
        self.clock = clock
        self.channels: dict[str, Channel] = {
            name: make_channel(name, channel, timeout=self.alerts.timeout_seconds)
            for name, channel in self.alerts.channels.items()
        }
        with state.transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS alert_keys (key TEXT PRIMARY KEY, desired TEXT NOT NULL,"
                " notified TEXT, last_notified REAL, grouped INTEGER NOT NULL, latest TEXT NOT NULL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS alert_deliveries (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " channel TEXT NOT NULL, alert TEXT NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL,"
                " next_attempt REAL NOT NULL, last_error TEXT)"
            )

    @property
    def topics(self) -> tuple[str, ...]:
        k = self.config.kafka
        return (k.versions_topic, k.drift_topic, k.models_topic)

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(ALERT_EVENT_TYPES)

    def close(self) -> Sequence[OutboxMessage]:
        return ()

    def _routes(self, alert: Alert) -> list[str]:
        names: list[str] = []
        for route in self.alerts.routes:
            if alert.kind not in route.kinds:
                continue
            dataset = alert.dataset or ""
            if not any(fnmatch.fnmatchcase(dataset, pattern) for pattern in route.datasets):
                continue
            names += [c for c in route.channels if c not in names]
        return names

    # -- events ------------------------------------------------------------------------------

    def handle(self, event: ConsumedEvent) -> Sequence[OutboxMessage]:
        model = ALERT_EVENT_TYPES[event.type]
        alert = alert_for(event.type, event.parse(model), event.id)
        if alert is None:
            return ()
        self._observe(alert)
        return self._deliver_due()

    def tick(self) -> Sequence[OutboxMessage]:
        with self.state.transaction():
            self._release_windows()
            return self._deliver_due()

    def _observe(self, alert: Alert) -> None:
        now = self.clock()
        rows = self.state.execute(
            "SELECT desired, notified, last_notified, grouped FROM alert_keys WHERE key = ?", (alert.key,)
        )
        _, notified, last_notified, grouped = rows[0] if rows else (None, None, None, 0)
        grouped += 1
        window_open = last_notified is None or now - last_notified >= self.alerts.min_interval_seconds
        send = False
        if alert.action == notified:  # the channels already know this state
            repeat = self.alerts.repeat_interval_seconds
            send = alert.action == "trigger" and repeat > 0 and now - (last_notified or now) >= repeat
        elif alert.action == "resolve" and notified is None:
            grouped = 0  # nothing was ever raised: nothing to clear
        else:
            send = window_open
        self.state.execute(
            "INSERT OR REPLACE INTO alert_keys VALUES (?, ?, ?, ?, ?, ?)",
            (alert.key, alert.action, notified, last_notified, grouped, alert.model_dump_json()),
        )
        if send:
            self._notify(alert.key)
        elif alert.action != notified and notified is not None:
            log.info("alert %s: %s held back until the rate-limit window ends", alert.key, alert.action)

    def _notify(self, key: str) -> None:
        """Queue the key's current state to its channels, with the events grouped since the last."""
        now = self.clock()
        ((desired, grouped, latest),) = self.state.execute(
            "SELECT desired, grouped, latest FROM alert_keys WHERE key = ?", (key,)
        )
        alert = Alert.model_validate_json(latest).model_copy(update={"occurrences": max(1, grouped)})
        channels = self._routes(alert)
        if not channels:
            log.warning("alert %s (%s) matches no route: nothing sent; see [[alerts.routes]]", key, alert.action)
        for channel in channels:
            self.state.execute(
                "INSERT INTO alert_deliveries (channel, alert, created, attempts, next_attempt) VALUES (?, ?, ?, 0, ?)",
                (channel, alert.model_dump_json(), now, now),
            )
        self.state.execute(
            "UPDATE alert_keys SET notified = ?, last_notified = ?, grouped = 0 WHERE key = ?", (desired, now, key)
        )

    def _release_windows(self) -> None:
        """Send the state of keys whose rate-limit window has ended and whose state changed meanwhile."""
        now = self.clock()
        rows = self.state.execute(
            "SELECT key FROM alert_keys WHERE notified IS NOT NULL AND desired != notified AND last_notified <= ?",
            (now - self.alerts.min_interval_seconds,),
        )
        for (key,) in rows:
            self._notify(key)

    # -- deliveries --------------------------------------------------------------------------

    def _deliver_due(self) -> Sequence[OutboxMessage]:
        now = self.clock()
        dead: list[OutboxMessage] = []
        rows = self.state.execute(
            "SELECT id, channel, alert, created, attempts FROM alert_deliveries WHERE next_attempt <= ? ORDER BY id",
            (now,),
        )
        for delivery_id, channel_name, raw, created, attempts in rows:
            alert = Alert.model_validate_json(raw)
            channel = self.channels.get(channel_name)
            try:
                if channel is None:
                    raise DeliveryError(f"channel {channel_name!r} is no longer configured", retriable=False)
                channel.send(alert)
            except DeliveryError as exc:
                attempts += 1
                if not exc.retriable or now - created > _GIVE_UP_SECONDS:
                    log.error(
                        "alert %s to channel %s given up after %d attempt(s): %s",
                        alert.key,
                        channel_name,
                        attempts,
                        exc,
                    )
                    dead.append(self._dead_letter(alert, channel_name, str(exc), attempts))
                    self.state.execute("DELETE FROM alert_deliveries WHERE id = ?", (delivery_id,))
                else:
                    delay = min(_MAX_BACKOFF_SECONDS, self.config.consumers.retry_backoff_seconds * 2 ** (attempts - 1))
                    log.warning(
                        "alert %s to channel %s failed (attempt %d): %s; retrying in %.0f s",
                        alert.key,
                        channel_name,
                        attempts,
                        exc,
                        delay,
                    )
                    self.state.execute(
                        "UPDATE alert_deliveries SET attempts = ?, next_attempt = ?, last_error = ? WHERE id = ?",
                        (attempts, now + delay, str(exc), delivery_id),
                    )
                continue
            log.info(
                "alert %s %s sent to channel %s (%d event(s))", alert.key, alert.action, channel_name, alert.occurrences
            )
            self.state.execute("DELETE FROM alert_deliveries WHERE id = ?", (delivery_id,))
        return dead

    def _dead_letter(self, alert: Alert, channel: str, reason: str, attempts: int) -> OutboxMessage:
        """The alert itself, as the record that could not be delivered to ``channel``."""
        headers = (
            ("ce_type", b"strandline.alert"),
            ("ce_id", alert.event_id.encode()),
            ("content-type", b"application/json"),
        )
        return dead_letter(
            self.config.kafka,
            self.name,
            f"channel {channel}: {reason}",
            key=alert.key.encode(),
            value=alert.model_dump_json().encode(),
            headers=headers,
            attempts=attempts,
        )
