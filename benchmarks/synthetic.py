"""A synthetic BEIR corpus of any size from a real one's sentences, for scale measurements.

    python -m benchmarks.synthetic --docs 100000 --out results/synthetic/scifact-100k [--seed 0]

The source's judged test documents come first, unchanged, with its test queries and qrels (so the
corpus is searchable and scored as the real one with distractors added); the rest are distractors
`syn<i>`, each the title of a random source document and as many random source sentences as a random
source document has (so lengths follow the source's). Seeded, and written a line at a time into a
temporary folder renamed into place at the end: nothing of the corpus is held in memory but the
source's sentences, and an interrupted run leaves no half-written folder.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
from pathlib import Path

from .cli import run_command
from .pipeline.data import DataError, load_dataset

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")  # enough for shuffled filler; no segmenter needed


def sentences(text: str) -> list[str]:
    return [s for s in SENTENCE_END.split(text.strip()) if s]


def write_synthetic(source: str, docs: int, out: Path, seed: int = 0, data_dir: str | None = None) -> Path:
    ds = load_dataset(source, "test", data_dir, download=False)
    judged = [d for d in dict.fromkeys(d for j in ds.qrels.values() for d in j) if d in ds.corpus]
    if docs < len(judged):
        raise DataError(f"--docs {docs}: the corpus must hold the {len(judged)} judged documents of {ds.name}")
    if out.exists():
        raise DataError(f"--out {out} exists; remove it or choose another folder")
    pool = [s for doc in ds.corpus.values() for s in sentences(doc["text"])]
    shapes = [(doc["title"], max(1, len(sentences(doc["text"])))) for doc in ds.corpus.values()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        write_files(tmp, ds, judged, pool, shapes, docs, random.Random(seed))
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_files(folder: Path, ds, judged: list[str], pool: list[str], shapes: list, docs: int, rng) -> None:
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        for did in judged:
            f.write(json.dumps({"_id": did, **ds.corpus[did]}) + "\n")
        for i in range(docs - len(judged)):
            title, k = shapes[rng.randrange(len(shapes))]
            text = " ".join(pool[rng.randrange(len(pool))] for _ in range(k))
            f.write(json.dumps({"_id": f"syn{i}", "title": title, "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as f:
        for qid, text in ds.queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (folder / "qrels").mkdir()
    with open(folder / "qrels" / "test.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{q}\t{d}\t{s}\n" for q, j in ds.qrels.items() for d, s in j.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, required=True, help="documents in the corpus")
    p.add_argument("--out", required=True, help="the BEIR folder to write (must not exist)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", default="scifact", help="the BEIR dataset whose sentences, queries and qrels are used")
    p.add_argument("--data-dir", help="folder holding the source (then $BEIR_DATA_DIR, then ./data)")
    args = p.parse_args(argv)

    def body() -> int:
        print(write_synthetic(args.source, args.docs, Path(args.out), args.seed, args.data_dir))
        return 0
    return run_command(body, (DataError,), "nothing was written")


if __name__ == "__main__":
    sys.exit(main())
