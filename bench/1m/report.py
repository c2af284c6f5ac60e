#!/usr/bin/env python3
"""Render bench/1m/RESULTS.md from the JSON that bench/1m/run.sh writes.

Why a report of its own: the million-product run takes 35 min to 2 h, by machine,
so it cannot be part of the 30-minute `make bench`; its figures are kept in
bench/1m/ with the commit they were measured at. The goals and the way the
best QPS at a recall target is picked are bench/report.py's, imported from
there so that both reports judge the same way. Nothing here is typed by hand.

    .cache/bench-venv/bin/python bench/1m/report.py [--dir bench/1m]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import report as r  # noqa: E402  (bench/report.py)

LIBS = ("lookbook", "hnswlib")


def load(d: Path, name: str):
    try:
        return json.loads((d / name).read_text())
    except (OSError, ValueError):
        return None


def index_md(d: Path) -> tuple[list[str], list[dict]]:
    frags = {lib: load(d, f"index-1m-{lib}.json") for lib in LIBS}
    ours, peer = frags["lookbook"], frags["hnswlib"]
    if ours is None or peer is None:
        return ["Not run (index-1m-lookbook.json / index-1m-hnswlib.json missing).", ""], []
    md = ["Best QPS whose recall@10 reaches the target (the ef_search that gave it), as in bench/RESULTS.md:", "",
          "| threads | recall@10 >= | lookbook | hnswlib | lookbook / hnswlib | goal >= 1.0x met |",
          "|---|---|---|---|---|---|"]
    rows = []
    for threads in r.INDEX_THREADS:
        for target in r.RECALL_TARGETS:
            ob, otop = r.best_run(ours, threads, target)
            pb, ptop = r.best_run(peer, threads, target)
            row = r.row(f"1m, {threads} thread{'s' if threads > 1 else ''}, recall@10 >= {target}: best QPS",
                        ob[0] if ob else None, pb[0] if pb else None, "hnswlib", "QPS",
                        r.Goal("ratio", ">=", 1.0, ">= 1.0x hnswlib"),
                        ours_detail=r.index_detail(ours, ob, otop), peer_detail=r.index_detail(peer, pb, ptop),
                        ours_missing=False, peer_missing=False)
            rows.append(row)
            md.append(f"| {threads} | {target} | {r.cell(row, 'ours')} | {r.cell(row, 'peer')} | "
                      f"{r.ratio_cell(row)} | {r.met_cell(row)} |")
    raw = r.num(ours.get("raw_vector_bytes"))
    md += ["", "| | lookbook | hnswlib | lookbook / hnswlib |", "|---|---|---|---|",
           f"| build seconds ({ours.get('build_threads')} / {peer.get('build_threads')} threads) | "
           f"{ours['build_seconds']:,.0f} | {peer['build_seconds']:,.0f} | "
           f"{ours['build_seconds'] / peer['build_seconds']:.2f}x |",
           f"| memory per vector (raw {raw:,.0f} B) | {ours['memory_bytes_per_vector']:,.0f} B "
           f"({ours['memory_bytes_per_vector'] / raw:.2f}x raw) | {peer['memory_bytes_per_vector']:,.0f} B "
           f"({peer['memory_bytes_per_vector'] / raw:.2f}x raw) | "
           f"{ours['memory_bytes_per_vector'] / peer['memory_bytes_per_vector']:.2f}x |", ""]
    cells: dict = {}
    for lib in LIBS:
        for run in r.sweep_runs(frags[lib]):
            cells.setdefault(run["ef_search"], {}).setdefault(lib, {})[run["threads"]] = run
    md += ["Every ef_search of the sweep: recall@10; QPS with 1 / 2 threads; lookbook / hnswlib QPS:", "",
           "| ef_search | lookbook recall | hnswlib recall | lookbook QPS | hnswlib QPS | ratio |",
           "|---|---|---|---|---|---|"]
    by_threads: dict = {t: [] for t in r.INDEX_THREADS}
    for ef in sorted(cells):
        c = cells[ef]
        rec = [r.num(next(iter(c.get(lib, {}).values()), {}).get("recall_at_10")) for lib in LIBS]
        qps = {lib: [r.num(c.get(lib, {}).get(t, {}).get("qps")) for t in r.INDEX_THREADS] for lib in LIBS}
        ratios = [r.ratio(a, b) for a, b in zip(qps["lookbook"], qps["hnswlib"])]
        for t, x in zip(r.INDEX_THREADS, ratios):
            if x is not None:
                by_threads[t].append(x)
        md.append(f"| {ef} | " + " | ".join("–" if x is None else f"{x:.4f}" for x in rec) + " | "
                  + " | ".join(" / ".join("–" if q is None else f"{q:,.0f}" for q in qps[lib]) for lib in LIBS)
                  + " | " + " / ".join("–" if x is None else f"{x:.2f}x" for x in ratios) + " |")
    md += ["", "lookbook / hnswlib QPS over the sweep's ef values (equal ef is equal recall here): " + "; ".join(
        f"{t} thread{'s' if t > 1 else ''}: median {statistics.median(v):.2f}x, {min(v):.2f}-{max(v):.2f}x"
        for t, v in by_threads.items() if v) + "."]
    md += ["", f"Parameters: n {ours.get('n'):,}, {ours.get('nq')} queries, dim {ours.get('dim')}, "
           f"M {ours.get('m')}, ef_construction {ours.get('ef_construction')} (both); "
           f"hnswlib {peer.get('version')}. faiss and scikit-learn were not run at 1M (see the README).", ""]
    return md, rows


def server_md(d: Path) -> tuple[list[str], list[dict]]:
    f = {n: load(d, f"server-1m-{n}.json") for n in
         ("empty", "empty-settled", "ingest", "loaded", "shutdown-loaded", "from-dump", "from-dump-settled", "similar-c1",
                   "similar-c32")}
    if f["from-dump"] is None:
        return ["Not run (server-1m-from-dump.json missing).", ""], []
    dump, loaded, empty = f["from-dump"], f["loaded"] or {}, f["empty"] or {}
    # Read 12 s after SERVING, past jemalloc's decay; the at-SERVING reading
    # stands in for runs without it.
    settled = f["from-dump-settled"] or dump
    raw = dump.get("raw_vector_bytes")
    goal = r.Goal("ratio", "<=", 1.5, "<= 1.5x raw")
    per_dump = r.row("RSS per product, 1M from the dump (settled), vs raw float32 vector",
                     settled.get("rss_bytes_per_product"), raw, "raw vector", "bytes", goal)
    anon_dump = r.row("  of which anonymous (heap)", settled.get("rss_anon_bytes_per_product"), raw, "raw vector",
                      "bytes")
    per_live = r.row("RSS per product, 1M after live ingest, vs raw float32 vector",
                     loaded.get("rss_bytes_per_product"), raw, "raw vector", "bytes")
    ing, sd = f["ingest"] or {}, f["shutdown-loaded"] or {}
    md = ["| measure | figure | vs raw vector | goal | met |", "|---|---|---|---|---|",
          f"| ingest through AddProducts with embeddings (load-vectors) | {r.fmt(ing.get('products_per_second'), 'products/s')} "
          f"products/s ({r.fmt(ing.get('seconds'), 's')} for {ing.get('products', 0):,}) | | | |",
          f"| RSS, empty server, at SERVING / settled | {r.fmt(empty.get('rss_bytes'), 'bytes')} / "
          f"{r.fmt((f['empty-settled'] or {}).get('rss_bytes'), 'bytes')} | | | |",
          f"| RSS after ingesting 1M | {r.fmt(loaded.get('rss_bytes'), 'bytes')} | | | |",
          f"| {per_live['metric']} | {r.cell(per_live, 'ours')} | {r.ratio_cell(per_live)} | | |",
          f"| shutdown after the ingest (drain, index dump written) | {r.fmt(sd.get('seconds'), 's')} | | | |",
          f"| start-up to SERVING from the dump, 1M products | {r.fmt(dump.get('seconds_to_serving'), 's')} | | | |",
          f"| RSS, started from the dump, at SERVING | {r.fmt(dump.get('rss_bytes'), 'bytes')} | | | |",
          f"| RSS, started from the dump, settled (anonymous / file-backed) | {r.fmt(settled.get('rss_bytes'), 'bytes')} "
          f"({r.fmt(settled.get('rss_anon_bytes'), 'bytes')} / {r.fmt(settled.get('rss_file_bytes'), 'bytes')}) | | | |",
          f"| {per_dump['metric']} | {r.cell(per_dump, 'ours')} | {r.ratio_cell(per_dump)} | {goal.text} | "
          f"{r.met_cell(per_dump)} |",
          f"| {anon_dump['metric']} | {r.cell(anon_dump, 'ours')} | {r.ratio_cell(anon_dump)} | | |"]
    for c in (1, 32):
        s = f[f"similar-c{c}"]
        if s:
            md.append(f"| RecommendSimilar at 1M, concurrency {c} | {r.fmt(s.get('qps'), 'QPS')} QPS, "
                      f"p50 {r.fmt(s.get('p50'), 'ms')}, p99 {r.fmt(s.get('p99'), 'ms')} "
                      f"({s.get('requests'):,} requests, {s.get('errors')} errors) | | | |")
    md += ["", "Per product = (RSS - RSS of the empty server) / products, as bench/RESULTS.md computes it at 12K; "
           "settled = read 12 s after SERVING, once jemalloc's 10 s decay has purged start-up's garbage. "
           "The load generator runs on the same machine and shares its 2 cores with the server.", ""]
    return md, [per_dump]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent, help="bench/1m")
    args = ap.parse_args()
    d = args.dir
    machine = r.machine_info()
    fl = machine["flags"]
    index, index_rows = index_md(d)
    server, server_rows = server_md(d)
    goals = index_rows + server_rows
    met = sum(1 for g in goals if g["met"] is True)
    missed = [g for g in goals if g["met"] is False]

    def prov(part: str) -> str:
        p = load(d, f"run-{part}.json")
        if p is None:
            return "not recorded"
        changed = [c.strip() for c in p.get("sources_changed") or []]
        return (f"git {p.get('git')}" + (f" with changed sources ({', '.join(changed)})" if changed else
                                         ", sources as committed")
                + f"; binary built {p.get('binary_built')}; finished {p.get('finished')}")

    ds = load(d, "dataset-1m.json") or {}
    ran = load(d, "run-index.json") or load(d, "run-server.json") or {}
    md = ["# lookbook at one million products", "",
          "Measured by `bash bench/1m/run.sh` (35 min to 2 h by machine, too long for `make bench`), rendered by "
          "bench/1m/report.py from the JSON beside this file; none is typed by hand. Goals as in bench/RESULTS.md.", "",
          f"- **Index part**: {prov('index')}",
          f"- **Server part**: {prov('server')}",
          f"- **Machine** (as recorded by the run; flags from the machine this report was rendered on): "
          f"{ran.get('cpu') or machine['cpu_model']}, {ran.get('cores') or machine['cores']} cores, "
          + ", ".join(f"{k} {r.yesno(v)}" for k, v in fl.items()),
          f"- **Goals**: {met} met, {len(missed)} missed"
          + (": " + "; ".join(f"{g['metric']} ({g['goal']})" for g in missed) if missed else ""),
          f"- **Data**: {ds.get('how', 'dataset-1m.json missing')}", "",
          "## Vector index, 1M vectors: lookbook vs hnswlib", ""] + index + [
          "## A server with 1M products", ""] + server
    (d / "RESULTS.md").write_text("\n".join(md).rstrip() + "\n")
    print(f"wrote {d / 'RESULTS.md'} ({met} goals met, {len(missed)} missed)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
