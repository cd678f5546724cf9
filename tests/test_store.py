"""Large corpora: the sharded embedding store resumes after a kill, search over its shards ranks exactly
as one search, a perturbation applied chunk by chunk equals one applied whole, and a corpus encoded
by two Ray workers ranks as one encoded here."""

import numpy as np
import pytest

import encoders
from benchmarks.perturbations import Context, parse
from benchmarks.perturbations import text as T
from benchmarks.pipeline import cache as cache_mod
from benchmarks.pipeline import corpus as corpus_mod
from benchmarks.pipeline import index
from benchmarks.pipeline.cache import EmbeddingCache
from benchmarks.pipeline.data import load_dataset
from benchmarks.pipeline.embed import Texts, embed
from benchmarks.run import RunConfig, main, run_benchmark
from conftest import write_scifact_slice

SHARD = 40  # rows per shard here: a few hundred documents make several shards


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory):
    return write_scifact_slice(tmp_path_factory.mktemp("data") / "scifact-slice", 20, 150)


@pytest.fixture(scope="module")
def tiny():
    import torch

    torch.manual_seed(0)
    return encoders.load("bert", preset="tiny", device="cpu", dtype="float32", show_progress=False)


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(cache_mod, "SHARD_ROWS", SHARD)
    monkeypatch.setattr(corpus_mod, "BATCH_ROWS", 32)  # corpus batches that do not line up with shards


class Killed(Exception):
    pass


def counting(encoder, monkeypatch, fail_after=None):
    """Count encode() calls on `encoder`; raise on the call after `fail_after` (a kill mid-run)."""
    calls = []
    real = type(encoder).encode

    def encode(self, texts, *args, **kwargs):
        if fail_after is not None and len(calls) == fail_after:
            raise Killed
        calls.append(len(texts))
        return real(self, texts, *args, **kwargs)
    monkeypatch.setattr(type(encoder), "encode", encode)
    return calls


def test_a_killed_encoding_resumes_with_the_unfinished_shards_only(scifact_slice, tiny, tmp_path, small_shards,
                                                                   monkeypatch):
    corpus = load_dataset(str(scifact_slice), store=tmp_path / "corpus.arrow").corpus
    texts, cache = Texts.of_corpus(corpus, tiny), EmbeddingCache(tmp_path / "cache")
    n_shards = -(-len(corpus) // SHARD)
    assert n_shards >= 4
    with monkeypatch.context() as m:
        counting(tiny, m, fail_after=2)
        with pytest.raises(Killed):
            embed(tiny, texts, "corpus", cache)
    with monkeypatch.context() as m:
        calls = counting(tiny, m)
        store, stats = embed(tiny, texts, "corpus", cache, measure=False)
    assert len(calls) == n_shards - 2 and sum(calls) == len(corpus) - 2 * SHARD  # the first two were kept
    assert stats["shards_reused"] == 2 and stats["shards"] == n_shards and stats["texts"] == sum(calls)
    whole = tiny.encode(tiny.corpus_texts(list(corpus.values())))
    # Shards are batched as one encode() of their own texts: equal to the whole encoded at once up to
    # fp32 rounding of differently padded batches (a few ulps of unit vectors).
    np.testing.assert_allclose(store.array(), whole, atol=1e-6)
    with monkeypatch.context() as m:
        calls = counting(tiny, m)
        _, again = embed(tiny, texts, "corpus", cache, measure=False)
    assert calls == [] and again["cached"] is True


def tie_heavy(emb: np.ndarray) -> np.ndarray:
    """Each embedding three times (as three documents), coarsely rounded: many equal scores, also at the cut."""
    return np.repeat(np.round(emb * 4) / 4, 3, axis=0).astype(np.float32)


def test_search_over_shards_ranks_exactly_as_one_search(scifact_slice, tiny, tmp_path, small_shards):
    ds = load_dataset(str(scifact_slice))
    doc_emb = tie_heavy(tiny.encode(tiny.corpus_texts(list(ds.corpus.values()))))
    doc_ids = [f"{d}-{k}" for d in ds.corpus for k in range(3)]
    query_emb = tiny.encode(tiny.query_texts(list(ds.queries.values())))
    store = EmbeddingCache(tmp_path / "cache").store("fp" * 32, "digest", len(doc_emb))
    for i in range(store.n_shards):
        store.write(i, doc_emb[slice(*store.bounds(i))], {})
    assert store.n_shards > 10
    for k in (1, 10, 100):
        one, one_stats = index.search(doc_emb, doc_ids, query_emb, list(ds.queries), top_k=k)
        sharded, stats = index.search(store, doc_ids, query_emb, list(ds.queries), top_k=k)
        assert {q: list(r.items()) for q, r in sharded.items()} == {q: list(r.items()) for q, r in one.items()}
        assert stats == one_stats and (k == 1 or stats["tie_rate"] > 0.3)  # ties everywhere, crossing the cut


@pytest.mark.parametrize("spec", ["token-shuffle", "pad:prefix:2x", "truncate:tail:12"])
def test_a_corpus_perturbed_chunk_by_chunk_equals_one_perturbed_whole(scifact_slice, tiny, tmp_path, spec,
                                                                      monkeypatch):
    monkeypatch.setattr(corpus_mod, "BATCH_ROWS", 25)
    ds = load_dataset(str(scifact_slice), store=tmp_path / "corpus.arrow")
    whole = dict(ds.corpus.items())
    ctx = Context(seed=4, tokenizer=tiny.tokenizer)
    chunked, [step] = parse(spec).apply_corpus(ds.corpus, ctx, tmp_path)
    kind = parse(spec).steps[0]
    expected, stats = kind.apply_corpus(whole, Context(seed=4, tokenizer=tiny.tokenizer, corpus=whole))
    assert chunked.path is not None and len(list(ds.corpus.chunks())) > 5
    assert dict(chunked.items()) == expected
    assert step["stats"] == pytest.approx(stats, rel=1e-12)  # means re-weighted from chunk means
    if spec.startswith("pad"):
        assert expected == T.pad_with_distractors(whole, "prefix", 2.0, 4)[0]  # filler drawn from all documents


def run(dataset, out, **kw):
    return run_benchmark(RunConfig(encoder="bert", preset="tiny", dataset=str(dataset), output_dir=str(out),
                                   show_progress=False, latency_queries=2, device="cpu", **kw))


def test_shards_change_no_result_of_a_run(scifact_slice, tmp_path, small_shards, monkeypatch):
    sharded = run(scifact_slice, tmp_path / "a", run_id="sharded")
    monkeypatch.setattr(cache_mod, "SHARD_ROWS", 1 << 16)
    whole = run(scifact_slice, tmp_path / "b", run_id="whole")
    assert sharded.summary["timings"]["corpus_encode"]["shards"] > 4
    assert whole.summary["timings"]["corpus_encode"]["shards"] == 1
    # The same ranking up to the rounding of differently padded batches: metrics equal to fp32 noise.
    assert sharded.summary["metrics"] == pytest.approx(whole.summary["metrics"], abs=1e-6)


def test_two_workers_rank_as_one_process(scifact_slice, tmp_path, small_shards, ray_session):
    one = run(scifact_slice, tmp_path / "one", run_id="one", cache=False)
    two = run(scifact_slice, tmp_path / "two", run_id="two", cache=False, workers=2)
    enc = two.summary["timings"]["corpus_encode"]
    assert enc["workers"] == 2 and enc["shards"] > 4 and two.summary["config"]["workers"] == 2
    assert two.summary["identity"] == one.summary["identity"]  # --workers is not part of the run
    # Workers compute with one thread each: scores equal to fp32 rounding of a tiny model's sums.
    for q, hits in one.run.items():
        got = two.run[q]
        assert list(got)[:10] == list(hits)[:10] or np.allclose(
            [got.get(d, -1) for d in list(hits)[:10]], list(hits.values())[:10], atol=1e-5)
    assert two.summary["metrics"] == pytest.approx(one.summary["metrics"], abs=1e-4)


def test_workers_refuse_a_model_perturbation(tiny_dataset, tmp_path, capsys):
    code = main(["--encoder", "bert", "--preset", "tiny", "--dataset", str(tiny_dataset), "--output-dir",
                 str(tmp_path / "r"), "--workers", "2", "--perturbation", "prune:0.5", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "\n" not in err.strip() and "--workers" in err and "prune" in err
    assert not (tmp_path / "r").exists()
