"""A smaller BEIR dataset for runs that the whole one would make too slow (the long-document sweep):

    python -m benchmarks.slice_dataset --dataset scifact --queries 30 --documents 200 --out results/data/scifact-q30-d200

keeps a seeded sample of `--queries` judged queries of `--split`, every document their qrels judge, and
seeded other documents of the corpus up to `--documents` in all, in BEIR's layout (corpus.jsonl,
queries.jsonl, qrels/<split>.tsv). `--max-judged K` samples only among queries that judge at most K
documents: NFCorpus judges 38 documents a query on average, so 30 of its queries would bring ~1,000
judged documents; such a slice holds only queries with few relevant documents (say so where its
scores are reported). A slice's scores are not comparable with the full dataset's (a smaller corpus is
easier to search), only with other runs on the same slice. The folder appears whole or not at all, with
`slice.json` saying how it was drawn (SLICE_RECORD); every run on it copies that into its summary
(`dataset.slice`), so a score on a slice cannot pass for one on the whole dataset.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from .cli import run_command
from .pipeline.data import SLICE_RECORD, DataError, load_dataset
from .pipeline.results import ResultsError, atomic_dir


def slice_dataset(dataset: str, split: str, data_dir: str | None, queries: int, documents: int, seed: int,
                  out: Path, max_judged: int | None = None) -> Path:
    if out.exists():
        raise DataError(f"--out {out}: exists already (a slice is written once)")
    ds = load_dataset(dataset, split, data_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pool = sorted(q for q, judged in ds.qrels.items() if max_judged is None or len(judged) <= max_judged)
    if not pool:
        raise DataError(f"--max-judged {max_judged}: no query of {ds.name} ({split}) judges so few documents")
    qids = sorted(rng.sample(pool, min(queries, len(pool))))
    judged = sorted({d for q in qids for d in ds.qrels[q] if d in ds.corpus})
    others = sorted(set(ds.corpus) - set(judged))
    keep = set(judged) | set(rng.sample(others, max(0, min(documents - len(judged), len(others)))))
    with atomic_dir(out) as tmp:
        (tmp / "qrels").mkdir()
        (tmp / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, **ds.corpus[d]}) + "\n"
                                                  for d in ds.corpus if d in keep))
        (tmp / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": ds.queries[q]}) + "\n" for q in qids))
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q in qids for d, s in ds.qrels[q].items()]
        (tmp / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        rule = dict(source=ds.name, split=split, queries=queries, documents=documents, max_judged=max_judged,
                    seed=seed, kept=dict(queries=len(qids), documents=len(keep), judged_documents=len(judged)),
                    source_size=dict(queries=len(ds.qrels), documents=len(ds.corpus)))
        (tmp / SLICE_RECORD).write_text(json.dumps(rule, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.slice_dataset", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="BEIR dataset name or folder")
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir")
    p.add_argument("--queries", type=int, required=True, help="judged queries kept (a seeded sample)")
    p.add_argument("--documents", type=int, required=True, help="documents in all: the judged ones, then others")
    p.add_argument("--max-judged", type=int, help="sample only queries that judge at most this many documents")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the new dataset folder (must not exist)")
    args = p.parse_args(argv)

    def body() -> int:
        out = slice_dataset(args.dataset, args.split, args.data_dir, args.queries, args.documents, args.seed,
                            Path(args.out), args.max_judged)
        print(out)
        return 0

    return run_command(body, (DataError, ResultsError), "nothing was written")


if __name__ == "__main__":
    sys.exit(main())
