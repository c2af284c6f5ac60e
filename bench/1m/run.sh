#!/usr/bin/env bash
# One-off million-product run, too long for the 30-minute `make bench`; run it
# after a `make bench`, which builds the binary, the venv and
# .cache/bench/sample.*. Writes bench/1m/*.json and, from them,
# bench/1m/RESULTS.md (bench/1m/report.py). Parts (default: all):
#
#   index   lookbook vs hnswlib on 1M vectors (real embeddings + the same
#           synthetic generator as 100K), same M / ef_construction as
#           bench/run.sh, with ef_search swept up to 4096: at 1M this data
#           needs ef 2048 for recall@10 0.95 (100K: 24), and neither library
#           reached 0.99 (0.96 at ef 4096).
#           21 min on an AVX-512 EPYC (the int8 build 6 min, hnswlib's 10.5);
#           75 min on an AVX2 one with the f32 graph.
#   server  a real server: 1M products through AddProducts with embeddings
#           (load-vectors), RSS, shutdown (drain + index dump), then start-up
#           from the dump to SERVING and RSS there, and RecommendSimilar load
#           at 1M. 13 min on the AVX-512 EPYC, 40 on the AVX2 one.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=.cache/bench; res=bench/1m; mkdir -p $res
py=.cache/bench-venv/bin/python
bin=./target/release/lookbook
bench=./target/release/lookbook-bench
data="${LOOKBOOK_FASHION_DATA:-$(cd .. && pwd)/shared/data/fashion-sample}"
parts="${*:-index server}"
efs=10,16,24,32,64,128,256,512,1024,2048,4096

echo "gen $(date +%T)"
/usr/bin/time -v $py bench/peers/make_vectors.py --real $work/sample.f32 --ids $work/sample.ids \
    --out $work --scales 1m --queries 1000 --seed 42 > $work/1m-gen.log 2>&1

if [[ " $parts " == *" index "* ]]; then
    echo "lookbook $(date +%T)"
    # The service's default quantization (int8 codes, full vectors mapped).
    /usr/bin/time -v $bench bench-index $work/1m --m 16 --ef-construction 200 \
        --ef-search $efs --threads 1,2 --quantization int8 --vector-dir $work/vectors \
        --json $res/index-1m-lookbook.json > $work/1m-lookbook.log 2>&1
    echo "hnswlib $(date +%T)"
    /usr/bin/time -v $py bench/peers/index_peers.py --data $work/1m --lib hnswlib --m 16 \
        --ef-construction 200 --ef-search $efs --threads 1,2 --build-threads 2 \
        --out $res/index-1m-hnswlib.json > $work/1m-hnswlib.log 2>&1
fi

# $1: part. What the part's figures were measured with: the commit, whether
# the sources the binary is built from differ from it, the binary's build time.
provenance() {
    $py - "$1" "$res/run-$1.json" "$bin" << 'EOF'
import datetime, json, os, subprocess, sys
part, out, binary = sys.argv[1:]
git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True).stdout.rstrip()
json.dump({"part": part, "git": git("rev-parse", "--short", "HEAD"),
           "sources_changed": git("status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock").splitlines(),
           "binary_built": datetime.datetime.fromtimestamp(os.stat(binary).st_mtime, datetime.UTC).isoformat(timespec="seconds"),
           "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), None),
           "cores": os.cpu_count()},
          open(out, "w"), indent=2)
meta = json.load(open(".cache/bench/1m/meta.json"))
meta.pop("source", None)  # paths and mtimes of this machine's files
json.dump(meta, open(os.path.join(os.path.dirname(out), "dataset-1m.json"), "w"), indent=2)
EOF
}
[[ " $parts " == *" index "* ]] && provenance index

if [[ " $parts " == *" server "* ]]; then
    # BENCH_1M_SERVER_DATA / _RESULTS: another dataset / results prefix (to try
    # the steps on a small scale first).
    sdata=${BENCH_1M_SERVER_DATA:-$work/1m}
    sres=${BENCH_1M_SERVER_RESULTS:-$res/server-1m}
    dir=$work/server-1m
    server_pid=
    trap '[[ -n $server_pid ]] && kill $server_pid 2> /dev/null; true' EXIT
    empty_rss=0 empty_anon=0
    # $1: name, $2: products in it. Starts the server on $dir, waits for
    # SERVING, writes $sres-<name>.json with the time to SERVING and the RSS.
    serve() {
        local port t0
        port=$($py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        url=http://127.0.0.1:$port
        t0=$(date +%s.%N)
        LOOKBOOK__STORAGE__DATA_DIR=$dir LOOKBOOK__SERVER__LISTEN=127.0.0.1:$port \
            LOOKBOOK__HTTP__LISTEN=127.0.0.1:0 LOOKBOOK__TELEMETRY__LOG_FILTER=info $bin serve > $work/1m-server-$1.log 2>&1 &
        server_pid=$!
        $bin wait-ready --server "$url" --timeout 1800
        rss "$1" "$2" "$t0" "$(date +%s.%N)"
    }
    # $1: name, $2: products, $3/$4: start/end of the timed span (optional).
    # Per product as bench/report.py computes it at 12K: (RSS - RSS of the
    # empty server) / products, i.e. without the model and runtime; the same
    # for the anonymous part alone (the file-backed rest is page cache of
    # the binary, the runtime and the mapped vector files).
    rss() {
        local out=$sres-$1.json
        $py - "$1" "$2" "$server_pid" "$empty_rss" "$empty_anon" "$sdata/meta.json" "${3:-0}" "${4:-0}" > "$out" << 'EOF'
import json, sys
name, n, pid, empty, empty_anon, meta, t0, t1 = sys.argv[1:]
n, empty, empty_anon = int(n), int(empty), int(empty_anon)
status = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in open(f"/proc/{pid}/status") if l.startswith(("Rss", "VmRSS"))}
rss, anon = status["VmRSS"], status["RssAnon"]
raw = 4 * json.load(open(meta))["dim"]
doc = {"name": name, "products": n, "rss_bytes": rss, "rss_anon_bytes": anon, "rss_file_bytes": status["RssFile"]}
if n:
    doc |= {"rss_empty_server_bytes": empty, "rss_bytes_per_product": (rss - empty) / n,
            "raw_vector_bytes": raw, "per_product_vs_raw": (rss - empty) / n / raw,
            "rss_anon_empty_server_bytes": empty_anon, "rss_anon_bytes_per_product": (anon - empty_anon) / n}
if float(t1) > 0:
    doc["seconds_to_serving"] = float(t1) - float(t0)
print(json.dumps(doc, indent=2))
EOF
        cat "$out"
    }
    stop() {
        local t0
        t0=$(date +%s.%N)
        kill -TERM "$server_pid"
        wait "$server_pid" || true
        server_pid=
        $py -c "import json,sys; json.dump({'name': 'shutdown-$1', 'seconds': float(sys.argv[2]) - float(sys.argv[1])}, open('$sres-shutdown-$1.json', 'w'))" \
            "$t0" "$(date +%s.%N)"
    }
    echo "server: empty, load 1M $(date +%T)"
    rm -rf "$dir"
    serve empty 0
    # The baseline is settled too, like every reading it is subtracted from.
    sleep 12
    rss empty-settled 0
    empty_rss=$($py -c 'import json, sys; print(json.load(open(sys.argv[1]))["rss_bytes"])' "$sres-empty-settled.json")
    empty_anon=$($py -c 'import json, sys; print(json.load(open(sys.argv[1]))["rss_anon_bytes"])' "$sres-empty-settled.json")
    n=$($py -c 'import json, sys; print(json.load(open(sys.argv[1]))["n"])' "$sdata/meta.json")
    $bench load-vectors "$sdata" --server "$url" --json "$sres-ingest.json"
    # Read after jemalloc's 10 s decay has handed back the ingest's garbage.
    sleep 12
    rss loaded "$n"
    stop loaded
    echo "server: from the dump $(date +%T)"
    serve from-dump "$n"
    sleep 12
    rss from-dump-settled "$n"
    for c in 1 32; do
        $bench bench --server "$url" --rpc similar --catalog "$data" --concurrency $c \
            --connections $(( c < 4 ? 1 : 4 )) --duration 8 --warmup 2 --json "$sres-similar-c$c.json"
    done
    stop from-dump
    # A trial on another dataset must not stamp the 1M figures.
    [[ -z ${BENCH_1M_SERVER_RESULTS:-} ]] && provenance server
fi
$py bench/1m/report.py
echo "done $(date +%T)"
