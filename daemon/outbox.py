"""Outbox messages: what the catalog stores in the same transaction as a version, for the publisher."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A Kafka record waiting to be delivered."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """An outbox row not yet acknowledged by the broker."""

    id: int
    message: OutboxMessage
    created_at: float
