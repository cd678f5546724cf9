"""Batch-1 query latency in bf16: what casting the weights costs, per architecture, in one process.

    python -m benchmarks.studies.bench_casts [--encoders bert,mamba,...] [--preset small] [--queries 100]

For each architecture (randomly initialised at --preset, the same weights in every column) it times
`encode([query])` one query at a time, as the runner's latency does (benchmarks/pipeline/measure.py):

  harness    bf16, as the runner measures it: weights cast once and held (Encoder.held_weights)
  per-call   bf16 with holding off: autocast casts every weight in every call (the old harness)
  cast-once  the reference: holding off, and one autocast region around a block of queries, so
             that autocast's own cache casts each weight at the block's first (untimed) query only
  fp32       the same model in float32

The columns take turns in blocks of --block queries (the first call of each block untimed: there
cast-once makes its casts), so that all four see the same machine state even on a busy machine; each
reports the p50 over its --repeats x --queries timed calls and the coefficient of variation of the
rounds' p50s (benchmarks/pipeline/measure.latency_summary). The goal of issue 15: harness /
cast-once within 1.10. Queries: SciFact's (from BEIR_DATA_DIR or --data-dir) when found, otherwise
seeded random vocabulary words.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import numpy as np
import torch

from encoders import ARCHITECTURES

COLUMNS = ["harness", "per-call", "cast-once", "fp32"]


def load_queries(dataset: str, data_dir: str | None, count: int, tokenizer) -> tuple[list[str], str]:
    """`count` queries of `dataset`, or synthetic ones when it is not on disk -> (queries, where from)."""
    from benchmarks.pipeline.data import DataError, find_dataset, read_jsonl

    try:
        path = find_dataset(dataset, data_dir, download=False) / "queries.jsonl"
        return [r["text"] for _, r in read_jsonl(path, "query")][:count], str(path)
    except DataError:
        from benchmarks.studies.bench_pruning import make_texts

        texts = make_texts(tokenizer, count, 10)
        return [" ".join(t.split()[:10]) for t in texts], "synthetic (10 random vocabulary words each)"


def column_call(enc, column: str):
    """(context to hold open around the column's queries, the per-query call) for one column."""
    enc.hold_weights = column == "harness"
    enc.dtype_name = "float32" if column == "fp32" else "bfloat16"
    outer = enc.autocast() if column == "cast-once" else contextlib.nullcontext()
    return outer, lambda text: enc.encode([text], show_progress=False)


def bench(name: str, args, queries: list[str]) -> dict:
    import encoders
    from benchmarks.pipeline.measure import latency_summary

    torch.manual_seed(0)
    enc = encoders.load(name, preset=args.preset, dtype="bfloat16", show_progress=False)
    texts = enc.query_texts(queries)
    times = {c: np.empty((args.repeats, len(texts))) for c in COLUMNS}
    for r in range(args.repeats):
        for first in range(0, len(texts), args.block):
            for column in COLUMNS:
                outer, call = column_call(enc, column)
                with outer:
                    call(texts[first])  # untimed
                    for i in range(first, min(first + args.block, len(texts))):
                        start = time.perf_counter()
                        call(texts[i])
                        times[column][r, i] = (time.perf_counter() - start) * 1e3
    return {c: latency_summary(t) for c, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default=",".join(ARCHITECTURES))
    parser.add_argument("--preset", choices=["tiny", "small", "base"], default="small")
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--data-dir", help="folder holding BEIR datasets (default: $BEIR_DATA_DIR, then ./data)")
    parser.add_argument("--queries", type=int, default=100, help="queries timed per column and round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the queries")
    parser.add_argument("--block", type=int, default=10, help="queries per turn of a column")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)

    import encoders

    try:
        names = encoders.get_all(args.encoders)
        if min(args.queries, args.repeats, args.block) < 1:
            raise encoders.EncoderError("--queries, --repeats and --block must be positive")
    except encoders.EncoderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    queries, source = load_queries(args.dataset, args.data_dir, args.queries, encoders.load_tokenizer())
    print(f"batch-1 query p50 (ms), {args.preset} preset, {len(queries)} queries from {source}, "
          f"{torch.get_num_threads()} thread(s), {args.repeats} rounds in blocks of {args.block} (CV of the rounds' p50s)")
    print(f"{'encoder':<8}" + "".join(f"{c:>16}" for c in COLUMNS) + f"{'harness/once':>14}{'per-call/once':>15}")
    for name in names:
        r = bench(name, args, queries)
        cells = "".join(f"{r[c]['p50_ms']:>9.2f} ({r[c]['cv']:>4.0%})" for c in COLUMNS)
        once = r["cast-once"]["p50_ms"]
        print(f"{name:<8}{cells}{r['harness']['p50_ms'] / once:>13.2f}x{r['per-call']['p50_ms'] / once:>14.2f}x",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
