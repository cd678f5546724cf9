"""RetNet encoder: the three retention forms against each other and against fla's naive formula,
causality / padding invariance, fla-format checkpoints (hand-written and save_pretrained), bad
checkpoints, bidirectional, parameter budget, FLOPs."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import encoders
import encoders.retnet
from encoders import EncoderError
from numerics import TINY, assert_close, assert_unit_norm
from encoders.retnet import (PARALLEL_MAX_LEN, log_decays, retention_chunkwise, retention_parallel,
                             retention_recurrent)

TEXTS = ["short", "dense retrieval with a retentive network encoder", "",
         "a much longer text about multi-scale retention, decays, chunks and rotary positions " * 8]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    enc = encoders.load("retnet", preset="tiny", show_progress=False)
    with torch.no_grad():  # norm weights away from 1, so a wrongly named norm key would show
        for name, p in enc.named_parameters():
            if name.endswith("norm.weight") or "g_norm" in name:
                p.uniform_(0.5, 1.5)
    return enc


def set_mode(enc, mode):
    for layer in enc.model.layers:
        layer.attn.mode = mode


def fla_naive_retention(q, k, v):
    """fla/ops/retention/naive.py (naive_retention), verbatim apart from layout: (B, H, L, K)."""
    _, n_heads, seq_len, d_head = q.shape
    s = (1 - q.new_tensor(2., dtype=torch.float).pow(-5. - q.new_tensor(range(n_heads), dtype=torch.float))).log2()
    n = q.new_tensor(range(seq_len), dtype=torch.float)
    n = torch.exp2((n.unsqueeze(-1) - n) * s.view(-1, 1, 1)) * n.unsqueeze(-1).ge(n)
    s = torch.einsum('bhqd,bhkd,hqk->bhqk', q * d_head ** -0.5, k, n.to(q.dtype))
    return torch.einsum('bhqk,bhkd->bhqd', s, v)


# -- the three forms ------------------------------------------------------------------------------
def test_decays_are_fla_gammas():
    # 1 - 2^-n is exact in fp32; log then exp round twice, each within ~1 ulp in vectorised libms
    assert_close(log_decays(4).exp(), 1 - 2.0 ** -np.arange(5, 9), terms=1, chains=4)


@pytest.mark.parametrize("L", [1, 7, 64, 65, 130, 200])
def test_forms_agree(L):
    torch.manual_seed(L)
    H, K, V = 3, 8, 16
    q, k, v = torch.randn(2, H, L, K), torch.randn(2, H, L, K), torch.randn(2, H, L, V)
    lg = log_decays(H)
    ref = retention_recurrent(q * K ** -0.5, k, v, lg)
    # each output sums L decayed K-term products, in another order per form (decays computed by exp)
    forms = dict(fla=fla_naive_retention(q, k, v), parallel=retention_parallel(q * K ** -0.5, k, v, lg),
                 **{f"chunk{C}": retention_chunkwise(q * K ** -0.5, k, v, lg, chunk_size=C) for C in (16, 64)})
    for name, out in forms.items():
        assert_close(out, ref, terms=L * K, chains=4, what=name)
    # and the recurrence really is o_t = sum_{s<=t} gamma^(t-s) (q_t . k_s / sqrt(K)) v_s
    t, h = L - 1, H - 1
    gamma = 1 - 2.0 ** (-5 - h)
    manual = sum(gamma ** (t - s) * (q[:, h, t] * k[:, h, s]).sum(-1, keepdim=True) * K ** -0.5 * v[:, h, s]
                 for s in range(t + 1))
    assert_close(ref[:, h, t], manual, terms=L * K, chains=4)


@pytest.mark.parametrize("L", [37, 150])  # below and above PARALLEL_MAX_LEN; 150 is no multiple of 64
def test_model_forms_agree(tiny, L):
    torch.manual_seed(1)
    ids = torch.randint(1000, 30000, (2, L))
    mask = torch.ones_like(ids)
    out = {}
    with torch.no_grad():
        for mode in ("recurrent", "parallel", "chunkwise", "auto"):
            set_mode(tiny, mode)
            out[mode] = tiny(ids, mask)
    set_mode(tiny, "auto")
    assert out["recurrent"].abs().max() > 0.5  # not a trivially small output
    for mode in ("parallel", "chunkwise", "auto"):
        assert_close(out[mode], out["recurrent"], **TINY, what=mode)


def test_causal(tiny):
    torch.manual_seed(2)
    ids = torch.randint(1000, 30000, (1, 150))
    changed = ids.clone()
    changed[0, 100:] = torch.randint(1000, 30000, (50,))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a, b = tiny(ids, mask), tiny(changed, mask)
    assert_close(a[:, :100], b[:, :100], **TINY)
    assert (a[:, 100:] - b[:, 100:]).abs().max() > 1e-2


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_padding_invariance(tiny, pooling):
    tiny.pooling = pooling
    try:
        alone = np.stack([tiny.encode([t])[0] for t in TEXTS[:3]])
        batched = tiny.encode(TEXTS)  # the long text (> PARALLEL_MAX_LEN tokens) pads the others
    finally:
        tiny.pooling = "mean"
    assert len(tiny.tokenize(TEXTS[3:])[0]) > PARALLEL_MAX_LEN
    assert_close(batched[:3], alone, **TINY)


# -- checkpoints -----------------------------------------------------------------------------------
def write_fla_checkpoint(enc, path, rename=None, **config):
    """A RetNetForCausalLM checkpoint as fla writes it: config.json with RetNetConfig's field names,
    model.safetensors with `model.` keys and an (untied) lm_head."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = dict(architectures=["RetNetForCausalLM"], attn=None, attn_mode="chunk", bos_token_id=101, conv_size=4,
               elementwise_affine=True, eos_token_id=102, expand_k=1, expand_v=2, feature_map=None,
               fuse_cross_entropy=True, fuse_norm=True, fuse_swiglu=True, hidden_act="swish", hidden_ratio=2,
               hidden_size=64, initializer_range=0.02, intermediate_size=256, max_position_embeddings=2048,
               model_type="retnet", norm_eps=1e-6, num_heads=2, num_hidden_layers=2, num_kv_heads=None,
               pad_token_id=0, tie_word_embeddings=False, use_cache=True, use_output_gate=True,
               use_short_conv=False, vocab_size=30522)
    cfg.update(config)
    (path / "config.json").write_text(json.dumps(cfg))
    state = {f"model.{k}": t.clone() for k, t in enc.model.state_dict().items()}
    state = {(rename(k) if rename else k): t for k, t in state.items()}
    state["lm_head.weight"] = torch.randn(30522, 64)
    save_file(state, str(path / "model.safetensors"))
    return path


def test_fla_checkpoint_loads(tiny, tmp_path):
    ckpt = write_fla_checkpoint(tiny, tmp_path / "retnet-fla")
    loaded = encoders.load("retnet", checkpoint=str(ckpt), show_progress=False)
    assert loaded.label == "retnet-fla" and loaded.kernel_path.startswith("torch")
    assert_close(loaded.encode(TEXTS), tiny.encode(TEXTS), **TINY)


def test_fla_checkpoint_unfused_norm_loads(tiny, tmp_path):
    # fuse_norm=False: fla names the per-head norm `g_norm` instead of `g_norm_swish_gate`
    ckpt = write_fla_checkpoint(tiny, tmp_path / "unfused", rename=lambda k: k.replace("g_norm_swish_gate", "g_norm"),
                                fuse_norm=False)
    loaded = encoders.load("retnet", checkpoint=str(ckpt), show_progress=False)
    assert hasattr(loaded.model.layers[0].attn, "g_norm")
    assert_close(loaded.encode(TEXTS), tiny.encode(TEXTS), **TINY)


def test_save_pretrained_round_trip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "saved")
    cfg = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert cfg["model_type"] == "retnet" and cfg["expand_v"] == 2 and cfg["num_heads"] == 2
    loaded = encoders.load("retnet", checkpoint=str(tmp_path / "saved"), show_progress=False)
    np.testing.assert_array_equal(loaded.encode(TEXTS), tiny.encode(TEXTS))
    assert loaded.weights_digest() == tiny.weights_digest()


def test_bad_checkpoints(tiny, tmp_path):
    with pytest.raises(EncoderError, match="not a directory"):
        encoders.load("retnet", checkpoint=str(tmp_path / "missing"))
    bert_dir = tmp_path / "bert"
    encoders.load("bert", preset="tiny", show_progress=False).model.save_pretrained(bert_dir)
    with pytest.raises(EncoderError, match="'bert' model, not fla RetNet"):
        encoders.load("retnet", checkpoint=str(bert_dir))
    # a RetNet config whose weights miss a key, or have other shapes
    ckpt = write_fla_checkpoint(tiny, tmp_path / "broken", rename=lambda k: k.replace("layers.1.attn.q_proj", "x"))
    with pytest.raises(EncoderError, match="does not match fla RetNet"):
        encoders.load("retnet", checkpoint=str(ckpt))
    ckpt = write_fla_checkpoint(tiny, tmp_path / "wide", expand_v=1)
    with pytest.raises(EncoderError, match="does not match fla RetNet"):
        encoders.load("retnet", checkpoint=str(ckpt))
    ckpt = write_fla_checkpoint(tiny, tmp_path / "hybrid", attn={"layers": [1], "num_heads": 2})
    with pytest.raises(EncoderError, match="attn="):
        encoders.load("retnet", checkpoint=str(ckpt))
    with pytest.raises(EncoderError, match="mode"):
        encoders.load("retnet", preset="tiny", mode="fast")
    with pytest.raises(EncoderError, match="needs a CUDA device"):
        encoders.load("retnet", preset="tiny", mode="fla")


# -- encoder options and budgets ------------------------------------------------------------------
def test_bidirectional(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "saved")
    uni = tiny.encode(TEXTS)
    for how, dim in (("sum", 64), ("concat", 128)):
        enc = encoders.load("retnet", checkpoint=str(tmp_path / "saved"), bidirectional=how, show_progress=False)
        out = enc.encode(TEXTS)
        assert out.shape == (len(TEXTS), dim)
        assert_unit_norm(out, how)
        assert np.abs(out[:, :64] - uni).max() > 1e-3


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_parameter_budget(preset):
    retnet = encoders.load("retnet", preset=preset, show_progress=False).num_parameters
    bert = encoders.load("bert", preset=preset, show_progress=False).num_parameters
    assert abs(retnet / bert - 1) < 0.15


def test_flops_per_token(tiny):
    weights = 2.0 * (tiny.num_parameters - tiny.num_embedding_parameters)
    K, V, H, layers = 64, 128, 2, 2
    assert tiny.flops_per_token(100) == weights + 2 * layers * 100 * (K + V)  # parallel
    assert tiny.flops_per_token(300) == weights + 2 * layers * (64 * (K + V) + 2 * K * V / H)  # chunkwise
    assert tiny.flops_per_token(1000) == tiny.flops_per_token(300)  # O(L) beyond the parallel range


@pytest.mark.skipif(not torch.cuda.is_available() or encoders.retnet.fla_chunk_retention() is None,
                    reason="needs CUDA and flash-linear-attention")
def test_fla_kernel_matches_torch(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "saved")
    fla = encoders.load("retnet", checkpoint=str(tmp_path / "saved"), device="cuda", show_progress=False)
    assert fla.kernel_path == "fla chunk"
    # fla's kernels may use tf32 matmuls (u = 2^-11): the worst-case bound is vacuous there, so this
    # takes the typical sqrt(n) growth of random rounding: sqrt(256) = 16 terms
    assert_close(fla.encode(TEXTS), tiny.encode(TEXTS), terms=16, chains=TINY["chains"], unit=2.0 ** -11)
