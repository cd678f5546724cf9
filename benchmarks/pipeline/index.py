"""Inner-product search with FAISS (cosine = normalised vectors): exact (`IndexFlatIP`, `--index Flat`,
the default) or approximate (any other FAISS index-factory string, e.g. HNSW32, IVF1024,Flat, IVF1024,PQ48,
with search parameters such as efSearch=128 or nprobe=16).

Ties are broken the way trec_eval does (score descending, then document id descending), so the
ranks written to run.trec are exactly the ranks the metrics see.

An approximate run is judged against the exact search it stands for, as FAISS's benchmarks and
Anserini's flat-versus-HNSW regressions do: `against_exact` gives the mean overlap of its top-k with the
exact top-k and its NDCG@10 change.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager

import numpy as np

EXACT = "Flat"


class IndexOptionError(ValueError):
    """An --index / --index-params the index cannot take, or a corpus it cannot be trained on (one line)."""


def search(doc_emb, doc_ids, query_emb: np.ndarray, query_ids: list[str],
           top_k: int = 100) -> tuple[dict[str, dict[str, float]], dict]:
    """Top-k documents per query -> (run {qid: {docid: score}} in rank order, stats). `doc_emb` is an
    array or an embedding store (pipeline/cache.py), searched shard by shard from its memory map: each
    shard's top-k with its tie group at the cut closed, merged, then ranked as one. (BEIR's self-hit
    rule is the runner's, for every retriever: see pipeline/runner.py drop_self_hits.)"""
    if top_k < 1:
        raise ValueError(f"top_k must be positive, got {top_k}")
    query_emb = np.ascontiguousarray(query_emb, dtype=np.float32)
    found = [([], []) for _ in query_ids]  # per query: score arrays, row arrays (one pair per shard)
    for start, chunk in shards(doc_emb):
        for (scores, rows), (s, i) in zip(found, zip(*chunk_top(chunk, query_emb, top_k))):
            scores.append(s[i >= 0])
            rows.append(i[i >= 0] + start)
    run: dict[str, dict[str, float]] = {}
    tied_pairs = pairs = 0
    for qid, (scores, rows) in zip(query_ids, found):
        rows = np.concatenate(rows)
        hits = list(zip(map(float, np.concatenate(scores)), ids_at(doc_ids, rows)))
        hits.sort(key=lambda h: (h[0], h[1]), reverse=True)  # score desc, then doc id desc (trec_eval)
        hits = hits[:top_k]
        pairs += max(len(hits) - 1, 0)
        tied_pairs += sum(1 for a, b in zip(hits, hits[1:]) if a[0] == b[0])
        run[qid] = {did: s for s, did in hits}
    stats = dict(top_k=top_k, tie_rate=tied_pairs / pairs if pairs else 0.0)  # share of adjacent ranks with equal scores
    return run, stats


def chunk_top(doc_emb: np.ndarray, query_emb: np.ndarray, keep: int) -> tuple[list, list]:
    """Per query, the `keep` best rows of `doc_emb` and every row tying the score at the cut -> (scores,
    rows) lists, one array per query. A document of the overall top-k is in its own shard's top-k by
    score, so these candidates, merged over shards and ranked, give exactly the ranking of one search."""
    import faiss

    n = len(doc_emb)
    # One beyond the cut: it shows whether a group of equal scores crosses the cut, which must then be
    # cut by id (trec_eval's rule), not in FAISS's order.
    k = min(n, keep + 1)
    scores, idx = faiss.knn(query_emb, doc_emb, k, faiss.METRIC_INNER_PRODUCT)
    scores, idx = list(scores), list(idx)
    # A query whose last retrieved score equals its score at the cut may have more documents with
    # that score: search it again with twice the depth until its tie group is closed (or all is retrieved).
    open_ = [q for q in range(len(query_emb)) if tie_open(scores[q], keep, k, n)]
    while open_:
        k = min(n, 2 * k)
        s, i = faiss.knn(query_emb[open_], doc_emb, k, faiss.METRIC_INNER_PRODUCT)
        for row, q in enumerate(open_):
            scores[q], idx[q] = s[row], i[row]  # the whole row from one search: its scores compare exactly
        open_ = [q for q in open_ if tie_open(scores[q], keep, k, n)]
    return scores, idx


def shards(doc_emb):
    """(first row, rows) of an array (one piece) or an embedding store (its shards, memory-mapped)."""
    return doc_emb.shards() if hasattr(doc_emb, "shards") else [(0, doc_emb)]


def rows_of(doc_emb) -> int:
    return doc_emb.rows if hasattr(doc_emb, "shards") else len(doc_emb)


def ids_at(doc_ids, rows: np.ndarray) -> list[str]:
    """The ids at `rows` of a list, or of an Arrow array (a corpus's ids)."""
    if hasattr(doc_ids, "take"):
        return doc_ids.take(rows).to_pylist()
    return [doc_ids[r] for r in rows]


def tie_open(row_scores: np.ndarray, keep: int, k: int, n_docs: int) -> bool:
    """Whether documents not retrieved (k of n_docs were) could tie the score at rank `keep`."""
    return k < n_docs and len(row_scores) > keep and row_scores[-1] == row_scores[keep - 1]


# -- approximate search ---------------------------------------------------------------------------
def parse_params(text: str) -> dict[str, float]:
    """"efSearch=128,nprobe=16" -> {"efSearch": 128, "nprobe": 16} (the form the run records)."""
    params = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            raise IndexOptionError(f"--index-params: {item!r} is not name=number") from None
        params[name.strip()] = int(number) if number.is_integer() else number
    return params


def build(spec: str, params: dict, dim: int, doc_emb=None, seed: int = 0):
    """A FAISS index from a factory string with its search parameters set; trained (seeded) on and
    filled with `doc_emb` (an array or an embedding store, added shard by shard) when given. Without
    `doc_emb` it only checks that spec and parameters apply."""
    import faiss

    try:
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise IndexOptionError(f"--index {spec!r}: {faiss_message(e)}") from None
    set_params(index, params, spec)
    if doc_emb is None:
        return index
    seed_training(index, seed)
    # One thread: HNSW built by several threads depends on their interleaving, and the run must not.
    with faiss_threads(1):
        try:
            if not index.is_trained:
                index.train(training_rows(doc_emb, seed))
        except RuntimeError as e:
            raise IndexOptionError(f"--index {spec!r} cannot be trained on {rows_of(doc_emb)} documents: "
                                   f"{faiss_message(e)}") from None
        for _, chunk in shards(doc_emb):
            index.add(np.ascontiguousarray(chunk, dtype=np.float32))
    return index


TRAIN_ROWS = 1 << 18  # FAISS's k-means samples at most 256 points per centroid: 1024 centroids' worth


def training_rows(doc_emb, seed: int) -> np.ndarray:
    """Every row when there are at most TRAIN_ROWS, else a seeded sample of TRAIN_ROWS rows (in order)."""
    n = rows_of(doc_emb)
    if n <= TRAIN_ROWS:
        return np.concatenate([np.asarray(c, dtype=np.float32) for _, c in shards(doc_emb)])
    pick = np.sort(np.random.default_rng(seed).choice(n, TRAIN_ROWS, replace=False))
    return np.concatenate([np.asarray(c[pick[(pick >= a) & (pick < a + len(c))] - a], dtype=np.float32)
                           for a, c in shards(doc_emb)])


def set_params(index, params: dict, spec: str) -> None:
    import faiss

    space = faiss.GpuParameterSpace() if hasattr(index, "getDevice") else faiss.ParameterSpace()
    for name, value in params.items():
        try:
            space.set_index_parameter(index, name, float(value))
        except RuntimeError:
            raise IndexOptionError(f"--index-params: {spec!r} has no search parameter {name!r}") from None


def effective_params(index) -> dict:
    """The search parameters the index searched with (its defaults included): efSearch, nprobe."""
    import faiss

    out = {}
    try:
        out["nprobe"] = int(faiss.extract_index_ivf(index).nprobe)
    except RuntimeError:
        pass  # not an IVF index
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        out["efSearch"] = int(hnsw.efSearch)
    return out


def seed_training(index, seed: int) -> None:
    """Seed the k-means of an IVF coarse quantizer and of a product quantizer, where the index has them."""
    import faiss

    parts = [faiss.downcast_index(index)]
    try:
        parts.append(faiss.downcast_index(faiss.extract_index_ivf(index)))
    except RuntimeError:
        pass
    for part in parts:
        if hasattr(part, "cp"):
            part.cp.seed = seed
        if getattr(part, "pq", None) is not None:
            part.pq.cp.seed = seed


def approximate_search(doc_emb, doc_ids, query_emb: np.ndarray, query_ids: list[str],
                       top_k: int, spec: str, params: dict, seed: int = 0, device: str = "cpu"):
    """Top-k per query from an approximate index -> (run in trec_eval order, stats: index, params, on_gpu,
    build_s (train + add), search_s (all queries in one batch)).
    Its scores are the index's own (approximate for PQ), and a tie at the cut is cut by id among what
    the index returned: only exact search can see every document of a tie group."""
    t0 = time.perf_counter()
    index = build(spec, params, query_emb.shape[1], doc_emb, seed)
    index, on_gpu = to_gpu(index, device)
    if on_gpu:
        set_params(index, params, spec)  # a GPU copy takes its parameters through GpuParameterSpace
    t1 = time.perf_counter()
    scores, idx = index.search(np.ascontiguousarray(query_emb, dtype=np.float32), min(rows_of(doc_emb), top_k))
    t2 = time.perf_counter()
    run = {}
    for qid, row_scores, row_idx in zip(query_ids, scores, idx):
        hits = sorted(zip(map(float, row_scores[row_idx >= 0]), ids_at(doc_ids, row_idx[row_idx >= 0])), reverse=True)
        run[qid] = {did: s for s, did in hits}
    return run, dict(index=spec, params=dict(params, **effective_params(index)), on_gpu=on_gpu,
                     build_s=t1 - t0, search_s=t2 - t1)


def to_gpu(index, device: str):
    """The index on the run's GPU when faiss-gpu is installed and the run is on CUDA; else unchanged.
    Index types FAISS cannot move (HNSW) stay on the CPU. (Untested here: no GPU build of FAISS.)"""
    import faiss

    if not str(device).startswith("cuda") or not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return index, False
    gpu = int(str(device).partition(":")[2] or 0)
    try:
        resources = faiss.StandardGpuResources()
        moved = faiss.index_cpu_to_gpu(resources, gpu, index)
    except RuntimeError:
        return index, False
    moved.resources = resources  # kept alive with the index
    return moved, True


def against_exact(qrels: dict, run: dict, exact: dict, top_k: int) -> dict:
    """An approximate run against the exact run: mean |approximate top-k ∩ exact top-k| / k over the
    searched queries (k: the exact list's length, top_k or the whole corpus if smaller), and NDCG@10
    of both over the judged queries."""
    from .metrics import evaluate

    shares = [len(set(list(run.get(q, {}))[:top_k]) & set(list(docs)[:top_k])) / min(len(docs), top_k)
              for q, docs in exact.items() if docs]
    ndcg = float(evaluate(qrels, run)["ndcg@10"].mean())
    ndcg_exact = float(evaluate(qrels, exact)["ndcg@10"].mean())
    return {"overlap@k": float(np.mean(shares)) if shares else float("nan"), "k": top_k,
            "ndcg@10": ndcg, "ndcg@10_exact": ndcg_exact, "ndcg@10_delta": ndcg - ndcg_exact}


def faiss_message(e: Exception) -> str:
    """FAISS's error without its C++ location: "Error in <signature> at <file>:<line>: <message>"."""
    text = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text)
    return re.sub(r"^Error: '.*?' failed: ", "", text)


@contextmanager
def faiss_threads(n: int):
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
