"""Kafka connections: producer, consumer and admin settings in one place.

kafka-python 3.x: idempotence and ``acks=all`` are on by default, but we set them
explicitly; the outbox, not the producer, is what makes delivery survive a crash.

Security (issue 7): ``[kafka] security_protocol`` is PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL,
with PLAIN, SCRAM-SHA-256/512 or OAUTHBEARER. Secret files are read when a client is made, so a
rotated secret is used by the next client. Every secret is registered with a filter on the
``kafka.*`` loggers that masks it: at DEBUG kafka-python logs the admin client's whole config and
the raw SASL frames, and a PLAIN frame holds the password, an OAUTHBEARER frame the token.

kafka-python 3.0.12 does not report a rejected login: the broker sends its error response and
closes the connection at once, kafka-python's transport drops data that arrives with the close,
and the bootstrap retries until it times out. So when a client with TLS or SASL cannot bootstrap,
``_diagnose`` opens one connection of its own and names what failed (the TLS trust, the SASL
mechanism, or the credentials) in the ``PublishError``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from daemon.errors import PublishError
from schemas.config import KafkaConfig

__all__ = ["Cluster", "check_connection", "ensure_topics", "make_consumer", "make_producer"]

log = logging.getLogger(__name__)

_MASK: Final = "**********"
_TOKEN_FORMS_MAX: Final = 96
_PROBE_TIMEOUT_SECONDS: Final = 5.0


class _SecretMask(logging.Filter):
    """Replaces registered secrets in log records, as they are and as they appear in reprs of bytes.

    Passwords and client secrets are kept for the life of the process; OAuth tokens, which are
    replaced every hour or so, only the newest few.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._tokens: dict[str, None] = {}  # insertion-ordered: the oldest are dropped first

    def add(self, secret: str) -> None:
        with self._lock:
            self._secrets.update(self._forms(secret))

    def add_token(self, token: str) -> None:
        with self._lock:
            for form in self._forms(token):
                self._tokens.pop(form, None)
                self._tokens[form] = None
            while len(self._tokens) > _TOKEN_FORMS_MAX:
                del self._tokens[next(iter(self._tokens))]

    @staticmethod
    def _forms(secret: str) -> set[str]:
        return {secret, repr(secret)[1:-1], repr(secret.encode())[2:-1]} - {""}

    def mask(self, text: str) -> str:
        with self._lock:
            forms = sorted(self._secrets.union(self._tokens), key=len, reverse=True)
        for form in forms:
            text = text.replace(form, _MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not (self._secrets or self._tokens):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report
            return True
        masked = self.mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_SECRETS: Final = _SecretMask()


def _mask_kafka_logs() -> None:
    """Put the secret filter on every ``kafka`` logger (a logger's filters only see its own records)."""
    names = [n for n in logging.root.manager.loggerDict if n == "kafka" or n.startswith("kafka.")]
    for name in names:
        logger = logging.getLogger(name)
        if _SECRETS not in logger.filters:
            logger.addFilter(_SECRETS)


def _ssl_context(cfg: KafkaConfig) -> ssl.SSLContext:
    """The TLS settings kafka-python would build from ssl_*; built here so the key password stays ours."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = cfg.ssl_check_hostname
    try:
        if cfg.ssl_cafile is not None:
            ctx.load_verify_locations(cafile=str(cfg.ssl_cafile))
        else:
            ctx.load_default_certs()
    except OSError as exc:
        raise PublishError(
            f"cannot load [kafka] ssl_cafile {cfg.ssl_cafile}: {exc}; it must be a readable PEM file"
        ) from exc
    if cfg.ssl_certfile is not None:
        # An empty password rather than None: OpenSSL would otherwise prompt on the terminal for one.
        password = cfg.ssl_password.get_secret_value() if cfg.ssl_password else ""
        try:
            ctx.load_cert_chain(str(cfg.ssl_certfile), str(cfg.ssl_keyfile) if cfg.ssl_keyfile else None, password)
        except OSError as exc:
            raise PublishError(
                f"cannot load the client certificate [kafka] ssl_certfile {cfg.ssl_certfile}: {exc};"
                " check ssl_certfile, ssl_keyfile and ssl_password"
            ) from exc
    return ctx


@functools.lru_cache(maxsize=8)
def _token_provider(cfg: KafkaConfig) -> Any:
    """One OAUTHBEARER token provider per config, so that clients share its cached token."""
    from daemon.kafka_oauth import ClientCredentialsTokenProvider, StaticTokenProvider, read_secret_file

    if cfg.oauth_token_url is not None:
        assert cfg.oauth_client_id is not None  # the config validator requires it
        secret, secret_file = cfg.oauth_client_secret, cfg.oauth_client_secret_file

        def client_secret() -> str:
            if secret_file is not None:
                value = read_secret_file(secret_file, "[kafka] oauth_client_secret_file")
                _SECRETS.add(value)
                return value
            assert secret is not None
            return secret.get_secret_value()

        return ClientCredentialsTokenProvider(
            cfg.oauth_token_url, cfg.oauth_client_id, client_secret, scope=cfg.oauth_scope, on_token=_SECRETS.add_token
        )
    token = cfg.sasl_oauth_token.get_secret_value() if cfg.sasl_oauth_token else None
    return StaticTokenProvider(token, cfg.sasl_oauth_token_file, on_token=_SECRETS.add_token)


def _common(cfg: KafkaConfig) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in cfg.bootstrap.split(",") if s.strip()],
        "client_id": cfg.client_id,
        "reconnect_backoff_max_ms": 5000,
        "bootstrap_timeout_ms": 5000,
        "security_protocol": cfg.security_protocol,
    }
    if cfg.security_protocol in ("SSL", "SASL_SSL"):
        settings["ssl_context"] = _ssl_context(cfg)
    if cfg.sasl_mechanism == "OAUTHBEARER":
        provider = _token_provider(cfg)
        if cfg.sasl_oauth_token is not None:
            _SECRETS.add(cfg.sasl_oauth_token.get_secret_value())
        if cfg.oauth_client_secret is not None:
            _SECRETS.add(cfg.oauth_client_secret.get_secret_value())
        # Fetched now, so that a wrong endpoint or client secret is reported here and not as a timeout.
        provider.token()
        settings.update(sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=provider)
    elif cfg.sasl_mechanism is not None:
        if cfg.sasl_password_file is not None:
            from daemon.kafka_oauth import read_secret_file

            password = read_secret_file(cfg.sasl_password_file, "[kafka] sasl_password_file")
        else:
            assert cfg.sasl_password is not None  # the config validator requires one of the two
            password = cfg.sasl_password.get_secret_value()
        _SECRETS.add(password)
        settings.update(
            sasl_mechanism=cfg.sasl_mechanism, sasl_plain_username=cfg.sasl_username, sasl_plain_password=password
        )
    _mask_kafka_logs()
    return settings


# What went wrong, and what to change: the two halves of a PublishError.
_Diagnosis = tuple[str, str]


def _rejected(cfg: KafkaConfig, where: str, detail: str) -> _Diagnosis:
    said = f" (the broker said: {_SECRETS.mask(detail)})" if detail else ""
    if cfg.sasl_mechanism == "OAUTHBEARER":
        return (
            f"Kafka at {where} rejected the OAUTHBEARER token{said}",
            "check [kafka] oauth_* or sasl_oauth_token* and that the broker trusts the token's issuer",
        )
    return (
        f"Kafka at {where} rejected the credentials for user {cfg.sasl_username!r} with mechanism"
        f" {cfg.sasl_mechanism}{said}",
        "check [kafka] sasl_username / sasl_password",
    )


def _exchange(sock: socket.socket, parser: Any, request: Any) -> Any:
    """Send one request (version 1) and wait for its response on a blocking socket."""
    request.API_VERSION = 1
    parser.send_request(request)
    sock.sendall(parser.send_bytes())
    while True:
        data = sock.recv(65536)
        if not data:
            raise EOFError("the broker closed the connection")
        responses = parser.receive_bytes(data)
        if responses:
            return responses[0][1]


def _diagnose(cfg: KafkaConfig, settings: dict[str, Any]) -> _Diagnosis | None:
    """Why a client with TLS or SASL cannot bootstrap, found with one connection to the first broker.

    None when that connection cannot be made at all, or succeeds: the caller's message stands.
    Best effort: it never hides the original error.
    """
    from kafka.net.sasl import get_sasl_mechanism
    from kafka.protocol.parser import KafkaProtocol
    from kafka.protocol.sasl import SaslAuthenticateRequest, SaslHandshakeRequest

    host, _, port = settings["bootstrap_servers"][0].rpartition(":")
    host = host.strip("[]")
    where = f"{host}:{port}"
    protocol = cfg.security_protocol
    try:
        raw = socket.create_connection((host, int(port)), timeout=_PROBE_TIMEOUT_SECONDS)
    except (OSError, ValueError):
        return None
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(raw)
        if protocol in ("SSL", "SASL_SSL"):
            try:
                sock = stack.enter_context(settings["ssl_context"].wrap_socket(raw, server_hostname=host))
            except ssl.SSLCertVerificationError as exc:
                return (
                    f"the TLS certificate of the Kafka broker at {where} is not trusted ({exc.verify_message})",
                    "check [kafka] ssl_cafile (and ssl_check_hostname)",
                )
            except OSError as exc:
                return (
                    f"no TLS handshake with the Kafka broker at {where} ({exc})",
                    f"check that security_protocol = {protocol!r} is what the broker's listener on that port speaks",
                )
        if cfg.sasl_mechanism is None:
            return None
        try:
            parser = KafkaProtocol(client_id=cfg.client_id)
            handshake = _exchange(sock, parser, SaslHandshakeRequest(mechanism=cfg.sasl_mechanism))
            if not handshake.mechanisms:
                return (
                    f"the Kafka listener at {where} takes no SASL",
                    f"check that security_protocol = {protocol!r} is what that listener speaks"
                    " (it may be an SSL or PLAINTEXT one)",
                )
            if cfg.sasl_mechanism not in handshake.mechanisms:
                return (
                    f"the Kafka listener at {where} does not enable SASL mechanism {cfg.sasl_mechanism}"
                    f" (it offers {', '.join(handshake.mechanisms)})",
                    "set [kafka] sasl_mechanism to one of those",
                )
            mechanism = get_sasl_mechanism(cfg.sasl_mechanism)(host=host, **settings)
            while not mechanism.is_done():
                answer = _exchange(sock, parser, SaslAuthenticateRequest(mechanism.auth_bytes()))
                if answer.error_code:
                    return _rejected(cfg, where, answer.error_message or "")
                mechanism.receive(answer.auth_bytes)
            return None if mechanism.is_authenticated() else _rejected(cfg, where, "")
        except (EOFError, OSError):
            return (
                f"the Kafka broker at {where} closed the connection during the SASL handshake",
                f"check that security_protocol = {protocol!r} is what its listener on that port speaks",
            )
        except PublishError as exc:  # a token provider's own message
            return exc.problem, exc.fix
        except Exception:  # diagnosis is best effort; the bootstrap error is reported instead
            log.debug("could not diagnose the Kafka connection to %s", where, exc_info=True)
            return None


def _failed(cfg: KafkaConfig, settings: dict[str, Any], exc: Exception) -> PublishError:
    from kafka.errors import KafkaConfigurationError, SaslAuthenticationFailedError

    if isinstance(exc, KafkaConfigurationError):
        return PublishError(f"Kafka client settings rejected: {exc}", fix="check the [kafka] section")
    if isinstance(exc, SaslAuthenticationFailedError):
        problem, fix = _rejected(cfg, cfg.bootstrap, str(exc))
        return PublishError(problem, fix=fix)
    if cfg.security_protocol != "PLAINTEXT":
        reason = _diagnose(cfg, settings)
        if reason is not None:
            problem, fix = reason
            return PublishError(_SECRETS.mask(problem), fix=_SECRETS.mask(fix))
        return PublishError(
            f"no Kafka broker answers at {cfg.bootstrap} with security_protocol = {cfg.security_protocol!r}: {exc}"
        )
    return PublishError(f"no Kafka broker answers at {cfg.bootstrap}: {exc}")


def make_producer(cfg: KafkaConfig) -> Any:
    """An idempotent producer with acks=all; raises PublishError when no broker answers or accepts us."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    settings = _common(cfg)
    try:
        return KafkaProducer(
            **settings,
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
        raise _failed(cfg, settings, exc) from exc


def make_consumer(cfg: KafkaConfig, *topics: str, group_id: str | None, **overrides: Any) -> Any:
    """A consumer with auto-commit off: callers commit after they acted."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    common = _common(cfg)
    settings: dict[str, Any] = {
        **common,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
    }
    settings.update(overrides)
    try:
        return KafkaConsumer(*topics, **settings)
    except KafkaError as exc:
        raise _failed(cfg, common, exc) from exc


@dataclass(frozen=True)
class Cluster:
    """What a client that logged in saw of the cluster."""

    brokers: int
    topics: frozenset[str]


def _admin(cfg: KafkaConfig) -> Any:
    """An admin client, logged in as every client of ours is; PublishError naming the cause if it cannot."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    settings = _common(cfg)
    try:
        return KafkaAdminClient(**settings)
    except KafkaError as exc:
        raise _failed(cfg, settings, exc) from exc


def check_connection(cfg: KafkaConfig) -> Cluster:
    """Connect and log in as every client of ours does (bootstrap, TLS, SASL), then read the cluster's metadata.

    Raises PublishError whose ``fix`` says what to change: a reachable port is not enough when
    the TLS trust, the SASL mechanism or the credentials are wrong (``strandline doctor``).
    """
    from kafka.errors import KafkaError

    admin = _admin(cfg)
    try:
        brokers = admin.describe_cluster()["brokers"]
        topics = frozenset(admin.list_topics())
    except KafkaError as exc:
        raise PublishError(
            f"connected to Kafka at {cfg.bootstrap}, but reading the cluster's metadata failed: {exc}",
            fix="check the broker's ACLs for this client (Describe on the cluster and the topics)",
        ) from exc
    finally:
        admin.close()
    return Cluster(len(brokers), topics)


def ensure_topics(cfg: KafkaConfig, topics: Sequence[str] | None = None) -> None:
    """Create ``topics`` (default: the daemon's three) if they are missing."""
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    admin = _admin(cfg)
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
