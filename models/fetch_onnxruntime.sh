#!/usr/bin/env bash
# Put the ONNX Runtime shared library the Rust side loads (ort, `load-dynamic`)
# at .cache/onnxruntime/libonnxruntime.so.1.31.1, plus a libonnxruntime.so link.
#
# Why from a Python wheel: PyPI is the only reachable place that ships a
# prebuilt ONNX Runtime, and its wheel carries the same C-API library the
# official release archives do. The version must match the `api-31` feature of
# the `ort` crate and the onnxruntime pin in models/requirements.txt, so the
# Python verification and the Rust service run the same runtime.
#
# Idempotent and quiet when the library is already there with the pinned hash.
# Usage: bash models/fetch_onnxruntime.sh   (PYTHON=... picks the interpreter whose pip downloads)
set -euo pipefail

VERSION=1.31.1
PLATFORM=manylinux_2_28_x86_64
PY_VERSION=3.11
LIB=libonnxruntime.so.$VERSION
# sha256 of onnxruntime/capi/$LIB inside onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl
LIB_SHA256=fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
downloads="$root/.cache/downloads"
dest="$root/.cache/onnxruntime"
python="${PYTHON:-python3}"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
# Size, mtime and inode of the library when its hash was last checked, so a
# no-op run need not re-hash 29 MB.
stat_key() { stat -c '%s %Y %i' "$1"; }
stamp="$dest/.verified"

if [[ -f "$dest/$LIB" && -f "$stamp" && "$(< "$stamp")" == "$(stat_key "$dest/$LIB") $LIB_SHA256" ]]; then
    [[ -L "$dest/libonnxruntime.so" ]] || ln -sfn "$LIB" "$dest/libonnxruntime.so"
    exit 0
fi
if [[ -f "$dest/$LIB" && "$(sha256_of "$dest/$LIB")" == "$LIB_SHA256" ]]; then
    echo "$(stat_key "$dest/$LIB") $LIB_SHA256" > "$stamp"
    ln -sfn "$LIB" "$dest/libonnxruntime.so"
    exit 0
fi

wheel="$downloads/onnxruntime-$VERSION-cp311-cp311-$PLATFORM.whl"
if [[ ! -f "$wheel" ]]; then
    echo "fetch_onnxruntime: downloading the onnxruntime $VERSION wheel ($PLATFORM) from PyPI"
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform "$PLATFORM" --python-version "$PY_VERSION" "onnxruntime==$VERSION" -d "$downloads"
fi
[[ -f "$wheel" ]] || { echo "fetch_onnxruntime: expected $wheel after pip download" >&2; exit 1; }

echo "fetch_onnxruntime: extracting $LIB to .cache/onnxruntime/"
mkdir -p "$dest"
tmp="$dest/$LIB.tmp$$"
trap 'rm -f "$tmp"' EXIT
# Python's zipfile rather than unzip(1): python is needed anyway, unzip may not be installed.
"$python" - "$wheel" "onnxruntime/capi/$LIB" "$tmp" <<'EOF'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
got="$(sha256_of "$tmp")"
if [[ "$got" != "$LIB_SHA256" ]]; then
    echo "fetch_onnxruntime: $LIB has sha256 $got, expected $LIB_SHA256" >&2
    exit 1
fi
chmod 0755 "$tmp"
mv -f "$tmp" "$dest/$LIB"
ln -sfn "$LIB" "$dest/libonnxruntime.so"
echo "$(stat_key "$dest/$LIB") $LIB_SHA256" > "$stamp"
