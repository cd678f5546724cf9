"""Metrics against hand-computed values (trec_eval semantics) and against BEIR's evaluator."""

import math
import random

import pytest

from benchmarks.pipeline import index, metrics


def one(qrels, run, qid="q"):
    return metrics.evaluate(qrels, run).loc[qid]


def test_binary_relevance_by_hand():
    row = one({"q": {"a": 1, "b": 1}}, {"q": {"x": 4.0, "a": 3.0, "y": 2.0, "b": 1.0}})
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3)
    assert row["ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-9)
    assert row["ndcg@1"] == 0.0
    assert row["mrr@10"] == pytest.approx(0.5)
    assert row["recall@10"] == 1.0
    assert row["map@100"] == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_graded_relevance_uses_linear_gains():
    # trec_eval's ndcg: gain = relevance grade (not 2^rel - 1)
    row = one({"q": {"a": 2, "b": 1}}, {"q": {"b": 2.0, "a": 1.0}})
    assert row["ndcg@10"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)), abs=1e-9)


def test_zero_grade_is_judged_nonrelevant():
    row = one({"q": {"a": 0, "b": 1}}, {"q": {"a": 2.0, "b": 1.0}})
    assert row["mrr@10"] == pytest.approx(0.5)
    assert row["ndcg@10"] == pytest.approx(1 / math.log2(3))


def test_ties_are_broken_like_trec_eval():
    # Equal scores: trec_eval ranks by document id, descending, so "b" comes before "a".
    doc_emb = __import__("numpy").array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype="float32")
    run, stats = index.search(doc_emb, ["a", "b", "c"], doc_emb[:1], ["q"], top_k=3)
    assert list(run["q"]) == ["b", "a", "c"]
    assert stats["tie_rate"] == pytest.approx(0.5)  # one of the two adjacent pairs is tied
    row = one({"q": {"a": 1}}, run)
    assert row["ndcg@1"] == 0.0 and row["mrr@10"] == pytest.approx(0.5)


def test_judged_query_without_results_counts_as_zero():
    qrels = {"q": {"a": 1}, "lost": {"z": 1}}
    frame = metrics.evaluate(qrels, {"q": {"a": 1.0}})
    assert list(frame.index) == ["q", "lost"]
    assert (frame.loc["lost"] == 0).all()
    assert metrics.aggregate(frame)["ndcg@10"] == pytest.approx(0.5)  # pytrec_eval alone would say 1.0


def test_mrr_is_cut_at_10():
    run = {"q": {f"d{i:02d}": float(100 - i) for i in range(20)}}
    row = one({"q": {"d10": 1}}, run)  # first relevant at rank 11
    assert row["mrr@10"] == 0.0
    assert row["recall@100"] == 1.0 and row["recall@10"] == 0.0


def test_missing_judged_document_stays_in_ideal_ranking():
    row = one({"q": {"a": 1, "ghost": 1}}, {"q": {"a": 1.0}})
    assert row["ndcg@10"] == pytest.approx(1 / (1 + 1 / math.log2(3)), abs=1e-9)
    assert row["recall@10"] == 0.5


def test_matches_beir_evaluator_on_random_runs():
    from beir.retrieval.evaluation import EvaluateRetrieval

    rng = random.Random(0)
    docs = [f"d{i}" for i in range(60)]
    qrels = {f"q{i}": {d: rng.choice([1, 2, 3]) for d in rng.sample(docs, rng.randint(1, 6))} for i in range(40)}
    run = {}
    for q in qrels:
        scored = sorted(((round(rng.random(), 2), d) for d in rng.sample(docs, 30)), reverse=True)  # ties likely
        run[q] = {d: s for s, d in scored}
    emb_order = {q: dict(sorted(r.items(), key=lambda x: (x[1], x[0]), reverse=True)) for q, r in run.items()}
    ours = metrics.aggregate(metrics.evaluate(qrels, emb_order))
    ndcg, _map, recall, _ = EvaluateRetrieval.evaluate(qrels, {q: dict(r) for q, r in run.items()}, [1, 3, 5, 10, 100])
    for k in (1, 3, 5, 10, 100):
        assert ours[f"ndcg@{k}"] == pytest.approx(ndcg[f"NDCG@{k}"], abs=6e-6)  # BEIR rounds to 5 places
    assert ours["map@100"] == pytest.approx(_map["MAP@100"], abs=6e-6)
    assert ours["recall@100"] == pytest.approx(recall["Recall@100"], abs=6e-6)
    mrr = EvaluateRetrieval.evaluate_custom(qrels, {q: dict(r) for q, r in run.items()}, [10], metric="mrr")
    assert ours["mrr@10"] == pytest.approx(mrr["MRR@10"], abs=6e-6)
