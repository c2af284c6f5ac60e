#!/usr/bin/env bash
# The lookbook.v1 contract, checked in CI (`make lint`):
#   1. `buf lint` with the STANDARD rules (proto/buf.yaml lists no exceptions);
#   2. `buf breaking` (FILE rules) against the previous main (HEAD~1), so a
#      change that would break a caller compiled against it fails;
#   3. `buf breaking` against proto/v1.binpb, the image of the API as frozen
#      (plus later additions; `make proto-baseline` refreshes it after an
#      additive change), which needs no git history and covers every commit
#      since the freeze, not only the last.
# buf comes from npm (@bufbuild/buf, pinned in package-lock.json).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/tests/browser/setup.sh" --npm-only
buf=$root/node_modules/.bin/buf
cd "$root/proto"

"$buf" lint
echo "proto/check.sh: buf lint passed"

if [[ "${1:-}" == "--write-baseline" ]]; then
  "$buf" build -o v1.binpb
  echo "proto/check.sh: wrote proto/v1.binpb"
  exit 0
fi

"$buf" breaking --against v1.binpb
echo "proto/check.sh: no breaking change against proto/v1.binpb"

if ! git -C "$root" rev-parse -q --verify 'HEAD~1^{commit}' >/dev/null; then
  echo "proto/check.sh: no HEAD~1 in this clone (shallow); checked against proto/v1.binpb only"
elif ! git -C "$root" cat-file -e 'HEAD~1:proto/buf.yaml' 2>/dev/null; then
  echo "proto/check.sh: HEAD~1 predates the v1 freeze; checked against proto/v1.binpb only"
else
  "$buf" breaking --against "$root/.git#ref=HEAD~1,subdir=proto"
  echo "proto/check.sh: no breaking change against HEAD~1"
fi
