"""Health checks for `strandline doctor`: each says what is wrong and what to do next."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from daemon.catalog import Catalog
from daemon.config import catalog_path
from daemon.errors import PublishError, StrandlineError
from schemas.config import DatasetConfig, KafkaConfig, StrandlineConfig


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def count_dirs(root: Path, limit: int = 2_000_000) -> int:
    count = 0
    stack = [str(root)]
    while stack and count < limit:
        current = stack.pop()
        count += 1
        try:
            with os.scandir(current) as it:
                stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
    return count


def _login(kafka: KafkaConfig) -> str:
    """How the daemon logs in, for people: ``as 'alice' (SCRAM-SHA-256 over SASL_SSL)``."""
    if kafka.sasl_mechanism == "OAUTHBEARER":
        return f"with an OAUTHBEARER token over {kafka.security_protocol}"
    if kafka.sasl_mechanism is not None:
        return f"as {kafka.sasl_username!r} ({kafka.sasl_mechanism} over {kafka.security_protocol})"
    return f"over {kafka.security_protocol}"


def check_kafka(config: StrandlineConfig, timeout: float = 3.0) -> Check:
    """Does a broker answer, and does it let the daemon in with its security settings?

    First a plain TCP connection to each bootstrap server (fast, and names a wrong host or port),
    then a real client login and a metadata request, as the daemon's clients make them: with TLS
    or SASL a reachable port says nothing about the CA, the mechanism or the credentials.
    """
    from daemon.kafka_client import check_connection

    kafka = config.kafka
    listening, errors = [], []
    for server in kafka.bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host or "localhost", int(port)), timeout=timeout):
                listening.append(server.strip())
        except (OSError, ValueError) as exc:
            errors.append(f"{server.strip()}: {exc}")
    if not listening:
        return Check(
            "kafka",
            False,
            "no broker answers (" + "; ".join(errors) + ")",
            "start Kafka (`make kafka` starts a local one) or set [kafka] bootstrap / STRANDLINE_KAFKA_BOOTSTRAP",
        )
    try:
        cluster = check_connection(kafka)
    except PublishError as exc:
        fix = exc.fix or (
            f"something listens at {', '.join(listening)} but no Kafka answered {_login(kafka)}: check [kafka]"
            " bootstrap (is it the broker's port?) and security_protocol (the listener may want SSL or SASL_SSL)"
        )
        return Check("kafka", False, f"cannot log in {_login(kafka)}: {exc.problem}", fix)
    ours = (kafka.versions_topic, kafka.manifests_topic, kafka.profiles_topic)
    missing = [t for t in ours if t not in cluster.topics]
    topics = (
        f"topics {', '.join(missing)} not there yet (the daemon creates them)"
        if missing
        else f"topics {', '.join(ours)}"
    )
    return Check(
        "kafka", True, f"logged in at {kafka.bootstrap} {_login(kafka)}: {cluster.brokers} broker(s), {topics}"
    )


def check_inotify(datasets: list[DatasetConfig]) -> Check:
    limit = _read_int("/proc/sys/fs/inotify/max_user_watches")
    queued = _read_int("/proc/sys/fs/inotify/max_queued_events")
    if limit is None:
        return Check("inotify", True, "not Linux: the watcher polls, reconcile catches the rest")
    local = [Path(ds.root) for ds in datasets if not ds.is_bucket]
    needed = sum(count_dirs(root) for root in local if root.is_dir())
    detail = f"{needed} folders to watch, max_user_watches={limit}, max_queued_events={queued}"
    if needed > limit * 0.8:
        return Check(
            "inotify",
            False,
            detail,
            f"raise it: sysctl fs.inotify.max_user_watches={max(needed * 2, 524288)} "
            "(persist in /etc/sysctl.d/60-strandline.conf)",
        )
    return Check("inotify", True, detail)


def check_bucket(ds: DatasetConfig, config: StrandlineConfig) -> Check:
    """Can the daemon list the bucket prefix with its credentials? Says what to fix if not."""
    from daemon.bucket_source import BucketSource
    from daemon.objectstore import check_root

    name = f"root {ds.name}"
    try:
        source = BucketSource(ds.root, spool_dir="", settings=config.store_settings(ds.root))
        check_root(source.fs, source.root)
    except StrandlineError as exc:
        return Check(name, False, str(exc))  # our source errors already say what to do
    mode = "notifications" if ds.detect == "notifications" else "polling"
    return Check(name, True, f"{source.root.url} is reachable and listable ({mode})")


def check_roots(datasets: list[DatasetConfig], config: StrandlineConfig | None = None) -> list[Check]:
    out = []
    for ds in datasets:
        if ds.is_bucket:
            if config is not None:
                out.append(check_bucket(ds, config))
            continue
        root = Path(ds.root)
        if not root.is_dir():
            out.append(Check(f"root {ds.name}", False, f"{ds.root} is missing", "create it or fix the dataset's root"))
        elif not os.access(root, os.R_OK | os.X_OK):
            out.append(
                Check(f"root {ds.name}", False, f"{ds.root} is not readable", "grant the daemon's user read access")
            )
        else:
            out.append(Check(f"root {ds.name}", True, str(ds.root)))
    return out


def check_outbox(config: StrandlineConfig) -> Check:
    path = catalog_path(config)
    if not path.exists():
        return Check("outbox", True, f"no catalog yet at {path}")
    try:
        with Catalog(path, readonly=True) as catalog:
            count, oldest = catalog.backlog()
    except StrandlineError as exc:
        return Check("outbox", False, str(exc), "check the state_dir setting and its permissions")
    if count == 0:
        return Check("outbox", True, "empty: every event was delivered")
    age = time.time() - (oldest or time.time())
    return Check(
        "outbox",
        age < 60,
        f"{count} events wait for Kafka, oldest {age:.0f} s old",
        "" if age < 60 else "check Kafka; the daemon delivers the backlog in order when it is back",
    )


def run_checks(config: StrandlineConfig, datasets: list[DatasetConfig]) -> list[Check]:
    return [
        Check("config", True, f"{len(datasets)} datasets, state in {catalog_path(config).parent}"),
        *check_roots(datasets, config),
        check_inotify(datasets),
        check_kafka(config),
        check_outbox(config),
    ]
