"""Alert channels: Slack, PagerDuty and a signed generic webhook, behind one ``Channel`` interface.

The payload builders (``slack_payload``, ``pagerduty_payload``, ``webhook_request``) are pure
functions of an ``Alert``; the channels are thin HTTP adapters around them. A send is one POST
with the configured timeout, no retries and no redirects followed: the alerts consumer owns the
retries and reads ``DeliveryError.retriable`` to decide.

The webhook URLs, the PagerDuty routing key and the signing secret are secrets: no message, log
line or exception chain raised from here contains them; a channel is named as
"Slack channel 'ops'" instead.

Signing of the generic webhook, as Stripe and Slack sign theirs::

    X-Strandline-Timestamp: <unix seconds>
    X-Strandline-Signature: sha256=<hex HMAC-SHA256(secret, b"<timestamp>." + body)>

The timestamp is inside the signed bytes, so a captured request cannot be replayed once it is
older than the receiver's tolerance (``verify_signature``, five minutes by default).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from datetime import UTC
from email.message import Message
from http.client import HTTPException
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from daemon.errors import ConfigError, DeliveryError
from schemas.alerts import Alert
from schemas.config import PagerDutyChannel, SlackChannel, WebhookChannel

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Channel",
    "make_channel",
    "pagerduty_payload",
    "slack_payload",
    "verify_signature",
    "webhook_request",
]

logger = logging.getLogger(__name__)

TIMESTAMP_HEADER: Final = "X-Strandline-Timestamp"
SIGNATURE_HEADER: Final = "X-Strandline-Signature"
_USER_AGENT: Final = "strandline-alerts/1"

# Slack Block Kit limits (docs.slack.dev/reference/block-kit/blocks): 50 blocks a message; a
# header's plain_text at most 150 characters; a section's text at most 3000, its fields at most
# 10 of at most 2000 each; a context at most 10 elements. Slack also rejects messages whose blocks
# hold well under the documented 40,000 characters in total (msg_blocks_too_long near 13,000,
# slackapi/bolt-js#2509), so the reasons shown are capped far below that.
SLACK_MAX_BLOCKS: Final = 50
SLACK_HEADER_MAX: Final = 150
SLACK_SECTION_TEXT_MAX: Final = 3000
SLACK_FIELDS_MAX: Final = 10
SLACK_FIELD_TEXT_MAX: Final = 2000
SLACK_CONTEXT_ELEMENTS_MAX: Final = 10
SLACK_REASONS_SHOWN: Final = 20
SLACK_REASON_MAX: Final = 300
_SLACK_CONTEXT_TEXT_MAX: Final = 300
_SLACK_FALLBACK_MAX: Final = 3000

# PagerDuty Events API v2 (PagerDuty/api-schema reference/events-v2/openapiv3.json and
# developer.pagerduty.com "Send an Alert Event"): summary at most 1024 characters, dedup_key at
# most 255, the whole event at most 512 KB; 202 means accepted, 429 and 5xx are to be retried.
PAGERDUTY_SUMMARY_MAX: Final = 1024
PAGERDUTY_DEDUP_KEY_MAX: Final = 255
PAGERDUTY_REASONS_MAX: Final = 100
PAGERDUTY_REASON_MAX: Final = 1024
PAGERDUTY_GROUP: Final = "strandline"

_ERROR_BODY_MAX: Final = 200
_READ_MAX: Final = 64 * 1024
_ELLIPSIS: Final = "…"


class Channel(Protocol):
    """Where alerts go. ``send`` raises ``DeliveryError`` (with ``retriable``) when it fails."""

    name: str

    def send(self, alert: Alert) -> None: ...


def make_channel(name: str, config: SlackChannel | PagerDutyChannel | WebhookChannel, *, timeout: float) -> Channel:
    """The channel configured as ``[alerts.channels.<name>]``, sending with ``timeout`` seconds per request.

    Raises ``ConfigError`` when its URL is not http(s) (the message names the channel, never the URL).
    """
    if isinstance(config, SlackChannel):
        return _SlackSender(name, config, timeout)
    if isinstance(config, PagerDutyChannel):
        return _PagerDutySender(name, config, timeout)
    return _WebhookSender(name, config, timeout)


# -- payloads (pure) ---------------------------------------------------------------------------


def _clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS


_MRKDWN_ESCAPES: Final = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _mrkdwn(text: str, limit: int) -> str:
    """``text`` escaped for Slack mrkdwn, cut so that the escaped form has at most ``limit`` characters.

    Slack reads ``<...>`` as links and mentions (``<!channel>``) and ``&`` as an entity; data-borne
    text (dataset and column names, expectation arguments) must not ping a channel or fake a link.
    The cut never splits an entity.
    """
    escaped = "".join(_MRKDWN_ESCAPES.get(ch, ch) for ch in text)
    if len(escaped) <= limit:
        return escaped
    out: list[str] = []
    size = 0
    for ch in text:
        piece = _MRKDWN_ESCAPES.get(ch, ch)
        if size + len(piece) > limit - 1:
            break
        out.append(piece)
        size += len(piece)
    return "".join(out) + _ELLIPSIS


def _subject(alert: Alert) -> str:
    return alert.dataset if alert.dataset is not None else "Strandline daemon"


def _slack_header(alert: Alert) -> str:
    status = "RESOLVED" if alert.action == "resolve" else alert.severity.upper()
    return _clip(f"[{status}] {alert.kind} on {_subject(alert)}", SLACK_HEADER_MAX)


def _reason_sections(reasons: tuple[str, ...]) -> list[dict[str, Any]]:
    """Reasons as bullet lines packed into sections of at most 3000 characters, the first 20 shown."""
    lines = [f"• {_mrkdwn(r, SLACK_REASON_MAX)}" for r in reasons[:SLACK_REASONS_SHOWN]]
    if len(reasons) > SLACK_REASONS_SHOWN:
        lines.append(f"_…and {len(reasons) - SLACK_REASONS_SHOWN} more, in the alert's event and `strandline show`._")
    sections: list[dict[str, Any]] = []
    chunk = "*Why*"
    for line in lines:
        if len(chunk) + 1 + len(line) > SLACK_SECTION_TEXT_MAX:
            sections.append(_section(chunk))
            chunk = line
        else:
            chunk = f"{chunk}\n{line}"
    sections.append(_section(chunk))
    return sections


def _section(mrkdwn: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn}}


def _field(label: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": _mrkdwn(f"{label}\n{value}", SLACK_FIELD_TEXT_MAX)}


def slack_payload(alert: Alert) -> dict[str, Any]:
    """A Slack incoming-webhook message: a ``text`` fallback (notifications) and Block Kit ``blocks``.

    Header (severity or RESOLVED, kind, dataset), the summary, facts as fields, the reasons (the
    first 20, each cut to 300 characters) and a context line with host, version, event id and,
    when repeats were grouped, the occurrences. Every text from the alert is escaped for mrkdwn.
    """
    header = _slack_header(alert)
    resolved = alert.action == "resolve"
    lead = "*Cleared.* " if resolved else ""
    summary = lead + _mrkdwn(alert.summary, SLACK_SECTION_TEXT_MAX - len(lead))
    facts = [
        _field("*Status*", "resolved" if resolved else "open"),
        _field("*Severity*", alert.severity),
        _field("*Kind*", alert.kind),
        _field("*Dataset*", alert.dataset if alert.dataset is not None else "(daemon)"),
    ]
    if alert.version is not None:
        facts.append(_field("*Version*", str(alert.version)))
    context = [
        f"host {_mrkdwn(alert.source, _SLACK_CONTEXT_TEXT_MAX)}",
        *([f"version {alert.version}"] if alert.version is not None else []),
        f"event {_mrkdwn(alert.event_id, _SLACK_CONTEXT_TEXT_MAX)}",
        f"key {_mrkdwn(alert.key, _SLACK_CONTEXT_TEXT_MAX)}",
    ]
    if alert.occurrences > 1:
        context.append(f"{alert.occurrences} occurrences")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": False}},
        _section(summary),
        {"type": "section", "fields": facts[:SLACK_FIELDS_MAX]},
    ]
    if alert.reasons:
        blocks.extend(_reason_sections(alert.reasons))
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": t} for t in context[:SLACK_CONTEXT_ELEMENTS_MAX]],
        }
    )
    # Header, summary, facts, at most three reason sections and the context: far below 50, but
    # the cap keeps the invariant if the layout grows.
    if len(blocks) > SLACK_MAX_BLOCKS:
        blocks = [*blocks[: SLACK_MAX_BLOCKS - 1], blocks[-1]]
    text = _mrkdwn(f"{header}: {'cleared: ' if resolved else ''}{alert.summary}", _SLACK_FALLBACK_MAX)
    return {"text": text, "blocks": blocks}


def _dedup_key(key: str) -> str:
    """``key`` as a PagerDuty dedup_key: itself when it fits in 255 characters, else a stable prefix and hash."""
    if len(key) <= PAGERDUTY_DEDUP_KEY_MAX:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"{key[: PAGERDUTY_DEDUP_KEY_MAX - 33]}#{digest}"


def pagerduty_payload(alert: Alert, routing_key: str) -> dict[str, Any]:
    """A PagerDuty Events API v2 event: trigger with the full payload, resolve with the dedup_key only.

    ``dedup_key`` is the alert's ``key``, so a resolve closes the incident its trigger opened and
    repeats while it is open group into that incident.
    """
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": alert.action,
        "dedup_key": _dedup_key(alert.key),
    }
    if alert.action == "resolve":
        return event
    occurred = alert.occurred_at if alert.occurred_at.tzinfo is not None else alert.occurred_at.replace(tzinfo=UTC)
    details: dict[str, Any] = {
        "reasons": [_clip(r, PAGERDUTY_REASON_MAX) for r in alert.reasons[:PAGERDUTY_REASONS_MAX]],
        "version": alert.version,
        "event_id": alert.event_id,
        "event_type": alert.event_type,
        "occurrences": alert.occurrences,
        "key": alert.key,
    }
    if len(alert.reasons) > PAGERDUTY_REASONS_MAX:
        details["reasons_total"] = len(alert.reasons)
    if alert.details:
        details["details"] = alert.details
    payload: dict[str, Any] = {
        "summary": _clip(alert.summary or f"{alert.kind} alert", PAGERDUTY_SUMMARY_MAX),
        "source": alert.source or "strandline",
        "severity": alert.severity,
        "timestamp": occurred.isoformat(),
        "group": PAGERDUTY_GROUP,
        "class": alert.kind,
        "custom_details": details,
    }
    if alert.dataset is not None:
        payload["component"] = alert.dataset
    event["payload"] = payload
    return event


def _signature(secret: bytes, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def sign_body(body: bytes, secret: bytes, *, now: int) -> dict[str, str]:
    """The timestamp and HMAC-SHA256 signature headers of ``body`` signed at unix time ``now``."""
    timestamp = str(int(now))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: _signature(secret, timestamp, body)}


def webhook_request(alert: Alert, secret: bytes, *, now: int) -> tuple[bytes, dict[str, str]]:
    """The generic webhook's body (the Alert's JSON) and headers, signed at unix time ``now``."""
    body = alert.model_dump_json().encode()
    return body, {"Content-Type": "application/json", **sign_body(body, secret, now=now)}


_TIMESTAMP_RE: Final = re.compile(r"[0-9]{1,15}")


def verify_signature(
    body: bytes, headers: Mapping[str, str], secret: bytes, *, tolerance: int = 300, now: int | None = None
) -> bool:
    """Whether ``body`` and ``headers`` carry a valid signature by ``secret``, made within ``tolerance`` seconds of now.

    For receivers of the generic webhook (and the tests). Header names are matched without regard
    to case; the signature is compared in constant time. Never raises on malformed input.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    timestamp = lowered.get(TIMESTAMP_HEADER.lower())
    signature = lowered.get(SIGNATURE_HEADER.lower())
    if not timestamp or not signature or not _TIMESTAMP_RE.fullmatch(timestamp):
        return False
    current = int(time.time()) if now is None else now
    if abs(current - int(timestamp)) > tolerance:
        return False
    expected = _signature(secret, timestamp, body)
    return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))


# -- HTTP adapters -----------------------------------------------------------------------------


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: a redirected alert endpoint is misconfigured, and the body is not to be re-sent elsewhere."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None  # urllib then raises HTTPError with the 3xx code


_OPENER: Final = urllib.request.build_opener(_NoRedirects)


def _retriable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _snippet(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    return _clip(text, _ERROR_BODY_MAX)


class HttpPoster:
    """POST to one secret URL; translate every failure into a ``DeliveryError`` without secrets.

    ``label`` names the endpoint in messages ("Slack channel 'ops'"), never its URL. Shared by the
    alert channels and the retrain consumer's HTTP actions.
    """

    def __init__(self, label: str, url: str, secrets: Iterable[str], timeout: float) -> None:
        self.label = label
        self._url = url
        self._timeout = timeout
        # Parts of the URL count too: a server's error page or an exception may quote the path alone.
        parts = urlsplit(url)
        self._secrets = tuple(s for s in {url, *secrets, parts.path, parts.query, parts.netloc} if len(s) >= 4)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{self.label}: the URL must be http:// or https:// (not shown: it is a secret)")

    def _redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def _leaks(self, exc: BaseException | None) -> bool:
        seen = 0
        while exc is not None and seen < 10:
            text = f"{exc!s} {exc!r} {exc.args!r}"
            if any(secret in text for secret in self._secrets):
                return True
            exc = exc.__cause__ or exc.__context__
            seen += 1
        return False

    def _error(self, message: str, *, retriable: bool) -> DeliveryError:
        return DeliveryError(self._redact(f"{self.label}: {message}"), retriable=retriable)

    def _safe(self, cause: BaseException) -> BaseException | None:
        """``cause`` if nothing in it (or its chain) names the URL or a key, for ``raise ... from``; else None."""
        return None if self._leaks(cause) else cause

    def post(self, body: bytes, headers: Mapping[str, str], what: str = "request") -> int:
        """Send ``body``; the 2xx status, or ``DeliveryError`` (``retriable`` says whether to try again)."""
        started = time.monotonic()
        try:
            request = urllib.request.Request(  # noqa: S310 (the scheme is checked to be http(s) in __init__)
                self._url, data=body, method="POST", headers={"User-Agent": _USER_AGENT, **headers}
            )
            with _OPENER.open(request, timeout=self._timeout) as response:
                status = int(response.status)
                response.read(_READ_MAX)
        except urllib.error.HTTPError as exc:
            try:
                detail = _snippet(exc.read(_READ_MAX))
            except (OSError, HTTPException):
                detail = ""
            finally:
                exc.close()
            raise self._http_error(exc.code, detail, exc.headers) from self._safe(exc)
        except urllib.error.URLError as exc:
            reason = exc.reason
            message = (
                f"no answer within {self._timeout:g} s"
                if isinstance(reason, TimeoutError)
                else f"cannot connect: {reason}"
            )
            raise self._error(message, retriable=True) from self._safe(exc)
        except TimeoutError as exc:
            raise self._error(f"no answer within {self._timeout:g} s", retriable=True) from self._safe(exc)
        except (OSError, HTTPException) as exc:
            message = f"connection failed: {type(exc).__name__}: {exc}"
            raise self._error(message, retriable=True) from self._safe(exc)
        except ValueError as exc:  # a URL urllib cannot parse; its message would quote the URL
            message = "the URL is not valid (not shown: it is a secret)"
            raise self._error(message, retriable=False) from self._safe(exc)
        if not 200 <= status < 300:
            raise self._http_error(status, "", None)
        logger.debug("%s delivered %s (HTTP %d, %.2f s)", self.label, what, status, time.monotonic() - started)
        return status

    def _http_error(self, status: int, detail: str, headers: Message | None) -> DeliveryError:
        retriable = _retriable_status(status)
        message = f"HTTP {status}"
        if detail:
            message += f" ({detail})"
        if 300 <= status < 400:
            message += "; redirects are not followed: configure the final URL"
        elif status == 429:
            retry_after = headers.get("Retry-After") if headers is not None else None
            message += f"; rate-limited, retry after {retry_after} s" if retry_after else "; rate-limited"
        elif retriable:
            message += "; the endpoint failed (retriable)"
        else:
            message += "; the endpoint refused the alert, check the channel's configuration"
        return self._error(message, retriable=retriable)


def _what(alert: Alert) -> str:
    return f"{alert.action} of alert {alert.key}"


class _SlackSender:
    def __init__(self, name: str, config: SlackChannel, timeout: float) -> None:
        self.name = name
        self._http = HttpPoster(f"Slack channel {name!r}", config.webhook_url.get_secret_value(), (), timeout)

    def send(self, alert: Alert) -> None:
        body = json.dumps(slack_payload(alert), ensure_ascii=False).encode()
        self._http.post(body, {"Content-Type": "application/json; charset=utf-8"}, _what(alert))


class _PagerDutySender:
    def __init__(self, name: str, config: PagerDutyChannel, timeout: float) -> None:
        self.name = name
        self._routing_key = config.routing_key.get_secret_value()
        url = config.events_url.get_secret_value()
        self._http = HttpPoster(f"PagerDuty channel {name!r}", url, (self._routing_key,), timeout)

    def send(self, alert: Alert) -> None:
        body = json.dumps(pagerduty_payload(alert, self._routing_key), ensure_ascii=False).encode()
        # The Events API answers 202 Accepted; any 2xx is taken as delivered.
        self._http.post(body, {"Content-Type": "application/json"}, _what(alert))


class _WebhookSender:
    def __init__(self, name: str, config: WebhookChannel, timeout: float) -> None:
        self.name = name
        self._secret = config.secret.get_secret_value()
        self._http = HttpPoster(f"webhook channel {name!r}", config.url.get_secret_value(), (self._secret,), timeout)

    def send(self, alert: Alert) -> None:
        body, headers = webhook_request(alert, self._secret.encode(), now=int(time.time()))
        self._http.post(body, headers, _what(alert))
