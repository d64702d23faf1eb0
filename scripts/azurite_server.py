#!/usr/bin/env python3
"""A real Azure Blob Storage emulator for development and tests, without Docker or a cloud account.

The emulator is Azurite (Microsoft's, from the npm registry), installed once with ``npm install``
into ``.cache/azurite`` (under a minute cold, then cached) and run as ``azurite-blob`` on
127.0.0.1. Its blobs and metadata live in ``DIR/data`` and survive a restart. Telemetry is off.

    python scripts/azurite_server.py install [--optional]       install Azurite once
    python scripts/azurite_server.py ensure [--endpoint URL]     start one unless an emulator answers
    python scripts/azurite_server.py start [--port P] --dir D    start one whose pid, log and data live in D
    python scripts/azurite_server.py stop --dir D
    python scripts/azurite_server.py connection-string --endpoint URL

``start`` prints the blob endpoint (``http://127.0.0.1:PORT/devstoreaccount1``). Azurite knows one
account, ``devstoreaccount1``, with a key published in Microsoft's documentation (not a secret):
``connection-string`` prints the connection string to pass as ``[azure] connection_string``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from _procs import ToolMissingError, answers, build_lock, launch, pick_port, stop_server

REPO = Path(__file__).resolve().parent.parent
# 3.35 is the newest Azurite that runs on Node 20 (3.36 needs Node 21+, 3.37 Node 22+).
VERSION = "3.35.0"
CACHE = REPO / ".cache" / "azurite"
PREFIX = CACHE / "npm"
BINARY = PREFIX / "node_modules" / ".bin" / "azurite-blob"
STAMP = PREFIX / "azurite.version"
DEV_DIR = CACHE / "dev"
DEFAULT_ENDPOINT = "http://127.0.0.1:10000/devstoreaccount1"
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (https://learn.microsoft.com/azure/storage/common/storage-use-azurite).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def connection_string(endpoint: str) -> str:
    """The connection string of the development account at ``endpoint`` (the blob endpoint URL)."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint={endpoint.rstrip('/')};"
    )


def installed() -> bool:
    return BINARY.exists() and STAMP.exists() and STAMP.read_text().strip() == VERSION


def install() -> Path:
    """Install Azurite ``VERSION`` into ``.cache/azurite/npm`` unless it is there; return ``azurite-blob``.

    Raises ``ToolMissingError`` when ``npm`` (or ``node``) is not on PATH. Concurrent callers wait.
    """
    if installed():
        return BINARY
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise ToolMissingError(
            f"the Azure emulator (Azurite {VERSION}) is installed with npm, and `npm`/`node` are not on PATH: "
            "install Node.js 18+ with npm (https://nodejs.org/)"
        )
    PREFIX.mkdir(parents=True, exist_ok=True)
    with build_lock(CACHE / ".install.lock"):
        if installed():
            return BINARY
        print(f"installing azurite@{VERSION} into {PREFIX} (once; under a minute) …", file=sys.stderr)
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(PREFIX), f"azurite@{VERSION}"],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        STAMP.write_text(VERSION + "\n")
    return BINARY


def start(directory: Path, port: int | None = None, *, timeout: float = 60.0) -> str:
    """Start Azurite's blob service with its pid, port, log and data in ``directory``; return the
    blob endpoint URL.

    Without ``port``, a restart in the same directory reuses the previous port (so clients keep
    their endpoint), else a free port is picked. Blobs written before a restart are still there.
    """
    binary = install()
    port = pick_port(directory, port)
    endpoint = f"http://127.0.0.1:{port}/{ACCOUNT}"
    command = [
        str(binary),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        str(directory / "data"),
        "--skipApiVersionCheck",  # the Python SDK may speak a newer service version than this Azurite
        "--disableTelemetry",
        "--loose",
    ]
    launch(directory, port, command, f"http://127.0.0.1:{port}/", what="Azurite", timeout=timeout)
    return endpoint


def stop(directory: Path, *, hard: bool = False) -> None:
    """Stop the Azurite started in ``directory`` (SIGTERM, SIGKILL after 10 s); no-op if none runs."""
    stop_server(directory / "server.pid", hard=hard)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_install = sub.add_parser("install")
    p_install.add_argument("--optional", action="store_true", help="say so and exit 0 when npm is missing")
    p_ensure = sub.add_parser("ensure")
    p_ensure.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    p_ensure.add_argument("--dir", type=Path, default=DEV_DIR)
    p_start = sub.add_parser("start")
    p_start.add_argument("--port", type=int)
    p_start.add_argument("--dir", type=Path, default=DEV_DIR)
    p_stop = sub.add_parser("stop")
    p_stop.add_argument("--dir", type=Path, default=DEV_DIR)
    p_conn = sub.add_parser("connection-string")
    p_conn.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    args = parser.parse_args()
    try:
        if args.cmd == "install":
            print(install())
        elif args.cmd == "ensure":
            url = urlsplit(args.endpoint)
            if answers(f"{url.scheme}://{url.netloc}/"):
                print(f"an Azure emulator answers at {args.endpoint}", file=sys.stderr)
                return
            if url.hostname not in ("127.0.0.1", "localhost") or url.port is None:
                sys.exit(f"nothing answers at {args.endpoint}, and a local emulator can only start on 127.0.0.1:PORT")
            print(f"starting Azurite at {args.endpoint} (pid, log, data in {args.dir}) …", file=sys.stderr)
            print(start(args.dir, url.port), file=sys.stderr)
        elif args.cmd == "start":
            print(start(args.dir, args.port))
        elif args.cmd == "stop":
            stop(args.dir)
        elif args.cmd == "connection-string":
            print(connection_string(args.endpoint))
    except ToolMissingError as exc:
        if args.cmd == "install" and args.optional:
            print(f"skipped: {exc}", file=sys.stderr)
            return
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
