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
from benchmarks.pipeline.record import RunConfig, unfinished
from benchmarks.pipeline.retrievers import load_encoder
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
    data = T.load_train_data(cfg, student)
    tq, td = T.teacher_embeddings(teacher, data.sources, EmbeddingCache(tmp_path / "cache"))
    ids = student.tokenize(data.queries + data.docs)
    batch = T.make_batch(data, cfg, 0, T.mine_hard_negatives(tq, td, data.relevant, 2))
    optimizer = T.make_optimizer(cfg, student)
    student.train()
    first = T.losses(cfg, student, data, ids, batch, tq, td)
    for _ in range(25):
        T.train_step(cfg, student, optimizer, data, ids, batch, tq, td, factor=3e-3 / cfg.lr)
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


@pytest.mark.parametrize("name", ["bert", "mamba", "hyena"])  # bert: dropout draws from the RNG; mamba: the
def test_resume_equals_uninterrupted(name, split_dataset, tmp_path, teacher, monkeypatch):  # scan; hyena: groups
    whole = T.train(config(split_dataset, tmp_path / "a", encoder=name, steps=5), teacher=teacher)

    cfg = config(split_dataset, tmp_path / "b", encoder=name, steps=5)
    calls, step = [0], T.train_step

    def killed_at_fourth(*args, **kw):
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt  # as if killed during step 4; steps 1-3 were checkpointed
        return step(*args, **kw)

    # The interrupted session also runs on a machine where every step seems to take an hour: under a
    # step budget neither the schedule nor the end may notice.
    clock = iter(range(0, 10 ** 9, 3600))
    monkeypatch.setattr(T.loop.time, "perf_counter", lambda: float(next(clock)))
    monkeypatch.setattr(T.loop, "train_step", killed_at_fourth)
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, teacher=teacher)
    partial = json.loads((cfg.out_dir() / "training.json").read_text())
    assert partial["complete"] is False and partial["steps_done"] == 3
    assert partial["train_seconds"] >= 3 * 3600  # the fake clock was in use
    with pytest.raises(encoders.EncoderError, match=r"unfinished training \(3 of 5 steps done\)"):
        load_encoder(RunConfig(encoder=name, dataset=str(split_dataset), checkpoint=str(cfg.out_dir())))
    monkeypatch.undo()
    with pytest.raises(T.TrainError, match="--resume"):
        T.train(cfg, teacher=teacher)
    resumed = T.train(cfg, resume=True, teacher=teacher)

    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(b[k], a[k]), k  # bitwise (measured); the brief allows 1e-6
    ma, mb = (json.loads((d / "training.json").read_text()) for d in (whole, resumed))
    assert ma["steps_done"] == mb["steps_done"] == 5 and mb["complete"] and mb["sessions"] == 2
    assert unfinished(resumed) is None
    # the same weights (bitwise, above) and batch: the loss differs at most by the forward's rounding
    assert_close(mb["final_loss"]["loss"], ma["final_loss"]["loss"], **TINY)
    assert ma["budget"]["mode"] == "steps" and "primary" in ma["budget"]["note"]


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
    for name in ("scifact", "nfcorpus", "cranfield"):
        shared_dataset(name)  # the sweep checks that its datasets exist
    sweep = load_sweep(REPO / "benchmarks/configs/trained.yaml")
    clean = [p for p in sweep.points if p.checkpoint and p.perturbation == "clean"]
    assert len(clean) == 6 * 3 and len({p.checkpoint for p in clean}) == 6  # six students on three datasets


@pytest.mark.parametrize("args, message", [
    (["--encoder", "nope", "--steps", "1"], "unknown encoder 'nope'"),
    (["--encoder", "bert", "--preset", "tiny", "--budget-minutes", "0"], "budget must be positive"),
    (["--encoder", "bert", "--preset", "tiny", "--steps", "-3"], "budget must be positive"),
    (["--encoder", "bert", "--preset", "tiny"], "give one budget"),
    (["--encoder", "bert", "--preset", "tiny", "--steps", "3", "--budget-minutes", "1"], "give one budget"),
    (["--encoder", "bert", "--preset", "tiny", "--steps", "1"], "no qrels for split 'train'"),
])
def test_bad_input_is_one_line(args, message, tiny_dataset, tmp_path, capsys):
    code = train_main([*args, "--dataset", "tiny", "--data-dir", str(tiny_dataset.parent),
                   "--output-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_auto_dtype_resolved_otherwise_on_resume_is_refused(split_dataset, tmp_path, teacher, monkeypatch):
    """`--dtype auto` follows the machine's probe on the CPU: a run begun in fp32 and resumed where
    bf16 is the faster would mix the two silently."""
    cfg = config(split_dataset, tmp_path, steps=2)
    out = T.train(cfg, teacher=teacher)
    meta = json.loads((out / "training.json").read_text())
    assert meta["dtype"] == "float32" and meta["dtype_probe"]["chosen"] == "float32"  # the suite's probe
    monkeypatch.setattr(T.TrainConfig, "resolved_dtype", lambda self: "bfloat16")
    with pytest.raises(T.TrainError, match="trained in float32 so far, and --dtype auto gives bfloat16 here; "
                                           "pass --dtype float32"):
        T.train(cfg, resume=True, teacher=teacher)


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


@pytest.fixture
def second_dataset(tmp_path):
    """Another dataset with train and test splits, for a training mix."""
    corpus = [{"_id": "e1", "title": "Tides", "text": "The moon's gravity raises the tides."},
              {"_id": "e2", "title": "Volcanoes", "text": "Magma rises through the crust and erupts."},
              {"_id": "e3", "title": "Rainbows", "text": "Sunlight refracts in raindrops into colours."}]
    queries = [{"_id": "m1", "text": "why does the sea rise and fall"},
               {"_id": "m2", "text": "where do colours in the sky come from"},
               {"_id": "mt", "text": SECRET + " in a volcano"}]
    root = write_beir(tmp_path / "data" / "geo", corpus, queries, [("m1", "e1", 1), ("m2", "e3", 2)], split="train")
    return write_beir(root, corpus, queries, [("mt", "e2", 1)], split="test")


def test_a_mix_reads_only_train_splits(split_dataset, second_dataset, tmp_path, teacher, monkeypatch):
    import benchmarks.pipeline.data as pipeline_data

    read, seen = [], []
    read_qrels, tokenize = pipeline_data.read_qrels, encoders.Encoder.tokenize
    monkeypatch.setattr(pipeline_data, "read_qrels", lambda path: read.append(path) or read_qrels(path))
    monkeypatch.setattr(encoders.Encoder, "tokenize", lambda self, texts: seen.extend(texts) or tokenize(self, texts))
    out = T.train(config(split_dataset, tmp_path, dataset=[str(split_dataset), str(second_dataset)], steps=3,
                         contrastive_weight=1.0), teacher=teacher)
    assert sorted((p.parent.parent.name, p.name) for p in read) == [("geo", "train.tsv"), ("toy", "train.tsv")]
    assert "why does the sea rise and fall" in seen and not any("SECRET" in t for t in seen)
    data = json.loads((out / "training.json").read_text())["data"]
    assert [(m["dataset"], m["split"], m["queries"], m["documents"]) for m in data["mix"]] == [
        ("toy", "train", 3, 6), ("geo", "train", 2, 3)]
    assert data["test_queries_used"] is False and data["test_qrels_used"] is False
    assert out.name == "bert-tiny-toy-geo-distill"


def test_training_reads_datasets_through_the_train_door_only():
    # Every dataset read in the training package goes through load_train_split (the spy test above
    # checks what it reads); a second call of load_dataset elsewhere would bypass it.
    sources = {p.name: p.read_text() for p in (REPO / "benchmarks/training").glob("*.py")}
    calls = {name: text.count("load_dataset(") for name, text in sources.items() if "load_dataset(" in text}
    assert calls == {"data.py": 1} and "load_dataset(name, TRAIN_SPLIT, data_dir)" in sources["data.py"]


def test_seeds_expand_a_plan_and_change_init_and_data_order(split_dataset, tmp_path, teacher):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(f"defaults: {{dataset: {split_dataset}, preset: tiny, steps: 1, max_length: 32, "
                         f"batch_pairs: 2, batch_docs: 2, output_dir: {tmp_path / 'ckpt'}, cache_dir: {tmp_path / 'c'}, "
                         "seeds: [0, 1]}\nruns:\n  - {encoder: gla}\n  - {encoder: retnet, seeds: [5]}\n")
    plan = T.load_plan(plan_file)
    assert [(c.encoder, c.seed, c.out_dir().name) for c in plan] == [  # seed-major
        ("gla", 0, "gla-tiny-toy-distill-seed0"), ("retnet", 5, "retnet-tiny-toy-distill-seed5"),
        ("gla", 1, "gla-tiny-toy-distill-seed1")]
    gla = [c for c in plan if c.encoder == "gla"]
    a, b = (T.train(c, teacher=teacher) for c in gla)
    assert load_file(str(a / "model.safetensors"))["model.layers.0.attn.q_proj.weight"].ne(
        load_file(str(b / "model.safetensors"))["model.layers.0.attn.q_proj.weight"]).any()
    data = T.load_train_data(gla[0], encoders.load("gla", preset="tiny", show_progress=False))
    orders = [[T.make_batch(data, c, step, None)[0].tolist() for step in range(6)] for c in gla]
    assert orders[0] != orders[1]


def test_bad_seeds_are_one_line(tmp_path):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text("defaults: {steps: 1, seeds: [0, 0]}\nruns:\n  - {encoder: gla}\n")
    with pytest.raises(T.TrainError, match="runs entry 1: seeds must be a non-empty list of distinct integers"):
        T.load_plan(plan_file)


def test_optimizer_honours_declared_groups():
    torch.manual_seed(0)
    cfg = T.TrainConfig(encoder="hyena", preset="tiny", steps=1, lr=1e-3, weight_decay=0.1)
    student = encoders.load("hyena", preset="tiny", show_progress=False)
    optimizer = T.make_optimizer(cfg, student)
    group_of = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    params = dict(student.named_parameters())
    assert len(group_of) == len(params)  # every parameter, once
    filt = "model.layers.0.attn.filter."
    from encoders.hyena import POS_LR_SCALE
    expected = {
        filt + "inp.weight": (1e-3, 0.0), filt + "hidden.1.weight": (1e-3, 0.0), filt + "out.weight": (1e-3, 0.0),
        filt + "freq": (1e-3, 0.0), filt + "z": (1e-3 * POS_LR_SCALE, 0.0),  # Hyena's declared hints
        "model.layers.0.attn.in_proj.weight": (1e-3, 0.1), "model.embeddings.weight": (1e-3, 0.1),  # the default:
        "model.layers.0.attn_norm.weight": (1e-3, 0.0), "model.layers.0.attn.in_proj.bias": (1e-3, 0.0),  # rule
    }
    assert {name: group_of[id(params[name])] for name in expected} == expected
    assert "deltas" in dict(student.model.layers[0].attn.filter.named_buffers())  # the decay window: fixed,
    assert not any(name.endswith("deltas") for name in params)  # never trained


def test_any_architecture_may_declare_a_group(split_dataset, tmp_path):
    # A hint on any parameter of any encoder puts it in its own group, whose rate the schedule scales.
    torch.manual_seed(0)
    student = encoders.load("retnet", preset="tiny", max_length=32, show_progress=False)
    norm = student.model.layers[1].attn_norm.weight
    encoders.base.set_optim_hint([norm], lr_scale=0.5, weight_decay=0.3)
    cfg = config(split_dataset, tmp_path, encoder="retnet", lr=2e-3, cos_weight=0, kl_weight=0, hard_negatives=0)
    optimizer = T.make_optimizer(cfg, student)
    [group] = [g for g in optimizer.param_groups if any(p is norm for p in g["params"])]
    assert (group["lr"], group["weight_decay"], len(group["params"])) == (1e-3, 0.3, 1)
    data = T.load_train_data(cfg, student)
    ids = student.tokenize(data.queries + data.docs)
    T.train_step(cfg, student, optimizer, data, ids, T.make_batch(data, cfg, 0, None), None, None, factor=0.25)
    assert group["lr"] == pytest.approx(0.25 * 1e-3) and optimizer.param_groups[0]["lr"] == pytest.approx(0.25 * 2e-3)


def test_fair_plan_is_six_mixers_three_seeds_one_step_budget():
    plan = T.load_plan(REPO / "benchmarks/configs/train_fair.yaml")
    assert sorted({c.encoder for c in plan}) == sorted(f"shared-{a}" for a in ARCHS)
    assert sorted((c.encoder, c.seed) for c in plan) == sorted((f"shared-{a}", s) for a in ARCHS for s in (0, 1, 2))
    assert {c.budget_mode for c in plan} == {"steps"} and {tuple(c.datasets) for c in plan} == {("scifact", "nfcorpus")}
    same = [{**c.recipe(), "encoder": 0, "seed": 0, "name": 0} for c in plan]  # one recipe but for mixer and seed
    assert all(r == same[0] for r in same) and len({c.out_dir() for c in plan}) == 18
