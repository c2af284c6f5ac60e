#!/usr/bin/env python3
"""Benchmark one peer nearest-neighbour library on one dataset, serving-style.

Why: lookbook's HNSW index is compared with what a user would otherwise run in
Python: hnswlib, faiss (IndexHNSWFlat) and scikit-learn's exact brute-force
NearestNeighbors (what the original design used). One library per process, so
that memory measurements do not mix and one library's thread pools cannot
disturb another's.

What: loads a dataset written by make_vectors.py (DIR/<scale>/{meta.json,
base.f32, query.f32, gt.i32}), builds the index (timed, with --build-threads),
then for each ef_search value and thread count measures

  * qps: T Python threads, each issuing single-query calls (one vector, k=10)
    over its contiguous share of the queries, library-internal threading pinned
    to 1 (BLAS via threadpoolctl, OpenMP per worker thread, hnswlib
    num_threads=1). That is how a server handles concurrent requests. One
    untimed warm-up pass, then timed passes over all queries until at least
    --min-seconds have been measured (at least one full pass);
  * recall_at_10: mean over queries of |returned ∩ exact top-10| / 10.

All three libraries release the GIL inside their search call (hnswlib's
knn_query, faiss's SWIG wrapper around the C++ search; scikit-learn's brute
force spends its time in numpy/BLAS calls, which release it too), so T Python
threads do search in parallel. Checked with the switch interval set to 10 s
(a thread holding the GIL cannot then be preempted): while a worker loops over
search calls, the main thread gets the GIL within ~0.1-4 ms for all three, but
only after the worker finishes (~3 s) for a pure-Python loop. On idle cores
(16-core Xeon, 20K vectors, ef_search 10/64) 1 -> 2 threads gave x1.74/x1.79
for hnswlib and x1.99/x1.98 for faiss. The stderr log prints the worker CPU
utilisation per run (about `threads` cores when they really run in parallel;
less when other processes compete for the cores) so every run can be checked.
scikit-learn's kneighbors with metric='cosine' re-validates and re-normalises
the whole base on every call (a copy of n x dim floats per query), so it is
slow and memory-hungry at large n: use --max-queries there.

Memory per vector = (process RSS after the build - RSS after loading the data,
before creating the index) / n, from psutil. scikit-learn's fit() keeps a
reference to the caller's array instead of copying it; when it does, the size
of that array is added, because the index cannot work without it.

Output (--out): JSON with lib, version, scale, n, nq, dim, m, ef_construction,
build_threads, build_seconds, memory_bytes_per_vector, raw_vector_bytes and
runs [{ef_search, threads, qps, recall_at_10}]; a human summary goes to stderr.

Example:
    .cache/bench-venv/bin/python bench/peers/index_peers.py --data .cache/bench/100k \\
        --lib hnswlib --m 16 --ef-construction 200 \\
        --ef-search 10,16,24,32,48,64,96,128,192,256 --threads 1,2 --build-threads 2 \\
        --out .cache/bench/100k/hnswlib.json
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.metadata
import json
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
import threadpoolctl

K = 10
PACKAGE = {"hnswlib": "hnswlib", "faiss": "faiss-cpu", "sklearn": "scikit-learn"}


def log(msg: str) -> None:
    print(f"[index_peers] {msg}", file=sys.stderr, flush=True)


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def package_version(lib: str) -> str:
    try:
        return importlib.metadata.version(PACKAGE[lib])
    except importlib.metadata.PackageNotFoundError:  # e.g. on PYTHONPATH without dist-info
        module = importlib.import_module(lib)
        return str(getattr(module, "__version__", "unknown"))


# --- one adapter per library: build(), set_ef(), and a per-thread searcher ----

class HnswlibPeer:
    def __init__(self, dim: int, m: int, efc: int):
        import hnswlib
        self.hnswlib, self.dim, self.m, self.efc = hnswlib, dim, m, efc

    def build(self, base: np.ndarray, threads: int) -> None:
        self.index = self.hnswlib.Index(space="ip", dim=self.dim)
        self.index.init_index(max_elements=len(base), M=self.m, ef_construction=self.efc, random_seed=100)
        self.index.add_items(base, np.arange(len(base)), num_threads=threads)

    def set_ef(self, ef: int | None) -> None:
        self.index.set_ef(ef)

    def set_filter(self, mask: np.ndarray | None) -> None:
        self.mask = mask

    def searcher(self) -> Callable[[np.ndarray], np.ndarray]:
        index = self.index
        if getattr(self, "mask", None) is not None:
            # hnswlib's filter is a Python callable asked about each candidate
            # label (it takes the GIL for each call): its documented way.
            admit = self.mask
            return lambda q: index.knn_query(q, k=K, num_threads=1, filter=lambda label: bool(admit[label]))[0][0]
        # num_threads=1 runs the query in the calling thread; the GIL is released inside.
        return lambda q: index.knn_query(q, k=K, num_threads=1)[0][0]


class FaissPeer:
    def __init__(self, dim: int, m: int, efc: int):
        import faiss
        self.faiss, self.dim, self.m, self.efc = faiss, dim, m, efc

    def build(self, base: np.ndarray, threads: int) -> None:
        self.index = self.faiss.IndexHNSWFlat(self.dim, self.m, self.faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = self.efc
        self.faiss.omp_set_num_threads(threads)
        self.index.add(base)

    def set_ef(self, ef: int | None) -> None:
        self.index.hnsw.efSearch = ef  # set before the worker threads start
        self.ef = ef

    def set_filter(self, mask: np.ndarray | None) -> None:
        self.params = None
        if mask is not None:
            # An id selector over a bitmap (bit i of byte i // 8, low bit
            # first), checked inside the C++ search; the bytes must outlive it.
            self.bitmap = np.packbits(mask.astype(np.uint8), bitorder="little")
            self.selector = self.faiss.IDSelectorBitmap(len(mask), self.faiss.swig_ptr(self.bitmap))
            self.params = self.faiss.SearchParametersHNSW()
            self.params.sel = self.selector
            self.params.efSearch = self.ef

    def searcher(self) -> Callable[[np.ndarray], np.ndarray]:
        # The OpenMP thread count is a per-thread setting: pin it in the worker itself.
        self.faiss.omp_set_num_threads(1)
        index, params = self.index, getattr(self, "params", None)
        if params is not None:
            return lambda q: index.search(q, K, params=params)[1][0]
        return lambda q: index.search(q, K)[1][0]


class SklearnPeer:
    def __init__(self, dim: int, m: int, efc: int):
        from sklearn.neighbors import NearestNeighbors
        self.cls = NearestNeighbors

    def build(self, base: np.ndarray, threads: int) -> None:
        # Exact search: brute force over cosine distance, as the original design did.
        self.index = self.cls(n_neighbors=K, algorithm="brute", metric="cosine").fit(base)

    def holds_caller_array(self, base: np.ndarray) -> bool:
        return np.shares_memory(self.index._fit_X, base)

    def set_ef(self, ef: int | None) -> None:
        pass

    def searcher(self) -> Callable[[np.ndarray], np.ndarray]:
        index = self.index
        return lambda q: index.kneighbors(q, n_neighbors=K, return_distance=False)[0]


PEERS = {"hnswlib": HnswlibPeer, "faiss": FaissPeer, "sklearn": SklearnPeer}


# --- serving-style measurement -------------------------------------------------

class Workers:
    """`threads` persistent Python threads, each owning a contiguous share of the
    queries and issuing one single-query call per query. Set-up (pinning OpenMP,
    getting a searcher) happens once per thread, outside the timed passes."""

    def __init__(self, peer, queries: list[np.ndarray], threads: int):
        self.queries = queries
        self.out = np.full((len(queries), K), -1, dtype=np.int64)  # row i = query i
        self.go = threading.Barrier(threads + 1)
        self.done = threading.Barrier(threads + 1)
        self.stop = False
        self.errors: list[BaseException] = []
        self.cpu = [0.0] * threads  # per-thread CPU seconds spent in timed passes
        shares = np.array_split(np.arange(len(queries)), threads)
        self.pool = [threading.Thread(target=self._worker, args=(peer, j, sh), daemon=True)
                     for j, sh in enumerate(shares)]
        for t in self.pool:
            t.start()

    def _worker(self, peer, j: int, share: np.ndarray) -> None:
        try:
            # OpenMP limits are per thread: pin every OpenMP runtime in this thread to 1
            # (BLAS is pinned process-wide by the caller).
            threadpoolctl.threadpool_limits(1, user_api="openmp")
            search = peer.searcher()
            while True:
                self.go.wait()
                if self.stop:
                    return
                c0 = time.thread_time()
                for i in share:
                    labels = search(self.queries[i])
                    self.out[i, :len(labels)] = labels
                self.cpu[j] += time.thread_time() - c0
                self.done.wait()
        except threading.BrokenBarrierError:
            return
        except BaseException as e:  # reported by the main thread
            self.errors.append(e)
            self.go.abort()
            self.done.abort()

    def run_pass(self) -> float:
        """One pass over all queries by all threads; returns wall seconds."""
        try:
            self.go.wait()
            t0 = time.perf_counter()
            self.done.wait()
            return time.perf_counter() - t0
        except threading.BrokenBarrierError:
            raise self.errors[0] if self.errors else RuntimeError("worker failed")

    def close(self) -> None:
        self.stop = True
        try:
            self.go.wait(timeout=60)
        except threading.BrokenBarrierError:
            pass
        for t in self.pool:
            t.join()


def recall_at_k(found: np.ndarray, gt: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], g[g >= 0])) for f, g in zip(found, gt))
    return hits / max(1, int((gt >= 0).sum()))


def admitted(n: int, share: float) -> np.ndarray:
    """Rows the selectivity-`share` filter admits: a multiplicative hash of the row
    number below share * 2^32, exactly as `perf::admitted` in lookbook-bench."""
    rows = np.arange(n, dtype=np.uint64)
    return ((rows * np.uint64(0x9E3779B1)) & np.uint64(0xFFFFFFFF)) < np.uint64(int(share * 2**32))


def filtered_truth(base: np.ndarray, queries: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Exact top-K row numbers among the admitted rows (best first, ties by row; -1 pads)."""
    rows = np.flatnonzero(mask)
    out = np.full((len(queries), K), -1, dtype=np.int64)
    scores = queries @ base[rows].T
    for i, sc in enumerate(scores):
        order = np.lexsort((rows, -sc))[:K]
        out[i, :len(order)] = rows[order]
    return out


def measure(peer, queries: list[np.ndarray], gt: np.ndarray, threads: int,
            min_seconds: float) -> tuple[float, float, float]:
    """Returns (qps, recall@10, CPU utilisation = worker CPU seconds / wall seconds)."""
    workers = Workers(peer, queries, threads)
    try:
        workers.run_pass()  # untimed warm-up
        workers.out[:] = -1
        workers.cpu = [0.0] * threads
        total, passes = 0.0, 0
        while passes == 0 or total < min_seconds:
            total += workers.run_pass()
            passes += 1
    finally:
        workers.close()
    # CPU utilisation near `threads` shows the searches ran in parallel (GIL released,
    # cores free); it stays <= 1 if the GIL serialises the calls.
    return passes * len(queries) / total, recall_at_k(workers.out, gt), sum(workers.cpu) / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="dataset dir written by make_vectors.py")
    ap.add_argument("--lib", choices=sorted(PEERS), required=True)
    ap.add_argument("--m", type=int, default=16, help="HNSW M (default 16)")
    ap.add_argument("--ef-construction", type=int, default=200, help="HNSW ef_construction (default 200)")
    ap.add_argument("--ef-search", type=int_list, default=int_list("10,16,24,32,48,64,96,128,192,256"),
                    help="comma-separated ef_search values (ignored for sklearn)")
    ap.add_argument("--threads", type=int_list, default=[1, 2], help="comma-separated search thread counts")
    ap.add_argument("--build-threads", type=int, default=2, help="threads for index construction (default 2)")
    ap.add_argument("--min-seconds", type=float, default=1.0,
                    help="measure at least this long per run (whole passes; default 1.0)")
    ap.add_argument("--max-queries", type=int, default=None,
                    help="use only the first N queries (for slow exact search at large n; nq in the JSON says how many)")
    ap.add_argument("--filter", type=lambda t: [float(x) for x in t.split(",") if x.strip()], default=[],
                    help="selectivity sweep: shares of the base admitted by filtered searches (hnswlib, faiss)")
    ap.add_argument("--filter-ef", type=int, default=64, help="ef_search of the filtered searches (default 64)")
    ap.add_argument("--filter-queries", type=int, default=200, help="queries per selectivity (default 200)")
    ap.add_argument("--out", type=Path, required=True, help="result JSON")
    args = ap.parse_args()

    meta = json.loads((args.data / "meta.json").read_text())
    n, nq, dim = meta["n"], meta["nq"], meta["dim"]
    base = np.fromfile(args.data / "base.f32", dtype="<f4").reshape(n, dim)
    query_rows = np.fromfile(args.data / "query.f32", dtype="<f4").reshape(nq, dim)
    gt = np.fromfile(args.data / "gt.i32", dtype="<i4").reshape(nq, meta["k"])[:, :K]
    if args.max_queries is not None and args.max_queries < nq:
        nq, query_rows, gt = args.max_queries, query_rows[:args.max_queries], gt[:args.max_queries]
    queries = [query_rows[i:i + 1] for i in range(nq)]  # one (1, dim) view per call
    hnsw = args.lib != "sklearn"
    log(f"{args.lib} {package_version(args.lib)}: {meta['scale']} n={n:,} nq={nq} dim={dim}")

    peer = PEERS[args.lib](dim, args.m, args.ef_construction)  # imports the library
    rss_loaded = rss()  # data loaded and library imported, no index yet
    t0 = time.perf_counter()
    peer.build(base, args.build_threads)
    build_seconds = time.perf_counter() - t0
    index_bytes = rss() - rss_loaded
    if not hnsw and peer.holds_caller_array(base):
        index_bytes += base.nbytes  # fit() kept our array rather than a copy
    log(f"built in {build_seconds:.2f} s with {args.build_threads} thread(s); "
        f"{index_bytes / n:,.0f} bytes/vector (raw vector {4 * dim})")

    runs = []
    # BLAS pinned to one thread process-wide for all searches.
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        for ef in (args.ef_search if hnsw else [None]):
            peer.set_ef(ef)
            for threads in args.threads:
                qps, recall, cpu = measure(peer, queries, gt, threads, args.min_seconds)
                runs.append({"ef_search": ef, "threads": threads, "qps": qps, "recall_at_10": recall})
                log(f"ef_search={ef} threads={threads}: {qps:,.1f} qps, recall@10 {recall:.4f}, "
                    f"CPU {cpu:.2f} cores")

    filtered = []
    if args.filter and hnsw:
        fq = min(args.filter_queries, len(query_rows))
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            peer.set_ef(args.filter_ef)
            for share in args.filter:
                mask = admitted(n, share)
                truth = filtered_truth(base, query_rows[:fq], mask)
                peer.set_filter(mask)
                for threads in args.threads:
                    qps, recall, cpu = measure(peer, queries[:fq], truth, threads, args.min_seconds)
                    filtered.append({"selectivity": share, "admitted": int(mask.sum()), "ef_search": args.filter_ef,
                                     "threads": threads, "nq": fq, "qps": qps, "recall_at_10": recall})
                    log(f"filter {share} ({int(mask.sum())} rows) threads={threads}: {qps:,.1f} qps, "
                        f"recall@10 {recall:.4f}, CPU {cpu:.2f} cores")
            peer.set_filter(None)

    result = {
        "lib": args.lib, "version": package_version(args.lib), "scale": meta["scale"],
        "n": n, "nq": nq, "dim": dim,
        "m": args.m if hnsw else None, "ef_construction": args.ef_construction if hnsw else None,
        "build_threads": args.build_threads, "build_seconds": build_seconds,
        "memory_bytes_per_vector": index_bytes / n, "raw_vector_bytes": 4 * dim,
        "runs": runs,
    }
    if filtered:
        result["filtered"] = filtered
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    # Short human summary: best recall per thread count and the 1 -> 2 thread scaling.
    for threads in args.threads:
        rs = [r for r in runs if r["threads"] == threads]
        best = max(rs, key=lambda r: r["recall_at_10"])
        log(f"summary threads={threads}: best recall@10 {best['recall_at_10']:.4f} "
            f"at ef_search={best['ef_search']} ({best['qps']:,.0f} qps)")
    if len(args.threads) > 1:
        t1, tn = args.threads[0], args.threads[-1]
        ratios = [b["qps"] / a["qps"] for a in runs if a["threads"] == t1
                  for b in runs if b["threads"] == tn and b["ef_search"] == a["ef_search"]]
        log(f"summary scaling {t1} -> {tn} threads: x{min(ratios):.2f} .. x{max(ratios):.2f}")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
