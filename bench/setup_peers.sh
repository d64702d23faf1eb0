#!/usr/bin/env bash
# Create bench/.venv-peers with the peer tools (DVC) and profilers pinned in requirements-peers.txt
# (their dependencies pinned by requirements-peers.lock).
# Kept apart from the project's .venv so that DVC's many dependencies never mix with Strandline's.
# Usage: bash bench/setup_peers.sh   (from anywhere; re-running only installs what is missing)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-peers"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
"$venv/bin/python" -m pip install --quiet -r "$here/requirements-peers.txt" -c "$here/requirements-peers.lock"
"$venv/bin/dvc" --version
