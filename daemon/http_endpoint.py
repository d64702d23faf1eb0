"""A small HTTP endpoint for operators: /healthz, /readyz and /metrics, served from a daemon thread.

Shared by `strandline watch --http` and `strandline consume --metrics-port`. Each route is a
function returning (status, content type, body); the server never logs requests (scrapes come
every few seconds) and answers 404 with the list of routes for anything else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from daemon.errors import ConfigError

log = logging.getLogger(__name__)

Route = Callable[[], tuple[int, str, bytes]]


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``:PORT`` or a bare port means all interfaces) as a (host, port) pair."""
    host, _, port = address.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ConfigError(f"HTTP address {address!r}: write HOST:PORT, e.g. 127.0.0.1:9464")
    return host.strip("[]") or "0.0.0.0", number  # noqa: S104 (the operator chose no host)


def serve(host: str, port: int, routes: Mapping[str, Route], *, name: str = "http") -> ThreadingHTTPServer:
    """Serve ``routes`` on host:port in a daemon thread; ``server.shutdown()`` stops it."""

    class _Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                status, ctype = 404, "text/plain; charset=utf-8"
                body = ("not found: try " + ", ".join(sorted(routes)) + "\n").encode()
            else:
                try:
                    status, ctype, body = route()
                except Exception:  # a broken probe must answer, not hang the scraper
                    log.exception("HTTP route %s failed", self.path)
                    status, ctype, body = 500, "text/plain; charset=utf-8", b"internal error\n"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    try:
        server = ThreadingHTTPServer((host, port), _Handler)
    except OSError as exc:
        raise ConfigError(f"cannot serve HTTP on {host}:{port}: {exc.strerror}; choose another port") from exc
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server
