"""Per-query retrieval metrics with trec_eval semantics, computed by pytrec_eval.

Two departures from calling pytrec_eval naively, both deliberate:
- a judged query with no results scores 0 on every metric (pytrec_eval drops it, and BEIR then
  averages over the rest, which inflates the mean);
- MRR@10 is trec_eval's recip_rank over the first 10 results (recip_rank itself has no cut-off).
"""

from __future__ import annotations

import pandas as pd

NDCG_CUTS = (1, 3, 5, 10, 100)
RECALL_CUTS = (10, 100)
METRICS = [f"ndcg@{k}" for k in NDCG_CUTS] + [f"recall@{k}" for k in RECALL_CUTS] + ["mrr@10", "map@100"]


def evaluate(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per judged query (index: qid, in qrels order), one column per metric in METRICS.

    `run` may list each query's results in any order: ranks come from the scores, as in trec_eval.
    """
    import pytrec_eval

    measures = {"ndcg_cut." + ",".join(map(str, NDCG_CUTS)), "recall." + ",".join(map(str, RECALL_CUTS)),
                "map_cut.100"}
    scores = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    top10 = {qid: dict(trec_order(docs)[:10]) for qid, docs in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)

    rows = []
    for qid in qrels:
        s, r = scores.get(qid), rr.get(qid)
        row = {m: 0.0 for m in METRICS}
        if s is not None:
            row.update({f"ndcg@{k}": s[f"ndcg_cut_{k}"] for k in NDCG_CUTS})
            row.update({f"recall@{k}": s[f"recall_{k}"] for k in RECALL_CUTS})
            row["map@100"] = s["map_cut_100"]
        if r is not None:
            row["mrr@10"] = r["recip_rank"]
        rows.append(row)
    return pd.DataFrame(rows, index=pd.Index(list(qrels), name="qid"), columns=METRICS)


def trec_order(docs: dict[str, float]) -> list[tuple[str, float]]:
    """trec_eval's ranking of one query's results: score descending, then document id descending."""
    return sorted(docs.items(), key=lambda d: (d[1], d[0]), reverse=True)


def aggregate(per_query: pd.DataFrame) -> dict[str, float]:
    """Mean of every metric over all judged queries (a query without results counts as 0)."""
    return {m: float(per_query[m].mean()) for m in METRICS}
