#!/usr/bin/env bash
# Makes docs/page.png, the README's picture of the page, from a synthetic
# catalogue drawn by catalog.py: no real product photo is ever copied into
# the repository, not even as a screenshot.
#
#   bash docs/screenshot/make.sh [path/to/lookbook]   (default: target/release/lookbook)
#
# Runs the server from the repository root with its default model and config,
# on free loopback ports and a throwaway data directory; needs the venv from
# `make setup` (.cache/venv, with Pillow), node_modules (playwright-core) and
# Chromium (/usr/bin/chromium, or $CHROMIUM).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=$(realpath -m "${1:-$root/target/release/lookbook}")
py=${PYTHON:-$root/.cache/venv/bin/python}
out=$root/docs/page.png

[ -x "$bin" ] || { echo "make.sh: no server binary at $bin" >&2; exit 1; }

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. The catalogue: drawn product images, never the fashion sample.
"$py" "$here/catalog.py" generate "$work/catalog"

# 2. A server on two free loopback ports, an empty store, no tokens.
read -r grpc_port http_port < <("$py" -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))
for s in ss: s.close()')
base=http://127.0.0.1:$http_port
: >"$work/lookbook.toml" # built-in defaults, whatever ./lookbook.toml says
(
  cd "$root"
  exec env -u LOOKBOOK_READ_TOKEN -u LOOKBOOK_WRITE_TOKEN \
    LOOKBOOK__SERVER__LISTEN="127.0.0.1:$grpc_port" \
    LOOKBOOK__HTTP__LISTEN="127.0.0.1:$http_port" \
    LOOKBOOK__HTTP__UI=true \
    LOOKBOOK__STORAGE__DATA_DIR="$work/data" \
    LOOKBOOK__SERVER__SHUTDOWN_GRACE=2s \
    "$bin" serve --config "$work/lookbook.toml"
) >"$work/server.log" 2>&1 &
pid=$!

fail() {
  echo "make.sh: $*" >&2
  echo "--- server log (last 30 lines)" >&2
  tail -n 30 "$work/server.log" >&2 || true
  exit 1
}

ready=
for _ in $(seq 1 240); do # up to 120 s for the model and index to load
  kill -0 "$pid" 2>/dev/null || fail "the server exited"
  if [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/readyz" || true)" = 200 ]; then
    ready=1
    break
  fi
  sleep 0.5
done
[ -n "$ready" ] || fail "the server was not ready within 120 s"
echo "server ready on $base"

# 3. Import through the HTTP/JSON API.
"$py" "$here/catalog.py" import "$work/catalog" "$base" || fail "import failed"

# 4. Screenshot of the 1280x900 viewport.
node "$here/shoot.mjs" "$base/" "$work/catalog/query.jpg" "$work/raw.png" || fail "screenshot failed"

# 5. 800 px wide, 128 colours: small enough to commit.
"$py" - "$work/raw.png" "$out" <<'EOF'
import os, sys
from PIL import Image
src, dst = sys.argv[1], sys.argv[2]
im = Image.open(src).convert("RGB")
w = 800
im = im.resize((w, round(im.height * w / im.width)), Image.LANCZOS)
im = im.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
im.save(dst, optimize=True)
kb = os.path.getsize(dst) / 1024
print(f"wrote {dst}: {im.width}x{im.height}, {kb:.0f} KiB")
if kb > 150:
    print("make.sh: warning: over 150 KiB", file=sys.stderr)
EOF
