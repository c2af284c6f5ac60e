#!/usr/bin/env bash
# Start-up after `kill -9`, at catalogue sizes too large for `make test`
# (default 100K and 1M products): the figures of the README's Reliability
# section. Called by `make reliability` with its output folder; runs alone
# as well:
#
#   bash bench/recovery.sh OUT_DIR            # RECOVERY_SCALES="100000 1000000"
#   RECOVERY_SCALES=100000 bash bench/recovery.sh /tmp/rec
#
# Per scale, a data dir under .cache/recovery/<n> is prepared once and reused
# (1M takes ~40 min on 2 cores, almost all of it the index build): a real
# server imports 300 photos of the fashion sample and grows the catalogue to
# <n> with `lookbook synth` (noisy copies of their embeddings), then stops
# cleanly, which writes the index checkpoint. Each measurement then:
#   1. starts the server on that dir and times it to SERVING (clean start);
#   2. adds RECOVERY_WRITES products (default 2,000) with maintenance turned
#      off, so none of them is in the checkpoint;
#   3. kill -9, starts again and times it to SERVING: the crash start-up,
#      which loads the checkpoint and reconciles it with the store;
#   4. stops cleanly (a new checkpoint), leaving the dir ready for a rerun.
# At the smallest scale it also times a start without any checkpoint (the
# whole index built from the store), for comparison.
# Writes recovery.json and recovery.md into OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/recovery.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bin=${LOOKBOOK_BIN:-./target/release/lookbook}
bench=${LOOKBOOK_BENCH_BIN:-./target/release/lookbook-bench}
data="${LOOKBOOK_FASHION_DATA:-$(cd .. && pwd)/shared/data/fashion-sample}"
scales=${RECOVERY_SCALES:-100000 1000000}
writes=${RECOVERY_WRITES:-2000}
work=.cache/recovery
mkdir -p $work
server_pid=
trap '[[ -n $server_pid ]] && kill -9 $server_pid 2> /dev/null; true' EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# $1: data dir, $2: log file, rest: extra env. Starts the server, waits for
# SERVING, sets $took to the seconds that took (and $url, $server_pid).
serve() {
    local dir=$1 log=$2 port t0 t1
    shift 2
    port=$(free_port)
    url=http://127.0.0.1:$port
    t0=$(date +%s.%N)
    env "$@" LOOKBOOK__STORAGE__DATA_DIR="$dir" LOOKBOOK__SERVER__LISTEN=127.0.0.1:$port LOOKBOOK__HTTP__LISTEN=127.0.0.1:0 \
        LOOKBOOK__SERVER__SHUTDOWN_GRACE=600s \
        LOOKBOOK__TELEMETRY__LOG_FORMAT=json LOOKBOOK__TELEMETRY__LOG_FILTER=info \
        $bin serve > "$log" 2>&1 &
    server_pid=$!
    $bin wait-ready --server "$url" --timeout 7200 > /dev/null
    t1=$(date +%s.%N)
    took=$(python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.2f}")' "$t0" "$t1")
}

stop() {
    kill -TERM "$server_pid"
    wait "$server_pid" || true
    server_pid=
}

crash() {
    kill -9 "$server_pid"
    wait "$server_pid" 2> /dev/null || true
    server_pid=
}

# The "catalogue loaded" log line of a start: products, whether the
# checkpoint was used, how many products were reconciled, seconds.
loaded() {
    python3 - "$1" << 'EOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        doc = json.loads(line)
    except ValueError:
        continue
    f = doc.get("fields", {})
    if f.get("message") == "catalogue loaded":
        print(json.dumps({k: f.get(k) for k in
                          ("products", "index_from_dump", "reconciled", "seconds")}))
        break
EOF
}

prepare() {
    local n=$1 dir=$work/$1 lock
    # A preparation of the same scale running elsewhere (e.g. started ahead
    # of time with RECOVERY_PREPARE_ONLY=1) holds this lock: wait for it
    # instead of opening the same store, which redb would refuse.
    exec {lock}> "$work/$n.lock"
    flock "$lock"
    if [[ ! -f $dir/prepared ]]; then
        # An interrupted preparation resumes: synth only adds what is missing.
        echo "recovery: preparing $n products in $dir $(date +%T)"
        mkdir -p "$dir"
        serve "$dir/store" "$work/$n-prepare.log"
        $bin import "$data" --server "$url" --limit 300 > /dev/null
        $bench synth --server "$url" --catalog "$data" --total "$n"
        stop
        touch "$dir/prepared"
    fi
    exec {lock}>&-
}

results=()
# RECOVERY_PREPARE_ONLY=1: only prepare the data dirs (e.g. ahead of time).
smallest=$(tr ' ' '\n' <<< "$scales" | sort -n | head -1)
for n in $scales; do
    prepare "$n"
    [[ -n ${RECOVERY_PREPARE_ONLY:-} ]] && continue
    dir=$work/$n/store
    echo "recovery: $n products $(date +%T)"
    serve "$dir" "$work/$n-clean.log"
    clean=$took
    clean_loaded=$(loaded "$work/$n-clean.log")
    stop
    # No checkpoint may be taken between the writes and the kill.
    serve "$dir" "$work/$n-writes.log" LOOKBOOK__INDEX__MAINTENANCE_INTERVAL=24h
    total=$(( $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["products"])' "$clean_loaded") + writes ))
    $bench synth --server "$url" --catalog "$data" --total "$total" --seed "$RANDOM" > /dev/null
    crash
    serve "$dir" "$work/$n-crash.log"
    after=$took
    crash_loaded=$(loaded "$work/$n-crash.log")
    stop
    rebuild=null
    if [[ $n == "$smallest" ]]; then
        mv "$dir/index" "$dir/index.kept"
        serve "$dir" "$work/$n-rebuild.log" LOOKBOOK__INDEX__MAINTENANCE_INTERVAL=24h
        rebuild=$took
        crash
        rm -rf "$dir/index"
        mv "$dir/index.kept" "$dir/index"
    fi
    results+=("{\"products\": $n, \"writes_since_checkpoint\": $writes, \"clean_start_seconds\": $clean, \"clean_start\": $clean_loaded, \"crash_start_seconds\": $after, \"crash_start\": $crash_loaded, \"start_without_checkpoint_seconds\": $rebuild}")
done

[[ -n ${RECOVERY_PREPARE_ONLY:-} ]] && exit 0
python3 - "$out" "${results[@]}" << 'EOF'
import json, os, sys
out, rows = sys.argv[1], [json.loads(r) for r in sys.argv[2:]]
json.dump(rows, open(os.path.join(out, "recovery.json"), "w"), indent=2)
md = ["## Start-up after kill -9", "",
      "`bench/recovery.sh`: a server with N products (1280-d) and a checkpoint, "
      "then products added with no checkpoint taken, then `kill -9` and a start "
      "timed to SERVING (model load included). The crash start loads the "
      "checkpoint and reconciles it with the store.", "",
      "| products | writes since checkpoint | clean start (s) | start after kill -9 (s) | products reconciled | checkpoint used | start without a checkpoint (s) |",
      "| ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
for r in rows:
    c = r["crash_start"] or {}
    rebuild = r["start_without_checkpoint_seconds"]
    md.append(f"| {r['products']:,} | {r['writes_since_checkpoint']:,} | {r['clean_start_seconds']:.1f} "
              f"| {r['crash_start_seconds']:.1f} | {c.get('reconciled')} | {'yes' if c.get('index_from_dump') else 'no'} "
              f"| {'-' if rebuild is None else f'{rebuild:.1f}'} |")
open(os.path.join(out, "recovery.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF
