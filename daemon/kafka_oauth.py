"""OAUTHBEARER tokens for Kafka: a fixed token, a token file, or the OAuth 2 client-credentials grant.

kafka-python asks its ``sasl_oauth_token_provider`` for a token at every connection (and
re-authentication), from its network thread. The providers here are thread-safe, never log a
token or a client secret, and raise ``PublishError`` with what to check when no token can be had.

The client-credentials provider (RFC 6749 §4.4) POSTs ``grant_type=client_credentials`` with the
client's id and secret in HTTP Basic auth (§2.3.1), caches the ``access_token`` and fetches a new
one once 80% of its ``expires_in`` has passed (as Kafka's own ``sasl.login.refresh.window.factor``).
When a refresh fails while the cached token is still valid, the cached one is used and the refresh
is tried again at the next connection.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from email.message import Message
from http.client import HTTPException
from pathlib import Path
from typing import Any, Final

from kafka.net.sasl.oauth import AbstractTokenProvider

from daemon.errors import PublishError

__all__ = ["ClientCredentialsTokenProvider", "StaticTokenProvider", "read_secret_file"]

log = logging.getLogger(__name__)

REFRESH_FACTOR: Final = 0.8
# Without expires_in (it is only RECOMMENDED, RFC 6749 §5.1) a token is refreshed this often.
DEFAULT_LIFETIME_SECONDS: Final = 300.0
_READ_MAX: Final = 64 * 1024


def read_secret_file(path: Path, what: str) -> str:
    """The secret in ``path`` without one trailing newline (as ``echo`` and editors leave it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise PublishError(f"cannot read {what} {path}: {reason}; check the path and its permissions") from exc
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise PublishError(f"{what} {path} is empty")
    return secret


class StaticTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """A bearer token given in the config, or read from a file at every connection (for rotating agents).

    ``on_token`` is called with the token each time it is handed out (kafka_client masks it in logs).
    """

    def __init__(
        self,
        token: str | None = None,
        token_file: Path | None = None,
        *,
        on_token: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        if (token is None) == (token_file is None):
            raise ValueError("give token or token_file")
        self._token = token
        self._file = token_file
        self._on_token = on_token

    def token(self) -> str:
        if self._file is not None:
            token = read_secret_file(self._file, "[kafka] sasl_oauth_token_file")
        else:
            assert self._token is not None
            token = self._token
        if self._on_token is not None:
            self._on_token(token)
        return token


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A token endpoint that redirects is misconfigured; the client secret is not to be re-sent elsewhere."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Message, newurl: str
    ) -> urllib.request.Request | None:
        return None


_OPENER: Final = urllib.request.build_opener(_NoRedirects)


class ClientCredentialsTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """Tokens from an OAuth 2 token endpoint with the client-credentials grant, cached until 80% of their life.

    ``client_secret`` is a callable so that a secret file is read at each request, not once.
    ``on_token`` is called with every new token (kafka_client registers it for log redaction).
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: Callable[[], str],
        *,
        scope: str | None = None,
        timeout: float = 10.0,
        on_token: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._url = token_url
        parts = urllib.parse.urlsplit(token_url)
        # Named in messages without query or user info, either of which could carry a secret.
        self.endpoint = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope
        self._timeout = timeout
        self._on_token = on_token
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self._expires_at = 0.0

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is not None and now < self._refresh_at:
                return self._token
            try:
                token, lifetime = self._fetch()
            except PublishError as exc:
                if self._token is not None and now < self._expires_at:
                    log.warning("OAuth token refresh failed, using the cached token until it expires: %s", exc)
                    return self._token
                raise
            self._token = token
            self._refresh_at = now + lifetime * REFRESH_FACTOR
            self._expires_at = now + lifetime
            return token

    def _fetch(self) -> tuple[str, float]:
        """A new token and its lifetime in seconds."""
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        # RFC 6749 §2.3.1: id and secret are form-urlencoded before they are put into Basic auth.
        pair = f"{urllib.parse.quote(self._client_id, safe='')}:{urllib.parse.quote(self._client_secret(), safe='')}"
        request = urllib.request.Request(  # noqa: S310 - the config validator allows https:// (http:// on loopback)
            self._url,
            data=urllib.parse.urlencode(form).encode(),
            method="POST",
            headers={
                "Authorization": "Basic " + base64.b64encode(pair.encode()).decode(),
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
                "User-Agent": "strandline-kafka-oauth/1",
            },
        )
        where = f"OAuth token endpoint {self.endpoint}"
        try:
            with _OPENER.open(request, timeout=self._timeout) as response:
                body = response.read(_READ_MAX)
        except urllib.error.HTTPError as exc:
            exc.close()
            hint = (
                ": check oauth_client_id / oauth_client_secret"
                if exc.code in (400, 401, 403)
                else ": check oauth_token_url"
            )
            raise PublishError(f"{where} answered HTTP {exc.code}{hint}") from exc
        except urllib.error.URLError as exc:
            raise PublishError(f"{where} cannot be reached: {exc.reason}") from exc
        except (OSError, HTTPException) as exc:
            raise PublishError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
        try:
            answer = json.loads(body)
            token = answer["access_token"]
            lifetime = float(answer.get("expires_in", DEFAULT_LIFETIME_SECONDS))
        except (ValueError, KeyError, TypeError, AttributeError):
            # Not "from exc": a JSONDecodeError keeps the whole body, which may hold a token.
            raise PublishError(f"{where} did not answer a JSON object with an access_token") from None
        if not isinstance(token, str) or not token:
            raise PublishError(f"{where} answered an empty access_token")
        token_type = answer.get("token_type", "bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise PublishError(f"{where} answered token_type {token_type!r}; Kafka needs a bearer token")
        if self._on_token is not None:
            self._on_token(token)
        log.debug("fetched an OAuth token from %s, valid %.0f s", self.endpoint, lifetime)
        return token, max(lifetime, 1.0)
