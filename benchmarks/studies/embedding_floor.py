"""Embedding floor: the retrieval quality of a model's token-embedding table alone, with no layers.

    python -m benchmarks.studies.embedding_floor --encoder bert [--checkpoint DIR | --preset small] [--dataset scifact]

Each text becomes the mean of its tokens' input embeddings (the same tokens, prefixes and truncation
the model sees), L2-normalised, then exact search and pytrec_eval as in a run. Nothing passes
through the sequence mixers, so this is what the model would score if its layers did nothing: a
weighted bag of words in the embedding space. Read a pruning curve against it: pruning narrows the
mixers but keeps the embeddings, so a pruned model can drift towards this floor from above or below.
Prints one line; writes nothing.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from torch import nn

import encoders
from benchmarks.pipeline.data import DataError, load_dataset
from benchmarks.pipeline.index import search
from benchmarks.pipeline.metrics import aggregate, evaluate
from encoders.base import EncoderError


def token_table(enc) -> torch.Tensor:
    """The input embedding table: the largest nn.Embedding (rows = vocabulary; position tables are smaller)."""
    tables = [m for m in enc.modules() if isinstance(m, nn.Embedding)]
    if not tables:
        raise EncoderError(f"{type(enc).__name__} has no nn.Embedding to read token embeddings from")
    return max(tables, key=lambda m: m.weight.shape[0]).weight.detach().float().cpu()


def bag_of_embeddings(enc, table: torch.Tensor, texts: list[str]) -> np.ndarray:
    out = np.empty((len(texts), table.shape[1]), dtype=np.float32)
    for i, ids in enumerate(enc.tokenize(texts)):
        out[i] = torch.nn.functional.normalize(table[torch.tensor(ids)].mean(0), dim=0).numpy()
    return out


def embedding_floor(enc, dataset) -> dict[str, float]:
    """Aggregate metrics of `enc`'s token-embedding bag on `dataset` (a benchmarks.data.Dataset)."""
    table = token_table(enc)
    doc_ids, query_ids = list(dataset.corpus), list(dataset.queries)
    docs = bag_of_embeddings(enc, table, enc.corpus_texts([dataset.corpus[d] for d in doc_ids]))
    queries = bag_of_embeddings(enc, table, enc.query_texts([dataset.queries[q] for q in query_ids]))
    run, _ = search(docs, doc_ids, queries, query_ids, top_k=100)
    return aggregate(evaluate(dataset.qrels, run))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.embedding_floor", description=__doc__.split("\n")[0])
    p.add_argument("--encoder", required=True)
    p.add_argument("--checkpoint")
    p.add_argument("--preset")
    p.add_argument("--dataset", default="scifact")
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="for a preset's random initialisation")
    args = p.parse_args(argv)
    try:
        dataset = load_dataset(args.dataset, args.split, args.data_dir, download=False)
        torch.manual_seed(args.seed)
        enc = encoders.load(args.encoder, checkpoint=args.checkpoint, preset=args.preset,
                            max_length=args.max_length, show_progress=False)
        metrics = embedding_floor(enc, dataset)
    except (DataError, EncoderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = args.checkpoint or args.preset or "default"
    print(f"{args.encoder} {model} on {args.dataset} ({args.split}): token-embedding bag NDCG@10 "
          f"{metrics['ndcg@10']:.4f}, recall@100 {metrics['recall@100']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
