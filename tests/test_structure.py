"""The extension points (a user's pruner, perturbation kind and retriever kind, each registered, none
needing an edit of the runner), run identity and records, and the Encoder's bookkeeping."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import encoders
from analysis import report
from analysis.load import load_results
from benchmarks import perturbations
from benchmarks.perturbations import PerturbationKind, register_perturbation
from benchmarks.pipeline import record, retrievers
from benchmarks.pipeline.record import RunConfig
from benchmarks.run import main, run_benchmark
from benchmarks.sweep import completed, load_sweep
from encoders import Encoder, EncoderError, register_encoder
from encoders.base import load_tokenizer, title_text
from encoders.pruning import Group, linear_slices, register_pruner, units

FIXTURES = Path(__file__).parent / "fixtures"


def quick(dataset: Path, out: Path, **kw) -> RunConfig:
    return RunConfig(dataset=str(dataset), output_dir=str(out), cache=False, show_progress=False,
                     latency_queries=2, **kw)


# -- a user's encoder with its own pruner ----------------------------------------------------------
@register_encoder("test-mlp")
class MLPEncoder(Encoder):
    """Token embeddings through one MLP; its pruner removes hidden channels."""

    def __init__(self, width: int = 16, hidden: int = 32, **opts):
        super().__init__(**opts)
        self.embed = nn.Embedding(len(self.tokenizer), width)
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.arch_config, self.label = {"width": width, "hidden": hidden}, "mlp"

    def forward(self, input_ids, attention_mask):
        x = self.embed(input_ids)
        return x + self.down(torch.relu(self.up(x)))


@register_pruner(MLPEncoder)
def mlp_groups(encoder: MLPEncoder) -> list[Group]:
    layout = units(encoder.up.out_features)
    return [Group("hidden_channels", linear_slices([encoder.up], [encoder.down], layout), encoder.down, layout)]


def test_a_user_encoder_registers_its_own_pruner(tiny_dataset, tmp_path):
    res = run_benchmark(quick(tiny_dataset, tmp_path, encoder="test-mlp", perturbation="prune:0.5"))
    [step] = res.summary["perturbation"]["steps"]
    assert step["kind"] == "prune" and step["stats"]["realised_sparsity"] == 0.5
    assert step["stats"]["structures"] == {"hidden_channels": "32 -> 16 per layer"}
    assert res.summary["encoder"]["config"]["arch"]["pruned"]["hidden_channels"] == [16]


# -- a user's perturbation kind --------------------------------------------------------------------
@register_perturbation("title-only")
class TitleOnly(PerturbationKind):
    """Keep each document's title, drop its text."""

    def columns(self, step):
        return {"title_only": True}

    def apply_corpus(self, corpus, ctx):
        out = {d: dict(doc, text="") for d, doc in corpus.items()}
        return out, {"documents": len(out)}


def test_a_user_perturbation_kind_composes_with_token_shuffle(tiny_dataset, tmp_path):
    p = perturbations.parse("token-shuffle+title-only")
    assert p.name == "token-shuffle+title-only" and not p.needs_model
    res = run_benchmark(quick(tiny_dataset, tmp_path, encoder="bm25", perturbation="title-only+token-shuffle"))
    steps = res.summary["perturbation"]["steps"]
    assert [s["kind"] for s in steps] == ["title-only", "token-shuffle"]  # in the order written
    row = record.flatten(res.summary, res.path)
    assert row["title_only"] is True and row["shuffle"] == "token" and row["kind"] == "input"
    clean = run_benchmark(quick(tiny_dataset, tmp_path, encoder="bm25"))
    assert res.summary["metrics"]["ndcg@10"] < clean.summary["metrics"]["ndcg@10"]  # the texts were dropped


# -- a user's retriever kind -----------------------------------------------------------------------
@retrievers.register_retriever("test-overlap")
class OverlapRetriever:
    """Scores a document by the number of query words it contains: a third kind beside dense and BM25."""

    name, model, title_sep, device = "test-overlap", None, " ", torch.device("cpu")

    def __init__(self):
        self.tokenizer = load_tokenizer()

    @classmethod
    def resolve(cls, cfg):
        from dataclasses import replace

        return replace(cfg, device="cpu", dtype=None)

    @classmethod
    def from_config(cls, cfg, cache):
        return cls()

    def tag(self):
        return "overlap"

    def index(self, corpus):
        self.docs = {d: set(title_text(doc).lower().split()) for d, doc in corpus.items()}
        return dict(texts=len(corpus))

    def search(self, query_ids, queries, top_k):
        run = {}
        for qid, q in zip(query_ids, queries):
            scores = {d: float(len(words & set(q.lower().split()))) for d, words in self.docs.items()}
            run[qid] = dict(sorted(scores.items(), key=lambda x: (x[1], x[0]), reverse=True)[:top_k])
        return run, {}

    def query_latency(self, queries, n):
        return {"p50_ms": 0.0}

    def describe(self):
        return dict(name=self.name, tag="overlap", config={"words": "lowercased"}, fingerprint="overlap",
                    num_parameters=0)


def test_a_user_retriever_kind_runs_through_the_runner(tiny_dataset, tmp_path, capsys):
    res = run_benchmark(quick(tiny_dataset, tmp_path, encoder="test-overlap"))
    assert res.path.parent.parent.name == "overlap" and 0 < res.summary["metrics"]["ndcg@10"] <= 1
    assert res.summary["config"]["dtype"] is None  # as the kind resolved it
    assert "test-overlap" in retrievers.names()
    # A model-side perturbation is refused: this kind has no model.
    code = main(["--encoder", "test-overlap", "--dataset", str(tiny_dataset), "--output-dir", str(tmp_path / "x"),
                 "--perturbation", "prune:0.5", "--quiet"])
    assert code == 2 and "test-overlap has none" in capsys.readouterr().err and not (tmp_path / "x").exists()


# -- identity, records, legacy results -------------------------------------------------------------
def test_identity_separates_every_result_changing_option_and_groups_repeats():
    base = RunConfig(encoder="bert", dataset="/data/scifact", device="cpu")
    same_place = RunConfig(encoder="bert", dataset="elsewhere/scifact", device="cpu", output_dir="x", run_id="y",
                           cache=False, show_progress=False)
    assert record.identity(base) == record.identity(same_place)  # where things are is not identity
    for change in (dict(pooling="cls"), dict(encoder_options={"normalize": False}), dict(max_length=128),
                   dict(dtype="bfloat16"), dict(top_k=10), dict(perturbation="prune:0.5"), dict(seed=1)):
        assert record.identity(RunConfig(**{**vars(base), **change})) != record.identity(base), change
    seeded = RunConfig(**{**vars(base), "seed": 7})
    assert record.group(seeded) == record.group(base)  # seeds are repeats of one configuration
    pruned = RunConfig(**{**vars(base), "perturbation": "prune:0.5"})
    assert record.group(pruned) != record.group(base) and record.base(pruned) == record.base(base)


def test_an_option_added_later_keeps_old_identities(monkeypatch):
    old = record.identity_fields(RunConfig(device="cpu"))
    monkeypatch.setitem(record.ADDED_LATER, "long_doc", "first")
    assert record.identity({**old, "long_doc": "first"}) == record.identity(old)
    assert record.identity({**old, "long_doc": "maxp"}) != record.identity(old)


def test_results_written_before_identities_load_and_resume(tmp_path, tiny_dataset):
    results = tmp_path / "results"
    shutil.copytree(FIXTURES / "legacy_results", results)  # written by the runner of commit acdc26d
    res = load_results(results)
    assert set(res.runs["kind"]) == {"model", "input"} and res.runs["identity"].is_unique
    pruned = res.runs[res.runs["perturbation"] == "prune:0.5"].iloc[0]
    assert pruned["prune_sparsity"] == 0.5 and 0.4 < pruned["prune_realised"] < 0.6
    # A sweep of the same grid finds them complete: it would not redo them.
    body = f"""name: legacy
datasets: [tiny]
defaults: {{data_dir: {tiny_dataset.parent}, latency_queries: 5, cache: false}}
encoders:
  - {{encoder: bert, preset: tiny, perturbations: ['prune:0.5']}}
  - {{encoder: bm25, perturbations: ['truncate:head:8']}}
"""
    (tmp_path / "legacy.yaml").write_text(body)
    sweep = load_sweep(tmp_path / "legacy.yaml", str(results))
    done = completed(sweep)
    assert {record.identity(retrievers.resolve(c)) for c in sweep.points} == set(done)


def test_analysis_on_real_runner_output(tiny_dataset, tmp_path):
    out = tmp_path / "results"
    for kw in (dict(preset="tiny"), dict(preset="tiny", perturbation="prune:0.5"), dict(encoder="bm25"),
               dict(preset="tiny", seed=1)):
        run_benchmark(quick(tiny_dataset, out, run_id="real", **kw))
    res = load_results(out)
    assert len(res.runs) == 4 and res.runs["config_key"].nunique() == 3  # the two seeds are repeats
    bert = res.runs[res.runs["encoder"] == "bert"]
    assert bert["base_key"].nunique() == 1 and set(bert["kind"]) == {"clean", "model"}
    assert report.main(["--results", str(out), "--out", str(tmp_path / "report"), "--resamples", "99"]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "pruning" in md and "bm25" in md


# -- correctness at the seams ----------------------------------------------------------------------
def test_similarity_decides_what_is_searched(tiny_dataset, tmp_path):
    """A checkpoint without a Normalize module: cos searches normalised vectors, dot the raw ones."""
    for similarity in ("cos", "dot"):
        ckpt = tmp_path / f"ckpt-{similarity}"
        torch.manual_seed(0)
        encoders.load("bert", preset="tiny", normalize=False, similarity=similarity).save_pretrained(ckpt)
        res = run_benchmark(quick(tiny_dataset, tmp_path / "r", checkpoint=str(ckpt)))
        enc = encoders.load("bert", checkpoint=str(ckpt), show_progress=False)
        assert not enc.normalize and enc.similarity == similarity
        q = enc.encode_queries(["how do plants make sugar from light"])[0]
        d = enc.encode_corpus([{"title": "Photosynthesis", "text": "Plants convert sunlight, water and carbon "
                                                                  "dioxide into sugar."}])[0]
        expected = q @ d / (np.linalg.norm(q) * np.linalg.norm(d)) if similarity == "cos" else q @ d
        assert res.run["q1"]["d1"] == pytest.approx(float(expected), rel=1e-5)
        assert res.summary["retrieval"]["similarity"] == similarity


@register_encoder("test-nan")
class NaNEncoder(MLPEncoder):
    """Gives NaN for any text containing 'sugar' (two tiny-corpus texts: d1, and query q1)."""

    def forward(self, input_ids, attention_mask):
        out = super().forward(input_ids, attention_mask)
        bad = (input_ids == self.tokenizer.convert_tokens_to_ids("sugar")).any(1)
        return torch.where(bad[:, None, None], torch.full_like(out, float("nan")), out)


def test_non_finite_embeddings_are_refused(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["--encoder", "test-nan", "--dataset", str(tiny_dataset), "--output-dir", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "non-finite embeddings for 1 of 6 corpus texts" in err
    assert not out.exists() or not list(out.rglob("summary.json"))
    assert not list(out.rglob("*.npy"))  # nor cached


def test_the_self_hit_rule_keeps_top_k_for_every_retriever(tmp_path):
    from conftest import write_beir

    words = ["alpha beta", "alpha gamma", "alpha delta", "alpha epsilon"]
    corpus = [{"_id": f"d{i}", "title": "", "text": w} for i, w in enumerate(words)]
    root = write_beir(tmp_path / "selfq", corpus, [{"_id": "d0", "text": "alpha beta"}], [("d0", "d1", 1)])
    for encoder in ("bm25", "bert"):
        res = run_benchmark(quick(root, tmp_path / "r", encoder=encoder, top_k=2))
        assert res.summary["retrieval"]["drop_self_hits"] and res.summary["retrieval"]["self_hits_dropped"] == 1
        assert len(res.run["d0"]) == 2 and "d0" not in res.run["d0"], encoder


# -- the Encoder's bookkeeping ---------------------------------------------------------------------
def test_encode_leaves_training_mode_alone():
    enc = encoders.load("bert", preset="tiny", show_progress=False).train()
    enc.encode(["a text"])
    assert enc.training and all(m.training for m in enc.modules())
    enc.eval().encode(["a text"])
    assert not enc.training


def test_fingerprint_and_embedding_dim_are_computed_once_per_state(monkeypatch):
    enc = encoders.load("bert", preset="tiny", show_progress=False)
    calls = {"digest": 0, "forward": 0}
    digest, forward = type(enc).weights_digest, type(enc).forward
    monkeypatch.setattr(type(enc), "weights_digest", lambda self: calls.__setitem__("digest", calls["digest"] + 1) or digest(self))
    monkeypatch.setattr(type(enc), "forward", lambda self, *a: calls.__setitem__("forward", calls["forward"] + 1) or forward(self, *a))
    first = enc.fingerprint
    assert enc.fingerprint == first and enc.embedding_dim == enc.embedding_dim
    assert calls == {"digest": 1, "forward": 1}
    with torch.no_grad():  # an optimizer step changes weights in place
        next(enc.parameters()).add_(1.0)
    assert enc.fingerprint != first and calls["digest"] == 2
    before = enc.fingerprint
    from encoders.pruning import prune

    prune(enc, 0.5)
    assert enc.fingerprint != before


def test_pruning_leaves_a_shared_config_alone():
    a = encoders.load("mamba", preset="tiny", show_progress=False)
    b = encoders.load("mamba", preset="tiny", show_progress=False)
    b.model.config = a.model.config  # e.g. two models built from one config object
    width = a.model.config.intermediate_size
    from encoders.pruning import prune

    prune(a, 0.5)
    assert b.model.config.intermediate_size == width and a.model.config.intermediate_size == width // 2


def test_bad_retriever_name_is_one_line(tmp_path, capsys):
    assert main(["--encoder", "nope", "--output-dir", str(tmp_path), "--quiet"]) == 2
    assert "unknown encoder 'nope'" in capsys.readouterr().err


def test_records_round_trip(tiny_dataset, tmp_path):
    res = run_benchmark(quick(tiny_dataset, tmp_path, preset="tiny"))
    rec = record.read(res.path, with_run=True)
    assert rec.summary == json.loads(json.dumps(res.summary, default=str))
    assert rec.run == res.run  # full-precision scores survive the TREC file
    assert np.array_equal(rec.per_query["ndcg@10"].to_numpy(), res.per_query["ndcg@10"].to_numpy())
    with pytest.raises(EncoderError):
        retrievers.check("nope")


def test_peak_memory_is_the_runs_own():
    from benchmarks.pipeline import measure

    big = np.ones(400 * 2**20 // 8)  # 400 MB touched
    assert measure.peak_rss_mb() > 400
    del big
    measure.reset_peak_memory()  # a run starts here
    assert measure.peak_rss_mb() < measure.rss_mb() + 50  # not the 400 MB of what came before
