"""Approximate indexes (--index): FAISS factory strings and their search parameters, judged against exact
search by top-k overlap and NDCG@10 change; exact search and the identity of existing runs unchanged."""

import json

import numpy as np
import pytest

from benchmarks.pipeline import index, record
from benchmarks.pipeline.index import IndexOptionError
from benchmarks.run import RunConfig, main, run_benchmark

N_DOCS, N_QUERIES, DIM, K = 1000, 40, 32, 10


@pytest.fixture(scope="module")
def corpus():
    """Random unit vectors: no structure for an index to exploit, so a cheap search does miss neighbours."""
    rng = np.random.default_rng(0)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    docs, queries = unit(rng.standard_normal((N_DOCS, DIM))), unit(rng.standard_normal((N_QUERIES, DIM)))
    doc_ids, query_ids = [f"d{i}" for i in range(N_DOCS)], [f"q{i}" for i in range(N_QUERIES)]
    exact, _ = index.search(docs, doc_ids, queries, query_ids, top_k=K)
    # Judge each query's exact 3rd-ranked document relevant: a miss by the index moves NDCG@10.
    qrels = {q: {list(hits)[2]: 1} for q, hits in exact.items()}
    return docs, doc_ids, queries, query_ids, exact, qrels


def approximate(corpus, spec, params, seed=0):
    docs, doc_ids, queries, query_ids, exact, qrels = corpus
    run, stats = index.approximate_search(docs, doc_ids, queries, query_ids, K, spec, params, seed)
    return run, stats, index.against_exact(qrels, run, exact, K)


@pytest.mark.parametrize("spec, cheap, exhaustive, name", [
    ("HNSW8", {"efSearch": 1}, {"efSearch": N_DOCS}, "efSearch"),
    ("IVF16,Flat", {"nprobe": 1}, {"nprobe": 16}, "nprobe"),
])
def test_overlap_with_exact_search(corpus, spec, cheap, exhaustive, name):
    run, stats, cmp = approximate(corpus, spec, cheap)
    assert stats["index"] == spec and stats["params"][name] == cheap[name] and stats["on_gpu"] is False
    assert 0.0 <= cmp["overlap@k"] < 1.0  # a cheap search on unstructured data misses some neighbours
    assert cmp["ndcg@10_delta"] == pytest.approx(cmp["ndcg@10"] - cmp["ndcg@10_exact"])
    assert cmp["ndcg@10_exact"] == 0.5  # every judged document at exact rank 3: 1 / log2(3 + 1)
    # Searching everything (every IVF list; a beam as wide as the corpus) finds the exact top-k.
    run, stats, cmp = approximate(corpus, spec, exhaustive)
    assert cmp["overlap@k"] == 1.0 and cmp["ndcg@10_delta"] == 0.0
    assert all(list(run[q]) == list(corpus[4][q]) for q in run)  # same documents, same order


def test_defaults_are_recorded_and_training_is_seeded(corpus):
    _, stats, _ = approximate(corpus, "HNSW32", {})
    assert stats["params"] == {"efSearch": 16}  # FAISS's default, recorded as searched
    a, stats, _ = approximate(corpus, "IVF16,PQ8", {"nprobe": 2}, seed=1)
    assert stats["params"] == {"nprobe": 2}
    b, _, _ = approximate(corpus, "IVF16,PQ8", {"nprobe": 2}, seed=1)
    assert a == b  # the same seed trains the same quantizers: the run repeats exactly


def test_parse_params():
    assert index.parse_params("efSearch=128, nprobe=16") == {"efSearch": 128, "nprobe": 16}
    assert index.parse_params("") == {}
    with pytest.raises(IndexOptionError, match="--index-params: 'nprobe' is not name=number"):
        index.parse_params("nprobe")


@pytest.mark.parametrize("spec, params, message", [
    ("Bogus", {}, "--index 'Bogus': could not parse index string Bogus"),
    ("PQ5", {}, "--index 'PQ5': The dimension of the vector (d) should be a multiple"),
    ("HNSW32", {"nprobe": 4}, "--index-params: 'HNSW32' has no search parameter 'nprobe'"),
    ("Flat", {"efSearch": 4}, "--index-params: 'Flat' has no search parameter 'efSearch'"),
])
def test_bad_spec_is_one_line(spec, params, message):
    with pytest.raises(IndexOptionError) as e:
        index.build(spec, params, DIM)
    assert str(e.value).startswith(message) and "\n" not in str(e.value) and ".cpp" not in str(e.value)


def test_corpus_too_small_to_train(corpus):
    docs = corpus[0][:10]
    with pytest.raises(IndexOptionError, match=r"'IVF16,Flat' cannot be trained on 10 documents: .*clusters \(16\)"):
        index.build("IVF16,Flat", {}, DIM, docs)


def test_identity_of_existing_runs_unchanged():
    cfg = dict(device="cpu", dtype="float32")
    # identity(RunConfig(device="cpu", dtype="float32")) computed on commit 217a5ec, before --index existed.
    assert record.identity(RunConfig(**cfg)) == "953d8c4d52a53be2"
    assert record.identity(RunConfig(**cfg, index="Flat", index_params={})) == "953d8c4d52a53be2"
    others = {record.identity(RunConfig(**cfg, index="HNSW32")),
              record.identity(RunConfig(**cfg, index="HNSW32", index_params={"efSearch": 64})),
              record.identity(RunConfig(**cfg, index="IVF64,Flat", index_params={"nprobe": 64}))}
    assert len(others) == 3 and "953d8c4d52a53be2" not in others


def test_hnsw_run_records_its_agreement_with_exact(tiny_dataset, tmp_path):
    res = run_benchmark(RunConfig(dataset=str(tiny_dataset), output_dir=str(tmp_path / "r"), cache=False,
                                  show_progress=False, latency_queries=2, index="HNSW32",
                                  index_params={"efSearch": 8}))
    a = res.summary["retrieval"]["approximate"]
    assert a["index"] == "HNSW32" and a["params"] == {"efSearch": 8} and a["k"] == 100
    assert a["build_s"] > 0 and a["search_s"] > 0
    assert 0.0 <= a["overlap@k"] <= 1.0
    assert a["ndcg@10"] == pytest.approx(res.summary["metrics"]["ndcg@10"])  # the recorded run is the approximate one
    assert a["ndcg@10_delta"] == pytest.approx(a["ndcg@10"] - a["ndcg@10_exact"])
    assert "exact_run" not in res.summary["retrieval"]
    assert res.summary["config"]["index"] == "HNSW32" and res.summary["config"]["index_params"] == {"efSearch": 8}
    written = json.loads((res.path / "summary.json").read_text())
    assert written["retrieval"]["approximate"] == a
    row = record.flatten(res.summary, res.path)  # the runs table says which index and how far from exact
    assert row["index"] == "HNSW32" and row["overlap_with_exact"] == a["overlap@k"]


@pytest.mark.parametrize("args, message", [
    (["--index", "Bogus"], "error: --index 'Bogus': could not parse index string"),
    (["--index", "IVF16,Flat"], "error: --index 'IVF16,Flat' cannot be trained on 6 documents"),
    (["--encoder", "bm25", "--index", "HNSW32"], "error: --index / --index-params: bm25 searches no embeddings"),
])
def test_bad_index_via_cli_writes_nothing(tiny_dataset, tmp_path, capsys, args, message):
    out = tmp_path / "r"
    code = main(["--dataset", "tiny", "--data-dir", str(tiny_dataset.parent), "--output-dir", str(out),
                 "--quiet", "--no-cache", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(message) and "\n" not in err
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))
