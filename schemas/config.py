"""The configuration contract: one TOML file, overridden by ``STRANDLINE_*`` environment variables.

Nested keys use one underscore after the section: ``STRANDLINE_KAFKA_BOOTSTRAP`` sets
``[kafka] bootstrap``; ``STRANDLINE_SETTLE_SECONDS`` sets ``settle_seconds``.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DATASET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

# Files that tools write while they work, never the data itself: editors' swap files, partial
# downloads, Spark/Hadoop staging folders, rsync's and many tools' hidden temp names.
DEFAULT_IGNORES: tuple[str, ...] = (
    "**/.*",
    "**/.*/**",
    "**/*.tmp",
    "**/*.temp",
    "**/*.part",
    "**/*.partial",
    "**/*.crdownload",
    "**/*.swp",
    "**/*.swx",
    "**/*~",
    "**/*._COPYING_",
    "**/_temporary/**",
    "**/_temporary",
    "**/__pycache__/**",
    "**/__pycache__",
)

Seconds = Annotated[float, Field(ge=0.0, le=86400.0)]
TableFormat = Literal["parquet", "csv", "jsonl", "arrow", "orc"]


class KafkaConfig(BaseModel):
    """Where and how events are published."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap: str = Field(
        "127.0.0.1:9092",
        description="Comma-separated host:port list of Kafka brokers.",
        min_length=3,
    )
    topic_prefix: str = Field(
        "strandline",
        description="Topics are <prefix>.versions (events), <prefix>.manifests (complete change lists) and"
        " <prefix>.profiles (compacted: schema and column profiles of each version).",
        pattern=r"^[A-Za-z0-9._-]{1,200}$",
    )
    client_id: str = Field("strandline", description="Kafka client id, visible in broker logs.")
    partitions: int = Field(3, ge=1, le=1000, description="Partitions of topics the daemon creates.")
    replication_factor: int = Field(1, ge=1, le=10, description="Replication of topics the daemon creates.")
    delivery_timeout_seconds: Seconds = Field(
        120.0, description="How long one send may wait for the broker before it is retried from the outbox."
    )

    @property
    def versions_topic(self) -> str:
        return f"{self.topic_prefix}.versions"

    @property
    def manifests_topic(self) -> str:
        return f"{self.topic_prefix}.manifests"

    @property
    def profiles_topic(self) -> str:
        return f"{self.topic_prefix}.profiles"


class DatasetConfig(BaseModel):
    """One watched dataset: a root folder and the rules for what in it belongs to the data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=DATASET_NAME_PATTERN, description="Unique dataset name, used as the Kafka key.")
    root: Path = Field(description="Folder holding the dataset's files.")
    include: tuple[str, ...] = Field(
        ("**",), description="Globs (relative to root, ** crosses folders) of files that belong to the dataset."
    )
    exclude: tuple[str, ...] = Field((), description="Globs of files to leave out, on top of the defaults.")
    ignore_defaults: bool = Field(
        True, description="Leave out hidden files, *.tmp, *.part, *.swp, _temporary/ and similar."
    )
    recursive: bool = Field(True, description="Include files in subfolders of root.")
    settle_seconds: Seconds | None = Field(
        None, description="Quiet time before a change-set becomes a version (default: the global one)."
    )
    commit_marker: str | None = Field(
        None,
        description="File name (e.g. _SUCCESS) whose appearance, and only that, cuts a version.",
        pattern=r"^[^/\x00]{1,255}$",
    )
    format: TableFormat | None = Field(
        None,
        description="Read every file of the dataset as this table format (default: from each file's extension;"
        " files of other extensions are versioned by bytes only).",
    )
    suite: Path | None = Field(
        None, description="Great Expectations 1.x suite (JSON) every new version is validated against."
    )
    validate_scope: Literal["changed", "version"] = Field(
        "version",
        description="Validate the whole version (all its tables, concatenated) or only the files the version changed.",
    )

    @field_validator("include", "exclude")
    @classmethod
    def _globs_are_relative(cls, globs: tuple[str, ...]) -> tuple[str, ...]:
        for glob in globs:
            if glob.startswith("/") or "\x00" in glob:
                raise ValueError(f"glob {glob!r} must be relative to the dataset root")
        return globs


class StrandlineConfig(BaseSettings):
    """The whole configuration of a Strandline host."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="STRANDLINE_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
    )

    state_dir: Path | None = Field(
        None, description="Catalog and outbox folder (default: .strandline beside the config file)."
    )
    host: str = Field(default_factory=socket.gethostname, description="Host name put in events.")
    settle_seconds: Seconds = Field(1.0, description="Default quiet time before a change-set is versioned.")
    max_open_seconds: Seconds = Field(
        300.0, description="Longest a file still open for writing may hold its dataset's version back."
    )
    reconcile_interval_seconds: Seconds = Field(
        300.0, description="How often every root is re-listed to catch changes the watcher missed (0: never)."
    )
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    datasets: tuple[DatasetConfig, ...] = Field((), description="Watched datasets ([[datasets]] tables).")

    @model_validator(mode="after")
    def _names_are_unique(self) -> StrandlineConfig:
        seen: set[str] = set()
        for ds in self.datasets:
            if ds.name in seen:
                raise ValueError(f"dataset name {ds.name!r} is used twice")
            seen.add(ds.name)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment must win over it.
        return env_settings, init_settings
