"""The configuration contract: one TOML file, overridden by ``STRANDLINE_*`` environment variables.

Nested keys use one underscore after the section: ``STRANDLINE_KAFKA_BOOTSTRAP`` sets
``[kafka] bootstrap``; ``STRANDLINE_SETTLE_SECONDS`` sets ``settle_seconds``.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_bucket_url(root: str) -> bool:
    """True when ``root`` is written as a URL (``scheme://...``) rather than a local path."""
    return _URL_SCHEME.match(root) is not None


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
SnapshotPolicy = Literal["auto", "copy", "reflink", "hardlink", "none"]
TableFormat = Literal["parquet", "csv", "jsonl", "arrow", "orc"]


class KafkaConfig(BaseModel):
    """Where and how events are published."""

    # Validation errors would otherwise quote the input, secrets included.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

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
    # Security (issue 7). Secrets are SecretStr (never shown in logs or errors) or *_file paths read
    # when a connection is made, for systemd credentials and Docker/Kubernetes secrets.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How to talk to the brokers: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (SASL over TLS).",
    )
    ssl_cafile: Path | None = Field(
        None,
        description="PEM file of the CA certificates that signed the brokers' certificates"
        " (default: the system's trust store).",
    )
    ssl_certfile: Path | None = Field(
        None, description="Client certificate (PEM, with its chain) for brokers that require mutual TLS."
    )
    ssl_keyfile: Path | None = Field(
        None, description="Private key (PEM) of ssl_certfile, when it is not inside ssl_certfile."
    )
    ssl_password: SecretStr | None = Field(None, description="Password of an encrypted private key (a secret).")
    ssl_check_hostname: bool = Field(
        True, description="Check that a broker's certificate names the host connected to (turn off only for tests)."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = Field(
        None, description="SASL mechanism, required with SASL_PLAINTEXT and SASL_SSL."
    )
    sasl_username: str | None = Field(None, description="User for PLAIN and SCRAM-SHA-256/512.")
    sasl_password: SecretStr | None = Field(
        None, description="Password for PLAIN and SCRAM (a secret: prefer STRANDLINE_KAFKA_SASL_PASSWORD or a file)."
    )
    sasl_password_file: Path | None = Field(
        None,
        description="File holding the password instead (read at each connection; one trailing newline is ignored),"
        " e.g. /run/credentials/strandline.service/kafka-password or /run/secrets/kafka-password.",
    )
    sasl_oauth_token: SecretStr | None = Field(
        None, description="OAUTHBEARER: a fixed bearer token (a secret), when no token endpoint is used."
    )
    sasl_oauth_token_file: Path | None = Field(
        None, description="OAUTHBEARER: a file holding the token, re-read at each connection (for rotating agents)."
    )
    oauth_token_url: str | None = Field(
        None,
        description="OAUTHBEARER: OAuth 2 token endpoint for the client-credentials grant; tokens are cached and"
        " refreshed after 80% of their lifetime. https:// (http:// only on loopback).",
    )
    oauth_client_id: str | None = Field(None, description="OAUTHBEARER: client id at oauth_token_url.")
    oauth_client_secret: SecretStr | None = Field(None, description="OAUTHBEARER: client secret (a secret).")
    oauth_client_secret_file: Path | None = Field(
        None, description="OAUTHBEARER: a file holding the client secret instead (read at each token request)."
    )
    oauth_scope: str | None = Field(None, description="OAUTHBEARER: scope to request, space-separated.")

    @model_validator(mode="after")
    def _security_is_consistent(self) -> KafkaConfig:
        problems = self._security_problems()
        if problems:
            raise ValueError("[kafka] security settings: " + "; ".join(problems))
        return self

    def _security_problems(self) -> list[str]:
        """What is inconsistent in the security settings, each with what to set instead."""
        problems: list[str] = []
        sasl = self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        mechanism = self.sasl_mechanism
        if sasl and mechanism is None:
            problems.append(
                f"security_protocol = {self.security_protocol!r} needs sasl_mechanism"
                " (one of 'PLAIN', 'SCRAM-SHA-256', 'SCRAM-SHA-512', 'OAUTHBEARER')"
            )
        if not sasl and mechanism is not None:
            problems.append(
                f"sasl_mechanism is set but security_protocol = {self.security_protocol!r} does not use SASL:"
                " set security_protocol = 'SASL_SSL' (or 'SASL_PLAINTEXT')"
            )
        tls_set = [
            name for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password") if getattr(self, name)
        ]
        if not self.ssl_check_hostname:
            tls_set.append("ssl_check_hostname")
        if tls_set and not tls:
            problems.append(
                f"{', '.join(tls_set)} set but security_protocol = {self.security_protocol!r} does not use TLS:"
                " set security_protocol = 'SSL' or 'SASL_SSL'"
            )
        if (self.ssl_keyfile or self.ssl_password) and not self.ssl_certfile:
            problems.append("ssl_keyfile and ssl_password belong to a client certificate: set ssl_certfile too")
        password_set = [n for n in ("sasl_password", "sasl_password_file") if getattr(self, n) is not None]
        oauth_set = [
            name
            for name in (
                "sasl_oauth_token",
                "sasl_oauth_token_file",
                "oauth_token_url",
                "oauth_client_id",
                "oauth_client_secret",
                "oauth_client_secret_file",
                "oauth_scope",
            )
            if getattr(self, name) is not None
        ]
        if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            if not self.sasl_username:
                problems.append(f"sasl_mechanism = {mechanism!r} needs sasl_username")
            if not password_set:
                problems.append(
                    f"sasl_mechanism = {mechanism!r} needs sasl_password (or STRANDLINE_KAFKA_SASL_PASSWORD)"
                    " or sasl_password_file"
                )
            if oauth_set:
                problems.append(f"{', '.join(oauth_set)} apply to sasl_mechanism = 'OAUTHBEARER' only: remove them")
        elif mechanism == "OAUTHBEARER":
            if self.sasl_username is not None or password_set:
                problems.append(
                    "sasl_username / sasl_password / sasl_password_file do not apply to OAUTHBEARER: remove them"
                )
            sources = [n for n in ("sasl_oauth_token", "sasl_oauth_token_file", "oauth_token_url") if n in oauth_set]
            if len(sources) != 1:
                problems.append(
                    "sasl_mechanism = 'OAUTHBEARER' needs exactly one of sasl_oauth_token, sasl_oauth_token_file"
                    f" or oauth_token_url (set: {', '.join(sources) or 'none'})"
                )
            client = [n for n in oauth_set if n.startswith("oauth_") and n != "oauth_token_url"]
            if self.oauth_token_url is None and client:
                problems.append(f"{', '.join(client)} need oauth_token_url: set it, or remove them")
            if self.oauth_token_url is not None:
                url = self.oauth_token_url
                loopback = ("http://127.0.0.1", "http://localhost", "http://[::1]")
                if not (url.startswith("https://") or any(url.startswith((f"{h}:", f"{h}/")) for h in loopback)):
                    problems.append("oauth_token_url must be https:// (plain http:// only to a loopback address)")
                if not self.oauth_client_id:
                    problems.append("oauth_token_url needs oauth_client_id")
                if (self.oauth_client_secret is None) == (self.oauth_client_secret_file is None):
                    problems.append("oauth_token_url needs one of oauth_client_secret or oauth_client_secret_file")
        elif password_set or self.sasl_username is not None or oauth_set:
            problems.append("SASL credentials are set but sasl_mechanism is not: set sasl_mechanism")
        if len(password_set) == 2:
            problems.append("set sasl_password or sasl_password_file, not both")
        return problems

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
    root: str = Field(
        description="Folder holding the dataset's files, or a bucket prefix such as s3://bucket/prefix/,"
        " gs://bucket/prefix/ or az://container/prefix/ (see [s3], [gcs], [azure] for endpoints and credentials)."
    )
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
    detect: Literal["poll", "notifications"] = Field(
        "poll",
        description="Bucket roots only: list the prefix every poll_interval_seconds, or follow the S3 event"
        " notifications of [s3.notifications] (with a slow safety re-list).",
    )
    poll_interval_seconds: Annotated[float, Field(ge=0.1, le=86400.0)] | None = Field(
        None,
        description="Bucket roots only: seconds between listings (default: poll_interval_seconds of [s3], [gcs]"
        " or [azure]).",
    )
    snapshot: SnapshotPolicy = Field(
        "auto",
        description="How versions keep their bytes in the content store ([store] path), so they can be restored:"
        " copy, reflink (copy-on-write clone), hardlink (links the file and makes it read-only, as DVC does),"
        " none (metadata only: such versions cannot be restored), or auto: reflink where the filesystem can,"
        " else copy. Bucket roots always copy.",
    )
    keep_last: int | None = Field(
        None, ge=1, description="Retention for `strandline gc`: keep the bytes of the newest N versions."
    )
    keep_days: Annotated[float, Field(gt=0.0)] | None = Field(
        None, description="Retention for `strandline gc`: keep the bytes of versions younger than this many days."
    )

    @field_validator("root", mode="before")
    @classmethod
    def _root_text(cls, root: object) -> object:
        return os.fspath(root) if isinstance(root, os.PathLike) else root

    @property
    def is_bucket(self) -> bool:
        """True when root is a URL (s3://, gs://, az://) rather than a local folder."""
        return is_bucket_url(self.root)

    @model_validator(mode="after")
    def _bucket_settings_need_a_bucket(self) -> DatasetConfig:
        if not self.is_bucket and (self.detect != "poll" or self.poll_interval_seconds is not None):
            raise ValueError("detect and poll_interval_seconds apply to bucket roots (s3://, gs://, az://) only")
        return self

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


class S3NotificationsConfig(_Section):
    """Where S3 event notifications (the AWS JSON format MinIO and others send) arrive."""

    topic: str | None = Field(
        None,
        min_length=1,
        description="Kafka topic holding the notification messages (MinIO's Kafka target writes them there).",
    )
    bootstrap: str | None = Field(None, description="Brokers of that topic (default: [kafka] bootstrap).")
    group_id: str | None = Field(
        None, description="Consumer group of the daemon on that topic (default: strandline-notifications-HOST)."
    )
    relist_interval_seconds: Annotated[float, Field(ge=1.0, le=86400.0)] = Field(
        3600.0, description="Safety re-list of every notified prefix, so a lost notification is caught."
    )


class S3Config(_Section):
    """How bucket roots (s3://bucket/prefix/) are reached. Credentials come from the usual chain
    (AWS_* variables, shared credentials file and profile, instance or container role) unless given."""

    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, Ceph, R2...), e.g. http://127.0.0.1:9000; default AWS."
    )
    region: str | None = Field(None, description="Region of the buckets (default: from the AWS config).")
    profile: str | None = Field(None, description="Profile of the shared credentials file.")
    access_key_id: str | None = Field(None, description="Access key id; prefer the environment or a profile.")
    secret_access_key: SecretStr | None = Field(
        None, description="Secret access key (never logged); prefer STRANDLINE_S3_SECRET_ACCESS_KEY or a profile."
    )
    session_token: SecretStr | None = Field(None, description="Session token of temporary credentials.")
    anonymous: bool = Field(False, description="Read public buckets without credentials.")
    poll_interval_seconds: Annotated[float, Field(ge=0.1, le=86400.0)] = Field(
        10.0,
        description="Seconds between listings of a polled prefix. Each poll costs one LIST request per"
        " 1,000 objects, so raise it for big prefixes or use notifications.",
    )
    page_size: int = Field(1000, ge=1, le=1000, description="Keys per LIST request (1000 is the most S3 returns).")
    max_attempts: int = Field(3, ge=1, le=20, description="Tries per request (botocore's standard retry mode).")
    notifications: S3NotificationsConfig = Field(default_factory=S3NotificationsConfig)


class StoreConfig(_Section):
    """The content store: the bytes of every version, kept once by hash (see `strandline restore` and `gc`)."""

    path: str | None = Field(
        None,
        description="Folder of the content store (default: store/ in state_dir), or a bucket prefix such as"
        " s3://bucket/prefix, gs://bucket/prefix or az://container/prefix (reached with the [s3], [gcs] or"
        " [azure] settings). Same filesystem as the data for reflink and hardlink snapshots; a bucket store"
        " always copies.",
    )
    keep_last: int | None = Field(
        None,
        ge=1,
        description="Default retention for `strandline gc`: keep the bytes of each dataset's newest N versions."
        " With neither keep_last nor keep_days (here or on the dataset), gc keeps every version.",
    )
    keep_days: Annotated[float, Field(gt=0.0)] | None = Field(
        None, description="Default retention for `strandline gc`: keep the bytes of versions younger than this."
    )

    @field_validator("path", mode="before")
    @classmethod
    def _path_text(cls, path: object) -> object:
        return os.fspath(path) if isinstance(path, os.PathLike) else path


class _HttpStoreSettings(_Section):
    """What [gcs] and [azure] share: our own retries and timeouts (their SDKs' defaults wait far longer)."""

    max_attempts: int = Field(
        3, ge=1, le=20, description="Tries per request on throttling, 5xx answers and dropped connections."
    )
    connect_timeout_seconds: Annotated[float, Field(gt=0.0, le=300.0)] = Field(
        5.0, description="Longest wait for a connection to the endpoint."
    )
    read_timeout_seconds: Annotated[float, Field(gt=0.0, le=3600.0)] = Field(
        30.0, description="Longest wait for the next bytes of an answer."
    )


class GcsConfig(_HttpStoreSettings):
    """How gs://bucket/prefix/ roots are reached. Credentials come from Google's usual chain
    (GOOGLE_APPLICATION_CREDENTIALS, gcloud's application-default login, the metadata server of a
    Google Cloud VM) unless a credentials file is given or access is anonymous."""

    endpoint_url: str | None = Field(
        None,
        description="Another GCS JSON API endpoint, e.g. an emulator at http://127.0.0.1:4443;"
        " default https://storage.googleapis.com.",
    )
    credentials_file: Path | None = Field(
        None,
        description="Service account key file (JSON); default: Google's application-default credentials chain.",
    )
    anonymous: bool = Field(False, description="Read public buckets (or an emulator) without credentials.")
    poll_interval_seconds: Annotated[float, Field(ge=0.1, le=86400.0)] = Field(
        10.0, description="Seconds between listings of a polled prefix (one list request per page_size objects)."
    )
    page_size: int = Field(1000, ge=1, le=1000, description="Objects per list request (1000 is the most GCS returns).")


class AzureConfig(_HttpStoreSettings):
    """How az://container/prefix/ roots are reached (Azure Blob Storage). Give a connection string,
    or an account name with a key, a SAS token or nothing (then DefaultAzureCredential: environment,
    workload or managed identity, Azure CLI login); adlfs also reads AZURE_STORAGE_CONNECTION_STRING,
    AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    account_name: str | None = Field(
        None, pattern=r"^[a-z0-9]{3,24}$", description="Storage account name (3-24 lowercase letters and digits)."
    )
    endpoint_url: str | None = Field(
        None,
        description="Blob service URL when it is not https://ACCOUNT.blob.core.windows.net, e.g. Azurite's"
        " http://127.0.0.1:10000/devstoreaccount1 (used with account_name and account_key or sas_token).",
    )
    connection_string: SecretStr | None = Field(
        None,
        description="Connection string (a secret: prefer STRANDLINE_AZURE_CONNECTION_STRING); wins over the rest.",
    )
    account_key: SecretStr | None = Field(
        None, description="Account key (a secret: prefer STRANDLINE_AZURE_ACCOUNT_KEY), with account_name."
    )
    sas_token: SecretStr | None = Field(None, description="Shared access signature (a secret), with account_name.")
    anonymous: bool = Field(False, description="Read public containers without credentials.")
    poll_interval_seconds: Annotated[float, Field(ge=0.1, le=86400.0)] = Field(
        10.0, description="Seconds between listings of a polled prefix (one list request per page_size blobs)."
    )
    page_size: int = Field(1000, ge=1, le=5000, description="Blobs per list request (5000 is the most Azure returns).")

    @model_validator(mode="after")
    def _credentials_are_consistent(self) -> AzureConfig:
        keyed = [n for n in ("account_key", "sas_token") if getattr(self, n) is not None]
        if len(keyed) > 1:
            raise ValueError("[azure] set account_key or sas_token, not both")
        if keyed and self.account_name is None and self.connection_string is None:
            raise ValueError(f"[azure] {keyed[0]} needs account_name")
        if self.anonymous and (keyed or self.connection_string is not None):
            raise ValueError("[azure] anonymous = true reads without credentials: remove the key, token or string")
        return self


StoreSettings = S3Config | GcsConfig | AzureConfig


def bucket_scheme(root: str) -> str:
    """The lower-case scheme of a bucket URL (``s3``, ``gs``, ``az``), "" for a local path."""
    match = _URL_SCHEME.match(root)
    return root[: match.end() - 3].lower() if match else ""


class StrandlineConfig(BaseSettings):
    """The whole configuration of a Strandline host."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="STRANDLINE_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        # A validation error must not quote the input: it may hold passwords and webhook URLs.
        hide_input_in_errors=True,
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
    s3: S3Config = Field(default_factory=S3Config)
    store: StoreConfig = Field(default_factory=StoreConfig)
    gcs: GcsConfig = Field(default_factory=GcsConfig)
    azure: AzureConfig = Field(default_factory=AzureConfig)
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
            if ds.detect == "notifications" and bucket_scheme(ds.root) != "s3":
                raise ValueError(
                    f"dataset {ds.name!r} has detect = 'notifications', which reads S3 event notifications:"
                    " only s3:// roots take it; gs:// and az:// roots are polled (detect = 'poll')"
                )
            if ds.detect == "notifications" and self.s3.notifications.topic is None:
                raise ValueError(
                    f"dataset {ds.name!r} has detect = 'notifications' but [s3.notifications] topic is not set"
                )
        return self

    def store_settings(self, root: str) -> StoreSettings:
        """The section that says how to reach a bucket root: [gcs] for gs://, [azure] for az://, else [s3]."""
        scheme = bucket_scheme(root)
        if scheme == "gs":
            return self.gcs
        if scheme == "az":
            return self.azure
        return self.s3

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
