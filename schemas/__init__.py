"""Strandline's public contracts: pydantic models of the config and of every event.

These models are the single source; ``python -m schemas.generate`` writes the JSON Schema
files in ``schemas/json/`` and a test fails when those files are stale.
"""

from schemas.config import DatasetConfig, KafkaConfig, StrandlineConfig
from schemas.events import (
    EVENT_TYPES,
    FileChange,
    InputRejected,
    VersionChanges,
    VersionCreated,
    VersionTotals,
)

__all__ = [
    "EVENT_TYPES",
    "DatasetConfig",
    "FileChange",
    "InputRejected",
    "KafkaConfig",
    "StrandlineConfig",
    "VersionChanges",
    "VersionCreated",
    "VersionTotals",
]
