#!/usr/bin/env bash
# Installs what the client examples need into .cache/clients-venv (repo root):
# a venv with examples/python/requirements.txt. Idempotent and quiet: it does
# nothing when the venv is there and the requirements have not changed since
# it was built (their sha256 is kept beside the venv). The Node example needs
# nothing beyond Node 20.
#
#   bash examples/setup-clients.sh
#   .cache/clients-venv/bin/python examples/python/lookbook_client.py --help
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$root/.cache/clients-venv
reqs=$root/examples/python/requirements.txt
stamp=$root/.cache/clients-venv.sha256

fail() {
    echo "examples/setup-clients.sh: FAILED: $*" >&2
    exit 1
}

mkdir -p "$root/.cache"
want=$(sha256sum "$reqs" | cut -d' ' -f1)

up_to_date() {
    [ -x "$venv/bin/python" ] &&
        [ -f "$stamp" ] &&
        [ "$(cat "$stamp")" = "$want" ] &&
        "$venv/bin/python" -c 'import grpc, grpc_tools.protoc, google.protobuf' 2>/dev/null
}

# A lock keeps concurrent callers (parallel tests) from building it twice.
(
    flock 9
    if ! up_to_date; then
        rm -rf "$venv" "$stamp"
        python3 -m venv "$venv" || fail "python3 -m venv failed (python3 >= 3.9 with venv needed)"
        "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$reqs" >&2 ||
            fail "pip install -r examples/python/requirements.txt failed"
        "$venv/bin/python" -c 'import grpc, grpc_tools.protoc, google.protobuf' ||
            fail "grpcio/grpcio-tools/protobuf do not import from $venv"
        echo "$want" >"$stamp"
    fi
) 9>"$root/.cache/clients-venv.lock"
