"""Corpus scale: peak memory and throughput of one run as the corpus grows.

    python -m benchmarks.studies.scale                          # 100k and 1M documents, tiny BERT
    python -m benchmarks.studies.scale --docs 10000,100000 --encoder bert --preset tiny

For each size, a synthetic corpus from SciFact's sentences (`benchmarks.synthetic`, kept under
results/synthetic/ for the next time) is run by `python -m benchmarks.run` in a fresh subprocess, with
no embedding cache (every document encoded). Printed side by side: the child's peak RSS (its
ru_maxrss: the whole process, reading the corpus included), the run's own high-water marks from model
load on (through encoding, and through the whole run: search reads the embedding store's pages), corpus
documents/s (encoding alone), wall time, and each size's wall time against linear growth from the
smallest size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.synthetic import write_synthetic


def corpus(docs: int, root: Path, seed: int) -> Path:
    path = root / f"scifact-{docs}"
    if not (path / "corpus.jsonl").is_file():
        write_synthetic("scifact", docs, path, seed)
    return path


def run_one(dataset: Path, out: Path, args) -> dict:
    """One run in a fresh process -> its figures (peak RSS from the child's own rusage)."""
    cmd = [sys.executable, "-m", "benchmarks.run", "--dataset", str(dataset), "--encoder", args.encoder,
           "--preset", args.preset, "--device", "cpu", "--dtype", args.dtype, "--no-cache", "--quiet",
           "--latency-queries", "10", "--output-dir", str(out), "--run-id", dataset.name, *args.extra]
    start = time.perf_counter()
    child = subprocess.Popen(cmd)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed")
    summary = json.loads(next(out.glob(f"*/*/*/{dataset.name}-*/summary.json")).read_text())
    enc = summary["timings"]["corpus_encode"]
    return dict(docs=summary["dataset"]["documents"], peak_rss_mb=usage.ru_maxrss / 1024, wall_s=wall,
                encode_peak_mb=enc.get("peak_rss_mb", float("nan")), run_peak_mb=summary["timings"]["peak_rss_mb"],
                encode_docs_per_s=enc["texts_per_s"], ndcg10=summary["metrics"]["ndcg@10"])


def table(rows: list[dict]) -> str:
    base = rows[0]
    lines = [f"{'documents':>10} {'peak RSS MB':>12} {'MB/1k docs':>11} {'encoding MB':>12} {'run MB':>8} "
             f"{'docs/s':>8} {'wall s':>8} {'x linear':>9} {'NDCG@10':>8}"]
    for r in rows:
        linear = base["wall_s"] * r["docs"] / base["docs"]
        lines.append(f"{r['docs']:>10} {r['peak_rss_mb']:>12.0f} {1000 * r['peak_rss_mb'] / r['docs']:>11.1f} "
                     f"{r['encode_peak_mb']:>12.0f} {r['run_peak_mb']:>8.0f} {r['encode_docs_per_s']:>8.0f} "
                     f"{r['wall_s']:>8.0f} {r['wall_s'] / linear:>9.2f} {r['ndcg10']:>8.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.scale", description=__doc__.split("\n")[0])
    p.add_argument("--docs", default="100000,1000000", help="corpus sizes, comma-separated, smallest first")
    p.add_argument("--encoder", default="bert")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default="results/synthetic", help="where the synthetic corpora are kept")
    p.add_argument("--output-dir", default=f"results/scale/{time.strftime('%Y%m%d-%H%M%S')}")
    p.add_argument("extra", nargs="*", help="further benchmarks.run options, after --")
    args = p.parse_args(argv)
    sizes = sorted(int(n) for n in args.docs.split(","))
    rows = []
    for n in sizes:
        rows.append(run_one(corpus(n, Path(args.root), args.seed), Path(args.output_dir), args))
        print(table(rows), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other work on the machine slows every size)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
