"""Alert channels against real HTTP servers on loopback: payload shapes, signatures, failures, secrecy.

No Kafka: each test starts its own ``ThreadingHTTPServer`` on port 0 that records what it receives
and answers as told (status, body, delay).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from consumers.channels import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Channel,
    make_channel,
    pagerduty_payload,
    slack_payload,
    verify_signature,
    webhook_request,
)
from daemon.errors import ConfigError, DeliveryError
from schemas.alerts import Alert
from schemas.config import PagerDutyChannel, SlackChannel, WebhookChannel
from tests.helpers import Received

# Fake credentials, distinctive so that a leak into a message or log is found by substring.
SLACK_TOKEN = "T0SECRET/B0SECRET/XXslacktokenXX"  # noqa: S105
ROUTING_KEY = "R0UTINGKEY0123456789abcdefabcdef"
HOOK_TOKEN = "hooktoken-5f1e2d"  # noqa: S105
HOOK_SECRET = "whsec-TOPSECRET-9a8b7c"  # noqa: S105


@dataclass
class Receiver:
    """What a loopback server got, and how it answers: ``answers`` in turn, then the last one again."""

    answers: list[tuple[int, bytes, dict[str, str]]]
    delay: float = 0.0
    requests: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    base: str = ""

    def answer(self) -> tuple[int, bytes, dict[str, str]]:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
        if receiver.delay:
            receiver.release.wait(receiver.delay)
        status, payload, headers = receiver.answer()
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client gave up (timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[..., Receiver]]:
    """Start loopback receivers: ``serve(status, body, delay=..., headers=...)``; all stop after the test."""
    servers: list[tuple[_Server, threading.Thread, Receiver]] = []

    def start(
        status: int = 200,
        body: bytes = b"ok",
        *,
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
        then: list[tuple[int, bytes, dict[str, str]]] | None = None,
    ) -> Receiver:
        receiver = Receiver(answers=[(status, body, headers or {}), *(then or [])], delay=delay)
        server = _Server(("127.0.0.1", 0), _Handler)
        server.receiver = receiver
        receiver.base = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread, receiver))
        return receiver

    yield start
    for server, thread, receiver in servers:
        receiver.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def _alert(**changes: Any) -> Alert:
    values: dict[str, Any] = {
        "key": "strandline/sales/drift",
        "action": "trigger",
        "kind": "drift",
        "severity": "critical",
        "dataset": "sales",
        "version": 7,
        "summary": "sales v7 drifted: 3 of 4 tested columns",
        "reasons": ("price: wasserstein 0.31 >= 0.1; mean 10.0 -> 13.1",),
        "source": "host-1.example",
        "event_id": "evt-0123",
        "event_type": "dataset.drift.detected",
        "occurred_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        "occurrences": 1,
        "details": {"share": 0.75},
    }
    values.update(changes)
    return Alert(**values)


def _hostile_reasons(n: int = 200) -> tuple[str, ...]:
    return tuple(f"col_{i} <!channel> & <https://evil.example|click> drifted: " + "x" * 500 for i in range(n))


def _slack(url: str, *, timeout: float = 5.0) -> Channel:
    return make_channel("ops", SlackChannel(type="slack", webhook_url=SecretStr(url)), timeout=timeout)


def _pagerduty(url: str, *, timeout: float = 5.0) -> Channel:
    config = PagerDutyChannel(type="pagerduty", routing_key=SecretStr(ROUTING_KEY), events_url=SecretStr(url))
    return make_channel("oncall", config, timeout=timeout)


def _webhook(url: str, *, timeout: float = 5.0) -> Channel:
    config = WebhookChannel(type="webhook", url=SecretStr(url), secret=SecretStr(HOOK_SECRET))
    return make_channel("audit", config, timeout=timeout)


def _channel(kind: str, base: str, *, timeout: float = 5.0) -> Channel:
    if kind == "slack":
        return _slack(f"{base}/services/{SLACK_TOKEN}", timeout=timeout)
    if kind == "pagerduty":
        return _pagerduty(f"{base}/v2/enqueue", timeout=timeout)
    return _webhook(f"{base}/hooks/strandline?token={HOOK_TOKEN}", timeout=timeout)


def _texts(blocks: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for block in blocks:
        if "text" in block:
            out.append(block["text"]["text"])
        out.extend(f["text"] for f in block.get("fields", []))
        out.extend(e["text"] for e in block.get("elements", []))
    return out


# -- Slack -------------------------------------------------------------------------------------


def test_slack_receiver_gets_block_kit_within_slack_limits(serve: Callable[..., Receiver]) -> None:
    receiver = serve(200, b"ok")
    alert = _alert(dataset="d" * 128, reasons=_hostile_reasons(), occurrences=4)

    _channel("slack", receiver.base).send(alert)

    [request] = receiver.requests
    assert request.path == f"/services/{SLACK_TOKEN}"
    assert request.headers["Content-Type"].startswith("application/json")
    message = request.json()
    assert set(message) == {"text", "blocks"}
    assert isinstance(message["text"], str) and 0 < len(message["text"]) <= 3000
    blocks = message["blocks"]
    assert 0 < len(blocks) <= 50
    header = blocks[0]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert len(header["text"]["text"]) <= 150
    assert header["text"]["text"].startswith("[CRITICAL] drift on ddd")
    for block in blocks:
        assert block["type"] in {"header", "section", "context"}
        if block["type"] == "section":
            assert "text" in block or "fields" in block
            if "text" in block:
                assert len(block["text"]["text"]) <= 3000
            assert len(block.get("fields", [])) <= 10
            assert all(len(f["text"]) <= 2000 for f in block.get("fields", []))
        if block["type"] == "context":
            assert 0 < len(block["elements"]) <= 10
    texts = _texts(blocks)
    # Slack rejects blocks far below the documented 40,000 characters (slackapi/bolt-js#2509).
    assert sum(map(len, texts)) <= 12_000
    joined = "\n".join(texts)
    assert alert.summary in joined
    assert "col_0 " in joined and "col_19 " in joined and "col_20 " not in joined
    assert "and 180 more" in joined
    # Data cannot ping a channel or fake a link: <, > and & are escaped in mrkdwn.
    assert "<!channel>" not in json.dumps(message) and "&lt;!channel&gt;" in joined and "&amp;" in joined
    context = " ".join(e["text"] for e in blocks[-1]["elements"])
    assert "host-1.example" in context and "version 7" in context and "evt-0123" in context
    assert "4 occurrences" in context


def test_slack_resolve_says_it_cleared_and_single_occurrence_is_not_counted() -> None:
    message = slack_payload(_alert(action="resolve", summary="sales drift cleared at v9", version=9, reasons=()))

    header = message["blocks"][0]["text"]["text"]
    assert header == "[RESOLVED] drift on sales"
    assert message["blocks"][1]["text"]["text"].startswith("*Cleared.* sales drift cleared")
    assert "cleared" in message["text"]
    assert not any(b["type"] == "section" and "*Why*" in b.get("text", {}).get("text", "") for b in message["blocks"])
    context = " ".join(e["text"] for e in message["blocks"][-1]["elements"])
    assert "occurrences" not in context and "version 9" in context


def test_slack_names_a_daemon_alert_without_dataset() -> None:
    message = slack_payload(_alert(kind="daemon", dataset=None, version=None, severity="error"))

    assert message["blocks"][0]["text"]["text"] == "[ERROR] daemon on Strandline daemon"
    assert "version" not in " ".join(e["text"] for e in message["blocks"][-1]["elements"])


# -- PagerDuty ---------------------------------------------------------------------------------


def test_pagerduty_gets_trigger_then_resolve_with_the_same_dedup_key(serve: Callable[..., Receiver]) -> None:
    accepted = json.dumps({"status": "success", "message": "Event processed", "dedup_key": "x"}).encode()
    receiver = serve(202, accepted, headers={"Content-Type": "application/json"})
    channel = _channel("pagerduty", receiver.base)
    trigger = _alert(reasons=_hostile_reasons(), occurrences=3)

    channel.send(trigger)
    channel.send(_alert(action="resolve", summary="sales drift cleared", version=8, reasons=()))

    first, second = receiver.requests
    assert first.path == second.path == "/v2/enqueue"
    assert first.headers["Content-Type"] == "application/json"
    event = first.json()
    assert set(event) == {"routing_key", "event_action", "dedup_key", "payload"}
    assert event["routing_key"] == ROUTING_KEY
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == "strandline/sales/drift"
    payload = event["payload"]
    assert set(payload) == {
        "summary",
        "source",
        "severity",
        "timestamp",
        "component",
        "group",
        "class",
        "custom_details",
    }
    assert payload["summary"] == trigger.summary and len(payload["summary"]) <= 1024
    assert payload["source"] == "host-1.example"
    assert payload["severity"] == "critical"
    assert datetime.fromisoformat(payload["timestamp"]) == trigger.occurred_at
    assert payload["component"] == "sales" and payload["group"] == "strandline" and payload["class"] == "drift"
    details = payload["custom_details"]
    assert details["version"] == 7 and details["event_id"] == "evt-0123" and details["occurrences"] == 3
    assert len(details["reasons"]) == 100 and details["reasons_total"] == 200
    assert details["reasons"][0] == trigger.reasons[0]  # JSON, not mrkdwn: no escaping
    assert details["details"] == {"share": 0.75}
    assert len(first.body) < 512 * 1024

    resolve = second.json()
    assert resolve == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "strandline/sales/drift"}


@pytest.mark.parametrize("severity", ["critical", "error", "warning", "info"])
def test_pagerduty_severity_is_one_of_the_four_it_accepts(severity: str) -> None:
    assert pagerduty_payload(_alert(severity=severity), ROUTING_KEY)["payload"]["severity"] == severity


def test_pagerduty_dedup_key_fits_255_characters_and_is_stable() -> None:
    long_a, long_b = "k" * 300 + "/a", "k" * 300 + "/b"

    key_a = pagerduty_payload(_alert(key=long_a), ROUTING_KEY)["dedup_key"]
    key_b = pagerduty_payload(_alert(key=long_b), ROUTING_KEY)["dedup_key"]
    resolve_a = pagerduty_payload(_alert(key=long_a, action="resolve"), ROUTING_KEY)["dedup_key"]

    assert len(key_a) <= 255 and len(key_b) <= 255
    assert key_a != key_b and key_a == resolve_a


def test_pagerduty_timestamp_of_a_naive_time_is_utc() -> None:
    payload = pagerduty_payload(_alert(occurred_at=datetime(2025, 1, 2, 3, 4, 5)), ROUTING_KEY)["payload"]

    assert payload["timestamp"] == "2025-01-02T03:04:05+00:00"


# -- generic webhook ---------------------------------------------------------------------------


def test_webhook_body_is_the_alert_and_its_signature_verifies(serve: Callable[..., Receiver]) -> None:
    receiver = serve(204, b"")
    alert = _alert(reasons=("a <b> & c",))

    before = int(time.time())
    _channel("webhook", receiver.base).send(alert)

    [request] = receiver.requests
    assert request.path == f"/hooks/strandline?token={HOOK_TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert Alert.model_validate_json(request.body) == alert
    assert request.body == alert.model_dump_json().encode()
    assert before <= int(request.headers[TIMESTAMP_HEADER]) <= int(time.time())
    assert request.headers[SIGNATURE_HEADER].startswith("sha256=")
    assert verify_signature(request.body, request.headers, HOOK_SECRET.encode())


def test_webhook_signature_fails_with_wrong_secret_altered_body_or_stale_timestamp() -> None:
    secret = HOOK_SECRET.encode()
    body, headers = webhook_request(_alert(), secret, now=1_700_000_000)

    assert verify_signature(body, headers, secret, now=1_700_000_000)
    assert verify_signature(body, {k.lower(): v for k, v in headers.items()}, secret, now=1_700_000_299)
    assert not verify_signature(body, headers, b"another secret", now=1_700_000_000)
    assert not verify_signature(body.replace(b"critical", b"info"), headers, secret, now=1_700_000_000)
    assert not verify_signature(body, headers, secret, now=1_700_000_301)  # replayed too late
    assert not verify_signature(body, headers, secret, now=1_699_999_699)  # from the future
    assert not verify_signature(body, headers, secret, tolerance=10, now=1_700_000_011)
    # The timestamp is signed: moving it forward breaks the signature.
    assert not verify_signature(body, {**headers, TIMESTAMP_HEADER: "1700000100"}, secret, now=1_700_000_100)
    assert not verify_signature(body, {**headers, TIMESTAMP_HEADER: "+1700000000"}, secret, now=1_700_000_000)
    assert not verify_signature(body, {**headers, TIMESTAMP_HEADER: "soon"}, secret, now=1_700_000_000)
    hex_only = headers[SIGNATURE_HEADER].removeprefix("sha256=")
    assert not verify_signature(body, {**headers, SIGNATURE_HEADER: hex_only}, secret, now=1_700_000_000)
    assert not verify_signature(body, {**headers, SIGNATURE_HEADER: "sha256=é"}, secret, now=1_700_000_000)
    assert not verify_signature(body, {TIMESTAMP_HEADER: "1700000000"}, secret, now=1_700_000_000)
    assert not verify_signature(body, {}, secret, now=1_700_000_000)


def test_webhook_signature_uses_the_documented_scheme() -> None:
    import hashlib
    import hmac

    body, headers = webhook_request(_alert(), b"k", now=42)

    expected = hmac.new(b"k", b"42." + body, hashlib.sha256).hexdigest()
    assert headers == {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: "42",
        SIGNATURE_HEADER: f"sha256={expected}",
    }


# -- failures ----------------------------------------------------------------------------------

KINDS = ["slack", "pagerduty", "webhook"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("status", "retriable"),
    [(500, True), (503, True), (429, True), (408, True), (400, False), (403, False), (404, False), (410, False)],
)
def test_http_failures_map_to_delivery_error(
    serve: Callable[..., Receiver], kind: str, status: int, retriable: bool
) -> None:
    receiver = serve(status, b"invalid_payload", headers={"Retry-After": "7"} if status == 429 else None)

    with pytest.raises(DeliveryError) as caught:
        _channel(kind, receiver.base).send(_alert())

    assert caught.value.retriable is retriable
    message = str(caught.value)
    assert f"HTTP {status}" in message and "invalid_payload" in message
    assert {"slack": "Slack channel 'ops'", "pagerduty": "PagerDuty channel 'oncall'"}.get(
        kind, "webhook channel 'audit'"
    ) in message
    if status == 429:
        assert "retry after 7 s" in message
    assert len(receiver.requests) == 1  # no retries inside the channel


@pytest.mark.parametrize("kind", KINDS)
def test_redirects_are_not_followed(serve: Callable[..., Receiver], kind: str) -> None:
    elsewhere = serve(200, b"ok")
    receiver = serve(307, b"", headers={"Location": f"{elsewhere.base}/stolen"})

    with pytest.raises(DeliveryError) as caught:
        _channel(kind, receiver.base).send(_alert())

    assert not caught.value.retriable
    assert "HTTP 307" in str(caught.value) and "redirects are not followed" in str(caught.value)
    assert elsewhere.requests == []


def _refused_base() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("kind", KINDS)
def test_connection_refused_is_retriable(kind: str) -> None:
    with pytest.raises(DeliveryError) as caught:
        _channel(kind, _refused_base()).send(_alert())

    assert caught.value.retriable
    assert "cannot connect" in str(caught.value)


@pytest.mark.parametrize("kind", KINDS)
def test_server_slower_than_the_timeout_is_retriable(serve: Callable[..., Receiver], kind: str) -> None:
    receiver = serve(200, b"ok", delay=5.0)

    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        _channel(kind, receiver.base, timeout=0.3).send(_alert())

    assert time.monotonic() - started < 2.0
    assert caught.value.retriable
    assert "no answer within 0.3 s" in str(caught.value)


def test_make_channel_rejects_a_non_http_url_without_quoting_it() -> None:
    with pytest.raises(ConfigError) as caught:
        _slack(f"file:///etc/{SLACK_TOKEN}")

    assert "Slack channel 'ops'" in str(caught.value)
    assert SLACK_TOKEN not in str(caught.value)


# -- secrecy -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_secrets_never_appear_in_logs_or_errors(
    serve: Callable[..., Receiver], caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level(logging.DEBUG)
    # A hostile or buggy endpoint echoes the request back in its error page.
    echo = f"bad request to /services/{SLACK_TOKEN} /v2/enqueue?token={HOOK_TOKEN} key {ROUTING_KEY}".encode()
    answering = serve(
        200, b"ok", then=[(500, echo, {}), (400, echo, {}), (302, echo, {"Location": "http://127.0.0.1:1/x"})]
    )
    slow = serve(200, b"ok", delay=5.0)
    # Each channel knows (and must hide) its own secrets and its URLs.
    own = {"slack": [SLACK_TOKEN], "pagerduty": [ROUTING_KEY], "webhook": [HOOK_TOKEN, HOOK_SECRET]}[kind]
    secrets = [*own, answering.base, slow.base]
    errors: list[DeliveryError] = []

    channel = _channel(kind, answering.base)
    channel.send(_alert())  # success logs at DEBUG
    for _ in range(3):
        with pytest.raises(DeliveryError) as caught:
            channel.send(_alert())
        errors.append(caught.value)
    for target in (_channel(kind, _refused_base()), _channel(kind, slow.base, timeout=0.2)):
        with pytest.raises(DeliveryError) as caught:
            target.send(_alert())
        errors.append(caught.value)
    for error in errors:
        # As the consumer will: log the failure with its traceback and chained causes.
        logging.getLogger("strandline.test").error("delivery failed: %s", error, exc_info=error)

    assert len(errors) == 5 and [e.retriable for e in errors] == [True, False, False, True, True]
    assert "***" in str(errors[0])  # the echoed secrets were redacted, the rest of the page kept
    shown = caplog.text + "".join(f"{e!s} {e!r} {''.join(traceback.format_exception(e))}" for e in errors)
    assert "delivered trigger of alert strandline/sales/drift" in caplog.text
    for secret in secrets:
        assert secret not in shown, secret
