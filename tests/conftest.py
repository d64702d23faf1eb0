"""Test fixtures: one real Kafka broker per session, fresh topics and folders per test."""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.config import DatasetConfig, StrandlineConfig

REPO = Path(__file__).resolve().parent.parent
# The server scripts import their shared helpers (scripts/_procs.py) as a sibling module.
sys.path.append(str(REPO / "scripts"))


def _broker_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("kafka_broker", REPO / "scripts" / "kafka_broker.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["kafka_broker"] = module
    spec.loader.exec_module(module)
    return module


kafka_broker = _broker_module()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real broker: the one at STRANDLINE_KAFKA_BOOTSTRAP if it answers, else one we start."""
    bootstrap = os.environ.get("STRANDLINE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    host, port = bootstrap.rsplit(":", 1)
    if kafka_broker.answers(host, int(port)):
        yield bootstrap
        return
    directory = tmp_path_factory.mktemp("kafka")
    started = kafka_broker.start(directory, int(port))
    try:
        yield started
    finally:
        kafka_broker.stop(directory)


@pytest.fixture(autouse=True)
def _no_strandline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their config explicitly; the caller's STRANDLINE_* variables must not leak in."""
    for name in list(os.environ):
        if name.startswith("STRANDLINE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


def make_config(
    tmp_path: Path,
    bootstrap: str,
    prefix: str,
    datasets: list[DatasetConfig] | None = None,
    **overrides: object,
) -> StrandlineConfig:
    settings: dict[str, object] = {
        "state_dir": tmp_path / "state",
        "settle_seconds": 0.3,
        "reconcile_interval_seconds": 0,
        "host": "test-host",
        "kafka": {"bootstrap": bootstrap, "topic_prefix": prefix, "partitions": 1, "delivery_timeout_seconds": 30},
        # A consumer group per test too: tests must not share offsets or rebalances.
        "consumers": {"group_prefix": prefix},
        "datasets": tuple(datasets or ()),
    }
    settings.update(overrides)
    return StrandlineConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture
def config_for(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str):  # type: ignore[no-untyped-def]
    def build(datasets: list[DatasetConfig] | None = None, **overrides: object) -> StrandlineConfig:
        return make_config(tmp_path, kafka_bootstrap, topic_prefix, datasets, **overrides)

    return build


def _script_module(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


s3_server = _script_module("s3_server")
gcs_server = _script_module("gcs_server")
azurite_server = _script_module("azurite_server")

# Any key pair works with the test server; these are never real.
S3_TEST_ACCESS_KEY = "AKIASTRANDLINETEST01"
S3_TEST_SECRET_KEY = "strandline-test-secret-not-real"  # noqa: S105 - a fake for the test server


@pytest.fixture(scope="session")
def s3_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("s3")


@pytest.fixture(scope="session")
def s3_endpoint(s3_directory: Path) -> Iterator[str]:
    """A real S3-compatible server (moto) on a free loopback port, started for this session."""
    endpoint = s3_server.start(s3_directory)
    try:
        yield endpoint
    finally:
        s3_server.stop(s3_directory)


@pytest.fixture
def s3_server_log(s3_endpoint: str, s3_directory: Path) -> Path:
    """The access log of the session's S3 server: one line per request (counts GETs, LISTs)."""
    return s3_directory / "server.log"


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh, empty bucket; AWS credentials come from the environment, as botocore's chain finds them.

    The caller's ~/.aws files, profile and endpoint variables are hidden, and the instance-metadata
    probe (a request to a link-local address) is switched off.
    """
    import boto3

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config-absent"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials-absent"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_TEST_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_TEST_SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    name = f"t-{uuid.uuid4().hex[:16]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    try:
        client.create_bucket(Bucket=name)
    finally:
        client.close()
    return name


# --- GCS and Azure emulators ------------------------------------------------------------------
#
# Built or installed once into .cache/ (fake-gcs-server with `go install`, Azurite with `npm
# install`). That happens before the first test runs, so a cold build does not count against a
# test's timeout; a missing toolchain skips the tests that need it, saying which and why.

_EMULATORS = {"gcs_endpoint": gcs_server, "azurite_endpoint": azurite_server}
_UNAVAILABLE: dict[str, str] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    wanted = {name for item in session.items for name in getattr(item, "fixturenames", ()) if name in _EMULATORS}
    for name in sorted(wanted):
        try:
            _EMULATORS[name].install()
        except _EMULATORS[name].ToolMissingError as exc:
            _UNAVAILABLE[name] = str(exc)


def _installed_or_skip(name: str) -> None:
    if name in _UNAVAILABLE:
        pytest.skip(_UNAVAILABLE[name])
    try:
        _EMULATORS[name].install()
    except _EMULATORS[name].ToolMissingError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def gcs_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's GCS emulator keeps its pid, port and access log (one line per request)."""
    return tmp_path_factory.mktemp("gcs")


@pytest.fixture(scope="session")
def gcs_endpoint(gcs_directory: Path) -> Iterator[str]:
    """A real GCS emulator (fake-gcs-server, in memory) on a free loopback port, for this session."""
    _installed_or_skip("gcs_endpoint")
    endpoint = gcs_server.start(gcs_directory)
    try:
        yield endpoint
    finally:
        gcs_server.stop(gcs_directory)


@pytest.fixture(scope="session")
def azurite_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's Azurite keeps its pid, port, data and access log (one line per request)."""
    return tmp_path_factory.mktemp("azurite")


@pytest.fixture(scope="session")
def azurite_endpoint(azurite_directory: Path) -> Iterator[str]:
    """A real Azure Blob emulator (Azurite) on a free loopback port, for this session: its blob endpoint."""
    _installed_or_skip("azurite_endpoint")
    endpoint = azurite_server.start(azurite_directory)
    try:
        yield endpoint
    finally:
        azurite_server.stop(azurite_directory)
