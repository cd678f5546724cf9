import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import encoders
import encoders.gla as gla
from encoders.base import EncoderError, packaged_minilm_path
from numerics import TINY, assert_close, assert_unit_norm

TEXTS = ["gated linear attention", "a retrieval query about state space models",
         "a short one", "x"]
LONG = " ".join(["a much longer document that forces heavy right padding in the batch"] * 12)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return encoders.load("gla", preset="tiny", show_progress=False, **kw)


def random_gla_inputs(B, T, H, K, V, strength=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, H, K, generator=g), torch.randn(B, T, H, K, generator=g)
    v = torch.randn(B, T, H, V, generator=g)
    gk = F.logsigmoid(torch.randn(B, T, H, K, generator=g) * 3 - strength) / 16
    return q, k, v, gk


@pytest.mark.parametrize("T", [1, 3, 16, 37, 50])
@pytest.mark.parametrize("chunk,sub", [(16, 4), (32, 8), (8, 8)])
def test_chunk_equals_naive_recurrent(T, chunk, sub):
    q, k, v, gk = random_gla_inputs(2, T, 3, 8, 12)
    ref, _ = gla.naive_recurrent_gla(q, k, v, gk)
    out = gla.chunk_gla_torch(q, k, v, gk, chunk_size=chunk, sub_chunk_size=sub)
    assert out.shape == ref.shape
    assert_close(out, ref, terms=T * 8, chains=4)  # each output: T steps of 8-term products


def test_chunk_is_stable_with_strong_gates():
    # Per-step log decay down to about -20: cumulative sums reach -1000 within one chunk, which
    # would overflow exp(-G) in a naive factorisation.
    q, k, v, gk = random_gla_inputs(1, 70, 2, 8, 8, strength=300)
    assert gk.min() < -15
    ref, _ = gla.naive_recurrent_gla(q, k, v, gk)
    out = gla.chunk_gla_torch(q, k, v, gk)
    assert torch.isfinite(out).all()
    # log-decay sums reach ~1000: exp of a difference of such sums is off by ~1000 u relatively
    assert_close(out, ref, terms=70 * 8 + int(-gk.sum(1).min()), chains=4)


def test_encoder_chunk_equals_recurrent_mode():
    fast, slow = tiny(mode="chunk"), tiny(mode="recurrent")
    assert fast.kernel_path == "torch chunk" and slow.kernel_path == "torch naive recurrent"
    ids = torch.randint(1000, 30000, (3, 45))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert_close(fast(ids, mask), slow(ids, mask), **TINY)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_padding_invariance(pooling):
    enc = tiny(pooling=pooling)
    alone = np.stack([enc.encode([t])[0] for t in TEXTS])
    batched = enc.encode(TEXTS + [LONG, LONG + " again"], batch_tokens=100000)[:len(TEXTS)]
    assert_close(batched, alone, **TINY)


def test_save_pretrained_roundtrip(tmp_path):
    enc = tiny()
    enc.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "gla" and cfg["architectures"] == ["GLAForCausalLM"]
    from safetensors import safe_open
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"model.embeddings.weight", "model.layers.0.attn.q_proj.weight", "model.layers.0.attn.gk_proj.1.bias",
            "model.layers.0.attn.g_norm_swish_gate.weight", "model.layers.1.mlp.up_proj.weight", "model.norm.weight"} <= keys
    back = encoders.load("gla", checkpoint=str(tmp_path), show_progress=False)
    assert_close(back.encode(TEXTS), enc.encode(TEXTS), **TINY)
    assert back.weights_digest() == enc.weights_digest()


def write_fla_checkpoint(path, state, **overrides):
    """A GLAForCausalLM directory as fla 0.6 writes it (GLAConfig's field names, `model.` keys, an LM head)."""
    cfg = dict(architectures=["GLAForCausalLM"], attn=None, attn_mode="chunk", attnres_block_size=None,
               bos_token_id=101, clamp_min=None, conv_size=4, dtype="float32", elementwise_affine=True,
               eos_token_id=102, expand_k=0.5, expand_v=1.0, feature_map=None, fuse_cross_entropy=True,
               fuse_linear_cross_entropy=False, fuse_norm=True, fuse_swiglu=True, hidden_act="swish", hidden_ratio=4,
               hidden_size=64, initializer_range=0.02, intermediate_size=None, max_position_embeddings=2048,
               model_type="gla", norm_eps=1e-06, num_heads=2, num_hidden_layers=2, num_kv_heads=None, pad_token_id=0,
               tie_word_embeddings=False, transformers_version="5.23.0", use_cache=True, use_gk=True, use_gv=False,
               use_l2warp=False, use_output_gate=True, use_short_conv=False, vocab_size=30522)
    cfg.update(overrides)
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))


def fla_state(enc):
    state = {f"model.{k}": v.clone() for k, v in enc.model.state_dict().items()}
    state["lm_head.weight"] = torch.randn(30522, 64)  # GLAForCausalLM's head; ignored by the encoder
    return state


def test_loads_fla_format_checkpoint(tmp_path):
    enc = tiny(seed=3)
    with torch.no_grad():  # non-trivial norms and gate biases, so that a misplaced weight shows
        for name, p in enc.model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)
    ids = torch.randint(1000, 30000, (2, 40))
    with torch.no_grad():
        want = enc(ids, torch.ones_like(ids))

    write_fla_checkpoint(tmp_path / "fused", fla_state(enc))
    # fuse_norm=False: fla names the output norm `g_norm` (same arithmetic with the swish gate).
    unfused = {k.replace("g_norm_swish_gate", "g_norm"): v for k, v in fla_state(enc).items()}
    write_fla_checkpoint(tmp_path / "unfused", unfused, fuse_norm=False)
    # Older fla stored the MLP's gate and up projections as one gate_proj (gate first).
    old = fla_state(enc)
    for i in range(2):
        pre = f"model.layers.{i}.mlp."
        old[pre + "gate_proj.weight"] = torch.cat([old[pre + "gate_proj.weight"], old.pop(pre + "up_proj.weight")])
    write_fla_checkpoint(tmp_path / "old_mlp", old)

    for name in ("fused", "unfused", "old_mlp"):
        got = encoders.load("gla", checkpoint=str(tmp_path / name), show_progress=False)
        assert got.label == name
        with torch.no_grad():
            assert_close(got(ids, torch.ones_like(ids)), want, **TINY, what=name)


def test_bad_checkpoints_raise(tmp_path):
    with pytest.raises(EncoderError, match="not fla GLA"):
        encoders.load("gla", checkpoint=str(packaged_minilm_path()))
    with pytest.raises(EncoderError):
        encoders.load("gla", checkpoint=str(tmp_path / "does-not-exist"))
    enc = tiny()
    write_fla_checkpoint(tmp_path / "conv", fla_state(enc), use_short_conv=True)
    with pytest.raises(EncoderError, match="use_short_conv"):
        encoders.load("gla", checkpoint=str(tmp_path / "conv"))
    write_fla_checkpoint(tmp_path / "shape", fla_state(enc), num_heads=2, expand_k=1.0)
    with pytest.raises(EncoderError, match="does not match"):
        encoders.load("gla", checkpoint=str(tmp_path / "shape"))
    with pytest.raises(EncoderError):
        encoders.load("gla", preset="tiny", mode="fast")
    with pytest.raises(EncoderError):
        encoders.load("gla", preset="tiny", mode="fla")  # needs CUDA


def test_bidirectional():
    uni = tiny().encode(TEXTS)
    for how, dim in (("sum", 64), ("concat", 128)):
        bi = tiny(bidirectional=how).encode(TEXTS)
        assert bi.shape == (len(TEXTS), dim)
        assert_unit_norm(bi, how)
        assert np.abs(bi[:, :64] - uni).max() > 1e-3  # a real difference: >> the rounding bound (~1e-5)


def test_parameter_counts_and_flops():
    for preset in ("tiny", "small"):
        g = encoders.load("gla", preset=preset, show_progress=False)
        b = encoders.load("bert", preset=preset, show_progress=False)
        assert abs(g.num_parameters / b.num_parameters - 1) < 0.15, preset
    # small: 2 x non-embedding weights plus the recurrence (grows with the chunk, not the length)
    extra = g.flops_per_token(256) - 2.0 * (g.num_parameters - g.num_embedding_parameters)
    assert 0 < extra < 0.2 * g.flops_per_token(256)
    assert g.flops_per_token(4096) == g.flops_per_token(256)
    assert g.is_causal


def test_chunk_mode_trains_through_the_recurrent_form(monkeypatch):
    """The chunked form writes in place (no autograd); with a gradient wanted the layer runs the
    step-by-step form: outputs close to inference's chunked ones, gradients those of mode="recurrent"."""
    fast, slow = tiny(mode="chunk"), tiny(mode="recurrent")
    ids = torch.randint(1000, 30000, (2, 37))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        inference = fast(ids, mask)
    weights = torch.randn_like(inference)
    out = fast(ids, mask)
    assert_close(out, inference, **TINY)  # the recurrent form against the chunked one
    got = torch.autograd.grad((out * weights).sum(), list(fast.parameters()), allow_unused=True)
    want = torch.autograd.grad((slow(ids, mask) * weights).sum(), list(slow.parameters()), allow_unused=True)
    for (name, _), g, w in zip(fast.named_parameters(), got, want):
        assert (g is None) == (w is None), name
        if g is not None:
            assert torch.equal(g, w), name
    # Inference stays on the chunked form.
    monkeypatch.setattr(gla, "naive_recurrent_gla", None)
    with torch.no_grad():
        assert torch.equal(fast(ids, mask), inference)
