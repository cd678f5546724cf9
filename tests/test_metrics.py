"""Metrics against hand-computed values, trec_eval's rules written out (tests/trec_rules.py) and BEIR's
evaluator; the search's cut at top-k under ties."""

import math
import random

import numpy as np
import pytest

import trec_rules
from benchmarks.pipeline import index, metrics
from benchmarks.pipeline.corpus import Corpus


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


def test_mrr_ranks_by_score_whatever_the_dict_order():
    """A run from outside may list documents in any order: MRR@10 ranks them by score (ties by id
    descending), like every other metric, before cutting at 10."""
    rng = random.Random(1)
    scores = {f"d{i:02d}": float(100 - i) for i in range(20)}
    scores["d05"] = scores["d06"]  # a tie: d06 ranks before d05
    qrels = {"q": {"d05": 1}}
    for _ in range(5):
        items = list(scores.items())
        rng.shuffle(items)
        assert one(qrels, {"q": dict(items)})["mrr@10"] == pytest.approx(1 / 7)
    low = dict(reversed(list(scores.items())))  # the relevant document is 14th in dict order, 7th by score
    assert one(qrels, {"q": low})["mrr@10"] == pytest.approx(1 / 7)


def test_every_metric_matches_trec_rules_on_shuffled_random_runs():
    """pytrec_eval (through metrics.evaluate) against trec_eval's rules written out (tests/trec_rules.py),
    on runs listed in random order with many ties."""
    rng = random.Random(2)
    docs = [f"d{i}" for i in range(60)]
    qrels = {f"q{i}": {d: rng.choice([0, 1, 2, 3]) for d in rng.sample(docs, rng.randint(1, 6))} for i in range(40)}
    run = {q: {d: round(rng.random(), 1) for d in rng.sample(docs, 30)} for q in qrels}  # ties at every rank
    frame = metrics.evaluate(qrels, run)
    for q in qrels:
        row = frame.loc[q]
        for k in (1, 3, 5, 10, 100):
            assert row[f"ndcg@{k}"] == pytest.approx(trec_rules.ndcg(qrels[q], run[q], k), abs=1e-12)
        assert row["recall@10"] == pytest.approx(trec_rules.recall(qrels[q], run[q], 10), abs=1e-12)
        assert row["map@100"] == pytest.approx(trec_rules.average_precision(qrels[q], run[q], 100), abs=1e-12)
        assert row["mrr@10"] == pytest.approx(trec_rules.reciprocal_rank(qrels[q], run[q], 10), abs=1e-12)


def test_tie_group_wider_than_any_margin_is_cut_by_id():
    """50 documents with one score straddle the top-10 cut: the cut keeps the tied documents with the
    highest ids, whatever order FAISS holds them in."""
    rng = np.random.default_rng(0)
    dim = 8
    query = np.zeros((1, dim), dtype="float32")
    query[0, 0] = 1
    top = np.eye(dim, dtype="float32")[[0] * 5] * np.array([[1.0], [0.99], [0.98], [0.97], [0.96]], dtype="float32")
    tied = np.tile(np.eye(dim, dtype="float32")[0] * 0.5, (50, 1))
    rest = rng.normal(size=(200, dim)).astype("float32")
    rest[:, 0] = -np.abs(rest[:, 0])  # scores <= 0: below the tie group
    doc_emb = np.vstack([top, tied, rest])
    ids = [f"top{i}" for i in range(5)] + [f"tie{i:02d}" for i in range(50)] + [f"other{i:03d}" for i in range(200)]
    order = rng.permutation(len(ids))  # FAISS sees them in a scrambled order
    run, stats = index.search(doc_emb[order], [ids[i] for i in order], query, ["q"], top_k=10)
    assert list(run["q"]) == [f"top{i}" for i in range(5)] + [f"tie{i:02d}" for i in range(49, 44, -1)]
    exact, _ = index.search(doc_emb[order], [ids[i] for i in order], query, ["q"], top_k=len(ids))
    assert list(run["q"]) == list(exact["q"])[:10]  # the same as cutting the full ranking


def test_bm25_tie_group_at_the_cut_is_cut_by_id():
    """BM25 the same way: 50 identical documents tie, the cut at 10 keeps those with the highest ids."""
    from benchmarks.pipeline.bm25 import BM25Retriever

    texts = ["jet engine jet engine turbine"] * 3 + ["jet engine bypass air"] * 50 + ["cell biology"] * 20
    ids = [f"top{i}" for i in range(3)] + [f"tie{i:02d}" for i in range(50)] + [f"bio{i}" for i in range(20)]
    order = random.Random(3).sample(range(len(ids)), len(ids))
    bm25 = BM25Retriever()
    bm25.index(Corpus.from_dict({ids[i]: {"title": "", "text": texts[i]} for i in order}))
    run = bm25.search(["q"], ["jet engine"], top_k=10)[0]["q"]
    assert list(run)[:3] == ["top2", "top1", "top0"] and len(set(run.values())) == 2
    assert list(run)[3:] == [f"tie{i:02d}" for i in range(49, 42, -1)]
