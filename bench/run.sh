#!/usr/bin/env bash
# `make bench`: every performance figure of the README, side by side with the
# tools a user would otherwise pick, measured in one run on this machine.
# Writes bench/RESULTS.md (for people) and bench/results.json (for tools) via
# bench/report.py from the JSON fragments in .cache/bench/results/; nothing in
# the report is typed by hand.
#
# Steps: set-up (release build, models incl. the INT8 variant, the peers'
# venv) -> encoder (ours vs Python onnxruntime+Pillow, fp32 and int8) ->
# retrieval quality of both models (`lookbook-bench eval`, which also exports the
# sample embeddings) -> index datasets (real embeddings + clustered synthetic
# ones) -> index sweeps (ours vs hnswlib, faiss, scikit-learn brute force) ->
# a real server: ingest, freshness, memory, start-up, RecommendSimilar and
# Embed load (with and without dynamic batching) -> the Python grpcio
# exact-search peer under the same load -> criterion micro-benchmarks -> report.
#
# Environment:
#   LOOKBOOK_FASHION_DATA  the sample photos (default ../shared/data/fashion-sample)
#   BENCH_SCALES           index scales beyond the sample (default 100k; add 1m
#                          for the million-vector run, which alone takes over an
#                          hour here: see the README)
#   BENCH_SECONDS          measured seconds per load point (default 8)
#   BENCH_F16              1: also measure f16 storage (own graph and usearch)
set -euo pipefail
cd "$(dirname "$0")/.."

data="${LOOKBOOK_FASHION_DATA:-$(cd .. && pwd)/shared/data/fashion-sample}"
scales="${BENCH_SCALES:-100k}"
seconds="${BENCH_SECONDS:-8}"
# Photos per encoder run (read into memory first).
photos=256
work=.cache/bench
results=$work/results
bin=./target/release/lookbook
bench=./target/release/lookbook-bench
py=.cache/bench-venv/bin/python
int8=models/efficientnet_lite2_int8.toml
# ef_search values swept for every HNSW library (M 16, ef_construction 200 for all).
efs=10,16,24,32,64,128,256
# Shares of the base admitted by the filtered searches of the selectivity sweep;
# 2% and 5% bracket the point where the planner turns from exact scan to graph.
filters=0.001,0.01,0.02,0.05,0.1,0.5

[[ -f "$data/styles.csv" ]] || { echo "bench: no sample at $data (set LOOKBOOK_FASHION_DATA)" >&2; exit 1; }
started=$(date +%s)
step() { echo "bench [$(( $(date +%s) - started )) s]: $*"; }
rm -rf "$results"
mkdir -p "$results"

# Servers started here are stopped on any exit.
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done; wait 2> /dev/null || true; }
trap cleanup EXIT

step "set-up: release build, models (incl. int8), peers' venv"
# The Python set-up runs beside the release build, whose long single-threaded
# stretch (the lookbook crate's front end) leaves a core idle. From a fresh
# clone, done one after the other, set-up took 16.2 of a 32.8-min `make bench`
# (git b9a421a), 3.4 min of it a second compile of the crate: the build
# includes the benches so that the criterion step compiles nothing, and a
# build without them resolves dependency features differently.
LOOKBOOK_FASHION_DATA="$data" bash models/setup.sh --with-int8 > "$work/setup-models.log" 2>&1 &
models_setup=$!
bash bench/peers/setup.sh > "$work/setup-peers.log" 2>&1 &
peers_setup=$!
pids+=("$models_setup" "$peers_setup")
cargo build --release --locked --quiet --features tooling --bins --benches
wait "$models_setup" || { cat "$work/setup-models.log" >&2; exit 1; }
wait "$peers_setup" || { cat "$work/setup-peers.log" >&2; exit 1; }
pids=() # both finished: nothing left for `cleanup` to stop
cat "$work/setup-models.log" "$work/setup-peers.log"

step "model FLOPs"
"$py" bench/peers/model_flops.py --model models/efficientnet_lite2.onnx --out "$results/flops.json"

step "encoder: lookbook vs Python onnxruntime+Pillow, fp32 and int8"
"$bench" bench-encode "$data" --limit "$photos" --batch 1,4,16 --json "$results/encode-lookbook-fp32.json"
"$py" bench/peers/encode.py --manifest models/efficientnet_lite2.toml --images "$data/images" \
    --limit "$photos" --batch 1,16 --out "$results/encode-python-fp32.json"
LOOKBOOK__MODEL__MANIFEST=$int8 "$bench" bench-encode "$data" --limit "$photos" --batch 1,16 \
    --json "$results/encode-lookbook-int8.json"
"$py" bench/peers/encode.py --manifest "$int8" --images "$data/images" \
    --limit "$photos" --batch 1,16 --out "$results/encode-python-int8.json"

step "retrieval quality (precision@10, same articleType): fp32, then int8"
"$bench" eval "$data" --export "$work/sample" --json "$results/eval-fp32.json"
LOOKBOOK__MODEL__MANIFEST=$int8 "$bench" eval "$data" --json "$results/eval-int8.json"

step "index datasets: sample, 12k, $scales"
"$py" bench/peers/make_vectors.py --real "$work/sample.f32" --ids "$work/sample.ids" \
    --out "$work" --scales "sample,12k,$scales" --queries 1000 --seed 42

for scale in sample ${scales//,/ }; do
    step "index sweep at $scale: lookbook, usearch, hnswlib, faiss, scikit-learn"
    # The selectivity sweep (filters admitting 0.1% to 50% of the rows) runs
    # beyond the sample, whose 0.1% would be a handful of rows.
    filter=()
    [[ $scale == sample ]] || filter=(--filter "$filters" --filter-ef 64 --filter-queries 200)
    # The service's default: int8 codes, full vectors in mapped files.
    "$bench" bench-index "$work/$scale" --m 16 --ef-construction 200 \
        --ef-search "$efs" --threads 1,2 --quantization int8 --vector-dir "$work/vectors" "${filter[@]}" \
        --json "$results/index-$scale-lookbook.json"
    if [[ $scale != sample ]]; then
        # The other quantization, and the engine decision (README, "index
        # engine"): the usearch crate in the same harness. f16 storage for
        # either only with BENCH_F16=1 (about 3 min more at 100K).
        "$bench" bench-index "$work/$scale" --m 16 --ef-construction 200 \
            --ef-search "$efs" --threads 1,2 --quantization none \
            --json "$results/index-$scale-lookbook-none.json"
        storages=(f32 i8)
        [[ ${BENCH_F16:-0} == 1 ]] && storages+=(f16) && "$bench" bench-index "$work/$scale" --m 16 \
            --ef-construction 200 --ef-search "$efs" --threads 1,2 --quantization f16 --vector-dir "$work/vectors" \
            --json "$results/index-$scale-lookbook-f16.json"
        for storage in "${storages[@]}"; do
            rerank=$([[ $storage == i8 ]] && echo 40 || echo 0)
            "$bench" bench-index "$work/$scale" --m 16 --ef-construction 200 \
                --ef-search "$efs" --threads 1,2 --usearch "$storage" --rerank "$rerank" \
                --json "$results/index-$scale-usearch-$storage.json"
        done
    fi
    for lib in hnswlib faiss; do
        "$py" bench/peers/index_peers.py --data "$work/$scale" --lib "$lib" --m 16 \
            --ef-construction 200 --ef-search "$efs" \
            --threads 1,2 --build-threads 2 "${filter[@]}" --out "$results/index-$scale-$lib.json"
    done
    # Exact search costs ~0.5 s per query at 100K here; its cost per query
    # does not depend on the query, so a few suffice beyond the sample.
    exact_queries=$([[ $scale == sample ]] && echo 200 || echo 40)
    "$py" bench/peers/index_peers.py --data "$work/$scale" --lib sklearn --threads 1,2 \
        --max-queries "$exact_queries" --out "$results/index-$scale-sklearn.json"
done

# One server process for what a caller sees: start-up, ingest, freshness,
# memory, load. $1: name, rest: extra environment.
serve() {
    local name=$1 port
    shift
    port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    url=http://127.0.0.1:$port
    local t0
    t0=$(date +%s.%N)
    env "$@" LOOKBOOK__STORAGE__DATA_DIR="$work/server" LOOKBOOK__SERVER__LISTEN="127.0.0.1:$port" LOOKBOOK__HTTP__LISTEN=127.0.0.1:0 \
        LOOKBOOK__TELEMETRY__LOG_FILTER=warn "$bin" serve > "$work/$name.log" 2>&1 &
    server_pid=$!
    pids+=("$server_pid")
    "$bin" wait-ready --server "$url" --timeout 600
    "$py" - "$name" "$t0" "$(date +%s.%N)" "$server_pid" "$results/startup-$name.json" << 'EOF'
import json, sys
name, t0, t1, pid, out = sys.argv[1:]
status = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in open(f"/proc/{pid}/status") if l.startswith(("Rss", "VmRSS"))}
json.dump({"name": name, "seconds_to_serving": float(t1) - float(t0), "rss_bytes": status["VmRSS"],
           "rss_anon_bytes": status["RssAnon"], "rss_file_bytes": status["RssFile"]}, open(out, "w"))
EOF
}
stop() {
    kill -TERM "$server_pid"
    wait "$server_pid" || true
}
# The server's memory now: VmRSS, its anonymous part (the heap: what a
# memory limit has to hold) and its file-backed part (the binary, the ONNX
# Runtime library and the mapped vector files: page cache the kernel can
# drop and read again). $1: output file.
rss_now() {
    "$py" - "$server_pid" "$1" << 'EOF'
import json, sys
pid, out = sys.argv[1:]
status = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in open(f"/proc/{pid}/status") if l.startswith(("Rss", "VmRSS"))}
json.dump({"rss_bytes": status["VmRSS"], "rss_anon_bytes": status["RssAnon"], "rss_file_bytes": status["RssFile"]}, open(out, "w"))
EOF
}
# jemalloc hands freed pages back after its 10 s decay (src/main.rs), so
# memory read at SERVING still holds start-up's garbage; the steady-state
# figures are read after this many seconds idle.
settle=12
load() { # rpc concurrency out [extra args]
    local rpc=$1 c=$2 out=$3
    shift 3
    "$bench" bench --server "$url" --rpc "$rpc" --catalog "$data" --concurrency "$c" \
        --duration "$seconds" --warmup 2 "$@" --json "$results/$out.json"
}

rm -rf "$work/server"
step "server (empty): start-up, then ingest with photos and with embeddings to 12,000 products"
serve empty
sleep "$settle"
rss_now "$results/rss-empty-settled.json"
"$bin" import "$data" --server "$url" --json "$results/ingest-images.json" > /dev/null
"$bench" load-vectors "$work/12k" --server "$url" --skip "$(wc -l < "$work/sample.ids")" \
    --json "$results/ingest-vectors.json"
sleep "$settle"
rss_now "$results/rss-12k.json"
stop

step "server (12K, from its dump): start-up, RecommendSimilar load, Embed load with dynamic batching"
serve dump12k
sleep "$settle"
rss_now "$results/rss-dump12k-settled.json"
for c in 1 32; do load similar "$c" "similar-lookbook-c$c" --connections "$(( c < 4 ? 1 : 4 ))"; done
for c in 1 4 16; do load embed "$c" "embed-batching-c$c"; done
"$bench" freshness "$work/12k" --server "$url" --count 200 --json "$results/freshness.json"
stop

step "server without dynamic batching, then with batches of up to 16: Embed load"
serve nobatch LOOKBOOK__MODEL__BATCH_MAX_IMAGES=1
for c in 1 4 16; do load embed "$c" "embed-nobatch-c$c"; done
stop
serve batch16 LOOKBOOK__MODEL__BATCH_MAX_IMAGES=16
for c in 1 4 16; do load embed "$c" "embed-batch16-c$c"; done
stop

step "Python grpcio + numpy exact-search server, same load"
"$py" bench/peers/grpc_exact_server.py --vectors "$work/12k/base.f32" --ids "$work/12k/ids.txt" \
    --styles "$data/styles.csv" \
    --dim 1280 --listen 127.0.0.1:0 > "$work/python-server.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
for _ in $(seq 600); do
    grep -q '^listening on' "$work/python-server.log" 2> /dev/null && break
    sleep 0.1
done
url="http://$(sed -n 's/^listening on //p' "$work/python-server.log" | head -1)"
for c in 1 32; do load similar "$c" "similar-python-c$c" --connections "$(( c < 4 ? 1 : 4 ))"; done
stop

step "criterion micro-benchmarks (preprocessing, distance, search, insert, store commit and crash open)"
cargo bench --locked --quiet --bench index --bench preprocess --bench store -- --warm-up-time 1 --measurement-time 3 > "$work/criterion.txt" 2>&1
cp "$work/criterion.txt" "$results/criterion.txt"

step "report"
"$py" bench/report.py --results "$results" --md bench/RESULTS.md --json bench/results.json \
    --total-seconds "$(( $(date +%s) - started ))" --started-unix "$started"
step "done: bench/RESULTS.md, bench/results.json"
