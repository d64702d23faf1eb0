#!/usr/bin/env python3
"""A real Google Cloud Storage emulator for development and tests, without Docker or a cloud account.

The emulator is fake-gcs-server (github.com/fsouza/fake-gcs-server), built once from the Go module
proxy with ``go install`` into ``.cache/gcs/bin`` (about two minutes cold, then cached). It speaks
the GCS JSON API (paged listings, generations, media downloads) over plain HTTP on 127.0.0.1.
With ``--backend filesystem`` its objects live in ``DIR/data`` and survive a restart; with
``memory`` (the default) a restart empties it.

    python scripts/gcs_server.py install [--optional]          build the emulator once
    python scripts/gcs_server.py ensure [--endpoint URL]        start one unless a GCS emulator answers
    python scripts/gcs_server.py start [--port P] --dir D [--backend memory|filesystem]
    python scripts/gcs_server.py stop --dir D

``start`` prints the endpoint URL (``http://127.0.0.1:PORT``) to pass as ``[gcs] endpoint_url``;
the emulator accepts any or no credentials (``[gcs] anonymous = true``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from _procs import ToolMissingError, answers, build_lock, launch, pick_port, stop_server

REPO = Path(__file__).resolve().parent.parent
MODULE = "github.com/fsouza/fake-gcs-server"
VERSION = "v1.56.1"
CACHE = REPO / ".cache" / "gcs"
BIN_DIR = CACHE / "bin"
BINARY = BIN_DIR / "fake-gcs-server"
STAMP = BIN_DIR / "fake-gcs-server.version"
DEV_DIR = CACHE / "dev"
DEFAULT_ENDPOINT = "http://127.0.0.1:4443"


def installed() -> bool:
    return BINARY.exists() and STAMP.exists() and STAMP.read_text().strip() == VERSION


def install() -> Path:
    """Build fake-gcs-server ``VERSION`` into ``.cache/gcs/bin`` unless it is there; return the binary.

    Raises ``ToolMissingError`` when ``go`` is not on PATH. Concurrent callers wait for one build.
    """
    if installed():
        return BINARY
    go = shutil.which("go")
    if go is None:
        raise ToolMissingError(
            f"the GCS emulator is built from source with Go, and `go` is not on PATH: install Go "
            f"(https://go.dev/dl/) to build {MODULE}@{VERSION}, which needs Go 1.26 (Go 1.21+ fetches it itself)"
        )
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    with build_lock(CACHE / ".build.lock"):
        if installed():
            return BINARY
        print(f"building {MODULE}@{VERSION} into {BIN_DIR} (once; about two minutes) …", file=sys.stderr)
        env = {**os.environ, "GOBIN": str(BIN_DIR), "CGO_ENABLED": "0"}
        subprocess.run([go, "install", f"{MODULE}@{VERSION}"], check=True, env=env, stdin=subprocess.DEVNULL)
        STAMP.write_text(VERSION + "\n")
    return BINARY


def start(directory: Path, port: int | None = None, *, backend: str = "memory", timeout: float = 30.0) -> str:
    """Start an emulator whose pid, port, log (and objects, with the filesystem backend) live in
    ``directory``; return its endpoint URL.

    Without ``port``, a restart in the same directory reuses the previous port (so clients keep
    their endpoint), else a free port is picked.
    """
    if backend not in ("memory", "filesystem"):
        raise ValueError(f"backend must be 'memory' or 'filesystem', not {backend!r}")
    binary = install()
    port = pick_port(directory, port)
    endpoint = f"http://127.0.0.1:{port}"
    command = [
        str(binary),
        "-scheme",
        "http",
        "-host",
        "127.0.0.1",
        "-port",
        str(port),
        "-backend",
        backend,
        "-filesystem-root",
        str(directory / "data"),
        "-external-url",
        endpoint,
        "-public-host",
        f"127.0.0.1:{port}",
        "-log-level",
        "info",  # one line per request: tests count listings in it
    ]
    launch(directory, port, command, endpoint + "/storage/v1/b", what="the GCS emulator", timeout=timeout)
    return endpoint


def stop(directory: Path, *, hard: bool = False) -> None:
    """Stop the emulator started in ``directory`` (SIGTERM, SIGKILL after 10 s); no-op if none runs."""
    stop_server(directory / "server.pid", hard=hard)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_install = sub.add_parser("install")
    p_install.add_argument("--optional", action="store_true", help="say so and exit 0 when Go is missing")
    p_ensure = sub.add_parser("ensure")
    p_ensure.add_argument("--endpoint", default=os.environ.get("STRANDLINE_GCS_ENDPOINT_URL", DEFAULT_ENDPOINT))
    p_ensure.add_argument("--dir", type=Path, default=DEV_DIR)
    p_ensure.add_argument("--backend", choices=("memory", "filesystem"), default="filesystem")
    p_start = sub.add_parser("start")
    p_start.add_argument("--port", type=int)
    p_start.add_argument("--dir", type=Path, default=DEV_DIR)
    p_start.add_argument("--backend", choices=("memory", "filesystem"), default="memory")
    p_stop = sub.add_parser("stop")
    p_stop.add_argument("--dir", type=Path, default=DEV_DIR)
    args = parser.parse_args()
    try:
        if args.cmd == "install":
            print(install())
        elif args.cmd == "ensure":
            if answers(args.endpoint.rstrip("/") + "/storage/v1/b"):
                print(f"a GCS emulator answers at {args.endpoint}", file=sys.stderr)
                return
            url = urlsplit(args.endpoint)
            if url.hostname not in ("127.0.0.1", "localhost") or url.port is None:
                sys.exit(f"nothing answers at {args.endpoint}, and a local emulator can only start on 127.0.0.1:PORT")
            print(f"starting a GCS emulator at {args.endpoint} (pid, log, data in {args.dir}) …", file=sys.stderr)
            print(start(args.dir, url.port, backend=args.backend), file=sys.stderr)
        elif args.cmd == "start":
            print(start(args.dir, args.port, backend=args.backend))
        elif args.cmd == "stop":
            stop(args.dir)
    except ToolMissingError as exc:
        if args.cmd == "install" and args.optional:
            print(f"skipped: {exc}", file=sys.stderr)
            return
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
