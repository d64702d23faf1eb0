#!/usr/bin/env python3
"""A real S3-compatible server for development and tests, without Docker or a cloud account.

The server is moto's standalone server (``moto[server]`` from PyPI, a Flask app that speaks the
S3 REST API) in its own process on 127.0.0.1. Its state lives in memory: a restart empties it.

    python scripts/s3_server.py ensure [--endpoint URL]     start one unless an S3 server answers
    python scripts/s3_server.py start [--port P] --dir D     start one whose pid and log live in D
    python scripts/s3_server.py stop --dir D                 stop it

``start`` prints the endpoint URL (``http://127.0.0.1:PORT``) to pass as ``endpoint_url``.
Any access key and secret are accepted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from _procs import answers as _answers
from _procs import launch, pick_port, stop_server

REPO = Path(__file__).resolve().parent.parent
DEV_DIR = REPO / ".cache" / "s3" / "dev"
DEFAULT_ENDPOINT = "http://127.0.0.1:5000"


def answers(endpoint: str, timeout: float = 0.5) -> bool:
    """True when an HTTP server answers at ``endpoint`` (any status: S3 answers 403 to strangers)."""
    return _answers(endpoint.rstrip("/") + "/", timeout)


def start(
    directory: Path, port: int | None = None, *, env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> str:
    """Start a server whose pid, port and log live in ``directory``; return its endpoint URL.

    Without ``port``, a restart in the same directory reuses the previous port (so clients keep
    their endpoint), else a free port is picked. ``env`` adds variables for moto, e.g.
    ``INITIAL_NO_AUTH_ACTION_COUNT=N``: after N requests moto checks IAM credentials and policies.
    """
    port = pick_port(directory, port)
    endpoint = f"http://127.0.0.1:{port}"
    launch(
        directory,
        port,
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        endpoint,
        what="the S3 server",
        timeout=timeout,
        env=env,
        exit_hint="taken? moto[server] missing?",
    )
    return endpoint


def stop(directory: Path, *, hard: bool = False) -> None:
    """Stop the server started in ``directory`` (SIGTERM, SIGKILL after 10 s); no-op if none runs."""
    stop_server(directory / "server.pid", hard=hard)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_ensure = sub.add_parser("ensure")
    p_ensure.add_argument("--endpoint", default=os.environ.get("STRANDLINE_S3_ENDPOINT_URL", DEFAULT_ENDPOINT))
    p_ensure.add_argument("--dir", type=Path, default=DEV_DIR)
    p_start = sub.add_parser("start")
    p_start.add_argument("--port", type=int)
    p_start.add_argument("--dir", type=Path, default=DEV_DIR)
    p_stop = sub.add_parser("stop")
    p_stop.add_argument("--dir", type=Path, default=DEV_DIR)
    args = parser.parse_args()
    if args.cmd == "ensure":
        if answers(args.endpoint):
            print(f"an S3 server answers at {args.endpoint}", file=sys.stderr)
            return
        url = urlsplit(args.endpoint)
        if url.hostname not in ("127.0.0.1", "localhost") or url.port is None:
            sys.exit(f"nothing answers at {args.endpoint}, and a local server can only be started on 127.0.0.1:PORT")
        print(f"starting a local S3 server at {args.endpoint} (pid and log in {args.dir}) …", file=sys.stderr)
        print(start(args.dir, url.port), file=sys.stderr)
    elif args.cmd == "start":
        print(start(args.dir, args.port))
    elif args.cmd == "stop":
        stop(args.dir)


if __name__ == "__main__":
    main()
