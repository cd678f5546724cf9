"""`--dtype auto` (encoders/dtype.py) and the weights held in the compute dtype (Encoder.held_weights)."""

import json

import numpy as np
import pytest
import torch

import encoders
import encoders.dtype as dt
from encoders.base import ParameterCasts
from encoders.pruning import prune

from conftest import fake_matmul_times

ARCHS = ["bert", "mamba", "rwkv", "hyena", "retnet", "gla"]
TEXTS = ["Plants convert sunlight, water and carbon dioxide into sugar.", "What produces energy in a cell?", "shock",
         " ".join(["A turbofan engine mixes bypass air with hot core exhaust."] * 12)]  # > 64 tokens: chunked paths
REAL_TIME_MATMUL = dt.time_matmul  # taken at import, before conftest's fixture replaces it for each test


@pytest.fixture
def probe_file(tmp_path, monkeypatch):
    path = tmp_path / "probe.json"
    monkeypatch.setenv(dt.CACHE_ENV, str(path))
    return path


@pytest.mark.parametrize("fastest", ["float32", "bfloat16"])
def test_probe_picks_the_faster_and_caches_it(fastest, probe_file, monkeypatch):
    calls = []
    slower = {"float32": "bfloat16", "bfloat16": "float32"}[fastest]
    monkeypatch.setattr(dt, "time_matmul", fake_matmul_times({fastest: 0.01, slower: 0.04}, calls))
    name, info = dt.resolve_dtype("auto", "cpu")
    assert name == fastest and info["chosen"] == fastest and info["cached"] is False
    assert sorted({d for d, _ in calls}) == ["bfloat16", "float32"]  # the CPU's candidates, each timed
    m, k, n = dt.PROBE_SHAPES[0]
    assert info["gflops"][fastest][f"{m}x{k}x{n}"] == pytest.approx(2 * m * k * n / 0.01 / 1e9, rel=1e-3)
    assert info["machine"] in json.loads(probe_file.read_text())

    probed = len(calls)  # a second resolution reads the cache: no timing at all
    again, info2 = dt.resolve_dtype("auto", "cpu")
    assert again == fastest and info2["cached"] is True and len(calls) == probed

    # The answer depends on the thread count: another count probes again.
    monkeypatch.setattr(torch, "get_num_threads", lambda: 97)
    dt.resolve_dtype("auto", "cpu")
    assert len(calls) == 2 * probed and len(json.loads(probe_file.read_text())) == 2


def test_cpus_named_alike_with_other_matrix_units_probe_apart(probe_file, monkeypatch):
    # Both Intel kinds this project runs on call themselves "Intel(R) Xeon(R) Processor"; one has AMX.
    calls = []
    monkeypatch.setattr(dt, "time_matmul", fake_matmul_times({"float32": 0.01, "bfloat16": 0.04}, calls))
    monkeypatch.setattr(dt, "cpu_model", lambda: "Intel(R) Xeon(R) Processor")
    monkeypatch.setattr(dt, "cpu_matrix_flags", lambda: ["avx2", "avx512f"])
    assert dt.resolve_dtype("auto", "cpu")[0] == "float32"
    monkeypatch.setattr(dt, "time_matmul", fake_matmul_times({"float32": 0.04, "bfloat16": 0.01}, calls))
    monkeypatch.setattr(dt, "cpu_matrix_flags", lambda: ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"])
    name, info = dt.resolve_dtype("auto", "cpu")
    assert name == "bfloat16" and info["cached"] is False and "amx_bf16" in info["machine"]
    assert len(json.loads(probe_file.read_text())) == 2


def test_explicit_dtype_is_not_probed(probe_file, monkeypatch):
    monkeypatch.setattr(dt, "time_matmul", lambda *a, **k: pytest.fail("probed"))
    assert dt.resolve_dtype("bfloat16", "cpu") == ("bfloat16", None)


def test_damaged_cache_is_probed_again(probe_file):
    probe_file.write_text("{not json")
    assert dt.resolve_dtype("auto", "cpu")[0] == "float32"  # conftest's timings: fp32 the faster
    assert json.loads(probe_file.read_text())


def test_real_probe_resolves_to_a_supported_dtype(probe_file, monkeypatch):
    monkeypatch.setattr(dt, "PROBE_SHAPES", ((256, 64, 128),))  # the real timer, on a small product
    monkeypatch.setattr(dt, "time_matmul", REAL_TIME_MATMUL)
    name, info = dt.resolve_dtype("auto", "cpu")
    assert name in dt.candidates(torch.device("cpu")) and info["seconds"][name] > 0


def test_auto_encoder_records_the_resolved_dtype(probe_file, monkeypatch):
    monkeypatch.setattr(dt, "time_matmul", fake_matmul_times({"float32": 0.04, "bfloat16": 0.01}))
    enc = encoders.load("bert", preset="tiny", dtype="auto", show_progress=False)
    assert enc.dtype_name == "bfloat16" and enc.config()["dtype"] == "bfloat16"
    assert enc.dtype_probe["chosen"] == "bfloat16" and set(enc.dtype_probe["gflops"]) == {"float32", "bfloat16"}
    torch.manual_seed(0)
    explicit = encoders.load("bert", preset="tiny", dtype="float32", show_progress=False)
    assert explicit.dtype_name == "float32" and explicit.dtype_probe is None


def test_runner_defaults_to_auto_and_records_the_probe(tiny_dataset, tmp_path, monkeypatch):
    from benchmarks.run import RunConfig, run_benchmark

    monkeypatch.setattr(dt, "time_matmul", fake_matmul_times({"float32": 0.04, "bfloat16": 0.01}))
    monkeypatch.setenv(dt.CACHE_ENV, str(tmp_path / "probe.json"))
    r = run_benchmark(RunConfig(encoder="bert", preset="tiny", dataset="tiny", data_dir=str(tiny_dataset.parent),
                                output_dir=str(tmp_path / "out"), show_progress=False, latency_queries=3))
    enc = r.summary["encoder"]
    assert r.summary["config"]["dtype"] == enc["config"]["dtype"] == "bfloat16"  # the configuration as it ran
    assert enc["dtype_probe"]["chosen"] == "bfloat16" and enc["tag"].endswith("-bfloat16")


# -- weights held in the compute dtype ----------------------------------------------------------
def build(name, **opts):
    torch.manual_seed(0)
    return encoders.load(name, preset="tiny", show_progress=False, **opts)


def parameter_casts(enc, texts) -> int:
    """How many times one encode() casts a parameter to bf16."""
    watch = ParameterCasts(enc, torch.bfloat16)
    with watch:
        enc.encode(texts)
    return watch.casts_of_parameters()


@pytest.mark.parametrize("name", ARCHS)
def test_held_weights_cast_once_and_change_nothing(name):
    enc = build(name, dtype="bfloat16")
    fingerprint = enc.fingerprint
    enc.hold_weights = False  # autocast casting every weight in every call, as before
    per_call = enc.encode(TEXTS)
    assert parameter_casts(enc, TEXTS[:1]) > 0
    enc.hold_weights = True
    held = enc.encode(TEXTS)
    # The same casts autocast makes, made once: the same embeddings to the bit.
    np.testing.assert_array_equal(held, per_call)
    assert parameter_casts(enc, TEXTS[:1]) == 0  # a later call (batch size 1 here) casts nothing
    # Outside encode() the model is the fp32 model it was: same fingerprint, fp32 parameters.
    assert {p.dtype for p in enc.parameters()} == {torch.float32}
    assert enc.fingerprint == fingerprint


@pytest.mark.parametrize("name", ["mamba", "hyena"])
def test_held_weights_follow_pruning(name):
    enc = build(name, dtype="bfloat16")
    enc.encode(TEXTS)  # casts held for the unpruned weights
    prune(enc, 0.5)
    held = enc.encode(TEXTS)
    assert parameter_casts(enc, TEXTS[:1]) == 0  # the new, pruned weights are held, not cast per call
    enc.hold_weights = False
    np.testing.assert_array_equal(held, enc.encode(TEXTS))


def test_training_after_inference_trains_the_fp32_weights():
    texts = TEXTS[:3]
    enc = build("retnet", dtype="bfloat16")
    before = enc.encode(texts)
    enc.dtype_name = "float32"  # the trainer's student computes in fp32
    enc.train()
    ids, mask = enc.pad(enc.tokenize(texts))
    optimizer = torch.optim.SGD(enc.parameters(), lr=0.5)
    loss = enc.embed_batch(ids, mask).pow(3).sum()
    loss.backward()
    assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32) for p in enc.parameters())
    optimizer.step()
    enc.dtype_name = "bfloat16"
    after = enc.encode(texts)  # the casts are made again from the trained weights
    assert np.abs(after - before).max() > 1e-3
    enc.hold_weights = False
    np.testing.assert_array_equal(after, enc.encode(texts))
