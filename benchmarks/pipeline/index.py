"""Exact inner-product search with FAISS (`IndexFlatIP`; cosine = normalised vectors).

Ties are broken the way trec_eval does (score descending, then document id descending), so the
ranks written to run.trec are exactly the ranks the metrics see.
"""

from __future__ import annotations

import numpy as np


def search(doc_emb: np.ndarray, doc_ids: list[str], query_emb: np.ndarray, query_ids: list[str],
           top_k: int = 100) -> tuple[dict[str, dict[str, float]], dict]:
    """Top-k documents per query -> (run {qid: {docid: score}} in rank order, stats). (BEIR's self-hit
    rule is the runner's, for every retriever: see pipeline/runner.py drop_self_hits.)"""
    import faiss

    if top_k < 1:
        raise ValueError(f"top_k must be positive, got {top_k}")
    index = faiss.IndexFlatIP(doc_emb.shape[1])
    index.add(np.ascontiguousarray(doc_emb, dtype=np.float32))
    query_emb = np.ascontiguousarray(query_emb, dtype=np.float32)
    # One beyond the cut: it shows whether a group of equal scores crosses the cut, which must then be
    # cut by id (trec_eval's rule), not in FAISS's order.
    keep = top_k
    k = min(len(doc_ids), keep + 1)
    scores, idx = index.search(query_emb, k)
    scores, idx = list(scores), list(idx)
    # A query whose last retrieved score equals its score at the cut may have more documents with
    # that score: search it again with twice the depth until its tie group is closed (or all is retrieved).
    open_ = [q for q in range(len(query_ids)) if tie_open(scores[q], keep, k, len(doc_ids))]
    while open_:
        k = min(len(doc_ids), 2 * k)
        s, i = index.search(query_emb[open_], k)
        for row, q in enumerate(open_):
            scores[q], idx[q] = s[row], i[row]  # the whole row from one search: its scores compare exactly
        open_ = [q for q in open_ if tie_open(scores[q], keep, k, len(doc_ids))]

    run: dict[str, dict[str, float]] = {}
    tied_pairs = pairs = 0
    for qid, row_scores, row_idx in zip(query_ids, scores, idx):
        hits = [(float(s), doc_ids[i]) for s, i in zip(row_scores, row_idx) if i >= 0]
        hits.sort(key=lambda h: (h[0], h[1]), reverse=True)  # score desc, then doc id desc (trec_eval)
        hits = hits[:top_k]
        pairs += max(len(hits) - 1, 0)
        tied_pairs += sum(1 for a, b in zip(hits, hits[1:]) if a[0] == b[0])
        run[qid] = {did: s for s, did in hits}
    stats = dict(top_k=top_k, tie_rate=tied_pairs / pairs if pairs else 0.0)  # share of adjacent ranks with equal scores
    return run, stats


def tie_open(row_scores: np.ndarray, keep: int, k: int, n_docs: int) -> bool:
    """Whether documents not retrieved (k of n_docs were) could tie the score at rank `keep`."""
    return k < n_docs and len(row_scores) > keep and row_scores[-1] == row_scores[keep - 1]
