"""Long documents: windows (split, MaxP search, mean fold, first = truncation), the options, the needle
perturbation, and 4k-token inputs through every architecture."""

import random
from dataclasses import replace

import numpy as np
import pytest
import torch

import encoders
from benchmarks.perturbations import Context, parse
from benchmarks.perturbations.text import needle_in_distractors
from benchmarks.pipeline import index, record, runner, windows
from benchmarks.pipeline.record import RunConfig
from benchmarks.pipeline.windows import LongDocs, maxp_search, mean_fold
from encoders import EncoderError
from encoders.base import load_tokenizer

EPS32 = float(np.finfo(np.float32).eps)
WORDS = ("protein receptor binding affinity mouse model tumour growth signalling pathway inhibitor dose "
         "response cohort trial placebo outcome mortality").split()


def text_of(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + ("," if rng.random() < 0.1 else "") for _ in range(n_words))


@pytest.fixture(scope="module")
def minilm():
    return encoders.load("bert", max_length=32, dtype="float32", show_progress=False)


# -- windows --------------------------------------------------------------------------------------
def test_windows_tile_the_text_with_the_title_in_each(minilm):
    doc = {"title": "Inhibitor trial", "text": text_of(120, 0) + " unbreakablesupercalifragilisticword end"}
    long_docs = LongDocs("maxp")
    texts = long_docs.texts(minilm, [doc, {"title": "Short", "text": "one line"}])
    owner = long_docs.owner.tolist()
    assert owner == [0] * (len(texts) - 1) + [1] and len(texts) > 4
    tok = minilm.tokenizer
    bodies = []
    for t in texts[:-1]:
        ids = tok(t)["input_ids"]
        assert len(ids) <= 32, t  # a window fits the encoder: it is never truncated
        assert t.startswith("Inhibitor trial ")
        bodies.append(t.removeprefix("Inhibitor trial "))
    # no overlap by default, no gap, no word cut: the windows' bodies joined are the text
    assert " ".join(bodies) == doc["text"]
    assert texts[-1] == minilm.corpus_texts([{"title": "Short", "text": "one line"}])[0]  # fits: itself


def test_stride_overlaps_windows(minilm):
    doc = {"title": "", "text": text_of(200, 1)}
    plain, half = LongDocs("maxp"), LongDocs("maxp", stride=10)
    n_plain, n_half = len(plain.texts(minilm, [doc])), len(half.texts(minilm, [doc]))
    assert n_half > 1.6 * n_plain  # a stride of 10 tokens against a body of 30: about 3x the windows
    assert half.summary["stride_mean"] == 10


def test_first_is_todays_truncation(minilm):
    docs = [{"title": "Dose response", "text": text_of(150, 2)}, {"title": "", "text": "tiny"}]
    first = LongDocs("first")
    assert first.texts(minilm, docs) == minilm.corpus_texts(docs) and first.stats() == {}
    # The first maxp window is what truncation keeps, cut back at most to the start of the cut word
    truncated = minilm.tokenize(minilm.corpus_texts(docs[:1]))[0]
    window0 = minilm.tokenize(LongDocs("maxp").texts(minilm, docs[:1])[:1])[0]
    assert window0[:-1] == truncated[:len(window0) - 1] and window0[-1] == truncated[-1]  # [SEP] last
    assert len(window0) > 0.8 * len(truncated)


def test_cut_moves_back_to_word_starts():
    starts = np.array([1, 0, 0, 1, 0, 1, 1, 1, 1, 1], dtype=bool)  # tokens 1, 2 and 4 continue a word
    assert windows.cut(starts, 10, 4, 4) == [(0, 3), (3, 7), (7, 10)]
    assert windows.cut(np.array([1] + [0] * 9, dtype=bool), 10, 4, 4) == [(0, 4), (4, 8), (8, 10)]  # one long word
    assert windows.cut(starts, 4, 4, 4) == [(0, 4)]


def brute_force_maxp(win, owner, doc_ids, q, top_k):
    """Every window scored, each document's maximum, sorted by (score, id) descending."""
    run = {}
    for qi, row in enumerate(q @ win.T):
        best = {}
        for w, s in enumerate(row):
            d = doc_ids[owner[w]]
            best[d] = max(best.get(d, -np.inf), float(s))
        run[qi] = sorted(((s, d) for d, s in best.items()), reverse=True)[:top_k]
    return run


def test_maxp_equals_a_hand_computation():
    # doc a: windows (1, 0) and (0, 1); doc b: (0.6, 0.6); doc c: (-1, 0)
    win = np.array([[1, 0], [0, 1], [0.6, 0.6], [-1, 0]], dtype=np.float32)
    owner = np.array([0, 0, 1, 2])
    run, stats = maxp_search(win, owner, ["a", "b", "c"], np.array([[1, 0], [0.5, 0.5]], dtype=np.float32),
                             ["q1", "q2"], top_k=3)
    # q1: a = max(1, 0) = 1, b = 0.6, c = -1.   q2: a = max(0.5, 0.5) = 0.5, b = 0.6, c = -0.5
    assert list(run["q1"].items()) == [("a", 1.0), ("b", pytest.approx(0.6)), ("c", -1.0)]
    assert list(run["q2"]) == ["b", "a", "c"] and run["q2"]["a"] == 0.5 and run["q2"]["c"] == -0.5
    assert stats["windows_searched"] == 4


@pytest.mark.parametrize("top_k", [1, 3, 7, 40])
def test_maxp_matches_brute_force_with_ties(top_k):
    # small integer vectors: every inner product is exact in fp32, so ties are real ties; one document
    # has most of the windows, so the first k' windows hold few documents and the search must widen
    rng = np.random.default_rng(top_k)
    owner = np.sort(np.r_[np.zeros(60, int), rng.integers(1, 30, 90)])
    owner = np.unique(owner, return_inverse=True)[1]  # every document has a window
    n_docs = owner.max() + 1
    win = rng.integers(-2, 3, (len(owner), 4)).astype(np.float32)
    win[owner == 0] = [2, 2, 2, 2]  # doc 0's windows all score highest
    q = rng.integers(-1, 2, (12, 4)).astype(np.float32)
    q[0] = [1, 1, 1, 1]
    doc_ids = [f"d{i:02d}" for i in range(n_docs)]
    run, stats = maxp_search(win, owner, doc_ids, q, [f"q{i}" for i in range(12)], top_k=top_k)
    expected = brute_force_maxp(win, owner, doc_ids, q, top_k)
    for qi in range(12):
        assert [(s, d) for d, s in run[f"q{qi}"].items()] == expected[qi]
    if top_k < n_docs:
        assert stats["window_searches"] > 1  # the widening ran


def test_mean_fold_by_hand():
    emb = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    owner = np.array([0, 0, 1])
    out = mean_fold(emb, owner, normalize=True)
    np.testing.assert_allclose(out, [[2 ** -0.5, 2 ** -0.5], [0.6, 0.8]], rtol=0, atol=4 * EPS32)
    np.testing.assert_allclose(mean_fold(emb, owner, normalize=False), [[0.5, 0.5], [0.6, 0.8]], rtol=0, atol=2 * EPS32)


def test_options_keep_old_identities_and_refuse_bad_combinations():
    fields = record.identity_fields(RunConfig())
    assert not {"long_doc", "window", "stride"} & set(fields)  # old runs keep their identity
    assert record.identity(RunConfig(long_doc="maxp")) != record.identity(RunConfig())
    for cfg, message in [(RunConfig(window=128), "--window applies"),
                         (RunConfig(long_doc="maxp", index="HNSW32"), "maxp searches windows exactly"),
                         (RunConfig(encoder="bm25", long_doc="mean"), "bm25 does not embed"),
                         (RunConfig(long_doc="best"), "--long-doc must be"),
                         (RunConfig(long_doc="maxp", stride=0), "--stride must be positive")]:
        with pytest.raises(EncoderError, match=message):
            runner.check_options(cfg)


def test_maxp_run_end_to_end(tiny_dataset, tmp_path, minilm):
    base = RunConfig(dataset=str(tiny_dataset), output_dir=str(tmp_path), cache=False, latency_queries=2,
                     show_progress=False, max_length=16, dtype="float32", perturbation="needle:end:64")
    maxp = runner.run_benchmark(replace(base, long_doc="maxp"))
    first = runner.run_benchmark(base)
    assert maxp.summary["config"]["long_doc"] == "maxp"
    enc = maxp.summary["timings"]["corpus_encode"]
    assert enc["long_doc"]["windows_per_document_mean"] > 3 and enc["documents"] == 6
    # a needle at the end of 64 tokens is past a 16-token window: truncation loses it, MaxP finds it
    assert maxp.summary["metrics"]["ndcg@10"] > first.summary["metrics"]["ndcg@10"]
    with pytest.raises(EncoderError, match="--window 32 exceeds --max-length 16"):
        runner.run_benchmark(replace(base, long_doc="mean", window=32, run_id="w"))
    # the report's long-document part names each rule and shows its NDCG@10
    from analysis import long_docs
    from analysis.load import load_results

    md, out = [], tmp_path / "report"
    out.mkdir()
    long_docs.section(load_results(tmp_path), out, md)
    text = "\n".join(md)
    for rule, res in (("maxp", maxp), ("first", first)):
        assert f"| bert all-MiniLM-L6-v2 {rule} |  | {res.summary['metrics']['ndcg@10']:.4g} |" in text
    assert (out / f"long_docs_{tiny_dataset.name}.png").stat().st_size > 1000


# -- the needle perturbation ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus():
    return {f"doc{i}": {"title": f"Title {i}", "text": text_of(20 + 7 * (i % 5), i)} for i in range(40)}


@pytest.mark.parametrize("position", ["start", "middle", "end"])
def test_needle_placement_and_length(corpus, position):
    tok = load_tokenizer()
    judged = frozenset({"doc1", "doc2", "doc3"})
    out, stats = needle_in_distractors(corpus, position, 256, tok, seed=0, judged=judged)
    again, _ = needle_in_distractors(corpus, position, 256, tok, seed=0, judged=judged)
    other, _ = needle_in_distractors(corpus, position, 256, tok, seed=1, judged=judged)
    assert out == again and out != other  # seeded
    longest = max(len(tok(f"Title {i} " + d["text"], add_special_tokens=False)["input_ids"])
                  for i, d in enumerate(corpus.values()))
    for did, doc in out.items():
        needle = f"{corpus[did]['title']} {corpus[did]['text']}"
        text = doc["text"]
        assert doc["title"] == "" and needle in text
        where = text.index(needle)
        before = len(tok(text[:where], add_special_tokens=False)["input_ids"])
        total = len(tok(text)["input_ids"])  # special tokens included, as the target counts them
        assert abs(total - 256) <= longest, (did, total)  # within one document of the target
        assert abs(total - 256) <= 2  # in fact within a cut word's pieces
        if position == "start":
            assert where == 0
        elif position == "end":
            assert text.endswith(needle)
        else:
            after = total - 2 - before - len(tok(needle, add_special_tokens=False)["input_ids"])
            assert abs(before - after) <= 3, (before, after)
        for j in judged - {did}:  # a judged document is never a distractor
            assert f"{corpus[j]['title']} {corpus[j]['text']}" not in text
    assert stats["documents_short_of_target"] == 0 and stats["distractor_pool"] == 37


def test_needle_spec_and_context():
    p = parse("needle:middle:2048+prune:0.5")
    assert p.name == "prune:0.5+needle:middle:2048" and p.slug == "prune-0.5_needle-middle-2048"
    for bad in ("needle:centre:512", "needle:middle", "needle:end:4"):
        with pytest.raises(Exception, match="needle"):
            parse(bad)
    assert Context(seed=0).judged == frozenset()


# -- 4k tokens through every architecture ----------------------------------------------------------
FOUR_K = text_of(3900, 7)  # ~4,000 WordPiece tokens
SHORT = text_of(60, 8)
# Unit embeddings of one text, alone and padded in a batch with a longer one: the same arithmetic in
# another shape (Hyena: FFT size 2 x 4096 instead of 2 x ~64; matmuls blocked differently). Rounding
# of an FFT grows as eps x log2(n) (13 eps at n = 8192) per convolution, 4 of them in a tiny Hyena
# (2 layers x order 2), and a reduction over K <= 256 terms (tiny: width 64, MLP 256) as eps x
# sqrt(K) = 16 eps typically, a few per layer: 128 eps bounds the sum with room.
PAD_ATOL = 128 * EPS32


@pytest.mark.parametrize("name", [*encoders.ARCHITECTURES, *(f"shared-{m}" for m in encoders.ARCHITECTURES)])
def test_4k_tokens_padding_invariant(name):
    torch.manual_seed(0)
    enc = encoders.load(name, preset="tiny", max_length=4096, dtype="float32", show_progress=False)
    assert len(enc.tokenize([FOUR_K])[0]) > 3800
    alone = np.concatenate([enc.encode([FOUR_K]), enc.encode([SHORT])])
    together = enc.encode([FOUR_K, SHORT], batch_tokens=2 * 4096)
    assert enc.last_stats["batches"] == 1  # really one padded batch
    np.testing.assert_allclose(together, alone, rtol=0, atol=PAD_ATOL)


def test_hyena_checkpoint_encodes_past_its_filter_length(tmp_path):
    torch.manual_seed(0)
    for name in ("hyena", "shared-hyena"):
        enc = encoders.load(name, preset="tiny", max_length=256, dtype="float32", show_progress=False)
        enc.save_pretrained(tmp_path / name)
        long = encoders.load(name, checkpoint=str(tmp_path / name), max_length=4096, dtype="float32",
                             show_progress=False)
        filt = long.model.layers[0].attn.filter
        assert filt.l_max == 512
        with torch.no_grad():
            h = filt(4096)
            np.testing.assert_array_equal(h[:, :512].numpy(), filt(512).numpy())  # the trained filter, unchanged
            assert h[:, 512:].abs().max() == 0 and h[:, :512].abs().max() > 0  # zero past l_max
        alone = np.concatenate([long.encode([FOUR_K]), long.encode([SHORT])])
        np.testing.assert_allclose(long.encode([FOUR_K, SHORT], batch_tokens=8192), alone, rtol=0, atol=PAD_ATOL)
        # within l_max the long-context model is the saved one
        brief = text_of(150, 9)
        np.testing.assert_allclose(long.encode([brief]), enc.encode([brief]), rtol=0, atol=PAD_ATOL)
