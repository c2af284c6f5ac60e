#!/usr/bin/env bash
# The peers' Python venv (.cache/bench-venv) from bench/peers/requirements.txt,
# all from PyPI; hnswlib is compiled from its sdist by pip (needs g++).
# Idempotent: rebuilt only when the requirements or the Python change.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=.cache/bench-venv
stamp=$venv/.requirements.sha256
want="$( (cat bench/peers/requirements.txt; python3 -VV) | sha256sum | cut -d' ' -f1)"
if [[ ! -x $venv/bin/python || ! -f $stamp || "$(< "$stamp")" != "$want" ]]; then
    echo "bench: creating $venv from bench/peers/requirements.txt"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        -r bench/peers/requirements.txt
    echo "$want" > "$stamp"
fi
