"""Structured pruning (encoders/pruning.py and each architecture's pruner) on all six architectures, tiny presets."""

import numpy as np
import pytest
import torch
from torch import nn

import encoders
from encoders.pruning import PruningError as PerturbationError
from encoders.pruning import prune, pruner_for
from encoders import Encoder
from encoders.bert import BertEncoder
from numerics import MINILM, TINY, assert_close, assert_unit_norm

ARCHS = list(encoders.ARCHITECTURES)
TEXTS = [
    "Plants convert sunlight, water and carbon dioxide into sugar.",
    "What produces energy in a cell?",
    "shock",
    # > 128 tokens: RetNet's chunkwise form, several GLA chunks and Mamba scan chunks
    " ".join(["A turbofan engine mixes bypass air with hot core exhaust, and shock waves form when an "
              "aircraft exceeds the speed of sound."] * 8),
]


def build(name: str, **opts) -> Encoder:
    torch.manual_seed(0)
    if name == "minilm":  # the packaged all-MiniLM-L6-v2: 12 heads per layer
        return encoders.load("bert", show_progress=False, **opts)
    return encoders.load(name, preset="tiny", show_progress=False, **opts)


def token_states(enc: Encoder) -> torch.Tensor:
    """Token states of TEXTS as one right-padded batch, real tokens only."""
    ids, mask = enc.pad(enc.tokenize(TEXTS))
    with torch.no_grad():
        return enc.eval()(ids, mask)[mask.bool()]


def removed_count(n: int, s: float) -> int:
    return n - max(1, n - int(n * s + 0.5))


@pytest.mark.parametrize("name", ARCHS + ["minilm"])
def test_pruning_dead_structures_leaves_outputs_unchanged(name):
    """Zero every parameter of the structures about to go (so they contribute nothing and rank lowest),
    prune exactly those, and the model computes the same thing: the slices are consistent."""
    enc = build(name)
    with torch.no_grad():
        for g in pruner_for(enc)(enc):
            # Every other structure from the first one: removes head 0 (RetNet's kept heads must keep
            # their own decays) and channels scattered over the whole width.
            dead = torch.arange(0, g.size, 2)[:removed_count(g.size, 0.5)]
            for s in g.slices:
                t = getattr(s.module, s.name)
                if isinstance(t, nn.Parameter):
                    t.index_fill_(s.dim, s.layout[dead].flatten(), 0.0)
    states, emb = token_states(enc), enc.encode(TEXTS)
    params = enc.num_parameters
    report = prune(enc, 0.5)
    assert enc.num_parameters < params
    assert report["realised_sparsity"] == pytest.approx(0.5, abs=0.05)
    # the same sums less their zero terms: only the rounding order changes
    network = MINILM if name == "minilm" else TINY
    assert_close(token_states(enc), states, **network)
    assert_close(enc.encode(TEXTS), emb, **network)


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_pruning_shrinks_model(name, sparsity):
    enc = build(name)
    groups = pruner_for(enc)(enc)
    expected = {g.kind: f"{g.size} -> {g.size - removed_count(g.size, sparsity)} per layer" for g in groups}
    dim, fingerprint = enc.embedding_dim, enc.fingerprint
    r = prune(enc, sparsity)

    assert r["structures"] == expected  # every group cut at the requested fraction, rounded
    # Heads come in twos at the tiny preset (2 -> 1 at 30% and 70%), so only 50% is exact.
    tol = 0.05 if sparsity == 0.5 else 0.15
    assert abs(r["realised_sparsity"] - sparsity) <= tol
    assert r["realised_sparsity"] == pytest.approx(1 - r["prunable_params_after"] / r["prunable_params_before"])
    # Only prunable tensors shrank, and the report counts them exactly.
    assert r["params_after"] == enc.num_parameters
    assert r["params_before"] - r["params_after"] == r["prunable_params_before"] - r["prunable_params_after"]
    assert r["flops_per_token_after"] < r["flops_per_token_before"]
    assert r["flops_per_token_after"] == enc.flops_per_token(enc.max_length)
    emb = enc.encode(TEXTS)
    assert emb.shape == (len(TEXTS), dim) and np.isfinite(emb).all()
    assert_unit_norm(emb)
    assert enc.arch_config["pruned"]["steps"] == [{"sparsity": sparsity, "criterion": "magnitude"}]
    assert enc.fingerprint != fingerprint


def test_report_sizes_minilm():
    enc = build("minilm")
    r = prune(enc, 0.5)
    assert r["structures"] == {"attention_heads": "12 -> 6 per layer", "ffn_channels": "1536 -> 768 per layer"}
    assert r["realised_sparsity"] == pytest.approx(0.5, abs=1e-3)
    # Attention's score cost (QK^T, AV) halves with the heads, not only the weights.
    per_layer_attn = 4.0 * enc.max_length * 6 * 32
    weights = 2.0 * (enc.num_parameters - enc.num_embedding_parameters)
    assert r["flops_per_token_after"] == pytest.approx(weights + 6 * per_layer_attn)
    assert enc.arch_config["pruned"]["attention_heads"] == [6] * 6


def kept_columns(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    """Which original columns `after`'s columns are (exact copies)."""
    return [int((before - col[:, None]).abs().sum(0).argmin()) for col in after.t()]


@pytest.mark.parametrize("name", ["gla", "bert"])
def test_activation_criterion_keeps_live_channels(name):
    """MLP channels with large weights whose activation is always zero: magnitude keeps them,
    activation removes them."""
    def build_case():
        enc = build(name)
        if name == "gla":
            mlp = enc.model.layers[0].mlp
            up_rows, gate, down = [mlp.up_proj], mlp.gate_proj, mlp.down_proj
        else:
            layer = enc.model.encoder.layer[0]
            up_rows, gate, down = [], layer.intermediate.dense, layer.output.dense
        dead = torch.arange(0, down.in_features, 2)
        with torch.no_grad():
            if name == "gla":
                gate.weight[dead] = 0  # silu(0) = 0
            else:
                gate.weight[dead] = 0
                gate.bias[dead] = -30.0  # gelu(-30) = 0
            for m in up_rows:
                m.weight[dead] *= 50
            down.weight[:, dead] *= 50
        return enc, down, down.weight.detach().clone(), set(dead.tolist())

    enc, down, original, dead = build_case()
    prune(enc, 0.5)
    assert set(kept_columns(original, down.weight)) == dead  # magnitude: the big ones

    enc, down, original, dead = build_case()
    r = prune(enc, 0.5, criterion="activation", calibration_texts=TEXTS)
    kept = kept_columns(original, down.weight)
    assert not set(kept) & dead and kept == sorted(kept)  # live ones, in their original order
    assert r["criterion"] == "activation" and r["calibration_texts"] == len(TEXTS)
    assert np.isfinite(enc.encode(TEXTS)).all()


@pytest.mark.parametrize("name", ARCHS)
def test_activation_criterion_gives_working_model(name):
    enc = build(name)
    r = prune(enc, 0.5, criterion="activation", calibration_texts=TEXTS)
    assert r["realised_sparsity"] == pytest.approx(0.5, abs=0.05)
    emb = enc.encode(TEXTS)
    assert emb.shape == (len(TEXTS), 64) and np.isfinite(emb).all()


@pytest.mark.parametrize("sparsity", [0, 1, -0.1, 1.5, 0.0, float("nan"), "0.5", True])
def test_bad_sparsity(sparsity):
    with pytest.raises(PerturbationError, match=r"sparsity must be in \(0, 1\)"):
        prune(build("gla"), sparsity)


def test_bad_criterion_and_missing_calibration():
    enc = build("gla")
    with pytest.raises(PerturbationError, match="criterion must be one of magnitude, activation"):
        prune(enc, 0.5, criterion="random")
    for texts in (None, []):
        with pytest.raises(PerturbationError, match="needs calibration texts"):
            prune(enc, 0.5, criterion="activation", calibration_texts=texts)
    assert "pruned" not in enc.arch_config  # nothing was touched


def test_unregistered_encoder_and_subclass():
    class Plain(Encoder):
        def forward(self, input_ids, attention_mask):
            return torch.zeros(*input_ids.shape, 4)

    with pytest.raises(PerturbationError, match=r"no pruner for Plain; register one with @register_pruner\(Plain\)"):
        prune(Plain(), 0.5)

    class MyBert(BertEncoder):  # a user's subclass is pruned as BERT
        pass

    torch.manual_seed(0)
    r = prune(MyBert(preset="tiny", show_progress=False), 0.5)
    assert r["structures"]["ffn_channels"] == "256 -> 128 per layer"


@pytest.mark.parametrize("name", ARCHS)
def test_bf16_autocast_after_pruning(name):
    enc = build(name, dtype="bfloat16")
    prune(enc, 0.5)
    bf16 = enc.encode(TEXTS)
    enc.dtype_name = "float32"
    fp32 = enc.encode(TEXTS)
    assert np.isfinite(bf16).all()
    # cosine of unit vectors: 0.98 allows a relative error sqrt(2 (1 - cos)) = 0.2 = 51 bf16 roundings
    # (u = 2^-8), far above the ~sqrt(8) a tiny network's 8 chained bf16 matmuls accumulate at random
    assert (bf16 * fp32).sum(1).min() > 0.98


@pytest.mark.parametrize("name", ["mamba", "retnet"])
def test_bidirectional_and_pooling_after_pruning(name):
    enc = build(name, bidirectional="concat", pooling="last")
    prune(enc, 0.7)
    emb = enc.encode(TEXTS)
    assert emb.shape == (len(TEXTS), 128) and np.isfinite(emb).all()
