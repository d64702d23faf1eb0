"""Kafka connections: producer, consumer and admin settings in one place.

kafka-python 3.x: idempotence and ``acks=all`` are on by default, but we set them
explicitly; the outbox, not the producer, is what makes delivery survive a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from daemon.errors import PublishError
from schemas.config import KafkaConfig

log = logging.getLogger(__name__)


def _unreachable(cfg: KafkaConfig, exc: Exception) -> PublishError:
    from kafka.errors import KafkaConfigurationError

    if isinstance(exc, KafkaConfigurationError):
        return PublishError(f"Kafka client settings rejected: {exc}; check the [kafka] section")
    return PublishError(f"no Kafka broker answers at {cfg.bootstrap}: {exc}")


def _common(cfg: KafkaConfig) -> dict[str, Any]:
    return {
        "bootstrap_servers": [s.strip() for s in cfg.bootstrap.split(",") if s.strip()],
        "client_id": cfg.client_id,
        "reconnect_backoff_max_ms": 5000,
        "bootstrap_timeout_ms": 5000,
    }


def make_producer(cfg: KafkaConfig) -> Any:
    """An idempotent producer with acks=all; raises PublishError when no broker answers."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        return KafkaProducer(
            **_common(cfg),
            acks="all",
            enable_idempotence=True,
            max_in_flight_requests_per_connection=5,
            linger_ms=2,
            delivery_timeout_ms=int(cfg.delivery_timeout_seconds * 1000),
            # kafka-python requires delivery_timeout > linger + request_timeout.
            request_timeout_ms=min(30000, int(cfg.delivery_timeout_seconds * 500)),
            max_block_ms=5000,
            compression_type=None,
        )
    except KafkaError as exc:
        raise _unreachable(cfg, exc) from exc


def make_consumer(cfg: KafkaConfig, *topics: str, group_id: str | None, **overrides: Any) -> Any:
    """A consumer with auto-commit off: callers commit after they acted."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    settings: dict[str, Any] = {
        **_common(cfg),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
    }
    settings.update(overrides)
    try:
        return KafkaConsumer(*topics, **settings)
    except KafkaError as exc:
        raise _unreachable(cfg, exc) from exc


def ensure_topics(cfg: KafkaConfig, topics: Sequence[str] | None = None) -> None:
    """Create ``topics`` (default: the daemon's three) if they are missing."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(**_common(cfg))
    except KafkaError as exc:
        raise _unreachable(cfg, exc) from exc
    try:
        existing = set(admin.list_topics())
        # Profiles are looked up by version id, the newest record per key is all that matters:
        # compaction keeps every version's profile without keeping every retry of it.
        configs = {cfg.profiles_topic: {"cleanup.policy": "compact"}}
        wanted = [
            NewTopic(
                name,
                num_partitions=cfg.partitions,
                replication_factor=cfg.replication_factor,
                topic_configs=configs.get(name, {}),
            )
            for name in topics or (cfg.versions_topic, cfg.manifests_topic, cfg.profiles_topic)
            if name not in existing
        ]
        if wanted:
            try:
                admin.create_topics(wanted)
                log.info("created Kafka topics %s", ", ".join(t.name for t in wanted))
            except TopicAlreadyExistsError:
                pass
    except KafkaError as exc:
        raise PublishError(f"cannot create topics on {cfg.bootstrap}: {exc}") from exc
    finally:
        admin.close()
