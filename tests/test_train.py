"""The training recipe (benchmarks/train.py) on tiny presets and a tiny dataset with train and test
splits: the loss falls, checkpoints reload exactly, a resumed run equals an uninterrupted one, test
queries never reach the model, and bad input is one line."""

import json

import pytest
import torch
from safetensors.torch import load_file

import encoders
from benchmarks import training as T
from benchmarks.pipeline.cache import EmbeddingCache
from benchmarks.train import main as train_main
from benchmarks.sweep import load_sweep
from conftest import REPO, TINY_CORPUS, shared_dataset, write_beir
from numerics import TINY, assert_close

SECRET = "SECRET test query about shock waves at supersonic speed"
QUERIES = [{"_id": "tr1", "text": "how do plants make sugar from light"},
           {"_id": "tr2", "text": "what produces energy in a cell"},
           {"_id": "tr3", "text": "how does a jet engine work"},
           {"_id": "te1", "text": SECRET}]
ARCHS = list(encoders.ARCHITECTURES)


@pytest.fixture
def split_dataset(tmp_path):
    root = write_beir(tmp_path / "data" / "toy", TINY_CORPUS, QUERIES,
                      [("tr1", "d1", 1), ("tr2", "d2", 1), ("tr2", "d1", 1), ("tr3", "d3", 1)], split="train")
    return write_beir(root, TINY_CORPUS, QUERIES, [("te1", "d4", 1), ("te1", "d3", 1)], split="test")


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(1)  # a tiny random BERT: same 64 width and vocabulary as the tiny students
    return encoders.load("bert", preset="tiny", max_length=32, show_progress=False)


def config(ds, tmp_path, encoder="bert", **kw):
    base = dict(encoder=encoder, preset="tiny", dataset=str(ds), steps=4, max_length=32, batch_pairs=2, batch_docs=2,
                hard_negatives=2, output_dir=str(tmp_path / "ckpt"), cache_dir=str(tmp_path / "cache"),
                show_progress=False, save_every_minutes=0)
    return T.TrainConfig(**{**base, **kw})


def test_loss_decreases_on_a_fixed_batch(split_dataset, tmp_path, teacher):
    cfg = config(split_dataset, tmp_path, encoder="hyena")
    torch.manual_seed(0)
    student = encoders.load("hyena", preset="tiny", max_length=32, show_progress=False)
    data, ds = T.load_train_data(cfg, student)
    tq, td = T.teacher_embeddings(teacher, [ds.queries[q] for q in data.query_ids],
                                  [ds.corpus[d] for d in data.doc_ids], EmbeddingCache(tmp_path / "cache"))
    ids = student.tokenize(data.queries + data.docs)
    batch = T.make_batch(data, cfg, 0, T.mine_hard_negatives(tq, td, data.relevant, 2))
    optimizer = T.make_optimizer(cfg, student)
    student.train()
    first = T.losses(cfg, student, data, ids, batch, tq, td)
    for _ in range(25):
        T.train_step(cfg, student, optimizer, data, ids, batch, tq, td, lr=3e-3)
    last = T.losses(cfg, student, data, ids, batch, tq, td)
    assert set(first) == {"cos", "kl", "contrastive", "loss"}
    for term in ("loss", "cos", "kl"):
        assert last[term].item() < 0.7 * first[term].item(), term


@pytest.mark.parametrize("name", ARCHS)
def test_checkpoint_reloads_exactly(name, tmp_path):
    torch.manual_seed(0)
    enc = encoders.load(name, preset="tiny", max_length=32, show_progress=False)
    with torch.no_grad():  # weights no preset init would give, so only a real reload can match
        for p in enc.parameters():
            p.add_(0.01 * torch.randn_like(p))
    texts = ["Plants convert sunlight into sugar.", "A turbofan engine mixes bypass air with hot core exhaust gas."]
    enc.save_pretrained(tmp_path / name)
    again = encoders.load(name, checkpoint=str(tmp_path / name), max_length=32, show_progress=False)
    assert torch.equal(torch.from_numpy(again.encode(texts)), torch.from_numpy(enc.encode(texts)))
    assert again.weights_digest() == enc.weights_digest()


def test_bert_checkpoint_keeps_sentence_transformers_settings(tmp_path):
    # A student derived from the packaged MiniLM (mean pooling + normalisation from its modules.json)
    # reloads with them; options the loader reads from those files round-trip too.
    texts = ["Plants convert sunlight into sugar.", "jet engines"]
    minilm = encoders.load("bert", max_length=48, show_progress=False)
    assert (minilm.pooling, minilm.normalize) == ("mean", True)
    minilm.save_pretrained(tmp_path / "minilm")
    again = encoders.load("bert", checkpoint=str(tmp_path / "minilm"), show_progress=False)
    assert (again.pooling, again.normalize, again.max_length) == ("mean", True, 48)
    assert torch.equal(torch.from_numpy(again.encode(texts)), torch.from_numpy(minilm.encode(texts)))

    torch.manual_seed(0)
    custom = encoders.load("bert", preset="tiny", max_length=40, pooling="cls", normalize=False, similarity="dot",
                           query_prefix="query: ", doc_prefix="passage: ", show_progress=False)
    custom.save_pretrained(tmp_path / "custom")
    again = encoders.load("bert", checkpoint=str(tmp_path / "custom"), show_progress=False)
    keep = ("pooling", "normalize", "similarity", "max_length", "query_prefix", "doc_prefix")
    assert {k: getattr(again, k) for k in keep} == dict(pooling="cls", normalize=False, similarity="dot",
                                                          max_length=40, query_prefix="query: ", doc_prefix="passage: ")
    assert torch.equal(torch.from_numpy(again.encode(texts)), torch.from_numpy(custom.encode(texts)))


@pytest.mark.parametrize("name", ["bert", "mamba"])  # bert: dropout draws from the RNG; mamba: the custom scan
def test_resume_equals_uninterrupted(name, split_dataset, tmp_path, teacher, monkeypatch):
    whole = T.train(config(split_dataset, tmp_path / "a", encoder=name, steps=5), teacher=teacher)

    cfg = config(split_dataset, tmp_path / "b", encoder=name, steps=5)
    calls, step = [0], T.train_step

    def killed_at_fourth(*args, **kw):
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt  # as if killed during step 4; steps 1-3 were checkpointed
        return step(*args, **kw)

    monkeypatch.setattr(T.loop, "train_step", killed_at_fourth)
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, teacher=teacher)
    partial = json.loads((cfg.out_dir() / "training.json").read_text())
    assert partial["complete"] is False and partial["steps_done"] == 3
    monkeypatch.setattr(T.loop, "train_step", step)
    with pytest.raises(T.TrainError, match="--resume"):
        T.train(cfg, teacher=teacher)
    resumed = T.train(cfg, resume=True, teacher=teacher)

    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(b[k], a[k]), k  # bitwise (measured); the brief allows 1e-6
    ma, mb = (json.loads((d / "training.json").read_text()) for d in (whole, resumed))
    assert ma["steps_done"] == mb["steps_done"] == 5 and mb["complete"] and mb["sessions"] == 2
    # the same weights (bitwise, above) and batch: the loss differs at most by the forward's rounding
    assert_close(mb["final_loss"]["loss"], ma["final_loss"]["loss"], **TINY)


def test_test_queries_never_reach_the_model(split_dataset, tmp_path, teacher, monkeypatch):
    seen = []
    tokenize = encoders.Encoder.tokenize
    monkeypatch.setattr(encoders.Encoder, "tokenize", lambda self, texts: seen.extend(texts) or tokenize(self, texts))
    out = T.train(config(split_dataset, tmp_path, contrastive_weight=1.0), teacher=teacher)
    assert "how do plants make sugar from light" in seen  # the spy sees the train queries ...
    assert not any("SECRET" in t for t in seen)  # ... and never a test query
    data = json.loads((out / "training.json").read_text())["data"]
    assert data["split"] == "train" and data["queries"] == 3 and data["test_queries_used"] is False
    assert "transductive" in data["transductive"]


def test_plan_trains_each_once_and_skips_complete(split_dataset, tmp_path, teacher, capsys):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(f"defaults: {{dataset: {split_dataset}, preset: tiny, steps: 2, max_length: 32, "
                         f"batch_pairs: 2, batch_docs: 1, output_dir: {tmp_path / 'ckpt'}, cache_dir: {tmp_path / 'c'}, "
                         "cos_weight: 0, init_embeddings: none}\nruns:\n  - {encoder: retnet}\n  - {encoder: gla}\n")
    T.run_plan(T.load_plan(plan_file), teacher=teacher)
    outs = sorted((tmp_path / "ckpt").iterdir())
    assert [p.name for p in outs] == ["gla-tiny-toy-distill", "retnet-tiny-toy-distill"]
    assert all(json.loads((p / "training.json").read_text())["complete"] for p in outs)
    capsys.readouterr()
    T.run_plan(T.load_plan(plan_file), teacher=teacher)
    assert capsys.readouterr().out.count("done") == 2


def test_shipped_configs_agree():
    plan = T.load_plan(REPO / "benchmarks/configs/train_all.yaml")
    assert sorted(c.encoder for c in plan) == sorted(ARCHS)
    assert {c.preset for c in plan} == {"small"} and len({json.dumps({**c.recipe(), "encoder": 0}) for c in plan}) == 1
    spec = __import__("yaml").safe_load((REPO / "benchmarks/configs/trained.yaml").read_text())
    ckpts = {e["checkpoint"] for e in spec["encoders"] if e.get("checkpoint")}
    assert ckpts == {str(c.out_dir()) for c in plan}


def test_trained_sweep_loads():
    shared_dataset("scifact")  # the sweep checks that its datasets exist
    sweep = load_sweep(REPO / "benchmarks/configs/trained.yaml")
    assert sum(1 for p in sweep.points if p.checkpoint and p.perturbation == "clean") == 6


@pytest.mark.parametrize("args, message", [
    (["--encoder", "nope", "--steps", "1"], "unknown encoder 'nope'"),
    (["--encoder", "bert", "--preset", "tiny", "--budget-minutes", "0"], "budget must be positive"),
    (["--encoder", "bert", "--preset", "tiny", "--steps", "-3"], "budget must be positive"),
    (["--encoder", "bert", "--preset", "tiny"], "give a budget"),
    (["--encoder", "bert", "--preset", "tiny", "--steps", "1"], "no qrels for split 'train'"),
])
def test_bad_input_is_one_line(args, message, tiny_dataset, tmp_path, capsys):
    code = train_main([*args, "--dataset", "tiny", "--data-dir", str(tiny_dataset.parent),
                   "--output-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_encoder_without_save_pretrained_is_refused(monkeypatch):
    class NoSave(encoders.Encoder):  # a user's encoder that cannot write checkpoints
        pass

    monkeypatch.setitem(encoders._REGISTRY, "nosave", NoSave)
    with pytest.raises(T.TrainError, match="no save_pretrained"):
        T.check_config(T.TrainConfig(encoder="nosave", steps=1))


def test_only_trains_part_of_a_plan(split_dataset, tmp_path, capsys):
    plan_file = tmp_path / "plan.yaml"  # contrastive only: no teacher to load
    plan_file.write_text(f"defaults: {{dataset: {split_dataset}, preset: tiny, steps: 1, max_length: 32, "
                         f"batch_pairs: 2, batch_docs: 1, output_dir: {tmp_path / 'ckpt'}, cos_weight: 0, "
                         "kl_weight: 0, init_embeddings: none}\nruns:\n  - {encoder: retnet}\n  - {encoder: gla}\n")
    assert train_main(["--config", str(plan_file), "--only", "gla", "--quiet"]) == 0
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["gla-tiny-toy-distill"]
    capsys.readouterr()
    assert train_main(["--config", str(plan_file), "--only", "gla,mamba"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--only names encoders not in the plan: mamba" in err and err.count("\n") == 1
