#!/usr/bin/env python3
"""End-to-end benchmark peer: the original design served from Python.

ResNet-style features + exact k-NN cosine search with numpy, behind a grpcio
server that speaks lookbook's own proto (`lookbook.v1.RecommenderService`), so that
`lookbook bench --rpc similar` drives it exactly as it drives lookbook:

    python bench/peers/grpc_exact_server.py --vectors V.f32 --ids IDS.txt \
        --dim 1280 --listen 127.0.0.1:0 [--styles styles.csv]

It prints `listening on HOST:PORT` (the bound port) on stdout once it serves.

Implemented: RecommendSimilar by `product_id` (plus `exclude_ids`), with
lookbook's semantics: k results, the query product itself never returned,
score = cosine similarity (rows are unit length, so the dot product), best
first, `reason` = "similar to <id>", `attributes` from --styles if given
(lookbook returns each product's attributes; without --styles the peer's
answers are smaller than lookbook's). k outside 1..1000 or an empty id:
INVALID_ARGUMENT; unknown id: NOT_FOUND; image/embedding queries, filters,
positives/negatives, strategy and diversity: UNIMPLEMENTED. GetStats returns
the catalogue size and dim. Every other RPC: UNIMPLEMENTED (the generated
servicer's default). `lookbook bench --rpc similar` calls nothing else (it
does not call GetStats). No grpc.health.v1: grpcio-health-checking is not in
bench/peers/requirements.txt.

Search: exact, no index. A lone query is one float32 matrix-vector product
over all n vectors (BLAS sgemv, GIL released) and an argpartition for the
top k+1, then a sort of those. Under concurrent load the default batches
dynamically (see Batcher): the queries queued while a search runs are
answered together by one sgemm, same results, the matrix streamed once per
batch. `--batch 0` is the plain one-sgemv-per-request server.

The Python stubs are generated at start-up from proto/lookbook/v1/
recommender.proto with grpc_tools.protoc into a temporary directory that is
removed once they are imported; nothing generated is committed.

Measurements that chose the defaults. 2-core AMD EPYC KVM guest, OpenBLAS
0.3.31 (numpy 2.4.6 wheel), grpcio 1.85.1, protobuf 7.36.2 (upb); 12,000
random unit vectors of dim 1280, k=10, no --styles; load from
`lookbook bench --rpc similar --duration 10` (warm-up 2 s, one connection)
on the same two cores; 2-3 interleaved runs each, only runs during which
other processes used < 10% CPU. QPS, p50 / p99 in ms:

  configuration                         c=1                      c=32
  sync, 2 workers, BLAS 1               136-139  7.1-7.2 / 9.8   238-269  118-133 / 147-164
  sync, 4 workers, BLAS 1               133-143  7.0-7.4 / 9-10  254      126 / 151
  sync, 8 workers, BLAS 1               128-131  7.5-7.8 / 10    267-270  118-119 / 149-157
  sync, 4 workers, BLAS 2               164-190  4.8-5.7 / 12-13 101-107  299-312 / 400-428
  aio, search on the event loop         131-140  7.1-7.4 / 9-11  152      212 / 240-250
  aio, search on 4 threads              116-126  7.8-8.4 / 12-13 231-258  124-137 / 152-180
  sync, 32 workers, batch<=32, BLAS 1   128-133  7.4-7.6 / 10-11 518-520  61-62 / 81-85
  sync, 32 workers, batch<=32, BLAS 2   152-163  5.6-6.1 / 15-16 515-636  49-61 / 75-92
  sync, batch<=32, 2 search threads     134      7.4 / 9.6       495      65 / 108
  sync, batch<=16, 2 search threads                              513-559  57-62 / 91-109
  sync, batch<=16, BLAS 2                                        543-579  54-57 / 89
  sync, batch<=8, BLAS 1                                         330-366  87-96 / 102-119
  aio, batch<=32, BLAS 1                120      7.8-8.3 / 11-15 524-533  60-61 / 80-83
  aio, batch<=32, BLAS 2                153-162  5.8-6.0 / 12-14 495-504  63-64 / 95-100
  default (sync, 64 workers, batch<=32, 166      5.7 / 13.0      502      63 / 94
    BLAS 2), a later run

Why: one sgemv over the 61 MB matrix takes ~5 ms and is memory-bound, so
two concurrent sgemvs gain almost nothing on this VM (184 vs 189 QPS for
bare numpy in 2 threads), whereas an sgemm of 32 queries costs ~31 ms
(1 ms a query). Without batching c=32 tops out at ~270 QPS; with it ~520,
where the GIL-bound gRPC/protobuf work (~0.6-0.9 ms a request: 1,450-1,760
QPS with a trivial search) becomes the limit. BLAS 2 threads helps the
lone sgemv at c=1 (p50 5.6 vs 7.4 ms) but hurts several concurrent sgemvs
(oversubscription), so it is on only with batching and one search thread.
grpc.aio is no faster here. Caveat: the numbers move +-20% with what else
runs on the host; compare peers in one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"
PROTO_FILE = "lookbook/v1/recommender.proto"
# lookbook's default limits.max_k.
MAX_K = 1000


def load_stubs():
    """Generates recommender_pb2(_grpc) into a temp dir and imports them."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="lookbook-peer-stubs-")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            PROTO_FILE,
        ]
    )
    if rc != 0:
        shutil.rmtree(out, ignore_errors=True)
        sys.exit(f"protoc failed on {PROTO_ROOT / PROTO_FILE} (exit {rc})")
    sys.path.insert(0, out)
    try:
        from lookbook.v1 import recommender_pb2, recommender_pb2_grpc
    finally:
        # Loaded: nothing reads the files again, and a server stopped by a
        # signal (no atexit) leaves nothing behind.
        sys.path.remove(out)
        shutil.rmtree(out, ignore_errors=True)
    return recommender_pb2, recommender_pb2_grpc


def read_styles(path: Path) -> dict[str, dict[str, str]]:
    """styles.csv -> id -> attributes, as lookbook's dataset reader does:
    every non-empty column but `id`; extra fields (unquoted commas in the
    last column) are re-joined into the last column."""
    import csv

    out: dict[str, dict[str, str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows)
        id_col = header.index("id")
        last = len(header) - 1
        for row in rows:
            if id_col >= len(row) or not row[id_col].strip():
                continue
            attrs = {}
            for i, name in enumerate(header):
                if i == id_col:
                    continue
                if i == last and len(row) > len(header):
                    value = ",".join(row[last:])
                else:
                    value = row[i] if i < len(row) else ""
                if value:
                    attrs[name] = value
            out[row[id_col].strip()] = attrs
    return out


class Index:
    """n unit vectors in one C-contiguous float32 matrix, exact search."""

    def __init__(self, vectors: np.ndarray, ids: list[str]):
        self.vectors = vectors
        self.ids = ids
        self.row = {pid: i for i, pid in enumerate(ids)}

    def similar(self, row: int, k: int, exclude: set[int]) -> list[tuple[int, float]]:
        """One query: sgemv over all rows (GIL released), top k+1."""
        scores = self.vectors @ self.vectors[row]
        return self._top(scores, row, k, exclude)

    def similar_many(self, queries: list[tuple[int, int, set[int]]]) -> list[list[tuple[int, float]]]:
        """Several queries at once: one sgemm reads the matrix once for all."""
        if len(queries) == 1:
            return [self.similar(*queries[0])]
        rows = [q[0] for q in queries]
        scores = self.vectors[rows] @ self.vectors.T  # (B, n), GIL released
        n = scores.shape[1]
        want = min(max(k + len(ex) + 1 for _, k, ex in queries), n)
        if want < n:
            part = np.argpartition(scores, n - want, axis=1)[:, n - want :]
        else:
            part = np.broadcast_to(np.arange(n), scores.shape)
        return [
            self._ranked(scores[b], part[b], row, k, exclude)
            for b, (row, k, exclude) in enumerate(queries)
        ]

    @staticmethod
    def _top(scores: np.ndarray, row: int, k: int, exclude: set[int]):
        n = len(scores)
        want = min(k + len(exclude) + 1, n)
        if want < n:
            part = np.argpartition(scores, n - want)[n - want :]
        else:
            part = np.arange(n)
        return Index._ranked(scores, part, row, k, exclude)

    @staticmethod
    def _ranked(scores, part, row, k, exclude):
        top = part[np.argsort(-scores[part], kind="stable")]
        out = []
        for i in top.tolist():
            if i != row and i not in exclude:
                out.append((i, float(scores[i])))
                if len(out) == k:
                    break
        return out


class Batcher:
    """Dynamic batching: requests queue up while a search runs; each search
    thread takes everything queued (up to `max_batch`) and answers it with
    one sgemm, so the 60 MB matrix is streamed once per batch instead of
    once per query. Nothing waits for a batch to fill: a lone query goes
    alone (sgemv), so latency at low load is unchanged."""

    def __init__(self, index: Index, max_batch: int, threads: int):
        import queue
        import threading

        self.index = index
        self.max_batch = max_batch
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self._empty = queue.Empty
        for t in range(threads):
            threading.Thread(target=self._run, name=f"search-{t}", daemon=True).start()

    def submit(self, row: int, k: int, exclude: set[int]):
        from concurrent.futures import Future

        fut: Future = Future()
        self.queue.put((row, k, exclude, fut))
        return fut

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                except self._empty:
                    break
            try:
                results = self.index.similar_many([(r, k, ex) for r, k, ex, _ in batch])
            except Exception as e:  # noqa: BLE001 - hand it to every waiter
                for *_, fut in batch:
                    fut.set_exception(e)
                continue
            for (*_, fut), hits in zip(batch, results):
                fut.set_result(hits)


def make_servicer(pb2, pb2_grpc, index: Index, attributes: list[dict], dim: int, batcher):
    import grpc

    unsupported = (
        "filter",
        "positive_ids",
        "negative_ids",
        "diversity",
    )

    class Recommender(pb2_grpc.RecommenderServiceServicer):
        def _check(self, request):
            """-> (status code, message) or (row, k, exclude rows)."""
            which = request.WhichOneof("query")
            if which != "product_id":
                return grpc.StatusCode.UNIMPLEMENTED, (
                    "this peer answers RecommendSimilar by product_id only"
                )
            for field in unsupported:
                if field in ("positive_ids", "negative_ids"):
                    if len(getattr(request, field)):
                        return grpc.StatusCode.UNIMPLEMENTED, f"{field} is not supported"
                elif request.HasField(field):
                    return grpc.StatusCode.UNIMPLEMENTED, f"{field} is not supported"
            if request.strategy != 0:
                return grpc.StatusCode.UNIMPLEMENTED, "strategy is not supported"
            if not request.product_id:
                return grpc.StatusCode.INVALID_ARGUMENT, "product_id: must not be empty"
            if not 1 <= request.k <= MAX_K:
                return grpc.StatusCode.INVALID_ARGUMENT, (
                    f"k must be between 1 and {MAX_K}, got {request.k}"
                )
            row = index.row.get(request.product_id)
            if row is None:
                return grpc.StatusCode.NOT_FOUND, (
                    f"product {request.product_id!r} is not in the catalogue"
                )
            exclude = {index.row[e] for e in request.exclude_ids if e in index.row}
            return row, request.k, exclude

        def _answer(self, request, hits):
            reason = f"similar to {request.product_id}"
            return pb2.RecommendSimilarResponse(
                items=[
                    pb2.Recommendation(
                        product_id=index.ids[i],
                        score=s,
                        attributes=attributes[i],
                        reason=reason,
                    )
                    for i, s in hits
                ]
            )

        def RecommendSimilar(self, request, context):
            checked = self._check(request)
            if isinstance(checked[0], grpc.StatusCode):
                context.abort(*checked)
            row, k, exclude = checked
            if batcher is None:
                hits = index.similar(row, k, exclude)
            else:
                hits = batcher.submit(row, k, exclude).result()
            return self._answer(request, hits)

        def GetStats(self, request, context):
            return pb2.GetStatsResponse(
                catalog_size=len(index.ids), model="peer:numpy-exact", dim=dim
            )

    return Recommender


def make_aio_servicer(base, index: Index, executor, batcher):
    """grpc.aio flavour: the same checks and answers; the search runs on the
    batcher, on a thread pool, or inline on the event loop (neither)."""
    import asyncio

    import grpc

    class AioRecommender(base):
        async def RecommendSimilar(self, request, context):
            checked = self._check(request)
            if isinstance(checked[0], grpc.StatusCode):
                await context.abort(*checked)
            row, k, exclude = checked
            if batcher is not None:
                hits = await asyncio.wrap_future(batcher.submit(row, k, exclude))
            elif executor is None:
                hits = index.similar(row, k, exclude)
            else:
                hits = await asyncio.get_running_loop().run_in_executor(
                    executor, index.similar, row, k, exclude
                )
            return self._answer(request, hits)

        async def GetStats(self, request, context):
            return base.GetStats(self, request, context)

    return AioRecommender


def load_index(args) -> tuple[Index, list[dict]]:
    ids = [line.rstrip("\n") for line in open(args.ids, encoding="utf-8")]
    ids = [i for i in ids if i]
    raw = np.fromfile(args.vectors, dtype="<f4")
    if raw.size != len(ids) * args.dim:
        sys.exit(
            f"{args.vectors}: {raw.size} floats, expected {len(ids)} ids x {args.dim}"
        )
    vectors = np.ascontiguousarray(raw.reshape(len(ids), args.dim), dtype=np.float32)
    if len(set(ids)) != len(ids):
        sys.exit(f"{args.ids}: duplicate ids")
    styles = read_styles(args.styles) if args.styles else {}
    attributes = [styles.get(i, {}) for i in ids]
    return Index(vectors, ids), attributes


def blas_threads(args) -> int:
    """--blas-threads 0 (auto): with batching and one search thread, every
    core on each sgemm (nothing else wants them); otherwise one per sgemv,
    the parallelism coming from concurrent requests (several multi-threaded
    sgemvs at once oversubscribe the cores: 107 QPS at c=32, see above)."""
    if args.blas_threads > 0:
        return args.blas_threads
    if args.batch > 1 and args.search_threads == 1:
        return os.cpu_count() or 1
    return 1


def make_batcher(args, index: Index):
    if args.batch <= 1:
        return None
    return Batcher(index, args.batch, args.search_threads)


def announce(host: str, port: int) -> None:
    print(f"listening on {host}:{port}", flush=True)


def split_listen(listen: str) -> tuple[str, str]:
    host, _, port = listen.rpartition(":")
    return host, port


def serve_sync(args, pb2, pb2_grpc, index, attributes):
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    server = grpc.server(
        ThreadPoolExecutor(max_workers=args.workers),
        options=[("grpc.so_reuseport", 0)],
    )
    servicer = make_servicer(pb2, pb2_grpc, index, attributes, args.dim, make_batcher(args, index))()
    pb2_grpc.add_RecommenderServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(args.listen)
    if port == 0:
        sys.exit(f"cannot listen on {args.listen}")
    server.start()
    announce(split_listen(args.listen)[0], port)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(grace=None)


def serve_aio(args, pb2, pb2_grpc, index, attributes):
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    batcher = make_batcher(args, index)
    executor = None
    if batcher is None and args.workers > 0:
        executor = ThreadPoolExecutor(max_workers=args.workers)
    base = make_servicer(pb2, pb2_grpc, index, attributes, args.dim, batcher)
    servicer = make_aio_servicer(base, index, executor, batcher)()

    async def main():
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb2_grpc.add_RecommenderServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port(args.listen)
        if port == 0:
            sys.exit(f"cannot listen on {args.listen}")
        await server.start()
        announce(split_listen(args.listen)[0], port)
        await server.wait_for_termination()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vectors", type=Path, required=True,
                   help="raw little-endian float32, row-major n x dim, unit rows")
    p.add_argument("--ids", type=Path, required=True, help="n lines, one id per row")
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--listen", default="127.0.0.1:0",
                   help="HOST:PORT; port 0 picks a free one (printed)")
    p.add_argument("--styles", type=Path,
                   help="styles.csv whose columns become the answers' attributes")
    p.add_argument("--mode", choices=("sync", "aio"), default="sync",
                   help="grpc.server + thread pool, or grpc.aio")
    p.add_argument("--workers", type=int, default=64,
                   help="sync: server threads (with --batch, at least the client's "
                        "concurrency, or batches stay small); aio without --batch: "
                        "search threads "
                        "(0: search on the event loop)")
    p.add_argument("--batch", type=int, default=32,
                   help="dynamic batching: at most this many queued queries per sgemm "
                        "(0/1: off, one sgemv per request)")
    p.add_argument("--search-threads", type=int, default=1,
                   help="with --batch: threads taking batches off the queue")
    p.add_argument("--blas-threads", type=int, default=0,
                   help="BLAS threads per sgemv/sgemm (0: auto, see blas_threads)")
    args = p.parse_args()

    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=blas_threads(args), user_api="blas")
    index, attributes = load_index(args)
    pb2, pb2_grpc = load_stubs()
    if args.mode == "sync":
        serve_sync(args, pb2, pb2_grpc, index, attributes)
    else:
        serve_aio(args, pb2, pb2_grpc, index, attributes)


if __name__ == "__main__":
    main()
