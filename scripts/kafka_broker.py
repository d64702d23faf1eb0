#!/usr/bin/env python3
"""A real Apache Kafka broker for development and tests, without Docker.

The broker's jars come from Maven Central (scripts/kafka/pom.xml, cached in .cache/kafka/libs);
the broker runs in KRaft single-node mode (broker and controller in one JVM).

    python scripts/kafka_broker.py fetch                       download the jars once
    python scripts/kafka_broker.py ensure [--bootstrap H:P]    start one unless a broker answers
    python scripts/kafka_broker.py start --port 19092 --dir D  start one in folder D
    python scripts/kafka_broker.py start-secure --dir D        one with SASL_SSL and SSL listeners too
    python scripts/kafka_broker.py stop --dir D                stop it
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _procs import free_port, stop_server, track

REPO = Path(__file__).resolve().parent.parent
LIBS = REPO / ".cache" / "kafka" / "libs"
POM = REPO / "scripts" / "kafka" / "pom.xml"
LOG4J = REPO / "scripts" / "kafka" / "log4j2.yaml"


def fetch() -> Path:
    if not any(LIBS.glob("kafka_2.13-*.jar")):
        LIBS.mkdir(parents=True, exist_ok=True)
        print(f"fetching Apache Kafka from Maven Central into {LIBS} …", file=sys.stderr)
        subprocess.run(
            ["mvn", "-B", "-q", "-f", str(POM), "dependency:copy-dependencies", f"-Dkafka.libs={LIBS}"],
            check=True,
        )
    return LIBS


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _properties(
    port: int, controller_port: int, data: Path, extra: dict[str, str], listeners: Sequence[str] = ()
) -> str:
    more = "".join(f",{listener}" for listener in listeners)
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}{more}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}{more}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
    }
    props.update(extra)
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _ready(bootstrap: str, timeout: float) -> bool:
    """True once the broker serves metadata (a listening socket is not enough)."""
    deadline = time.monotonic() + timeout
    try:
        from kafka import KafkaAdminClient
    except ImportError:
        KafkaAdminClient = None
    host, port = bootstrap.rsplit(":", 1)
    while time.monotonic() < deadline:
        if answers(host, int(port)):
            if KafkaAdminClient is None:
                return True
            try:
                admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
                admin.list_topics()
                admin.close()
                return True
            except Exception:  # noqa: S110 - still starting
                pass
        time.sleep(0.2)
    return False


def start(
    directory: Path,
    port: int | None = None,
    *,
    extra: dict[str, str] | None = None,
    listeners: Sequence[str] = (),
    format_args: Sequence[str] = (),
    timeout: float = 60.0,
) -> str:
    """Start a broker whose state lives in ``directory``; return its PLAINTEXT bootstrap address.

    ``extra`` overrides server properties; ``listeners`` (``NAME://127.0.0.1:PORT``) are served
    and advertised beside PLAINTEXT; ``format_args`` go to ``kafka-storage format`` when the
    storage is new (e.g. ``--add-scram`` users).
    """
    libs = fetch()
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    controller_port = free_port()
    data = directory / "data"
    props = directory / "server.properties"
    if (directory / "broker.port").exists() and data.exists():
        # Restarting a stopped broker: keep its data and its ports.
        port, controller_port = (int(x) for x in (directory / "broker.port").read_text().split())
    props.write_text(_properties(port, controller_port, data, extra or {}, listeners))
    classpath = f"{libs}/*"
    java = os.environ.get("JAVA", "java")
    if not (data / "meta.properties").exists():
        subprocess.run(
            [
                java,
                "-cp",
                classpath,
                f"-Dlog4j2.configurationFile={LOG4J}",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                uuid.uuid4().hex[:22],
                "-c",
                str(props),
                *format_args,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    (directory / "broker.port").write_text(f"{port} {controller_port}")
    with (directory / "broker.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                java,
                "-Xms128m",
                "-Xmx512m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                f"-Dlog4j2.configurationFile={LOG4J}",
                "-cp",
                classpath,
                "kafka.Kafka",
                str(props),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    track(proc, directory / "broker.pid")
    bootstrap = f"127.0.0.1:{port}"
    if not _ready(bootstrap, timeout):
        stop(directory)
        raise RuntimeError(f"Kafka did not start within {timeout} s; see {directory / 'broker.log'}")
    return bootstrap


def stop(directory: Path, *, hard: bool = False) -> None:
    """Stop the broker started in ``directory`` (SIGKILL after 30 s); no-op if none runs."""
    stop_server(directory / "broker.pid", hard=hard, grace=30.0)


# -- a secured broker, for the security tests ----------------------------------------------------

# Users of the secured broker for SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN: test credentials only.
DEFAULT_USERS: dict[str, str] = {"alice": "alice-test-secret", "bob": "bob-test-secret"}
_CREDENTIAL = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SASL = "org.apache.kafka.common.security"


@dataclass(frozen=True)
class SecureBroker:
    """Where a broker started by ``start_secure`` listens, and the CA a client must trust.

    ``sasl_ssl`` takes SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN for ``users``, and OAUTHBEARER
    with unsigned (``alg: none``) JWTs whose ``sub`` is the principal; ``ssl`` is TLS without
    SASL; ``plaintext`` is the loopback inter-broker listener, for readiness checks and set-up.
    """

    plaintext: str
    sasl_ssl: str
    ssl: str
    cafile: Path
    users: dict[str, str] = field(default_factory=dict)


def _keytool(tls: Path, *args: str) -> None:
    subprocess.run(["keytool", "-storetype", "PKCS12", *args], cwd=tls, check=True, capture_output=True)


def _tls_material(directory: Path, store_password: str) -> tuple[Path, Path]:
    """A self-signed CA (``tls/ca.pem``) and a broker keystore signed by it (``tls/broker.p12``).

    The broker's certificate names localhost and 127.0.0.1, so clients keep hostname checks on.
    Java's keytool makes them: every machine that runs the broker has it.
    """
    tls = directory / "tls"
    cafile, keystore = tls / "ca.pem", tls / "broker.p12"
    if cafile.exists() and keystore.exists():
        return cafile, keystore
    tls.mkdir(parents=True, exist_ok=True)
    for stale in tls.iterdir():
        stale.unlink()
    pw = ("-storepass", store_password)
    ec = ("-keyalg", "EC", "-groupname", "secp256r1", "-validity", "3650")
    _keytool(
        tls,
        "-genkeypair",
        "-alias",
        "ca",
        *ec,
        "-dname",
        "CN=Strandline test CA",
        "-ext",
        "bc:c",
        "-keystore",
        "ca.p12",
        *pw,
    )
    _keytool(tls, "-exportcert", "-rfc", "-alias", "ca", "-keystore", "ca.p12", *pw, "-file", "ca.pem")
    _keytool(tls, "-genkeypair", "-alias", "broker", *ec, "-dname", "CN=localhost", "-keystore", "broker.p12", *pw)
    _keytool(tls, "-certreq", "-alias", "broker", "-keystore", "broker.p12", *pw, "-file", "broker.csr")
    _keytool(
        tls,
        "-gencert",
        "-alias",
        "ca",
        "-keystore",
        "ca.p12",
        *pw,
        "-infile",
        "broker.csr",
        "-outfile",
        "broker.pem",
        "-rfc",
        "-validity",
        "3650",
        "-ext",
        "SAN=dns:localhost,ip:127.0.0.1",
        "-ext",
        "EKU=serverAuth",
    )
    # The chain is completed in the broker's keystore: the CA first, then its signed certificate.
    _keytool(tls, "-importcert", "-noprompt", "-alias", "ca", "-file", "ca.pem", "-keystore", "broker.p12", *pw)
    _keytool(tls, "-importcert", "-alias", "broker", "-file", "broker.pem", "-keystore", "broker.p12", *pw)
    return cafile, keystore


def _secure_properties(keystore: Path, store_password: str, users: Mapping[str, str]) -> dict[str, str]:
    plain_users = " ".join(f'user_{name}="{password}"' for name, password in users.items())
    sasl_ssl = "listener.name.sasl_ssl"
    return {
        # PLAINTEXT stays the inter-broker listener, on loopback; clients use SASL_SSL or SSL.
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL",
        "inter.broker.listener.name": "PLAINTEXT",
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(keystore),
        "ssl.keystore.password": store_password,
        "ssl.key.password": store_password,
        "ssl.client.auth": "none",
        f"{sasl_ssl}.sasl.enabled.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN,OAUTHBEARER",
        f"{sasl_ssl}.scram-sha-256.sasl.jaas.config": f"{_SASL}.scram.ScramLoginModule required;",
        f"{sasl_ssl}.scram-sha-512.sasl.jaas.config": f"{_SASL}.scram.ScramLoginModule required;",
        f"{sasl_ssl}.plain.sasl.jaas.config": f"{_SASL}.plain.PlainLoginModule required {plain_users};",
        # With no server callback handler set, Kafka checks OAUTHBEARER tokens with its unsecured
        # (alg "none") JWS validator: right for a test broker, never for a real one.
        f"{sasl_ssl}.oauthbearer.sasl.jaas.config": (
            f'{_SASL}.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="broker";'
        ),
    }


def start_secure(directory: Path, *, users: Mapping[str, str] | None = None, timeout: float = 60.0) -> SecureBroker:
    """Start a broker with SASL_SSL and SSL listeners on free loopback ports, its state in ``directory``.

    SCRAM users are written into the storage when it is formatted (``--add-scram``), as KRaft
    requires; a restart in the same ``directory`` keeps ports, certificates and users.
    """
    users = dict(users or DEFAULT_USERS)
    for name, password in users.items():
        if not (_CREDENTIAL.match(name) and _CREDENTIAL.match(password)):
            raise ValueError("broker user names and passwords must match [A-Za-z0-9._-]{1,64}")
    directory.mkdir(parents=True, exist_ok=True)
    ports_file = directory / "secure.ports"
    if ports_file.exists():
        sasl_port, ssl_port = (int(x) for x in ports_file.read_text().split())
    else:
        sasl_port, ssl_port = free_port(), free_port()
        ports_file.write_text(f"{sasl_port} {ssl_port}")
    store_password = "broker-keystore-test"  # noqa: S105 - a throwaway keystore for a test broker
    cafile, keystore = _tls_material(directory, store_password)
    scram = [
        arg
        for name, password in users.items()
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
        for arg in ("--add-scram", f"{mechanism}=[name={name},password={password}]")
    ]
    plaintext = start(
        directory,
        extra=_secure_properties(keystore, store_password, users),
        listeners=(f"SASL_SSL://127.0.0.1:{sasl_port}", f"SSL://127.0.0.1:{ssl_port}"),
        format_args=scram,
        timeout=timeout,
    )
    return SecureBroker(plaintext, f"127.0.0.1:{sasl_port}", f"127.0.0.1:{ssl_port}", cafile, users)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch")
    p_ensure = sub.add_parser("ensure")
    p_ensure.add_argument("--bootstrap", default=os.environ.get("STRANDLINE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    p_ensure.add_argument("--dir", type=Path, default=REPO / ".cache" / "kafka" / "dev")
    p_start = sub.add_parser("start")
    p_start.add_argument("--port", type=int)
    p_start.add_argument("--dir", type=Path, required=True)
    p_secure = sub.add_parser("start-secure")
    p_secure.add_argument("--dir", type=Path, required=True)
    p_stop = sub.add_parser("stop")
    p_stop.add_argument("--dir", type=Path, default=REPO / ".cache" / "kafka" / "dev")
    args = parser.parse_args()
    if args.cmd == "fetch":
        fetch()
    elif args.cmd == "ensure":
        host, port = args.bootstrap.rsplit(":", 1)
        if answers(host, int(port)):
            print(f"Kafka answers at {args.bootstrap}", file=sys.stderr)
            return
        print(f"starting a local Kafka at {args.bootstrap} (state in {args.dir}) …", file=sys.stderr)
        print(start(args.dir, int(port)), file=sys.stderr)
    elif args.cmd == "start":
        print(start(args.dir, args.port))
    elif args.cmd == "start-secure":
        broker = start_secure(args.dir)
        print(json.dumps({**asdict(broker), "cafile": str(broker.cafile)}, indent=2))
    elif args.cmd == "stop":
        stop(args.dir)


if __name__ == "__main__":
    main()
