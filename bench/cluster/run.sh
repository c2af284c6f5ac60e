#!/usr/bin/env bash
# Cluster-mode figures -> bench/cluster/RESULTS.md (and .json beside it):
# on this machine, one nats-server (JetStream, file storage) and lookbook
# replicas on loopback, all release builds:
#   1. replica A takes PRODUCTS synthetic products (1280-d unit vectors)
#      through AddProducts while replica B follows: the write rate through
#      the log, and B's state once A is done;
#   2. replication lag: 300 single AddProducts on A, each timed from A's
#      reply until B's GetProduct returns it;
#   3. catch-up: replica C starts with an empty data dir; the time until it
#      reports SERVING (caught up) is the time to apply the whole bucket.
# Everything runs on the same cores (2 here), so the figures are a floor
# for replicas on machines of their own.
#
#   bash bench/cluster/run.sh            (PRODUCTS defaults to 50000)
#   PRODUCTS=200000 bash bench/cluster/run.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
products=${PRODUCTS:-50000}
out=bench/cluster

bash tests/nats/setup.sh >/dev/null
make --no-print-directory setup >/dev/null
bin=target/release/lookbook
tool=target/release/lookbook-bench
nats=.cache/nats-venv/bin/nats-server

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

nats_port=14222
"$nats" -a 127.0.0.1 -p $nats_port -js -sd "$work/nats" -n bench >"$work/nats.log" 2>&1 &
pids+=($!)

replica() { # name grpc-port http-port
    LOOKBOOK__CLUSTER__NATS_URL=nats://127.0.0.1:$nats_port \
        LOOKBOOK__HTTP__LISTEN=127.0.0.1:$3 \
        LOOKBOOK__TELEMETRY__LOG_FORMAT=json \
        "$bin" serve --listen 127.0.0.1:"$2" --data-dir "$work/$1" >"$work/$1.log" 2>&1 &
    pids+=($!)
}

replica a 15051 18081
replica b 15052 18082
"$bin" wait-ready --server http://127.0.0.1:15051 --timeout 300
"$bin" wait-ready --server http://127.0.0.1:15052 --timeout 300

preload=$("$tool" cluster-lag --server http://127.0.0.1:15051 --preload "$products" --count 0)
echo "$preload"
lag=$("$tool" cluster-lag --server http://127.0.0.1:15051 --replica http://127.0.0.1:15052 \
    --count 300 --json "$work/lag.json")
echo "$lag"

replica c 15053 18083
started=$(date +%s.%N)
"$bin" wait-ready --server http://127.0.0.1:15053 --timeout 3600
caught_up=$(date +%s.%N)
catchup_s=$(python3 -c "print(f'{$caught_up - $started:.1f}')")
c_size=$("$bin" stats --server http://127.0.0.1:15053 | sed -n "s/^products \([0-9]*\)$/\1/p")
echo "replica C (empty data dir) SERVING after ${catchup_s} s with ${c_size} products"

python3 - "$work/lag.json" "$out" "$products" "$catchup_s" "$c_size" "$preload" <<'PY'
import json, os, platform, subprocess, sys
lag_file, out, products, catchup_s, c_size, preload = sys.argv[1:]
lag = json.load(open(lag_file))
products, catchup_s = int(products), float(catchup_s)
total = products + lag["products"]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
figures = {
    "machine": {"cpu": cpu, "cores": os.cpu_count()},
    "products_preloaded": products,
    "preload": preload.strip(),
    "replication_lag_ms": lag,
    "catch_up": {
        "products": total,
        "held_when_serving": int(c_size or 0),
        "seconds": catchup_s,
        "products_per_second": round(total / catchup_s),
        "seconds_per_million_computed": round(catchup_s / total * 1e6),
    },
}
json.dump(figures, open(f"{out}/results.json", "w"), indent=2)
md = f"""# Cluster mode: measured

Written by `bash bench/cluster/run.sh` (PRODUCTS={products}) on {cpu}, {os.cpu_count()} cores;
nats-server and every replica on this one machine. The products are uniformly random unit
vectors, harder for an HNSW graph to take in than real, clustered embeddings; while A takes
writes, A and B each insert every product into their own graph on the same cores.

| | |
|---|---|
| writes through the log (A, bulk AddProducts, B following) | {preload.strip()} |
| replication lag, AddProduct reply on A to GetProduct on B (300 writes) | p50 {lag['lag_ms']['p50']:.2f} ms, p99 {lag['lag_ms']['p99']:.2f} ms, max {lag['max_ms']:.2f} ms |
| catch-up of a new replica (empty data dir) to SERVING | {total} products in {catchup_s:.1f} s ({total / catchup_s:.0f}/s) |
| catch-up per million products (computed from that rate) | {catchup_s / total * 1e6 / 60:.1f} min |
"""
open(f"{out}/RESULTS.md", "w").write(md)
print(md)
PY
