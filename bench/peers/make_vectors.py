#!/usr/bin/env python3
"""Build the vector-index benchmark datasets from the real product embeddings.

Why: the index benchmark compares lookbook's HNSW index with peer libraries
(hnswlib, faiss, scikit-learn) at catalogue sizes far beyond the ~3K real
products we have photos for. Uniform random vectors would be a poor stand-in:
real image embeddings are clustered, and clustering is what makes approximate
search hard or easy. So the larger scales are grown from the real embeddings.

What: for each requested scale this writes DIR/<scale>/

    base.f32    n x D float32 little-endian, row-major: all real vectors first,
                then synthetic ones up to n (``sample`` = the real vectors only)
    ids.txt     n lines: the real product ids, then syn-0000001, syn-0000002, ...
    query.f32   nq x D float32: fresh synthetic vectors, never part of the base
                (the same queries for every scale, given the same seed)
    gt.i32      nq x 10 int32 little-endian: row numbers in base.f32 of the exact
                top-10 by inner product, best first, ties by row number (float32
                matmul, candidates re-scored in float64)
    meta.json   scale, n, nq, dim, k, seed, how the vectors were made, the noise
                sigma and the nearest-neighbour cosine medians it was fitted to

Synthetic generator: a synthetic vector is a uniformly drawn real embedding plus
Gaussian noise shaped like the real embeddings' own spread, N(0, sigma^2 C) with
C the real vectors' covariance rescaled to trace = dim, re-normalised to unit
length. Shaped, not isotropic: isotropic noise in 1280 dimensions makes every
synthetic point of a cluster almost equidistant from every other (an intrinsic
dimension the real embeddings do not have), which at 100K left every HNSW
library (hnswlib included) below recall@10 0.8 at ef 256. sigma is
calibrated deterministically (bisection with fixed random draws) so that the
median cosine of a synthetic vector to its nearest neighbour among the real
vectors matches the median cosine of a real vector to its nearest *other* real
vector. Synthetic rows are generated in fixed-size chunks, each from its own
seeded stream, so a smaller scale's base is a prefix of a larger one's.

Scales are written chunk by chunk (generate, append to base.f32, fold into a
running exact top-10 for the queries), so memory stays at a few hundred MB even
for 1m x 1280 (5.1 GB on disk). Files are written under temporary names and
renamed at the end, meta.json last; a scale whose meta.json matches the request
(n, nq, seed, dim, input file sizes and mtimes) is skipped, so reruns are cheap.

Example:
    .cache/bench-venv/bin/python bench/peers/make_vectors.py \\
        --real .cache/bench/sample.f32 --ids .cache/bench/sample.ids \\
        --out .cache/bench --scales sample,100k,1m --queries 1000 --seed 42
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

K = 10  # ground-truth depth: the benchmark reports recall@10
# Rows per generated chunk. Fixed (not an option) because the chunk index seeds
# the chunk's random stream: changing it would change the synthetic vectors.
CHUNK = 16384
# Vectors used to estimate each nearest-neighbour median (at least; more while
# the score matrix stays under CAL_MAX_ELEMENTS, i.e. all real rows up to ~10K).
CAL_SAMPLE = 2000
# Upper bound on the calibration score matrix (CAL_SAMPLE x N real), in elements.
CAL_MAX_ELEMENTS = 30_000_000
FORMAT = 4  # bump when the generator changes, so old datasets are rebuilt

# Independent random streams, derived from --seed.
STREAM_CAL, STREAM_QUERY, STREAM_BASE, STREAM_REAL_SUB = 0, 1, 2, 3


def log(msg: str) -> None:
    print(f"[make_vectors {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_scale(name: str, n_real: int | None = None) -> int | None:
    """Number of base vectors for a scale name: 'sample' -> None (= n_real),
    '<number>k' -> x1000, '<number>m' -> x1000000 (e.g. 12k, 1.5m)."""
    if name == "sample":
        return n_real
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([km])", name.lower())
    if not m:
        raise ValueError(f"bad scale {name!r}: use 'sample', '<number>k' or '<number>m'")
    n = float(m.group(1)) * (1_000 if m.group(2) == "k" else 1_000_000)
    if n != int(n):
        raise ValueError(f"scale {name!r} is not a whole number of vectors")
    return int(n)


def load_real(path: Path, ids_path: Path, dim: int) -> tuple[np.ndarray, list[str]]:
    size = path.stat().st_size
    if size % (4 * dim):
        raise SystemExit(f"{path}: {size} bytes is not a multiple of {4 * dim} (dim {dim})")
    real = np.fromfile(path, dtype="<f4").reshape(-1, dim)
    ids = ids_path.read_text().splitlines()
    if len(ids) != len(real):
        raise SystemExit(f"{ids_path}: {len(ids)} ids but {len(real)} vectors in {path}")
    norms = np.linalg.norm(real, axis=1)
    if not np.all(np.isfinite(norms)) or norms.min() <= 0:
        raise SystemExit(f"{path}: zero or non-finite vectors")
    if np.abs(norms - 1).max() > 1e-3:
        log(f"warning: rows are not unit length (norms {norms.min():.4f}..{norms.max():.4f}); re-normalising")
        real = real / norms[:, None]
    return np.ascontiguousarray(real, dtype=np.float32), ids


def normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


# (real, its basis): the basis of the one real matrix a run uses. Holding the
# array itself (not its id(), which Python may reuse once an array is freed)
# makes the identity check below exact.
_BASIS: list[tuple[np.ndarray, np.ndarray]] = []


def noise_basis(real: np.ndarray) -> np.ndarray:
    """Rows = the real vectors' principal axes scaled by their standard deviation,
    rescaled so that E|g @ basis|^2 = dim for g ~ N(0, I): noise g @ basis has the
    real data's covariance shape and the same overall size as isotropic N(0, I)."""
    for cached, basis in _BASIS:
        if cached is real:
            return basis
    centred = real.astype(np.float64) - real.mean(axis=0, dtype=np.float64)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    std = s / np.sqrt(len(real) - 1)
    basis = std[:, None] * vt
    basis *= np.sqrt(real.shape[1] / float((std ** 2).sum()))
    _BASIS[:] = [(real, basis.astype(np.float32))]
    return _BASIS[0][1]


def shaped_noise(real: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    basis = noise_basis(real)
    return rng.standard_normal((count, basis.shape[0]), dtype=np.float32) @ basis


def synth(real: np.ndarray, count: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """`count` synthetic unit vectors: random real row + N(0, sigma^2 C), re-normalised.
    Which rows come out depends on how many are asked for (the draws interleave)."""
    src = rng.integers(0, len(real), size=count)
    noise = shaped_noise(real, count, rng)
    noise *= np.float32(sigma)
    noise += real[src]
    return normalise(noise)


def max_cos(x: np.ndarray, real: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """Per row of x, the largest inner product with a row of `real` (chunked over
    real); `exclude[i]` = a real row index to ignore for x[i] (itself)."""
    best = np.full(len(x), -np.inf, dtype=np.float32)
    rows = np.arange(len(x))
    for lo in range(0, len(real), CHUNK):
        s = x @ real[lo:lo + CHUNK].T
        if exclude is not None:
            own = (exclude >= lo) & (exclude < lo + s.shape[1])
            s[rows[own], exclude[own] - lo] = -np.inf
        np.maximum(best, s.max(axis=1), out=best)
    return best


def calibrate(real: np.ndarray, seed: int) -> dict:
    """Find sigma so that median NN cosine (synthetic -> real) ~= median NN cosine
    (real -> other real). Deterministic: fixed seeds and fixed noise draws."""
    n, dim = real.shape
    # Real side: NN among the other real vectors (a subsample of rows if N is big).
    n_sub = min(n, max(CAL_SAMPLE, CAL_MAX_ELEMENTS // n))
    sub = np.sort(np.random.default_rng([seed, STREAM_REAL_SUB]).choice(n, n_sub, replace=False))
    real_nn = max_cos(real[sub], real, exclude=sub)
    target = float(np.median(real_nn))

    # Synthetic side, with common random numbers: x(sigma) = (r + sigma z)/|r + sigma z|
    # for fixed source rows r and noise z. Then cos(x, R_j) = (A_j + sigma B_j)/|r + sigma z|
    # with A = r R^T and B = z R^T computed once, so each bisection step is cheap.
    n_cal = int(max(256, min(CAL_SAMPLE, CAL_MAX_ELEMENTS // n)))  # a and b below are n_cal x n
    rng = np.random.default_rng([seed, STREAM_CAL])
    src = rng.integers(0, n, size=n_cal)
    z = shaped_noise(real, n_cal, rng)
    r = real[src]
    a = r @ real.T
    b = z @ real.T
    rz = np.einsum("ij,ij->i", r, z).astype(np.float64)
    zz = np.einsum("ij,ij->i", z, z).astype(np.float64)

    def median_nn(sigma: float) -> float:
        norm = np.sqrt(1.0 + 2.0 * sigma * rz + sigma * sigma * zz)
        return float(np.median((a + np.float32(sigma) * b).max(axis=1) / norm))

    # f(0) = 1 (the source itself) and f decreases with sigma: bracket, then bisect.
    lo, hi = 0.0, 1.0 / np.sqrt(dim)
    while median_nn(hi) > target:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if median_nn(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-7 * hi:
            break
    # Rounded to 4 significant digits: the matching is no finer than that anyway, and
    # the last bits of the bisection depend on the CPU's float32 summation order.
    sigma = float(f"{0.5 * (lo + hi):.4g}")

    # Check with explicitly generated vectors (the real generator), fresh draws.
    check = synth(real, n_cal, sigma, np.random.default_rng([seed, STREAM_CAL, 1]))
    syn_nn = float(np.median(max_cos(check, real)))
    log(f"calibrated sigma={sigma:.6f} (noise norm ~{sigma * np.sqrt(dim):.3f}): "
        f"median NN cosine real->real {target:.4f}, synthetic->real {syn_nn:.4f} "
        f"({n_sub} real / {n_cal} synthetic samples)")
    return {"noise_sigma": sigma, "real_nn_median_cosine": target,
            "synthetic_nn_median_cosine": syn_nn}


class TopK:
    """Running exact top-K by inner product over base chunks, best first, ties by
    lower row. Each chunk is scored in float32 (one BLAS matmul); its best
    K + MARGIN candidates per query are then re-scored in float64, so the result
    does not hinge on float32 summation order at near-ties."""

    MARGIN = 10

    def __init__(self, queries: np.ndarray):
        self.q = queries
        self.q64 = queries.astype(np.float64)
        self.score = np.full((len(queries), 0), -np.inf, dtype=np.float64)
        self.index = np.zeros((len(queries), 0), dtype=np.int64)

    def add(self, chunk: np.ndarray, offset: int) -> None:
        s = self.q @ chunk.T
        keep = K + self.MARGIN
        if s.shape[1] > keep:
            local = np.argpartition(-s, keep - 1, axis=1)[:, :keep]
        else:
            local = np.broadcast_to(np.arange(s.shape[1]), s.shape)
        exact = np.empty(local.shape, dtype=np.float64)
        for a in range(0, len(local), 256):  # bounded float64 temporaries
            rows = chunk[local[a:a + 256]].astype(np.float64)
            exact[a:a + 256] = np.einsum("qd,qcd->qc", self.q64[a:a + 256], rows)
        score = np.concatenate([self.score, exact], axis=1)
        index = np.concatenate([self.index, local + offset], axis=1)
        order = np.lexsort((index, -score), axis=1)[:, :K]
        self.score = np.take_along_axis(score, order, axis=1)
        self.index = np.take_along_axis(index, order, axis=1)


def source_stamp(real: Path, ids: Path) -> dict:
    st_r, st_i = real.stat(), ids.stat()
    return {"real": str(real), "real_bytes": st_r.st_size, "real_mtime_ns": st_r.st_mtime_ns,
            "ids": str(ids), "ids_bytes": st_i.st_size, "ids_mtime_ns": st_i.st_mtime_ns}


def up_to_date(d: Path, want: dict) -> bool:
    """True if d holds a complete dataset made from the same request and inputs."""
    try:
        meta = json.loads((d / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    for key in ("n", "nq", "dim", "k", "seed", "format"):
        if meta.get(key) != want[key]:
            return False
    src, have = want["source"], meta.get("source", {})
    if any(have.get(k) != src[k] for k in ("real_bytes", "real_mtime_ns", "ids_bytes", "ids_mtime_ns")):
        return False
    sizes = {"base.f32": 4 * meta["n"] * meta["dim"], "query.f32": 4 * meta["nq"] * meta["dim"],
             "gt.i32": 4 * meta["nq"] * K}
    return all((d / f).is_file() and (d / f).stat().st_size == s for f, s in sizes.items()) \
        and (d / "ids.txt").is_file()


def build_scale(d: Path, scale: str, n: int, real: np.ndarray, real_ids: list[str],
                queries: np.ndarray, cal: dict, seed: int, source: dict) -> None:
    n_real, dim = real.shape
    n_syn = n - n_real
    d.mkdir(parents=True, exist_ok=True)
    (d / "meta.json").unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    old = sum((d / f).stat().st_size for f in ("base.f32", "query.f32") if (d / f).exists())
    need = 4 * dim * (n + len(queries)) + 12 * n
    if shutil.disk_usage(d).free + old < need:
        raise SystemExit(f"{scale}: needs ~{need / 1e9:.1f} GB in {d}, only "
                         f"{shutil.disk_usage(d).free / 1e9:.1f} GB free")
    tmp = {f: d / f"{f}.tmp" for f in ("base.f32", "ids.txt", "query.f32", "gt.i32")}
    t0 = time.time()
    topk = TopK(queries)
    width = max(7, len(str(n_syn)))
    with open(tmp["base.f32"], "wb") as fb, open(tmp["ids.txt"], "w") as fi:
        for lo in range(0, n_real, CHUNK):  # the real vectors first
            topk.add(real[lo:lo + CHUNK], lo)
        real.astype("<f4", copy=False).tofile(fb)
        fi.write("".join(f"{i}\n" for i in real_ids))
        last_report = time.time()
        for c, lo in enumerate(range(0, n_syn, CHUNK)):
            count = min(CHUNK, n_syn - lo)
            # One stream per chunk, always a full chunk drawn then cut: the vectors
            # do not depend on the scale, so a smaller base is a prefix of a larger one.
            chunk = synth(real, CHUNK, cal["noise_sigma"], np.random.default_rng([seed, STREAM_BASE, c]))[:count]
            topk.add(chunk, n_real + lo)
            chunk.astype("<f4", copy=False).tofile(fb)
            fi.write("".join(f"syn-{i:0{width}d}\n" for i in range(lo + 1, lo + count + 1)))
            if time.time() - last_report > 10 or lo + count == n_syn:
                done = n_real + lo + count
                rate = (done - n_real) / max(time.time() - t0, 1e-9)
                log(f"{scale}: {done:,}/{n:,} vectors ({rate:,.0f}/s incl. ground truth)")
                last_report = time.time()
    queries.astype("<f4", copy=False).tofile(tmp["query.f32"])
    topk.index.astype("<i4").tofile(tmp["gt.i32"])
    for f, p in tmp.items():
        p.replace(d / f)

    meta = {
        "scale": scale, "n": n, "nq": len(queries), "dim": dim, "k": K, "seed": seed,
        "how": ((f"Base = the {n_real} real product embeddings only. " if n_syn == 0 else
                 f"Base = the {n_real} real product embeddings followed by {n_syn} synthetic vectors. ")
                + f"Each synthetic vector{' (and each query)' if n_syn else ' (here: each query)'} is a uniformly "
                f"drawn real embedding plus Gaussian noise shaped like the real embeddings' covariance (rescaled to trace = dim; sigma {cal['noise_sigma']:.5f}), "
                f"re-normalised to unit length, with sigma calibrated so its nearest real neighbour is as close "
                f"(median cosine) as a real vector's nearest other real vector."),
        "noise_sigma": cal["noise_sigma"],
        "real_nn_median_cosine": cal["real_nn_median_cosine"],
        "synthetic_nn_median_cosine": cal["synthetic_nn_median_cosine"],
        # Extras (not part of the requested schema): median cosine of each query to its
        # exact nearest base vector, and what the skip-if-up-to-date check compares.
        "query_top1_median_cosine": float(np.median(topk.score[:, 0])),
        "format": FORMAT,
        "source": source,
    }
    (d / "meta.json.tmp").write_text(json.dumps(meta, indent=2) + "\n")
    (d / "meta.json.tmp").replace(d / "meta.json")
    log(f"{scale}: wrote {d} (n={n:,}, nq={len(queries)}, query top-1 median cosine "
        f"{meta['query_top1_median_cosine']:.4f}) in {time.time() - t0:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", type=Path, required=True, help="real embeddings: N x D float32 little-endian")
    ap.add_argument("--ids", type=Path, required=True, help="N product ids, one per line, same order")
    ap.add_argument("--out", type=Path, default=Path(".cache/bench"), help="output root (default .cache/bench)")
    ap.add_argument("--scales", default="sample,100k,1m",
                    help="comma-separated: sample, <number>k, <number>m (default sample,100k,1m)")
    ap.add_argument("--queries", type=int, default=1000, help="queries per scale (default 1000)")
    ap.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    ap.add_argument("--dim", type=int, default=1280, help="vector dimension (default 1280)")
    args = ap.parse_args()

    scales = [s.strip() for s in args.scales.split(",") if s.strip()]
    for s in scales:  # reject bad names before any work
        try:
            parse_scale(s, 0)
        except ValueError as e:
            ap.error(str(e))
    size = args.real.stat().st_size
    if size % (4 * args.dim):
        raise SystemExit(f"{args.real}: {size} bytes is not a multiple of {4 * args.dim} (dim {args.dim})")
    n_real = size // (4 * args.dim)
    source = source_stamp(args.real, args.ids)

    todo = []
    for s in scales:
        n = parse_scale(s, n_real)
        if n < n_real:
            raise SystemExit(f"scale {s} ({n:,}) is smaller than the {n_real:,} real vectors it must contain")
        want = {"n": n, "nq": args.queries, "dim": args.dim, "k": K, "seed": args.seed,
                "format": FORMAT, "source": source}
        if up_to_date(args.out / s, want):
            log(f"{s}: up to date in {args.out / s}, skipping")
        else:
            todo.append((s, n))
    if not todo:
        return

    real, real_ids = load_real(args.real, args.ids, args.dim)
    log(f"loaded {len(real):,} real vectors of dim {args.dim} from {args.real}")
    cal = calibrate(real, args.seed)
    queries = synth(real, args.queries, cal["noise_sigma"], np.random.default_rng([args.seed, STREAM_QUERY]))
    for s, n in todo:
        build_scale(args.out / s, s, n, real, real_ids, queries, cal, args.seed, source)


if __name__ == "__main__":
    main()
