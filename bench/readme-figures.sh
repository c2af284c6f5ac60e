#!/usr/bin/env bash
# Measures every figure quoted in the README on this machine and writes them
# to bench/FIGURES.md (raw command output included). Starts its own servers
# on loopback with throw-away data directories; needs `make setup` first.
#
#   bash bench/readme-figures.sh [FASHION_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

data="${1:-${LOOKBOOK_FASHION_DATA:-../shared/data/fashion-sample}}"
bin=./target/release/lookbook
bench=./target/release/lookbook-bench
out=bench/FIGURES.md
port=50917
url="http://127.0.0.1:$port"
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

[ -x "$bin" ] || { echo "run 'make setup' first" >&2; exit 1; }
[ -f "$data/styles.csv" ] || { echo "no catalogue at $data" >&2; exit 1; }

# start_server DATA_DIR: starts the server, waits for SERVING (bounded), sets
# $pid and $secs (seconds to SERVING). Not for use in $(...): the server
# would hold the substitution's pipe open.
start_server() {
  local log="$work/server.log" t0 t1
  : > "$log"
  t0=$EPOCHREALTIME
  LOOKBOOK__HTTP__LISTEN=127.0.0.1:0 LOOKBOOK__TELEMETRY__LOG_FORMAT=json "$bin" serve --listen "127.0.0.1:$port" --data-dir "$1" > /dev/null 2> "$log" &
  pid=$!
  for _ in $(seq 1 3000); do
    grep -q '"message":"SERVING"' "$log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.05
  done
  t1=$EPOCHREALTIME
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
}
stop_server() { kill -TERM "$pid"; wait "$pid" || true; pid=""; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }

: > "$out"
say() { echo "$*" | tee -a "$out"; }
block() { echo '```' >> "$out"; tee -a "$out"; echo '```' >> "$out"; }

say "# Figures for the README"
say ""
say "Measured by \`bash bench/readme-figures.sh\` on $(date -u +%Y-%m-%d): $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ *//'), $(free -g | awk '/Mem:/ {print $2}') GiB RAM; model efficientnet-lite2 (fp32), ONNX Runtime 1.31.1. The load generator runs on the same machine as the server."
say ""

empty="$work/empty"
start_server "$empty"
rss_empty=$(rss_kib)
stop_server

say "## Import of the fashion sample (decode + embed + durable insert)"
dir="$work/data"
start_server "$dir"
"$bin" import "$data" --server "$url" | block

say "## Embed throughput (one photo per call)"
for c in 1 2; do
  "$bench" bench --server "$url" --rpc embed --catalog "$data" --concurrency "$c" --duration 20 --warmup 3 | block
done

say "## Grow to 12,000 products"
say "Real embeddings of the sample plus synthetic products: each a random real product's embedding plus Gaussian noise of norm 0.35, re-normalised (\`lookbook-bench synth\`)."
"$bench" synth --server "$url" --catalog "$data" --total 12000 | block

say "## RecommendSimilar by product id, k=10, 12,000 products"
for c in 1 4; do
  "$bench" bench --server "$url" --rpc similar --catalog "$data" --concurrency "$c" --duration 20 --warmup 3 -k 10 | block
done

say "## RecommendForUser, k=10, 12,000 products, shoppers with 500 interactions each"
say "32 synthetic shoppers, each with 500 interactions (70% views, 15% clicks, 10% add-to-cart, 5% purchases) around three favourite products, recorded through RecordInteractions first; then queried round-robin."
"$bench" bench --server "$url" --rpc user --catalog "$data" --concurrency 1 --duration 20 --warmup 3 -k 10 --shoppers 32 --history 500 | block
stop_server

say "## Start-up and memory with 12,000 products"
start_server "$dir"
rss_full=$(rss_kib)
say "start-up to SERVING (index from dump): ${secs} s"
say "RSS: empty catalogue ${rss_empty} KiB, 12,000 products ${rss_full} KiB => $(( (rss_full - rss_empty) * 1024 / 12000 )) bytes per product (raw 1280-d f32 vector: 5120 bytes)"
grep "catalogue loaded" "$work/server.log" | tail -1 | block
stop_server
rm -rf "$dir/index"
start_server "$dir"
say "start-up to SERVING without a dump (index rebuilt from the store): ${secs} s"
stop_server

say "## Retrieval quality (lookbook-bench eval)"
"$bench" eval "$data" | block
echo "wrote $out"
