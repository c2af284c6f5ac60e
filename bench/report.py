#!/usr/bin/env python3
"""Turn the JSON fragments of one `make bench` run into bench/RESULTS.md and bench/results.json.

Why: every performance figure lookbook claims must come from a measurement on
the machine at hand, next to the figure of the tool a user would otherwise pick,
with nothing typed by hand. bench/run.sh leaves one JSON fragment per
measurement in .cache/bench/results/; this script reads them (plus the dataset
descriptions in .cache/bench/<scale>/meta.json and facts about the machine and
the versions in use), compares each figure with its peer and its goal, and
writes a table for people (Markdown) and the same data for tools (JSON).

A partial run must still give a report: a fragment that is absent or cannot be
read shows up as "missing" in the tables and is listed at the end of both files.

Ratios are always lookbook / peer (for throughput higher is better, for latency,
memory and build time lower is better); a goal is stated in the same terms as
the ratio or value it applies to.

Standard library only (Python 3.11); package versions come from
importlib.metadata of the interpreter that runs it (bench/run.sh uses the
peers' venv, .cache/bench-venv).

Example:
    .cache/bench-venv/bin/python bench/report.py --results .cache/bench/results \\
        --md bench/RESULTS.md --json bench/results.json --total-seconds 1234
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx")
# FLOP per cycle per core for fp32 with AVX2: 2 FMA units x 8 lanes x 2 (multiply + add).
FLOP_PER_CYCLE_FP32 = 2 * 8 * 2
PACKAGES = {  # shown name -> distribution name
    "onnxruntime": "onnxruntime",
    "numpy": "numpy",
    "pillow": "pillow",
    "hnswlib": "hnswlib",
    "faiss": "faiss-cpu",
    "sklearn": "scikit-learn",
    "grpcio": "grpcio",
}
ENCODE_BATCHES = (1, 16)
EMBED_CONCURRENCY = (1, 4, 16)
# Batch sizes of our in-process encoder run beyond batch 1 (sets batch_max_images).
BATCH_SIZES_SWEPT = (4, 16)
SIMILAR_CONCURRENCY = (1, 32)
INDEX_LIBS = ("lookbook", "hnswlib", "faiss", "sklearn")
INDEX_PEERS = ("hnswlib", "faiss", "sklearn")
INDEX_DEFAULT_SCALES = ("sample", "100k")  # what bench/run.sh measures without BENCH_SCALES
RECALL_TARGETS = (0.95, 0.99)
INDEX_THREADS = (1, 2)


# --------------------------------------------------------------------------- reading


class Fragments:
    """Reads fragments from the results folder and remembers which are missing."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.missing: list[str] = []
        self._cache: dict[str, object] = {}

    def load(self, name: str, required: bool = True):
        if name in self._cache:
            return self._cache[name]
        path = self.folder / name
        value = None
        if path.is_file():
            try:
                value = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                self.note_missing(f"{name} (unreadable: {e.__class__.__name__}: {e})")
            if value is not None and not isinstance(value, dict):
                self.note_missing(f"{name} (not a JSON object)")
                value = None
        elif required:
            self.note_missing(name)
        self._cache[name] = value
        return value

    def text(self, name: str) -> str | None:
        path = self.folder / name
        try:
            return path.read_text(errors="replace")
        except OSError:
            self.note_missing(name)
            return None

    def note_missing(self, what: str) -> None:
        if what not in self.missing:
            self.missing.append(what)

    def names(self) -> list[str]:
        try:
            return sorted(p.name for p in self.folder.iterdir() if p.is_file())
        except OSError:
            return []


def get(d, *path):
    """d[path[0]][path[1]]..., or None where any step is absent."""
    for key in path:
        if isinstance(d, dict):
            d = d.get(key)
        elif isinstance(d, list) and isinstance(key, int) and -len(d) <= key < len(d):
            d = d[key]
        else:
            return None
    return d


def num(x) -> float | None:
    """x as a finite float, or None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def ratio(a, b) -> float | None:
    a, b = num(a), num(b)
    if a is None or b is None or b == 0:
        return None
    return a / b


def run_for_batch(fragment, batch: int):
    for run in get(fragment, "runs") or []:
        if isinstance(run, dict) and run.get("batch") == batch:
            return run
    return None


def sh(*cmd: str, cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


# --------------------------------------------------------------------------- machine, versions


def machine_info() -> dict:
    cpuinfo = ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    model, flags, mhz = None, set(), []
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model is None:
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "cpu MHz":
            try:
                mhz.append(float(value))
            except ValueError:
                pass
    nproc = sh("nproc")
    cores = int(nproc) if nproc and nproc.isdigit() else len(os.sched_getaffinity(0))
    flag_view = {}
    for f in FLAGS_OF_INTEREST:
        if f == "amx":
            amx = sorted(x for x in flags if x.startswith("amx"))
            flag_view["amx"] = ",".join(amx) if amx else False
        else:
            flag_view[f] = f in flags
    max_mhz, mhz_source = None, None
    lscpu = sh("lscpu") or ""
    m = re.search(r"^CPU max MHz:\s*([\d.]+)", lscpu, re.M)
    if m and float(m.group(1)) > 0:
        max_mhz, mhz_source = float(m.group(1)), 'lscpu "CPU max MHz"'
    elif mhz:
        max_mhz, mhz_source = max(mhz), '/proc/cpuinfo "cpu MHz" (highest core; lscpu gives no "CPU max MHz")'
    mem_total = None
    try:
        m = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        mem_total = int(m.group(1)) * 1024 if m else None
    except OSError:
        pass
    # AVX-512: 16 lanes per FMA (two FMA units assumed, as on server Xeons).
    per_cycle = FLOP_PER_CYCLE_FP32 * (2 if flag_view.get("avx512f") else 1)
    peak = cores * per_cycle * max_mhz / 1000 if max_mhz else None
    return {
        "cpu_model": model,
        "cores": cores,
        "flags": flag_view,
        "kernel": platform.release(),
        "memory_bytes": mem_total,
        "max_mhz": max_mhz,
        "max_mhz_source": mhz_source,
        "peak_fp32_gflops": peak,
        "flop_per_cycle_fp32": per_cycle,
        "peak_fp32_formula": f"cores x {per_cycle} FLOP/cycle (2 FMA units x "
                             f"{per_cycle // 4} lanes x 2: {'AVX-512' if per_cycle > FLOP_PER_CYCLE_FP32 else 'AVX2'})"
                             " x max MHz",
    }


def versions_info() -> dict:
    v: dict = {"python": platform.python_version(), "rustc": sh("rustc", "-V")}
    try:
        cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
        v["lookbook"] = get(cargo, "package", "version")
    except (OSError, tomllib.TOMLDecodeError):
        v["lookbook"] = None
    head = sh("git", "rev-parse", "--short", "HEAD", cwd=ROOT)
    # The report's own outputs do not make the tree dirty.
    status = sh("git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                ":(exclude)bench/RESULTS.md", ":(exclude)bench/results.json", cwd=ROOT)
    v["git"] = None if head is None else head + ("-dirty" if status else "")
    v["git_commit"] = head
    v["git_dirty"] = None if status is None else bool(status)
    for shown, dist in PACKAGES.items():
        try:
            v[shown] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            v[shown] = None
    return v


# --------------------------------------------------------------------------- rows and goals


class Goal:
    """A goal on a row's ratio, its lookbook value, or its difference (lookbook - peer)."""

    def __init__(self, on: str, op: str, target: float, text: str):
        assert on in ("ratio", "ours", "delta") and op in (">=", "<=", "abs<=")
        self.on, self.op, self.target, self.text = on, op, target, text

    def check(self, row: dict) -> tuple[bool | None, str | None]:
        value = num(row.get(self.on))
        if value is None:
            return None, None
        if row.get("unit") == "%" and self.on == "ours" and self.op != "abs<=":
            met = value >= self.target if self.op == ">=" else value <= self.target
            pp = abs(value - self.target) * 100
            return met, None if pp < 0.05 else f"{pp:.1f} pp {'under' if value < self.target else 'over'}"
        if self.op == "abs<=":
            met = abs(value) <= self.target
            return met, f"{'within' if met else 'over'} by {abs(abs(value) - self.target):.4f}"
        met = value >= self.target if self.op == ">=" else value <= self.target
        if self.on == "ratio" and self.op == "<=" and self.target > 1:  # "within N% of the peer"
            return met, f"{(value - 1) * 100:+.1f}%, limit +{(self.target - 1) * 100:.0f}%"
        gap = value / self.target - 1 if self.target else value - self.target
        if abs(gap) < 0.0005:
            return met, None
        word = ("above by" if met else "short by") if self.op == ">=" else ("under by" if met else "over by")
        return met, f"{word} {abs(gap) * 100:.1f}%"


def row(metric: str, ours, peer=None, peer_name: str | None = None, unit: str = "",
        goal: Goal | None = None, with_ratio: bool = True, with_delta: bool = False,
        ours_detail: str | None = None, peer_detail: str | None = None,
        ours_missing: bool | None = None, peer_missing: bool | None = None) -> dict:
    r = {
        "metric": metric,
        "unit": unit,
        "ours": ours,
        "peer": peer,
        "peer_name": peer_name,
        "ratio": ratio(ours, peer) if with_ratio and peer_name else None,
        "goal": goal.text if goal else None,
        "met": None,
    }
    if with_delta and num(ours) is not None and num(peer) is not None:
        r["delta"] = ours - peer
    if goal:
        r["met"], r["margin"] = goal.check(r)
    if ours_detail:
        r["ours_detail"] = ours_detail
    if peer_detail:
        r["peer_detail"] = peer_detail
    # Display hints: None means "missing" (the default) unless a detail explains it.
    r["_ours_missing"] = ours is None if ours_missing is None else ours_missing
    r["_peer_missing"] = (peer is None and peer_name is not None) if peer_missing is None else peer_missing
    return r


class Section:
    def __init__(self, key: str, title: str):
        self.key, self.title = key, title
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.extra_md: list[str] = []

    def add(self, r: dict) -> dict:
        self.rows.append(r)
        return r


# --------------------------------------------------------------------------- sections


def section_encoding(fr: Fragments, machine: dict, params: dict) -> Section:
    s = Section("encoding", "1. Encoding (fp32): lookbook vs Python onnxruntime + Pillow")
    ours, py = fr.load("encode-lookbook-fp32.json"), fr.load("encode-python-fp32.json")
    flops = num(get(fr.load("flops.json"), "flops"))
    peak = machine.get("peak_fp32_gflops")
    py_name = get(py, "peer") or "Python"
    for b in ENCODE_BATCHES:
        o, p = run_for_batch(ours, b), run_for_batch(py, b)
        for label, frag, run in (("encode-lookbook-fp32.json", ours, o), ("encode-python-fp32.json", py, p)):
            if frag is not None and run is None:
                fr.note_missing(f"{label}: no run with batch {b}")
        s.add(row(f"images/s, batch {b}", get(o, "images_per_second"), get(p, "images_per_second"), py_name,
                  "images/s", Goal("ratio", ">=", 1.5, ">= 1.5x Python")))
        s.add(row(f"p50 per call, batch {b}", get(o, "latency_ms", "p50"), get(p, "latency_ms", "p50"), py_name, "ms"))
        s.add(row(f"p99 per call, batch {b}", get(o, "latency_ms", "p99"), get(p, "latency_ms", "p99"), py_name, "ms"))
        s.add(row(f"decode + resize share of stage time, batch {b}", pre_share(o), pre_share(p), py_name, "%",
                  Goal("ours", "<=", 0.15, "< 15%")))
        for stage in ("decode", "resize", "normalise", "inference"):
            s.add(row(f"  {stage} share of stage time, batch {b}", stage_share(o, stage), stage_share(p, stage),
                      py_name, "%", with_ratio=False))
        og, pg = gflops(o, flops), gflops(p, flops)
        s.add(row(f"inference GFLOP/s, batch {b}", og, pg, py_name, "GFLOP/s"))
        s.add(row(f"inference share of machine peak fp32, batch {b}", ratio(og, peak), ratio(pg, peak), py_name,
                  "%", with_ratio=False))
    s.notes.append("Stage shares are each stage's seconds over the sum of the four stages' seconds "
                   "(lookbook sums them over its worker threads, so wall-time shares could exceed 100%).")
    if flops is not None:
        s.notes.append(f"GFLOP/s = {flops / 1e9:.3f} GFLOP per image (flops.json, 2 x MACs of Conv/Gemm/MatMul) "
                       "x images / inference seconds (split_seconds.inference; per busy inference-second).")
    if peak is not None:
        s.notes.append(f"Machine peak fp32 = {machine['cores']} cores x {machine['flop_per_cycle_fp32']} FLOP/cycle x "
                       f"{machine['max_mhz']:.0f} MHz = {peak:.1f} GFLOP/s; MHz from {machine['max_mhz_source']}.")
    else:
        s.notes.append("Machine peak fp32 unknown: no CPU MHz in lscpu or /proc/cpuinfo.")
    params["encoding"] = {
        "lookbook": encode_params(ours), "python": encode_params(py) | {"threads": get(py, "threads")},
        "lookbook_int8": encode_params(fr.load("encode-lookbook-int8.json")),
        "python_int8": encode_params(fr.load("encode-python-int8.json")),
        "flops_per_image": flops,
    }
    return s


def encode_params(frag) -> dict:
    runs = [r for r in get(frag, "runs") or [] if isinstance(r, dict)]
    return {"model": get(frag, "model"), "batches": [r.get("batch") for r in runs],
            "images_per_run": [r.get("images") for r in runs],
            "seconds_per_run": [round(r["seconds"], 2) if num(r.get("seconds")) is not None else None for r in runs]}


def stage_total(run) -> float | None:
    split = get(run, "split_seconds")
    if not isinstance(split, dict):
        return None
    values = [num(split.get(k)) for k in ("decode", "resize", "normalise", "inference")]
    return None if any(v is None for v in values) else sum(values)


def stage_share(run, stage) -> float | None:
    return ratio(get(run, "split_seconds", stage), stage_total(run))


def pre_share(run) -> float | None:
    d, r = num(get(run, "split_seconds", "decode")), num(get(run, "split_seconds", "resize"))
    return None if d is None or r is None else ratio(d + r, stage_total(run))


def gflops(run, flops) -> float | None:
    images, secs = num(get(run, "images")), num(get(run, "split_seconds", "inference"))
    if flops is None or images is None or not secs:
        return None
    return flops * images / secs / 1e9


def section_int8(fr: Fragments, params: dict) -> Section:
    s = Section("int8", "2. INT8 model: speed and retrieval quality")
    o32, o8 = fr.load("encode-lookbook-fp32.json"), fr.load("encode-lookbook-int8.json")
    p32, p8 = fr.load("encode-python-fp32.json"), fr.load("encode-python-int8.json")
    for b in ENCODE_BATCHES:
        a, f = run_for_batch(o8, b), run_for_batch(o32, b)
        if o8 is not None and a is None:
            fr.note_missing(f"encode-lookbook-int8.json: no run with batch {b}")
        s.add(row(f"lookbook int8 vs lookbook fp32 images/s, batch {b}", get(a, "images_per_second"),
                  get(f, "images_per_second"), "lookbook fp32", "images/s", Goal("ratio", ">=", 2.5, ">= 2.5x fp32")))
    for b in ENCODE_BATCHES:
        s.add(row(f"lookbook int8 vs Python int8 images/s, batch {b}", get(run_for_batch(o8, b), "images_per_second"),
                  get(run_for_batch(p8, b), "images_per_second"), (get(p8, "peer") or "Python") + " int8", "images/s"))
    for b in ENCODE_BATCHES:
        s.add(row(f"Python int8 vs Python fp32 images/s, batch {b} (reference)",
                  get(run_for_batch(p8, b), "images_per_second"), get(run_for_batch(p32, b), "images_per_second"),
                  "Python fp32", "images/s"))
    e32, e8 = fr.load("eval-fp32.json"), fr.load("eval-int8.json")
    for k in (1, 5, 10):
        goal = Goal("delta", "abs<=", 0.01, "|int8 - fp32| <= 0.01") if k == 10 else None
        s.add(row(f"precision@{k} (same articleType), int8 vs fp32", get(e8, "precision", f"at_{k}"),
                  get(e32, "precision", f"at_{k}"), "lookbook fp32", "", goal, with_ratio=False, with_delta=True))
    s.add(row("HNSW recall@10 vs exact search (eval), int8 vs fp32", get(e8, "recall_at_10"), get(e32, "recall_at_10"),
              "lookbook fp32", "", with_ratio=False, with_delta=True))
    s.add(row("images/s during eval, int8 vs fp32", get(e8, "images_per_second"), get(e32, "images_per_second"),
              "lookbook fp32", "images/s"))
    params["eval"] = {name: {k: get(frag, k) for k in ("model", "products", "queries", "classes")}
                      for name, frag in (("fp32", e32), ("int8", e8))}
    return s


def load_rows(s: Section, metric: str, ours, peer, peer_name: str, qps_goal: Goal | None = None,
              p99_goal: Goal | None = None) -> None:
    s.add(row(f"{metric}: QPS", get(ours, "qps"), get(peer, "qps"), peer_name, "QPS", qps_goal,
              ours_detail=errors_detail(ours), peer_detail=errors_detail(peer)))
    s.add(row(f"{metric}: p50", get(ours, "p50"), get(peer, "p50"), peer_name, "ms"))
    s.add(row(f"{metric}: p99", get(ours, "p99"), get(peer, "p99"), peer_name, "ms", p99_goal))


def errors_detail(frag) -> str | None:
    e = num(get(frag, "errors"))
    return f"{e:.0f} error{'s' if e != 1 else ''}" if e else None


def section_batching(fr: Fragments, params: dict) -> Section:
    s = Section("dynamic_batching", "3. Dynamic batching (Embed RPC): with vs without")
    o32 = fr.load("encode-lookbook-fp32.json")
    one = get(run_for_batch(o32, 1), "images_per_second")
    for b in BATCH_SIZES_SWEPT:
        s.add(row(f"model throughput at batch {b} vs batch 1 (in process, images/s)",
                  get(run_for_batch(o32, b), "images_per_second"), one, "batch 1", "images/s"))
    for c in EMBED_CONCURRENCY:
        w, wo = fr.load(f"embed-batching-c{c}.json"), fr.load(f"embed-nobatch-c{c}.json")
        p99_goal = Goal("ratio", "<=", 1.10, "<= 1.10x without (within 10%)") if c == 1 else None
        load_rows(s, f"concurrency {c}", w, wo, "without batching", p99_goal=p99_goal)
        params.setdefault("load", {})[f"embed-batching-c{c}"] = load_params(w, c)
        params["load"][f"embed-nobatch-c{c}"] = load_params(wo, c)
    for c in EMBED_CONCURRENCY:
        big, wo = fr.load(f"embed-batch16-c{c}.json"), fr.load(f"embed-nobatch-c{c}.json")
        load_rows(s, f"batch_max_images 16, concurrency {c}", big, wo, "without batching")
        params["load"][f"embed-batch16-c{c}"] = load_params(big, c)
    s.notes.append("With batching = the shipped default (batch_max_images = 4, batch_max_delay = 0); "
                   "without = the same server with LOOKBOOK__MODEL__BATCH_MAX_IMAGES=1; "
                   "batch_max_images 16 = LOOKBOOK__MODEL__BATCH_MAX_IMAGES=16.")
    s.notes.append("Model throughput rows: `lookbook-bench bench-encode` on the same photos, one call of the given "
                   "batch size at a time (what one coalesced model run of that size achieves per image).")
    return s


def load_params(frag, c: int) -> dict:
    return {"concurrency": c, "measured_seconds": get(frag, "seconds"), "requests": get(frag, "requests"),
            "errors": get(frag, "errors")}


def best_run(frag, threads: int, target: float):
    """(qps, ef) of the fastest run with recall >= target at `threads`, or None; plus the best recall seen."""
    best, top_recall = None, None
    for r in get(frag, "runs") or []:
        if not isinstance(r, dict) or r.get("threads") != threads:
            continue
        rec, qps = num(r.get("recall_at_10")), num(r.get("qps"))
        if rec is None or qps is None:
            continue
        top_recall = rec if top_recall is None else max(top_recall, rec)
        if rec >= target and (best is None or qps > best[0]):
            best = (qps, r.get("ef_search"))
    return best, top_recall


def scale_key(frags: dict, scale: str):
    n = num(get(frags.get("lookbook"), "n")) or next((num(get(f, "n")) for f in frags.values() if num(get(f, "n"))), None)
    if scale == "sample":
        return (0, 0)
    if n is not None:
        return (1, n)
    m = re.fullmatch(r"(\d+)([km]?)", scale)
    return (1, int(m.group(1)) * {"": 1, "k": 1000, "m": 1000000}[m.group(2)]) if m else (2, 0)


def section_index(fr: Fragments, params: dict) -> Section:
    s = Section("index", "4. Vector index: lookbook HNSW vs hnswlib, faiss (HNSW) and scikit-learn (brute force)")
    found = {}
    for name in fr.names():
        m = re.fullmatch(r"index-(.+)-(lookbook|hnswlib|faiss|sklearn)\.json", name)
        if m:
            found.setdefault(m.group(1), set()).add(m.group(2))
    scales = set(found) | set(INDEX_DEFAULT_SCALES)
    by_scale = {sc: {lib: fr.load(f"index-{sc}-{lib}.json") for lib in INDEX_LIBS} for sc in scales}
    order = sorted(scales, key=lambda sc: scale_key(by_scale[sc], sc))
    params["index"] = {}
    for sc in order:
        frags = by_scale[sc]
        ours = frags["lookbook"]
        n = next((get(frags[lib], "n") for lib in INDEX_LIBS if get(frags[lib], "n") is not None), None)
        s.extra_md += [f"### {sc}" + (f" ({n:,} vectors)" if isinstance(n, int) else ""), "",
                       "Best QPS whose recall@10 reaches the target (the ef_search that gave it):", "",
                       "| threads | recall@10 >= | lookbook | hnswlib | lookbook / hnswlib (goal >= 1.0x) | faiss "
                       "| lookbook / faiss | scikit-learn (exact) | lookbook / scikit-learn"
                       + (" (goal >= 50x)" if sc == "100k" else "") + " |",
                       "|---|---|---|---|---|---|---|---|---|"]
        for threads in INDEX_THREADS:
            for target in RECALL_TARGETS:
                ob, otop = best_run(ours, threads, target)
                wide = [str(threads), f"{target}", None]
                for peer in INDEX_PEERS:
                    pb, ptop = best_run(frags[peer], threads, target)
                    goal = None
                    if peer == "hnswlib":
                        goal = Goal("ratio", ">=", 1.0, ">= 1.0x hnswlib")
                    elif peer == "sklearn" and sc == "100k":
                        goal = Goal("ratio", ">=", 50.0, ">= 50x brute force")
                    r = s.add(row(f"{sc}, {threads} thread{'s' if threads > 1 else ''}, recall@10 >= {target}: "
                                  "best QPS", ob[0] if ob else None, pb[0] if pb else None, peer, "QPS", goal,
                                  ours_detail=index_detail(ours, ob, otop),
                                  peer_detail=index_detail(frags[peer], pb, ptop),
                                  ours_missing=ours is None, peer_missing=frags[peer] is None))
                    r["ours_ef"], r["peer_ef"] = ob[1] if ob else None, pb[1] if pb else None
                    wide[2] = cell(r, "ours")
                    wide += [cell(r, "peer"), ratio_cell(r) + (f" {met_cell(r)}" if r["met"] is not None else "")]
                s.extra_md.append("| " + " | ".join(md_escape(c) for c in wide) + " |")
        s.extra_md.append("")
        build = {"lookbook": row(f"{sc}: build seconds, lookbook", get(ours, "build_seconds"), unit="s",
                                 ours_detail=threads_detail(ours))}
        for peer in INDEX_PEERS:
            build[peer] = s.add(row(f"{sc}: build seconds", get(ours, "build_seconds"),
                                    get(frags[peer], "build_seconds"), peer, "s", ours_detail=threads_detail(ours),
                                    peer_detail=threads_detail(frags[peer])))
        raw = num(get(ours, "raw_vector_bytes")) or next(
            (num(get(f, "raw_vector_bytes")) for f in frags.values() if num(get(f, "raw_vector_bytes"))), None)
        memory = {}
        for lib in INDEX_LIBS:
            memory[lib] = s.add(row(f"{sc}: memory bytes/vector, {lib} vs raw vector",
                                    get(frags[lib], "memory_bytes_per_vector"), raw, "raw float32 vector", "bytes"))
        s.extra_md += [
            "| | lookbook | hnswlib | faiss | scikit-learn |", "|---|---|---|---|---|",
            "| build seconds | " + " | ".join(
                [cell(build["lookbook"], "ours")]
                + [cell(build[p], "peer") + (f"; lookbook {build[p]['ratio']:.2f}x" if build[p]["ratio"] else "")
                   for p in INDEX_PEERS]) + " |",
            f"| memory per vector (raw float32 vector: {fmt(raw, 'bytes')}) | " + " | ".join(
                cell(memory[lib], "ours") + (f" ({memory[lib]['ratio']:.2f}x raw)" if memory[lib]["ratio"] else "")
                for lib in INDEX_LIBS) + " |",
            ""]
        s.extra_md += sweep_table(frags)
        engines = {lib: fr.load(f"index-{sc}-{lib}.json", required=False) for lib in INDEX_ENGINES}
        s.extra_md += engine_table(s, sc, ours, engines)
        s.extra_md += filter_table(s, sc, {"lookbook": ours, "hnswlib": frags["hnswlib"], "faiss": frags["faiss"]}
                                   | {INDEX_ENGINES[lib]: f for lib, f in engines.items() if f is not None})
        params["index"][sc] = {lib: index_params(f) for lib, f in frags.items()}
        params["index"][sc]["engines"] = {lib: index_params(f) | {"runs": sweep_runs(f), "lib": get(f, "lib")}
                                          for lib, f in engines.items() if f is not None}
        params["index"][sc]["sweep"] = {lib: sweep_runs(frags[lib]) for lib in INDEX_PEERS_HNSW}
    if "1m" not in scales:
        s.notes.append("1m: not run (BENCH_SCALES without 1m).")
    s.notes.append("Best QPS = the fastest (ef_search) run whose recall@10 reaches the target; "
                   "QPS from single-query calls by `threads` concurrent callers. "
                   "scikit-learn is exact (no ef_search), so its recall is 1.0 at its only setting.")
    s.notes.append("Memory per vector = process RSS growth from building the index / n (includes the vectors).")
    return s


# The HNSW libraries of the sweep table (scikit-learn has no ef_search).
INDEX_PEERS_HNSW = ("lookbook", "hnswlib", "faiss")


# Engine candidates measured in the same harness as the own graph
# (`bench-index --usearch`): fragment name suffix -> label.
# `lookbook` itself is the service's default (int8 codes, exact re-rank);
# `lookbook-none` / `lookbook-f16` are its other `index.quantization` modes.
INDEX_ENGINES = {"lookbook-none": "own graph, f32 (quantization none)", "lookbook-f16": "own graph, f16",
                 "usearch-f32": "usearch f32", "usearch-f16": "usearch f16",
                 "usearch-i8": "usearch int8 + exact re-rank of 40"}


def engine_table(s: Section, sc: str, ours, engines: dict) -> list[str]:
    """Markdown: the own graph against each engine candidate, best QPS per recall target, build and memory."""
    present = {lib: f for lib, f in engines.items() if f is not None}
    if not present:
        return []
    out = ["Index engine candidates in the same harness (`bench-index --usearch`): best QPS at each recall "
           "target (ef_search), build seconds, memory per vector:", "",
           "| | lookbook (own graph, int8 codes, the default) | "
           + " | ".join(INDEX_ENGINES[lib] for lib in present) + " |",
           "|---" * (len(present) + 2) + "|"]
    for threads in INDEX_THREADS:
        for target in RECALL_TARGETS:
            ob, otop = best_run(ours, threads, target)
            line = [f"{threads} thread{'s' if threads > 1 else ''}, recall@10 >= {target}"]
            first = None
            for lib, f in present.items():
                pb, ptop = best_run(f, threads, target)
                r = s.add(row(f"{sc}, {threads} thread{'s' if threads > 1 else ''}, recall@10 >= {target}: "
                              f"best QPS, own graph vs {INDEX_ENGINES[lib]}", ob[0] if ob else None,
                              pb[0] if pb else None, lib, "QPS",
                              ours_detail=index_detail(ours, ob, otop), peer_detail=index_detail(f, pb, ptop),
                              ours_missing=ours is None))
                first = first or cell(r, "ours")
                line.append(cell(r, "peer") + (f"; own {r['ratio']:.2f}x" if r["ratio"] else ""))
            out.append("| " + " | ".join(md_escape(c) for c in [line[0], first or "–"] + line[1:]) + " |")
    out.append("| build seconds | " + " | ".join(
        fmt(num(get(f, "build_seconds")), "s") if num(get(f, "build_seconds")) is not None else "missing"
        for f in [ours, *present.values()]) + " |")
    out.append("| memory per vector | " + " | ".join(
        fmt(num(get(f, "memory_bytes_per_vector")), "bytes") if num(get(f, "memory_bytes_per_vector")) is not None
        else "missing" for f in [ours, *present.values()]) + " |")
    out.append("| anonymous memory per vector (RssAnon; mapped full vectors are page cache) | " + " | ".join(
        fmt(num(get(f, "anon_bytes_per_vector")), "bytes") if num(get(f, "anon_bytes_per_vector")) is not None
        else "not measured" for f in [ours, *present.values()]) + " |")
    return out + [""]


def filter_table(s: Section, sc: str, libs: dict) -> list[str]:
    """Markdown: the selectivity sweep (recall@10 against the filtered exact top 10, QPS at 1 / 2 threads)."""
    cells, ef, nq = {}, {}, {}
    for lib, frag in libs.items():
        for r in get(frag, "filtered") or []:
            if isinstance(r, dict) and num(r.get("selectivity")) is not None:
                cells.setdefault((r["selectivity"], r.get("admitted")), {}).setdefault(lib, {})[r.get("threads")] = r
                ef[lib], nq[lib] = r.get("ef_search"), r.get("nq")
    if not cells:
        return []
    names = [lib for lib in libs if lib in ef]
    out = [f"Filtered search, selectivity sweep: recall@10 against the exact top 10 among the admitted rows, "
           f"QPS with 1 / 2 threads (ef_search {', '.join(f'{lib} {ef[lib]}' for lib in names)}; "
           f"{max(nq.values())} queries):", "",
           "| admitted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for (share, rows) in sorted(cells, key=lambda c: c[0]):
        line = [f"{share:.1%} ({rows:,} rows)" if isinstance(rows, int) else f"{share:.1%}"]
        for lib in names:
            runs = cells[(share, rows)].get(lib, {})
            rec = next((num(r.get("recall_at_10")) for r in runs.values()), None)
            qps = [num(runs.get(t, {}).get("qps")) for t in INDEX_THREADS]
            line.append("–" if rec is None else f"{rec:.4f}, " + " / ".join(
                "–" if q is None else f"{q:,.0f}" for q in qps))
            for t in INDEX_THREADS:
                r = runs.get(t)
                if r is not None:
                    s.add(row(f"{sc}, filter admitting {share:.1%}, {t} thread{'s' if t > 1 else ''}: QPS, {lib}",
                              num(r.get("qps")), unit="QPS", ours_detail=f"recall@10 {num(r.get('recall_at_10')):.4f}"))
        out.append("| " + " | ".join(line) + " |")
    return out + [""]


def sweep_runs(frag) -> list[dict]:
    """The (ef_search, threads, recall@10, QPS) of each run of an index fragment."""
    out = []
    for r in get(frag, "runs") or []:
        if isinstance(r, dict) and r.get("ef_search") is not None:
            out.append({k: r.get(k) for k in ("ef_search", "threads", "recall_at_10", "qps")})
    return out


def sweep_table(frags: dict) -> list[str]:
    """Markdown: recall@10 and QPS at 1 / 2 threads for each ef_search and HNSW library."""
    cells = {}
    for lib in INDEX_PEERS_HNSW:
        for r in sweep_runs(frags.get(lib)):
            cells.setdefault(r["ef_search"], {}).setdefault(lib, {})[r["threads"]] = r
    if not cells:
        return []
    out = ["Every ef_search of the sweep: recall@10, QPS with 1 / 2 threads:", "",
           "| ef_search | " + " | ".join(INDEX_PEERS_HNSW) + " |", "|---" * (len(INDEX_PEERS_HNSW) + 1) + "|"]
    for ef in sorted(cells):
        line = [str(ef)]
        for lib in INDEX_PEERS_HNSW:
            runs = cells[ef].get(lib, {})
            rec = next((num(r.get("recall_at_10")) for r in runs.values() if num(r.get("recall_at_10")) is not None),
                       None)
            qps = [num(runs.get(t, {}).get("qps")) for t in INDEX_THREADS]
            line.append("–" if rec is None else f"{rec:.4f}, " + " / ".join(
                "–" if q is None else f"{q:,.0f}" for q in qps))
        out.append("| " + " | ".join(line) + " |")
    return out + [""]


def index_detail(frag, best, top) -> str | None:
    if frag is None:
        return None
    if best is None:
        return "not reached" + (f" (max recall {top:.4f})" if top is not None else " (no runs)")
    return "exact" if best[1] is None else f"ef {best[1]}"


def threads_detail(frag) -> str | None:
    t = get(frag, "build_threads")
    return None if t is None else f"{t} build thread{'s' if t != 1 else ''}"


def index_params(frag) -> dict | None:
    if frag is None:
        return None
    runs = [r for r in get(frag, "runs") or [] if isinstance(r, dict)]
    return {k: get(frag, k) for k in ("version", "n", "nq", "dim", "m", "ef_construction", "build_threads",
                                      "raw_vector_bytes")} | {
        "ef_search": sorted({r.get("ef_search") for r in runs if r.get("ef_search") is not None}),
        "threads": sorted({r.get("threads") for r in runs if r.get("threads") is not None})}


def section_ingest(fr: Fragments, params: dict) -> Section:
    s = Section("ingest", "5. Ingest and freshness")
    img, vec, fresh = fr.load("ingest-images.json"), fr.load("ingest-vectors.json"), fr.load("freshness.json")
    s.add(row("ingest with photos (import, encoded by the server)", get(img, "products_per_second"), unit="products/s",
              ours_detail=count_detail(img, "products")))
    s.add(row("ingest with embeddings (AddProducts with vectors)", get(vec, "products_per_second"),
              unit="products/s", ours_detail=count_detail(vec, "products")))
    visible, total = num(get(fresh, "visible_on_first_query")), num(get(fresh, "products"))
    share = ratio(visible, total)
    s.add(row("freshness: share visible on the first query after AddProduct replied (query filtered to the new "
              "products)", share, unit="%",
              goal=Goal("ours", ">=", 1.0, "100% (visible immediately)"),
              ours_detail=None if visible is None or total is None else f"{visible:.0f} of {total:.0f}"))
    graph_first = num(get(fresh, "graph_top1_first_query"))
    graph_later = num(get(fresh, "graph_found_when_repeated"))
    missed = get(fresh, "graph_missed")
    s.add(row("freshness: share that an unfiltered query by its own embedding (HNSW search) returns first",
              ratio(graph_first, total), unit="%",
              ours_detail=None if graph_first is None or total is None or missed is None else
              f"{graph_first:.0f} of {total:.0f} at once, {graph_later:.0f} only when repeated, "
              f"{len(missed)} never in 20 tries" + (f" ({', '.join(missed[:5])})" if missed else "")))
    if missed:
        s.notes.append("A product that the filtered query returns at once but the unfiltered one never does is a "
                       "recall miss of the approximate search (its vector is far from the rest, and the graph walk at "
                       "ef_search ends elsewhere), not a delay: the answer does not change when the query is repeated.")
    s.add(row("freshness: reply to visible, p50", get(fresh, "reply_to_visible_ms", "p50"), unit="ms"))
    s.add(row("freshness: reply to visible, p99", get(fresh, "reply_to_visible_ms", "p99"), unit="ms"))
    s.add(row("freshness: reply to visible, max", get(fresh, "max_ms"), unit="ms"))
    params["ingest"] = {"images_products": get(img, "products"), "vectors_products": get(vec, "products"),
                        "freshness_products": get(fresh, "products")}
    return s


def count_detail(frag, key) -> str | None:
    n, secs = num(get(frag, key)), num(get(frag, "seconds"))
    return None if n is None or secs is None else f"{n:.0f} in {secs:.2f} s"


def section_e2e(fr: Fragments, params: dict) -> Section:
    s = Section("end_to_end", "6. End to end: RecommendSimilar over gRPC, lookbook vs Python grpcio + numpy exact search")
    for c in SIMILAR_CONCURRENCY:
        o, p = fr.load(f"similar-lookbook-c{c}.json"), fr.load(f"similar-python-c{c}.json")
        load_rows(s, f"concurrency {c}", o, p, "Python grpcio + numpy",
                  qps_goal=Goal("ours", ">=", 3000, ">= 3000 QPS") if c == 32 else None,
                  p99_goal=Goal("ours", "<=", 10.0, "<= 10 ms") if c == 32 else None)
        params.setdefault("load", {})[f"similar-lookbook-c{c}"] = load_params(o, c)
        params["load"][f"similar-python-c{c}"] = load_params(p, c)
    s.notes.append("The load generator (`lookbook-bench bench`) runs on the same machine and shares its cores with the "
                   "server, so these are lower bounds for a server with the machine to itself.")
    return s


def section_memory(fr: Fragments, work: Path, params: dict) -> Section:
    s = Section("memory_startup", "7. Memory and start-up (server with 12K products)")
    empty, dump, rss12 = fr.load("startup-empty.json"), fr.load("startup-dump12k.json"), fr.load("rss-12k.json")
    img, vec = fr.load("ingest-images.json"), fr.load("ingest-vectors.json")
    meta = read_meta(work, "12k")
    dim = num(get(meta, "dim"))
    if dim is None:  # the index fragments know it too
        dim = next((num(get(fr.load(n, required=False), "dim")) for n in fr.names() if n.startswith("index-")), None)
    ingested = (num(get(img, "products")) or 0) + (num(get(vec, "products")) or 0) if img or vec else None
    products = num(get(meta, "n")) or ingested
    raw = 4 * dim if dim else None
    s.add(row("start-up to SERVING, empty", get(empty, "seconds_to_serving"), unit="s"))
    s.add(row("start-up to SERVING, from the dump (12K)", get(dump, "seconds_to_serving"), unit="s"))
    # Steady state: read after jemalloc's decay has purged start-up's garbage
    # (bench/run.sh sleeps before these); the at-SERVING readings are kept
    # as rows of their own and stand in where a settled one is missing.
    empty_s = fr.load("rss-empty-settled.json", required=False) or empty
    dump_s = fr.load("rss-dump12k-settled.json", required=False) or dump
    s.add(row("RSS, empty server, at SERVING", get(empty, "rss_bytes"), unit="bytes"))
    s.add(row("RSS, empty server, settled", get(empty_s, "rss_bytes"), unit="bytes"))
    s.add(row("RSS, after ingesting 12K (photos + embeddings), settled", get(rss12, "rss_bytes"), unit="bytes"))
    s.add(row("RSS, started from the 12K dump, at SERVING", get(dump, "rss_bytes"), unit="bytes"))
    s.add(row("RSS, started from the 12K dump, settled", get(dump_s, "rss_bytes"), unit="bytes"))

    def per_product(loaded, field: str):
        a, b = num(get(loaded, field)), num(get(empty_s, field))
        return (a - b) / products if a is not None and b is not None and products else None

    s.add(row("RSS per product, 12K from the dump (settled), vs raw float32 vector", per_product(dump_s, "rss_bytes"),
              raw, "raw vector (4 x dim)", "bytes", Goal("ratio", "<=", 1.5, "<= 1.5x raw")))
    s.add(row("  of which anonymous (heap: graph, codes, metadata)", per_product(dump_s, "rss_anon_bytes"), raw,
              "raw vector (4 x dim)", "bytes"))
    s.add(row("  of which file-backed (mapped vector file, store pages)", per_product(dump_s, "rss_file_bytes"), raw,
              "raw vector (4 x dim)", "bytes"))
    s.add(row("RSS per product, 12K after live ingest (settled), vs raw float32 vector",
              per_product(rss12, "rss_bytes"), raw, "raw vector (4 x dim)", "bytes"))
    s.add(row("  of which anonymous", per_product(rss12, "rss_anon_bytes"), raw, "raw vector (4 x dim)", "bytes"))
    one_m = fr.load("index-1m-lookbook.json", required=False)
    if one_m is not None:
        s.add(row("index memory bytes/vector at 1M (bench-index), vs raw vector", get(one_m, "memory_bytes_per_vector"),
                  get(one_m, "raw_vector_bytes"), "raw float32 vector", "bytes", Goal("ratio", "<=", 1.5, "<= 1.5x raw")))
    else:
        s.add(row("memory per vector at 1M", None, unit="bytes", ours_detail="not run (BENCH_SCALES without 1m)",
                  ours_missing=False))
    products_note = f"{products:.0f}" if products else "unknown"
    s.notes.append(
        f"Per product = (RSS - RSS of the empty server, both settled) / {products_note} products (n of .cache/bench/12k/meta.json: "
        "the sample's products imported with photos plus the synthetic rest loaded as embeddings"
        + (f"; the ingest fragments count {ingested:.0f}" if ingested else "")
        + "). The freshness products"
        + (f" ({get(fr.load('freshness.json'), 'products')})" if get(fr.load("freshness.json"), "products") else "")
        + " are added after this RSS was read, so they are not counted. The difference includes the product "
        "metadata and the index graph; it assumes the model and runtime take the same memory in both servers. Settled = read after "
        "12 s idle, past jemalloc's 10 s decay; anonymous memory is what a memory limit must hold, file-backed "
        "pages (the binary, ONNX Runtime, mapped vectors) are page cache the kernel can drop and read again.")
    if num(get(meta, "n")) is None and ingested:
        s.notes.append(".cache/bench/12k/meta.json not found: product count taken from the ingest fragments.")
    params["memory"] = {"products_12k": products, "dim": dim, "raw_vector_bytes": raw}
    return s


CRITERION_UNITS = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "μs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}
CRITERION_TIME = re.compile(
    r"^(?P<name>.*?)\s*time:\s*\[\s*(?P<lo>[\d.]+)\s*(?P<lu>\S+)\s+(?P<mid>[\d.]+)\s*(?P<mu>\S+)\s+"
    r"(?P<hi>[\d.]+)\s*(?P<hu>\S+)\s*\]")
CRITERION_NOISE = ("Benchmarking", "Warning", "WARNING", "Found ", "Running", "Gnuplot", "Compiling", "Finished",
                   "Performance", "No change", "Change within", "change:", "thrpt:", "error", "warning",
                   "running ", "test ", "Doc-tests")


def parse_criterion(text: str) -> dict[str, dict]:
    """name -> {median_ns, low_ns, high_ns, median} from cargo bench (criterion) output."""
    out, last_name = {}, None
    for line in text.splitlines():
        m = CRITERION_TIME.match(line.strip()) if "time:" in line else None
        if m:
            name = m.group("name").strip() or last_name
            if not name:
                continue
            vals = []
            for v, u in (("lo", "lu"), ("mid", "mu"), ("hi", "hu")):
                scale = CRITERION_UNITS.get(m.group(u))
                vals.append(float(m.group(v)) * scale if scale else None)
            out[name] = {"median_ns": vals[1], "low_ns": vals[0], "high_ns": vals[2],
                         "median": f"{m.group('mid')} {m.group('mu')}"}
            last_name = None
        elif line.strip() and not line[0].isspace() and not line.startswith(CRITERION_NOISE):
            last_name = line.strip()
    return out


def section_criterion(fr: Fragments) -> Section:
    s = Section("criterion", "8. Criterion micro-benchmarks (median of cargo bench)")
    text = fr.text("criterion.txt")
    expected = []
    for f in sorted((ROOT / "benches").glob("*.rs")):
        try:
            expected += re.findall(r'bench_function\(\s*"([^"]+)"', f.read_text())
        except OSError:
            pass
    results = parse_criterion(text) if text is not None else {}
    if text is not None and not results:
        fr.note_missing("criterion.txt: no benchmark results found in it")
    for name in list(dict.fromkeys(expected + list(results))):
        r = results.get(name)
        if r is None and results:
            fr.note_missing(f"criterion.txt: {name}")
        s.add(row(name, r["median_ns"] if r else None, unit="ns",
                  ours_detail=(f"{r['median']} (low {fmt_ns(r['low_ns'])}, high {fmt_ns(r['high_ns'])})" if r else None)))
    s.notes.append("Criterion with --warm-up-time 1 --measurement-time 3; median = the middle of criterion's "
                   "[low estimate high] interval.")
    return s


def fmt_ns(ns) -> str:
    if ns is None:
        return "?"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.4g} {unit}"
    return f"{ns:.4g} ns"


def read_meta(work: Path, scale: str):
    try:
        return json.loads((work / scale / "meta.json").read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- output


def fmt(value, unit: str) -> str:
    v = num(value)
    if v is None:
        return "missing"
    if unit == "%":
        return f"{v * 100:.1f}%"
    if unit == "bytes":
        return f"{v / 2 ** 20:,.1f} MiB" if abs(v) >= 10 ** 6 else f"{v:,.0f} B"
    if unit == "QPS":
        return f"{v:,.0f}"
    if unit in ("images/s", "products/s"):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"
    if unit == "ms":
        return f"{v:.2f} ms"
    if unit == "s":
        return f"{v:.2f} s"
    if unit == "GFLOP/s":
        return f"{v:.1f}"
    if unit == "ns":
        return fmt_ns(v)
    return f"{v:.4f}"


def cell(r: dict, which: str) -> str:
    value, detail, missing = r[which], r.get(f"{which}_detail"), r[f"_{which}_missing"]
    if which == "peer" and r["peer_name"] is None:
        return "–"
    if num(value) is None:
        if missing:
            return "missing"
        return detail or "–"
    text = fmt(value, r["unit"])
    if r["unit"] == "ns" and detail:
        return detail
    return f"{text} ({detail})" if detail else text


def ratio_cell(r: dict) -> str:
    if "delta" in r:
        return f"Δ {r['delta']:+.4f}"
    if r["ratio"] is not None:
        return f"{r['ratio']:.2f}x"
    return "–" if r["peer_name"] is None or (not r["_ours_missing"] and not r["_peer_missing"]) else "missing"


def met_cell(r: dict) -> str:
    if r["goal"] is None:
        return ""
    if r["met"] is None:
        return "not measured"
    return ("yes" if r["met"] else "**no**") + (f" ({md_escape(r['margin'])})" if r.get("margin") else "")


def md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def section_md(s: Section) -> list[str]:
    lines = [f"## {s.title}", ""]
    if s.extra_md:  # the section wrote its own tables
        lines += s.extra_md
        lines += [f"- {md_escape(n)}" for n in s.notes]
        return lines + ([""] if s.notes else [])
    has_peer = any(r["peer_name"] for r in s.rows)
    has_goal = any(r["goal"] for r in s.rows)
    head = ["measure", "lookbook"] + (["peer", "peer figure", "ratio"] if has_peer else []) + (
        ["goal", "met"] if has_goal else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in s.rows:
        u = r["unit"]
        unit = f" ({u})" if u in ("images/s", "products/s", "QPS", "GFLOP/s") and u not in r["metric"] else ""
        cells = [md_escape(r["metric"].strip()) + unit, md_escape(cell(r, "ours"))]
        if has_peer:
            cells += [md_escape(r["peer_name"] or "–"), md_escape(cell(r, "peer")), ratio_cell(r)]
        if has_goal:
            cells += [md_escape(r["goal"] or ""), met_cell(r)]
        if r["metric"].startswith("  "):
            cells[0] = "&nbsp;&nbsp;" + cells[0]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {md_escape(n)}" for n in s.notes]
    if s.notes:
        lines.append("")
    return lines


def json_value(v):
    if isinstance(v, float):
        if not math.isfinite(v):
            return None
        return round(v, 4) if abs(v) >= 1e-2 else float(f"{v:.4g}")
    if isinstance(v, dict):
        return {k: json_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [json_value(x) for x in v]
    return v


def yesno(v) -> str:
    if v is True:
        return "yes"
    if v is False or v is None:
        return "no"
    return f"yes ({v})"


def pv(x) -> str:
    """A parameter for people: lists joined, None as "missing"."""
    if x is None or x == []:
        return "missing"
    if isinstance(x, list):
        return ", ".join(pv(v) for v in x)
    return str(x)


def parameters_md(params: dict, datasets: dict) -> list[str]:
    md = []
    enc = params.get("encoding", {})
    for name, label in (("lookbook", "lookbook fp32"), ("python", "Python fp32"), ("lookbook_int8", "lookbook int8"),
                        ("python_int8", "Python int8")):
        e = enc.get(name, {})
        if e.get("model") is None and not e.get("batches"):
            md.append(f"- Encoding, {label}: missing")
            continue
        extra = f"; onnxruntime intra-op threads {e['threads']}" if e.get("threads") is not None else ""
        md.append(f"- Encoding, {label}: model {pv(e.get('model'))}; batch sizes {pv(e.get('batches'))}; "
                  f"images per run {pv(e.get('images_per_run'))}; seconds per run {pv(e.get('seconds_per_run'))}"
                  f"{extra}")
    if enc.get("flops_per_image") is not None:
        md.append(f"- Model FLOPs per image: {enc['flops_per_image']:,.0f} (flops.json)")
    for name, e in params.get("eval", {}).items():
        if all(v is None for v in e.values()):
            md.append(f"- Eval {name}: missing")
        else:
            md.append(f"- Eval {name}: model {pv(e.get('model'))}, {pv(e.get('products'))} products, "
                      f"{pv(e.get('queries'))} queries, {pv(e.get('classes'))} classes")
    for sc, libs in params.get("index", {}).items():
        for lib, p in libs.items():
            if p is None:
                md.append(f"- Index {sc}, {lib}: missing")
                continue
            exact = p.get("m") is None and not p.get("ef_search")
            md.append(f"- Index {sc}, {lib} {pv(p.get('version'))}: n {pv(p.get('n'))}, nq {pv(p.get('nq'))}, "
                      f"dim {pv(p.get('dim'))}, "
                      + ("exact search" if exact else f"M {pv(p.get('m'))}, ef_construction "
                         f"{pv(p.get('ef_construction'))}, ef_search {pv(p.get('ef_search'))}")
                      + f", query threads {pv(p.get('threads'))}, build threads {pv(p.get('build_threads'))}")
    for name, p in params.get("load", {}).items():
        secs = num(p.get("measured_seconds"))
        if secs is None and p.get("requests") is None:
            md.append(f"- Load {name}: concurrency {p['concurrency']}; missing")
            continue
        md.append(f"- Load {name}: concurrency {p['concurrency']}, measured "
                  f"{'missing' if secs is None else f'{secs:.1f} s'}, {pv(p.get('requests'))} requests, "
                  f"{pv(p.get('errors'))} errors")
    md.append("- Load connections per client are not recorded in the fragments (bench/run.sh: `--connections`); "
              "concurrency is read from the fragment names.")
    ing = params.get("ingest", {})
    md.append(f"- Ingest: {pv(ing.get('images_products'))} products with photos, {pv(ing.get('vectors_products'))} "
              f"with embeddings; freshness: {pv(ing.get('freshness_products'))} products")
    for sc, meta in datasets.items():
        md.append(f"- Dataset {sc}: n {pv(meta.get('n'))}, nq {pv(meta.get('nq'))}, dim {pv(meta.get('dim'))}, "
                  f"seed {pv(meta.get('seed'))}. {meta.get('how') or ''}".rstrip())
    return md


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, required=True, help="folder of JSON fragments (.cache/bench/results)")
    ap.add_argument("--work", type=Path, help="bench work folder with <scale>/meta.json (default: the results' parent)")
    ap.add_argument("--md", type=Path, required=True, help="Markdown report to write")
    ap.add_argument("--json", type=Path, required=True, help="JSON report to write")
    ap.add_argument("--total-seconds", type=float, help="wall time of the whole run")
    ap.add_argument("--started-unix", type=float,
                    help="when the run started (seconds since the epoch); default: now - total seconds, "
                         "which is right only when the report is written at the end of the run")
    args = ap.parse_args()
    work = args.work or args.results.resolve().parent

    fr = Fragments(args.results)
    if not args.results.is_dir():
        fr.note_missing(f"{args.results} (no such folder)")
    machine, versions = machine_info(), versions_info()
    params: dict = {}
    sections = [
        section_encoding(fr, machine, params),
        section_int8(fr, params),
        section_batching(fr, params),
        section_index(fr, params),
        section_ingest(fr, params),
        section_e2e(fr, params),
        section_memory(fr, work, params),
        section_criterion(fr),
    ]
    datasets = {}
    for scale in ["sample", "12k"] + [sc for sc in params.get("index", {}) if sc not in ("sample", "12k")]:
        meta = read_meta(work, scale)
        if meta is None:
            if scale in params.get("index", {}) and any(params["index"][scale].values()) or scale == "12k":
                fr.note_missing(f"{work / scale / 'meta.json'}")
            continue
        datasets[scale] = {k: meta.get(k) for k in ("n", "nq", "dim", "k", "seed", "noise_sigma", "how")}
    params["datasets"] = datasets
    now = dt.datetime.now(dt.timezone.utc)
    total = args.total_seconds
    if args.started_unix is not None:
        started = dt.datetime.fromtimestamp(args.started_unix, dt.timezone.utc)
    else:
        started = now - dt.timedelta(seconds=total) if total is not None else None

    rows_all = [r for s in sections for r in s.rows]
    goals = [r for r in rows_all if r["goal"]]
    met = sum(1 for r in goals if r["met"] is True)
    missed = [r for r in goals if r["met"] is False]
    unmeasured = sum(1 for r in goals if r["met"] is None)

    report = {
        "generated_utc": now.isoformat(timespec="seconds"),
        "run_started_utc": started.isoformat(timespec="seconds") if started else None,
        "total_seconds": total,
        "machine": machine,
        "versions": versions,
        "parameters": params,
        "goals": {"met": met, "missed": len(missed), "not_measured": unmeasured},
        "sections": {s.key: {"title": s.title, "notes": s.notes,
                             "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in s.rows]}
                     for s in sections},
        "missing": fr.missing,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(json_value(report), indent=2, ensure_ascii=False) + "\n")

    fl = machine["flags"]
    md = ["# lookbook benchmark results", "",
          "Every figure below was measured in one `make bench` run (bench/run.sh) on the machine described here and "
          "read by bench/report.py from the JSON fragments in .cache/bench/results/; none is typed by hand. "
          "Ratios are lookbook / peer: above 1 is better for throughput, below 1 is better for latency, "
          "memory and build time. The same data for tools: bench/results.json.", "",
          f"- **When**: {now:%Y-%m-%d %H:%M} UTC (report written)"
          + (f"; the run took {total:.0f} s ({total / 60:.1f} min), from about {started:%H:%M} UTC" if total else ""),
          f"- **Machine**: {machine['cpu_model'] or 'unknown CPU'}, {machine['cores']} cores"
          + (f", {machine['memory_bytes'] / 2 ** 30:.1f} GiB RAM" if machine["memory_bytes"] else "")
          + f", Linux {machine['kernel']}; " + ", ".join(f"{k} {yesno(v)}" for k, v in fl.items())
          + (f"; peak fp32 {machine['peak_fp32_gflops']:.1f} GFLOP/s at {machine['max_mhz']:.0f} MHz "
             f"({machine['max_mhz_source']})" if machine["peak_fp32_gflops"] else ""),
          f"- **Versions**: lookbook {versions['lookbook']} (git {versions['git'] or 'unknown'}), "
          f"{versions['rustc'] or 'rustc unknown'}, Python {versions['python']}; "
          + ", ".join(f"{k} {versions[k] or 'not installed'}" for k in PACKAGES),
          "- **Rerun**: `make bench` (environment: see the top of bench/run.sh: BENCH_SCALES, BENCH_SECONDS, "
          "LOOKBOOK_FASHION_DATA)",
          f"- **Goals**: {met} met, {len(missed)} missed, {unmeasured} not measured"
          + (": missed: " + "; ".join(f"{md_escape(r['metric'].strip())} ({r['goal']})" for r in missed) if missed else ""),
          ""]
    if fr.missing:
        md += [f"**Partial run**: {len(fr.missing)} fragment(s) or figure(s) missing, listed at the end.", ""]
    for s in sections:
        md += section_md(s)
    md += ["## Parameters", ""]
    md += parameters_md(params, datasets)
    md.append(f"- Total wall time of the run: {'unknown' if total is None else f'{total:.0f} s'}")
    md.append("")
    errors = [(n, p["errors"]) for n, p in params.get("load", {}).items() if num(p.get("errors"))]
    if errors:
        md += ["**Load errors**: " + ", ".join(f"{n}: {e}" for n, e in errors), ""]
    md += ["## Missing", ""]
    md += [f"- {md_escape(m)}" for m in fr.missing] if fr.missing else ["Nothing: every fragment was found."]
    md.append("")
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text("\n".join(md))
    print(f"report: {args.md}, {args.json} ({met} goals met, {len(missed)} missed, {unmeasured} not measured, "
          f"{len(fr.missing)} missing)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
