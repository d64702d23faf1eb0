"""The configuration contract: one TOML file, overridden by ``STRANDLINE_*`` environment variables.

Nested keys use one underscore after the section: ``STRANDLINE_KAFKA_BOOTSTRAP`` sets
``[kafka] bootstrap``; ``STRANDLINE_SETTLE_SECONDS`` sets ``settle_seconds``.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
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

    @property
    def drift_topic(self) -> str:
        """dataset.drift.detected / dataset.drift.cleared, keyed by dataset."""
        return f"{self.topic_prefix}.drift"

    @property
    def models_topic(self) -> str:
        """model.retrain.started / model.retrain.finished, keyed by dataset."""
        return f"{self.topic_prefix}.models"

    @property
    def dead_letter_topic(self) -> str:
        """Messages a consumer could not parse or process after its retries, with the reason in headers."""
        return f"{self.topic_prefix}.dead-letter"


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


# -- consumers ---------------------------------------------------------------------------------

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
DriftTestName = Literal["ks", "chisquare", "z", "wasserstein", "jensenshannon"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ColumnDriftSettings(_Section):
    """Per-column overrides (``[drift.columns.NAME]`` or ``[drift.datasets.DS.columns.NAME]``)."""

    test: DriftTestName | None = Field(None, description="Force this test instead of Evidently's default choice.")
    p_value: Fraction | None = None
    distance: Annotated[float, Field(gt=0.0)] | None = None
    null_rate: Fraction | None = None
    ignore: bool = Field(False, description="Leave the column out of the verdict.")


class DriftSettings(_Section):
    """Thresholds of the drift verdict (defaults follow Evidently's)."""

    p_value: Fraction = Field(0.05, description="ks / chisquare / z: drifted when the p-value is below this.")
    distance: Annotated[float, Field(gt=0.0)] = Field(
        0.1, description="wasserstein (normed) / jensenshannon: drifted when the distance reaches this."
    )
    small_sample_rows: int = Field(
        1000,
        ge=1,
        le=1000,
        description="References with at most this many values get the p-value tests (ks, chisquare);"
        " profiles keep exact values up to 1,000.",
    )
    categorical_max_distinct: int = Field(
        5,
        ge=0,
        le=20,
        description="Numeric columns with at most this many distinct values are tested as categories"
        " (profiles count distinct numbers exactly up to 20).",
    )
    null_rate: Fraction = Field(0.1, description="A column drifted when its null rate moved by at least this much.")
    row_count: Annotated[float, Field(gt=0.0)] = Field(
        0.5, description="The dataset drifted when its row count changed by at least this fraction."
    )
    share: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.5, description="The dataset drifted when this share of its tested columns drifted."
    )
    columns: dict[str, ColumnDriftSettings] = Field(default_factory=dict)


class DatasetDriftSettings(_Section):
    """``[drift.datasets.NAME]``: any DriftSettings key, overriding the defaults for one dataset."""

    p_value: Fraction | None = None
    distance: Annotated[float, Field(gt=0.0)] | None = None
    small_sample_rows: int | None = Field(None, ge=1, le=1000)
    categorical_max_distinct: int | None = Field(None, ge=0, le=20)
    null_rate: Fraction | None = None
    row_count: Annotated[float, Field(gt=0.0)] | None = None
    share: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    columns: dict[str, ColumnDriftSettings] = Field(default_factory=dict)


class DriftConfig(DriftSettings):
    """``[drift]``: the drift consumer's defaults, with per-dataset and per-column overrides."""

    datasets: dict[str, DatasetDriftSettings] = Field(default_factory=dict)

    def for_dataset(self, name: str) -> DriftSettings:
        """The settings that apply to dataset ``name``: its overrides on top of the defaults."""
        base = self.model_dump(exclude={"datasets", "columns"})
        override = self.datasets.get(name)
        columns = dict(self.columns)
        if override is not None:
            base.update(override.model_dump(exclude_none=True, exclude={"columns"}))
            columns.update(override.columns)
        return DriftSettings(**base, columns=columns)


class ConsumersConfig(_Section):
    """``[consumers]``: what every `strandline consume` process shares."""

    group_prefix: str = Field(
        "strandline",
        pattern=r"^[A-Za-z0-9._-]{1,200}$",
        description="Consumer groups are <prefix>-drift, -retrain, -alerts.",
    )
    state_dir: Path | None = Field(
        None,
        description="Where consumers keep processed event ids, runs and alert state (default: <state_dir>/consumers).",
    )
    retries: int = Field(
        3, ge=0, le=100, description="Attempts after the first before a message goes to the dead-letter topic."
    )
    retry_backoff_seconds: Seconds = Field(1.0, description="First wait between attempts; doubles each time.")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve /metrics (lag, processed, dead-lettered) and /healthz on this port."
    )


class SlackChannel(_Section):
    """A Slack incoming webhook; messages are Block Kit."""

    type: Literal["slack"]
    webhook_url: SecretStr = Field(description="https://hooks.slack.com/services/... (a secret: never logged).")


class PagerDutyChannel(_Section):
    """PagerDuty Events API v2: trigger with a stable dedup_key per dataset and problem, resolve when it clears."""

    type: Literal["pagerduty"]
    routing_key: SecretStr = Field(description="The integration's routing key (a secret: never logged).")
    events_url: SecretStr = Field(
        SecretStr("https://events.pagerduty.com/v2/enqueue"), description="Events API v2 endpoint."
    )


class WebhookChannel(_Section):
    """Any HTTP endpoint: the alert as JSON, signed with HMAC-SHA256 (header X-Strandline-Signature)."""

    type: Literal["webhook"]
    url: SecretStr = Field(description="Where to POST (a secret: may embed a token).")
    secret: SecretStr = Field(description="HMAC-SHA256 key the receiver verifies the signature with.")


AlertChannel = Annotated[SlackChannel | PagerDutyChannel | WebhookChannel, Field(discriminator="type")]
AlertKind = Literal["validation", "drift", "retrain", "daemon"]


class AlertRoute(_Section):
    """Which alerts go to which channels (``[[alerts.routes]]``)."""

    kinds: tuple[AlertKind, ...] = Field(
        ("validation", "drift", "retrain", "daemon"), description="validation / drift / retrain / daemon."
    )
    datasets: tuple[str, ...] = Field(("*",), description="Dataset names or globs ('*': all).")
    channels: tuple[str, ...] = Field(min_length=1, description="Names of [alerts.channels.NAME] entries.")


class AlertsConfig(_Section):
    """``[alerts]``: channels, routes, and how repeats are grouped."""

    channels: dict[str, AlertChannel] = Field(default_factory=dict)
    routes: tuple[AlertRoute, ...] = ()
    min_interval_seconds: Seconds = Field(
        300.0, description="At most one notification per dataset and problem in this window; repeats are grouped."
    )
    repeat_interval_seconds: Seconds = Field(
        14400.0, description="Remind about a problem still open after this long (0: never)."
    )
    timeout_seconds: Annotated[float, Field(gt=0.0, le=300.0)] = Field(10.0, description="HTTP timeout per send.")

    @model_validator(mode="after")
    def _routes_name_channels(self) -> AlertsConfig:
        for route in self.routes:
            for name in route.channels:
                if name not in self.channels:
                    raise ValueError(f"route names channel {name!r}, which is not in [alerts.channels]")
        return self


class CommandAction(_Section):
    """Run a program with an argument list, never through a shell.

    The event reaches it only through environment variables (STRANDLINE_RUN_ID, STRANDLINE_DATASET,
    STRANDLINE_VERSION, STRANDLINE_VERSION_ID, STRANDLINE_TRIGGER) and the JSON file named by
    STRANDLINE_EVENT_FILE; it may write {"model_path": ...} to STRANDLINE_RESULT_FILE.
    """

    type: Literal["command"]
    argv: tuple[str, ...] = Field(min_length=1, description="Program and arguments, e.g. ['python', 'train.py'].")
    cwd: Path | None = Field(None, description="Working folder (default: the consumer's).")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    timeout_seconds: Annotated[float, Field(gt=0.0)] = Field(86400.0, description="Kill the run after this long.")


class AirflowAction(_Section):
    """Trigger an Airflow DAG run through its stable REST API (POST /api/v1/dags/{dag_id}/dagRuns)."""

    type: Literal["airflow"]
    url: SecretStr = Field(
        description="Airflow's base URL, e.g. http://airflow:8080 (a secret: may embed credentials)."
    )
    dag_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,250}$")
    username: str | None = Field(None, description="Basic auth user (with password).")
    password: SecretStr | None = None
    token: SecretStr | None = Field(None, description="Bearer token, instead of basic auth.")
    timeout_seconds: Annotated[float, Field(gt=0.0, le=300.0)] = 30.0


class RetrainWebhookAction(_Section):
    """POST the run's context as JSON; signed with HMAC-SHA256 like alert webhooks when ``secret`` is set."""

    type: Literal["webhook"]
    url: SecretStr
    secret: SecretStr | None = None
    timeout_seconds: Annotated[float, Field(gt=0.0, le=300.0)] = 30.0


RetrainAction = Annotated[CommandAction | AirflowAction | RetrainWebhookAction, Field(discriminator="type")]


class RetrainPolicy(_Section):
    """``[[retrain.policies]]``: when to retrain on which datasets, and how."""

    datasets: tuple[str, ...] = Field(("*",), description="Dataset names or globs.")
    on: Literal["version", "drift", "rows"] = Field(
        "version", description="Every valid version; only versions that drifted; or rows changed by min_row_change."
    )
    min_row_change: Annotated[float, Field(gt=0.0)] = Field(
        0.1, description="For on = 'rows': the relative change of rows since the last run's version."
    )
    cooldown_seconds: Seconds = Field(0.0, description="Least time between two runs' starts for one dataset.")
    action: RetrainAction


class RetrainConfig(_Section):
    """``[retrain]``: policies, and where run logs go."""

    policies: tuple[RetrainPolicy, ...] = ()
    stop_grace_seconds: Seconds = Field(
        10.0, description="On shutdown, how long a running command gets after SIGTERM before it is killed."
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="When set and mlflow is installed, each run's dataset version is logged as an MLflow input."
    )


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
    degraded_event_seconds: Seconds = Field(
        60.0, description="Publish daemon.degraded once Kafka has been unreachable this long (daemon.recovered after)."
    )
    http: str | None = Field(
        None,
        pattern=r"^[^\s]*:[0-9]{1,5}$",
        description="Serve /healthz, /readyz and /metrics on HOST:PORT (e.g. 127.0.0.1:9464); off when unset.",
    )
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    datasets: tuple[DatasetConfig, ...] = Field((), description="Watched datasets ([[datasets]] tables).")
    consumers: ConsumersConfig = Field(default_factory=ConsumersConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)

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
