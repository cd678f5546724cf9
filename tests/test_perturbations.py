"""Input perturbations, their spec strings, and how the runner applies them (cache reuse, BM25)."""

import json
from collections import Counter

import pytest

from benchmarks.perturbations import Context, PerturbationError, parse
from benchmarks.perturbations import text as T
from benchmarks.run import main
from encoders.base import load_tokenizer

CORPUS = {
    "a": {"title": "Aspirin trial", "text": "Aspirin reduced risk by 20%, e.g. in men over 50. Fig. 2 shows the "
                                            "effect. The effect was 3.5 times larger in smokers. No harm was seen."},
    "b": {"title": "", "text": "One sentence only"},
    "c": {"title": "Empty", "text": ""},
    "d": {"title": "Jets", "text": "A turbofan engine mixes bypass air with hot core exhaust. It is quiet."},
}


@pytest.mark.parametrize("spec, name", [
    ("clean", "clean"), ("", "clean"), ("prune:0.50", "prune:0.5"), ("prune:0.3:activation", "prune:0.3:activation"),
    ("sentence-shuffle+prune:0.7", "prune:0.7+sentence-shuffle"), ("truncate:tail:64", "truncate:tail:64"),
    ("pad:prefix:2", "pad:prefix:2x"), ("pad:suffix:4x+token-shuffle", "pad:suffix:4x+token-shuffle"),
])
def test_spec_names_are_canonical(spec, name):
    p = parse(spec)
    assert p.name == name and parse(p.name).name == name
    assert ":" not in p.slug and "+" not in p.slug


@pytest.mark.parametrize("spec, words", [
    ("prune:1.2", "in (0, 1)"), ("prune:0", "in (0, 1)"), ("prune:1", "in (0, 1)"), ("prune:-0.1", "in (0, 1)"),
    ("prune:half", "must be a number"), ("prune:0.5:random", "unknown pruning criterion"),
    ("prune:0.3+prune:0.5", "at most one prune"), ("truncate:middle:64", "truncate:head:N"),
    ("truncate:head:0", "positive"), ("pad:prefix:1x", "above 1"), ("shuffle", "unknown perturbation"),
    ("sentence-shuffle:3", "takes no arguments"),
])
def test_bad_specs_raise_one_clear_line(spec, words):
    with pytest.raises(PerturbationError, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
        parse(spec)
    assert "\n" not in str(e.value)


def test_sentence_shuffle_keeps_sentences_and_title():
    out, stats = T.sentence_shuffle(CORPUS, seed=0)
    sents = T.split_sentences(CORPUS["a"]["text"])
    assert len(sents) == 4  # pysbd does not split at "e.g.", "Fig." or "3.5"
    assert out["a"]["title"] == "Aspirin trial"
    assert sorted(T.split_sentences(out["a"]["text"])) == sorted(sents)
    assert out["b"] == CORPUS["b"] and out["c"] == CORPUS["c"]  # one sentence / empty: unchanged
    assert T.sentence_shuffle(CORPUS, seed=0)[0] == out  # seeded
    assert any(T.sentence_shuffle(CORPUS, seed=s)[0]["a"] != out["a"] for s in range(1, 6))
    # a document's shuffle depends on its id and the seed only, not on the rest of the corpus
    assert T.sentence_shuffle({"a": CORPUS["a"]}, seed=0)[0]["a"] == out["a"]
    assert stats["documents"] == 4 and stats["mean_words_before"] == stats["mean_words_after"]


def test_token_shuffle_keeps_the_bag_of_words():
    out, stats = T.token_shuffle(CORPUS, seed=1)
    for d in CORPUS:
        assert Counter(out[d]["text"].split()) == Counter(CORPUS[d]["text"].split())
        assert out[d]["title"] == CORPUS[d]["title"]
    assert out["a"]["text"] != CORPUS["a"]["text"]


@pytest.mark.parametrize("side", ["head", "tail"])
def test_truncation_cuts_at_token_offsets(side):
    tok = load_tokenizer()
    out, stats = T.truncate(CORPUS, side, 8, tok)
    for d, doc in CORPUS.items():
        full = f"{doc['title']} {doc['text']}".strip()
        cut = out[d]["text"]
        n = len(tok(cut, add_special_tokens=False)["input_ids"])
        assert n <= 8 and (n == 8 or cut == full)
        assert full.startswith(cut) if side == "head" else full.endswith(cut)
    assert stats["truncated_documents"] == 2  # "a" and "d" are longer than 8 tokens


@pytest.mark.parametrize("side", ["prefix", "suffix"])
def test_distractor_padding_reaches_the_factor_and_keeps_the_document(side):
    out, stats = T.pad_with_distractors(CORPUS, side, 2.0, seed=0)
    full = f"{CORPUS['a']['title']} {CORPUS['a']['text']}"
    assert (out["a"]["text"].endswith(full) if side == "prefix" else out["a"]["text"].startswith(full))
    assert len(out["a"]["text"].split()) == 2 * len(full.split())
    assert len(out["c"]["text"].split()) == 2 and "Empty" in out["c"]["text"].split()  # 1 word -> 1 of filler
    assert stats["mean_words_after"] > 1.5 * stats["mean_words_before"]


def test_composed_perturbation_records_each_step():
    p = parse("truncate:head:16+token-shuffle")
    out, steps = p.apply_corpus(CORPUS, Context(seed=3, tokenizer=load_tokenizer()))
    assert [s["kind"] for s in steps] == ["truncate", "token-shuffle"]
    assert all("stats" in s and s["target"] == "corpus" for s in steps)
    assert steps[0]["columns"] == dict(truncate_side="head", truncate_tokens=16) and steps[1]["columns"] == dict(shuffle="token")
    assert out == T.token_shuffle(T.truncate(CORPUS, "head", 16, load_tokenizer())[0], 3)[0]  # in order, seeded


def cli(*args):
    return main([*args, "--quiet", "--latency-queries", "3"])


def test_corpus_perturbation_reuses_cached_query_embeddings(tiny_dataset, tmp_path):
    common = ["--dataset", "tiny", "--data-dir", str(tiny_dataset.parent), "--output-dir", str(tmp_path / "r")]
    assert cli(*common, "--run-id", "clean") == 0
    assert cli(*common, "--run-id", "shuf", "--perturbation", "token-shuffle") == 0  # (tiny docs: 1 sentence)
    clean = json.loads(next((tmp_path / "r").glob("tiny/*/clean/clean-*/summary.json")).read_text())
    shuf = json.loads(next((tmp_path / "r").glob("tiny/*/token-shuffle/shuf-*/summary.json")).read_text())
    assert shuf["timings"]["query_encode"]["cached"] is True
    assert shuf["timings"]["corpus_encode"]["cached"] is False
    assert shuf["perturbation"]["name"] == "token-shuffle" and shuf["perturbation"]["steps"][0]["kind"] == "token-shuffle"
    assert clean["perturbation"] == dict(name="clean", slug="clean", steps=[])


def test_bad_perturbation_on_the_command_line_writes_nothing(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "r"
    rc = cli("--dataset", "tiny", "--data-dir", str(tiny_dataset.parent), "--output-dir", str(out),
             "--perturbation", "prune:1.5")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "sparsity must be in (0, 1)" in err
    assert not out.exists()


def test_bm25_runs_through_the_runner_and_ignores_word_order(tiny_dataset, tmp_path):
    common = ["--encoder", "bm25", "--dataset", "tiny", "--data-dir", str(tiny_dataset.parent),
              "--output-dir", str(tmp_path / "r")]
    assert cli(*common, "--run-id", "a") == 0
    assert cli(*common, "--run-id", "b", "--perturbation", "token-shuffle") == 0
    runs = {p.parent.name.split("-")[0]: (p.parent / "run.trec").read_text() for p in (tmp_path / "r").rglob("summary.json")}
    strip = lambda t: sorted(line.split()[:5] for line in t.splitlines())  # noqa: E731 (drop the run tag)
    assert strip(runs["a"]) == strip(runs["b"])  # BM25 is a bag of words: shuffling changes nothing
    s = json.loads(next((tmp_path / "r").rglob("a-*/summary.json")).read_text())
    assert s["encoder"]["name"] == "bm25" and s["encoder"]["config"]["k1"] == 0.9
    assert s["timings"]["query_latency"]["p50_ms"] > 0 and s["metrics"]["ndcg@10"] > 0.5
    assert cli(*common, "--run-id", "c", "--perturbation", "prune:0.5") == 2
