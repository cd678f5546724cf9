"""trec_eval's rules written out, independent of pytrec_eval: the reference the tests check metrics against.

- ranking: score descending, ties by document id descending (trec_eval sorts the run itself, whatever
  order the run file lists it in);
- relevant: a judged grade >= 1; unjudged documents count as non-relevant;
- ndcg_cut.k: linear gains (gain = grade), discount log2(rank + 1), ideal ranking from ALL judged
  documents with grade > 0, including ones the corpus lacks;
- recall.k, map_cut.k (precision at each relevant rank <= k, over all relevant), recip_rank.
"""

from __future__ import annotations

import math
from pathlib import Path


def ranking(docs: dict[str, float]) -> list[str]:
    return [d for d, _ in sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)]


def ndcg(qrel: dict[str, int], docs: dict[str, float], k: int) -> float:
    dcg = sum(qrel.get(d, 0) / math.log2(r + 1) for r, d in enumerate(ranking(docs)[:k], 1) if qrel.get(d, 0) > 0)
    ideal = sorted((g for g in qrel.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(r + 1) for r, g in enumerate(ideal, 1))
    return dcg / idcg if idcg else 0.0


def recall(qrel: dict[str, int], docs: dict[str, float], k: int) -> float:
    relevant = {d for d, g in qrel.items() if g >= 1}
    return len(relevant & set(ranking(docs)[:k])) / len(relevant) if relevant else 0.0


def average_precision(qrel: dict[str, int], docs: dict[str, float], k: int) -> float:
    relevant = {d for d, g in qrel.items() if g >= 1}
    hits, total = 0, 0.0
    for r, d in enumerate(ranking(docs)[:k], 1):
        if d in relevant:
            hits += 1
            total += hits / r
    return total / len(relevant) if relevant else 0.0


def reciprocal_rank(qrel: dict[str, int], docs: dict[str, float], k: int) -> float:
    return next((1 / r for r, d in enumerate(ranking(docs)[:k], 1) if qrel.get(d, 0) >= 1), 0.0)


def read_trec(path: Path) -> dict[str, dict[str, float]]:
    """A run file `qid Q0 docid rank score tag` -> {qid: {docid: score}} (the rank column is ignored, as trec_eval does)."""
    run: dict[str, dict[str, float]] = {}
    for line in Path(path).read_text().splitlines():
        qid, _, did, _, score, _ = line.split()
        run.setdefault(qid, {})[did] = float(score)
    return run
