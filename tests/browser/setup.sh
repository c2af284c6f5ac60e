#!/usr/bin/env bash
# Installs what the headless-browser UI test (tests/browser/page.test.mjs)
# needs on a Debian 12 machine: Debian's Chromium at /usr/bin/chromium and
# the npm devDependencies pinned in package-lock.json (playwright-core, buf).
# Idempotent and quiet when everything is already in place; fails loudly.
# `--npm-only` installs only the npm packages (buf, for `proto/check.sh`).
set -euo pipefail

npm_only=false
if [[ "${1:-}" == "--npm-only" ]]; then
  npm_only=true
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
log="$(mktemp -t lookbook-browser-setup.XXXXXX)"
trap 'rm -f "$log"' EXIT

run_quiet() {
  # Runs "$@" with its output kept aside; shows it only on failure.
  if ! "$@" >"$log" 2>&1; then
    echo "setup.sh: command failed: $*" >&2
    cat "$log" >&2
    exit 1
  fi
}

if [[ "$npm_only" == false && ! -x /usr/bin/chromium ]]; then
  if [[ "$(id -u)" -eq 0 ]]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo -n)
  else
    echo "setup.sh: /usr/bin/chromium is missing and this is not root (no sudo either);" >&2
    echo "          install Debian's 'chromium' package first." >&2
    exit 1
  fi
  run_quiet "${as_root[@]}" apt-get update
  run_quiet "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends chromium
  if [[ "$npm_only" == false && ! -x /usr/bin/chromium ]]; then
    echo "setup.sh: chromium installed but /usr/bin/chromium is still missing" >&2
    exit 1
  fi
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "setup.sh: npm is missing (Node.js 20 with npm is needed)" >&2
  exit 1
fi

# npm ci rewrites node_modules/.package-lock.json from package-lock.json;
# when the two agree and the packages are there, nothing is stale.
lock="$repo_root/package-lock.json"
hidden="$repo_root/node_modules/.package-lock.json"
if [[ ! -f "$hidden" ]] \
  || [[ ! -f "$repo_root/node_modules/playwright-core/package.json" ]] \
  || [[ "$lock" -nt "$hidden" && "$(node -e '
        const fs = require("fs");
        const a = JSON.parse(fs.readFileSync(process.argv[1], "utf8")).packages || {};
        const b = JSON.parse(fs.readFileSync(process.argv[2], "utf8")).packages || {};
        const pick = (p) => Object.fromEntries(Object.entries(p)
          .filter(([k, v]) => k !== "" && !(v.optional && !fs.existsSync(process.argv[3] + "/" + k)))
          .map(([k, v]) => [k, v.version + " " + (v.integrity || "")]).sort());
        process.stdout.write(JSON.stringify(pick(a)) === JSON.stringify(pick(b)) ? "same" : "stale");
      ' "$lock" "$hidden" "$repo_root")" != same ]]; then
  (cd "$repo_root" && run_quiet npm ci --no-audit --no-fund)
fi
