"""Secure Kafka connections against a real broker with SASL_SSL and SSL listeners (issue 7).

The module starts its own broker (scripts/kafka_broker.py ``start_secure``): a CA and a broker
keystore made with keytool, SCRAM-SHA-256/512 users written at storage format, PLAIN users in
JAAS, and OAUTHBEARER with Kafka's unsecured (``alg: none``) token validator, so that tokens from
a real local OAuth token endpoint are accepted without a real identity provider.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from pydantic import SecretStr, ValidationError

from daemon.config import load_config
from daemon.errors import ConfigError, PublishError
from daemon.kafka_client import ensure_topics, make_consumer, make_producer
from daemon.kafka_oauth import ClientCredentialsTokenProvider
from schemas.config import KafkaConfig
from tests.conftest import kafka_broker

USER = "alice"
MASK = "**********"

# kafka-python leaves the TLS socket of a failed handshake to the garbage collector, as it does
# plain sockets (see pyproject's filterwarnings); collected after each test, so they are ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(autouse=True)
def _collect_kafka_leftovers() -> Iterator[None]:
    yield
    gc.collect()


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One broker for the module, on free loopback ports; stopped even when a test fails."""
    directory = tmp_path_factory.mktemp("kafka-secure")
    broker = kafka_broker.start_secure(directory)
    try:
        yield broker
    finally:
        kafka_broker.stop(directory)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log record at DEBUG, kafka-python's included (another test may have quietened it)."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="kafka")
    return caplog


def sasl_config(broker: Any, mechanism: str = "SCRAM-SHA-256", **overrides: Any) -> KafkaConfig:
    settings: dict[str, Any] = {
        "bootstrap": broker.sasl_ssl,
        "security_protocol": "SASL_SSL",
        "ssl_cafile": broker.cafile,
        "sasl_mechanism": mechanism,
        "sasl_username": USER,
        "sasl_password": broker.users[USER],
        "partitions": 1,
    }
    settings.update(overrides)
    return KafkaConfig(**{k: v for k, v in settings.items() if v is not None})


def round_trip(cfg: KafkaConfig, timeout: float = 20.0) -> bytes:
    """Create a fresh topic, produce one record and consume it back, all through ``cfg``."""
    topic = f"sec-{uuid.uuid4().hex[:12]}"
    payload = f"payload {uuid.uuid4().hex}".encode()
    ensure_topics(cfg, [topic])
    producer = make_producer(cfg)
    try:
        producer.send(topic, value=payload).get(timeout=timeout)
    finally:
        producer.close(timeout=5)
    consumer = make_consumer(cfg, topic, group_id=None)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    return bytes(record.value)
    finally:
        consumer.close()
    raise AssertionError(f"no record came back from {topic} within {timeout} s")


def assert_nowhere(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text


def record_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records]


# -- SASL_SSL and SSL round trips ------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
def test_sasl_ssl_round_trip_works_and_the_password_is_masked_in_debug_logs(
    secure_broker: Any, mechanism: str, debug_logs: pytest.LogCaptureFixture
) -> None:
    cfg = sasl_config(secure_broker, mechanism)
    assert round_trip(cfg).startswith(b"payload ")
    password = secure_broker.users[USER]
    assert_nowhere(password, debug_logs.text, *record_texts(debug_logs))
    # kafka-python's admin client logs its whole config at DEBUG: the password is there, masked.
    assert MASK in debug_logs.text


def test_ssl_without_sasl_round_trip_trusts_the_configured_ca(secure_broker: Any) -> None:
    cfg = KafkaConfig(bootstrap=secure_broker.ssl, security_protocol="SSL", ssl_cafile=secure_broker.cafile)
    assert round_trip(cfg).startswith(b"payload ")


def test_password_is_read_from_a_file_with_its_trailing_newline_ignored(secure_broker: Any, tmp_path: Path) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text(secure_broker.users[USER] + "\n")
    cfg = sasl_config(secure_broker, "SCRAM-SHA-512", sasl_password=None, sasl_password_file=secret)
    assert round_trip(cfg).startswith(b"payload ")


def test_password_from_the_environment_overrides_the_config_file(
    secure_broker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = tmp_path / "strandline.toml"
    config_file.write_text(
        "[kafka]\n"
        f'bootstrap = "{secure_broker.sasl_ssl}"\n'
        'security_protocol = "SASL_SSL"\n'
        f'ssl_cafile = "{secure_broker.cafile}"\n'
        'sasl_mechanism = "SCRAM-SHA-256"\n'
        f'sasl_username = "{USER}"\n'
        'sasl_password = "not-the-password"\n'
        "partitions = 1\n"
    )
    monkeypatch.setenv("STRANDLINE_KAFKA_SASL_PASSWORD", secure_broker.users[USER])
    cfg = load_config(config_file).kafka
    assert cfg.sasl_password == SecretStr(secure_broker.users[USER])
    assert round_trip(cfg).startswith(b"payload ")


# -- failures: clear, bounded, and without the secret -------------------------------------------------


def test_wrong_password_fails_within_seconds_with_a_clear_error_and_appears_in_no_log(
    secure_broker: Any, debug_logs: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    cfg = sasl_config(secure_broker, "SCRAM-SHA-256", sasl_password=wrong)
    started = time.monotonic()
    with pytest.raises(PublishError) as raised:
        make_producer(cfg)
    assert time.monotonic() - started < 15
    message = str(raised.value)
    assert f"rejected the credentials for user '{USER}' with mechanism SCRAM-SHA-256" in message
    assert "check [kafka] sasl_username / sasl_password" in message
    out, err = capfd.readouterr()
    assert_nowhere(
        wrong,
        message,
        repr(raised.value),
        "".join(traceback.format_exception(raised.value)),
        debug_logs.text,
        *record_texts(debug_logs),
        out,
        err,
    )
    assert wrong not in repr(cfg)


def test_a_ca_that_does_not_sign_the_broker_is_reported_as_untrusted_tls(secure_broker: Any) -> None:
    # Without ssl_cafile the system's trust store is used, which does not know the test CA.
    cfg = KafkaConfig(bootstrap=secure_broker.ssl, security_protocol="SSL")
    with pytest.raises(PublishError, match=r"not trusted .*check \[kafka\] ssl_cafile"):
        make_producer(cfg)


# -- strandline doctor: a real login, not a reachable port ------------------------------------------


def doctor(tmp_path: Path, broker: Any, **kafka: str) -> tuple[int, dict[str, Any], str]:
    """`strandline doctor --json` in a process configured by STRANDLINE_KAFKA_* variables: exit, kafka check, output."""
    (tmp_path / "data" / "d").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRANDLINE_")}
    env["STRANDLINE_STATE_DIR"] = str(tmp_path / "state")
    env |= {f"STRANDLINE_KAFKA_{key.upper()}": value for key, value in kafka.items()}
    out = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "doctor", str(tmp_path / "data"), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    checks = {c["name"]: c for c in json.loads(out.stdout)}
    return out.returncode, checks["kafka"], out.stdout + out.stderr


def secure_settings(broker: Any, password: str) -> dict[str, str]:
    return {
        "bootstrap": broker.sasl_ssl,
        "security_protocol": "SASL_SSL",
        "ssl_cafile": str(broker.cafile),
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": USER,
        "sasl_password": password,
    }


def test_doctor_logs_in_with_the_configured_tls_and_sasl_settings(secure_broker: Any, tmp_path: Path) -> None:
    _, kafka, output = doctor(tmp_path, secure_broker, **secure_settings(secure_broker, secure_broker.users[USER]))
    assert kafka["ok"], kafka
    assert kafka["detail"].startswith(
        f"logged in at {secure_broker.sasl_ssl} as '{USER}' (SCRAM-SHA-512 over SASL_SSL): 1 broker(s)"
    )
    assert secure_broker.users[USER] not in output


def test_doctor_fails_on_a_wrong_password_says_what_to_fix_and_never_shows_it(
    secure_broker: Any, tmp_path: Path
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    code, kafka, output = doctor(tmp_path, secure_broker, **secure_settings(secure_broker, wrong))
    assert code == 1
    assert not kafka["ok"]
    assert kafka["detail"].startswith(
        f"cannot log in as '{USER}' (SCRAM-SHA-512 over SASL_SSL): Kafka at {secure_broker.sasl_ssl} rejected the"
        f" credentials for user '{USER}' with mechanism SCRAM-SHA-512"
    )
    assert kafka["fix"] == "check [kafka] sasl_username / sasl_password"
    assert wrong not in output


def test_doctor_names_untrusted_tls_even_though_the_port_answers(secure_broker: Any, tmp_path: Path) -> None:
    # No ssl_cafile: the system's trust store, which does not know the test CA.
    code, kafka, _ = doctor(tmp_path, secure_broker, bootstrap=secure_broker.ssl, security_protocol="SSL")
    assert code == 1
    assert "the TLS certificate of the Kafka broker" in kafka["detail"] and "is not trusted" in kafka["detail"]
    assert kafka["fix"] == "check [kafka] ssl_cafile (and ssl_check_hostname)"


# -- configuration errors -------------------------------------------------------------------------

SECRET = "hunter2-never-shown"  # noqa: S105 - a fake that must never appear in messages


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"security_protocol": "SASL_SSL"}, "needs sasl_mechanism"),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256", "sasl_password": SECRET},
            "needs sasl_username",
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": USER},
            "needs sasl_password",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "PLAIN",
                "sasl_username": USER,
                "sasl_password": SECRET,
                "sasl_password_file": "/run/secrets/kafka",
            },
            "set sasl_password or sasl_password_file, not both",
        ),
        (
            {"sasl_mechanism": "PLAIN", "sasl_username": USER, "sasl_password": SECRET},
            "set security_protocol = 'SASL_SSL'",
        ),
        ({"ssl_cafile": "/etc/ca.pem"}, "does not use TLS: set security_protocol = 'SSL' or 'SASL_SSL'"),
        ({"security_protocol": "SSL", "ssl_keyfile": "/k.pem"}, "set ssl_certfile too"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"}, "needs exactly one of sasl_oauth_token"),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "OAUTHBEARER",
                "sasl_oauth_token": SECRET,
                "oauth_token_url": "https://idp.example/token",
                "oauth_client_id": "strandline",
                "oauth_client_secret": SECRET,
            },
            "needs exactly one of sasl_oauth_token",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "OAUTHBEARER",
                "oauth_token_url": "http://idp.example/token",
                "oauth_client_id": "strandline",
                "oauth_client_secret": SECRET,
            },
            "oauth_token_url must be https://",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "OAUTHBEARER",
                "oauth_token_url": "https://idp.example/token",
                "oauth_client_id": "strandline",
            },
            "needs one of oauth_client_secret or oauth_client_secret_file",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-256",
                "sasl_username": USER,
                "sasl_password": SECRET,
                "oauth_client_secret": SECRET,
            },
            "apply to sasl_mechanism = 'OAUTHBEARER' only",
        ),
    ],
)
def test_inconsistent_security_settings_are_rejected_saying_what_to_set(settings: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as raised:
        KafkaConfig(**settings)
    assert says in str(raised.value)
    assert SECRET not in str(raised.value)


def test_config_file_errors_name_the_section_and_never_the_secret(tmp_path: Path) -> None:
    config_file = tmp_path / "strandline.toml"
    config_file.write_text(f'[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_password = "{SECRET}"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(config_file)
    assert "kafka: " in str(raised.value)
    assert "needs sasl_mechanism" in str(raised.value)
    assert SECRET not in str(raised.value)


def test_the_validation_error_behind_a_config_error_does_not_quote_the_secret(tmp_path: Path) -> None:
    config_file = tmp_path / "strandline.toml"
    config_file.write_text(f'[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_password = "{SECRET}"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(config_file)
    assert SECRET not in "".join(traceback.format_exception(raised.value))


# -- OAUTHBEARER ------------------------------------------------------------------------------------


def unsigned_jwt(subject: str, lifetime: float = 3600.0) -> str:
    """A JWT with ``alg: none``, which the test broker's unsecured validator accepts."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    now = time.time()
    return f"{part({'alg': 'none'})}.{part({'sub': subject, 'iat': now, 'exp': now + lifetime})}."


CLIENT_ID = "strandline-daemon"
CLIENT_SECRET = "client-secret-for-tests"  # noqa: S105 - only the local token endpoint knows it


class TokenEndpoint:
    """A real OAuth 2 token endpoint on loopback (client-credentials grant, HTTP Basic client auth)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, list[str]]] = []
        self.issued: list[str] = []
        self.lifetime = 3600.0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                endpoint.requests.append(form)
                expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {expected}":
                    self._answer(401, {"error": "invalid_client"})
                elif form.get("grant_type") != ["client_credentials"]:
                    self._answer(400, {"error": "unsupported_grant_type"})
                else:
                    token = unsigned_jwt(CLIENT_ID, endpoint.lifetime)
                    endpoint.issued.append(token)
                    self._answer(200, {"access_token": token, "token_type": "Bearer", "expires_in": endpoint.lifetime})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth2/token"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> TokenEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def token_endpoint() -> Iterator[TokenEndpoint]:
    with TokenEndpoint() as endpoint:
        yield endpoint


def oauth_config(broker: Any, **settings: Any) -> KafkaConfig:
    return KafkaConfig(
        bootstrap=broker.sasl_ssl,
        security_protocol="SASL_SSL",
        ssl_cafile=broker.cafile,
        sasl_mechanism="OAUTHBEARER",
        partitions=1,
        **settings,
    )


def test_oauthbearer_round_trip_with_a_fixed_token(secure_broker: Any, debug_logs: pytest.LogCaptureFixture) -> None:
    token = unsigned_jwt("alice")
    assert round_trip(oauth_config(secure_broker, sasl_oauth_token=token)).startswith(b"payload ")
    assert_nowhere(token, debug_logs.text, *record_texts(debug_logs))


def test_an_expired_oauthbearer_token_is_reported_as_rejected(secure_broker: Any) -> None:
    cfg = oauth_config(secure_broker, sasl_oauth_token=unsigned_jwt("alice", lifetime=-60))
    with pytest.raises(PublishError, match="rejected the OAUTHBEARER token"):
        make_producer(cfg)


def test_oauthbearer_round_trip_with_tokens_from_a_token_endpoint_fetched_once(
    secure_broker: Any, token_endpoint: TokenEndpoint, debug_logs: pytest.LogCaptureFixture
) -> None:
    cfg = oauth_config(
        secure_broker,
        oauth_token_url=token_endpoint.url,
        oauth_client_id=CLIENT_ID,
        oauth_client_secret=CLIENT_SECRET,
        oauth_scope="kafka",
    )
    assert round_trip(cfg).startswith(b"payload ")
    # Admin client, producer and consumer share one cached token.
    assert len(token_endpoint.requests) == 1
    assert token_endpoint.requests[0] == {"grant_type": ["client_credentials"], "scope": ["kafka"]}
    for secret in (CLIENT_SECRET, *token_endpoint.issued):
        assert_nowhere(secret, debug_logs.text, *record_texts(debug_logs))


def test_a_wrong_client_secret_is_reported_from_the_token_endpoint_at_once(
    secure_broker: Any, token_endpoint: TokenEndpoint, tmp_path: Path
) -> None:
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("not-the-client-secret\n")
    cfg = oauth_config(
        secure_broker,
        oauth_token_url=token_endpoint.url,
        oauth_client_id=CLIENT_ID,
        oauth_client_secret_file=secret_file,
    )
    started = time.monotonic()
    with pytest.raises(PublishError, match="answered HTTP 401: check oauth_client_id / oauth_client_secret") as raised:
        make_producer(cfg)
    assert time.monotonic() - started < 5
    assert "not-the-client-secret" not in "".join(traceback.format_exception(raised.value))


def test_token_provider_refreshes_after_most_of_the_lifetime_and_rides_out_an_endpoint_outage(
    token_endpoint: TokenEndpoint,
) -> None:
    now = [1000.0]
    provider = ClientCredentialsTokenProvider(
        token_endpoint.url, CLIENT_ID, lambda: CLIENT_SECRET, clock=lambda: now[0]
    )
    token_endpoint.lifetime = 100.0
    first = provider.token()
    now[0] += 79
    assert provider.token() == first
    assert len(token_endpoint.requests) == 1
    now[0] += 2  # past 80% of the lifetime
    second = provider.token()
    assert len(token_endpoint.requests) == 2
    assert second == token_endpoint.issued[-1]
    token_endpoint.server.shutdown()
    token_endpoint.server.server_close()
    now[0] += 81  # due for refresh, endpoint gone, cached token still valid for 19 s
    assert provider.token() == second
    now[0] += 20  # expired: no token to fall back on
    with pytest.raises(PublishError, match="cannot be reached"):
        provider.token()
