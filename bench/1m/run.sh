#!/usr/bin/env bash
# One-off 1M index comparison, lookbook vs hnswlib, same parameters as bench/run.sh
# (run after a `make bench`, which builds the binary, the venv and .cache/bench/sample.*).
# About 75 min here: 36 min to build ours, 32 min hnswlib. Writes bench/1m/*.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=.cache/bench; res=bench/1m; mkdir -p $res
py=.cache/bench-venv/bin/python
efs=10,16,24,32,64,128,256
echo "gen $(date +%T)"
/usr/bin/time -v $py bench/peers/make_vectors.py --real $work/sample.f32 --ids $work/sample.ids \
    --out $work --scales 1m --queries 1000 --seed 42 > $work/1m-gen.log 2>&1
echo "lookbook $(date +%T)"
/usr/bin/time -v ./target/release/lookbook bench-index $work/1m --m 16 --ef-construction 200 \
    --ef-search $efs --threads 1,2 --json $res/index-1m-lookbook.json > $work/1m-lookbook.log 2>&1
echo "hnswlib $(date +%T)"
/usr/bin/time -v $py bench/peers/index_peers.py --data $work/1m --lib hnswlib --m 16 \
    --ef-construction 200 --ef-search $efs --threads 1,2 --build-threads 2 \
    --out $res/index-1m-hnswlib.json > $work/1m-hnswlib.log 2>&1
echo "done $(date +%T)"
