#!/usr/bin/env bash
# Create bench/.venv-peers with the peer tools (DVC) and profilers pinned in requirements-peers.txt
# (their dependencies pinned by requirements-peers.lock), and bench/.venv-whylogs with whylogs
# (requirements-whylogs.txt and .lock: its platformdirs<4 pin conflicts with DVC's), and
# bench/.venv-evidently with Evidently (requirements-evidently.txt and .lock: it needs pandas<3).
# Kept apart from the project's .venv so that the peers' many dependencies never mix with Strandline's.
# Usage: bash bench/setup_peers.sh   (from anywhere; re-running only installs what is missing)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-peers"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
make_venv() {
    if [ ! -x "$1/bin/python" ]; then
        "$python" -m venv "$1"
        "$1/bin/python" -m pip install --quiet --upgrade pip
    fi
    # A venv that ignores itself, so that git never offers to add it.
    [ -f "$1/.gitignore" ] || echo '*' >"$1/.gitignore"
}
make_venv "$venv"
"$venv/bin/python" -m pip install --quiet -r "$here/requirements-peers.txt" -c "$here/requirements-peers.lock"
"$venv/bin/dvc" --version
whylogs_venv="$here/.venv-whylogs"
make_venv "$whylogs_venv"
"$whylogs_venv/bin/python" -m pip install --quiet -r "$here/requirements-whylogs.txt" -c "$here/requirements-whylogs.lock"
"$whylogs_venv/bin/python" -c 'import whylogs; print("whylogs", whylogs.__version__)'
evidently_venv="$here/.venv-evidently"
make_venv "$evidently_venv"
"$evidently_venv/bin/python" -m pip install --quiet -r "$here/requirements-evidently.txt" -c "$here/requirements-evidently.lock"
"$evidently_venv/bin/python" -c 'import evidently, pandas; print("evidently", evidently.__version__, "pandas", pandas.__version__)'
