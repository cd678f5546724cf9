"""Hyena encoder: FFT long convolution against the direct one, causality / padding invariance,
checkpoint round trip, bad checkpoints, bidirectional, parameter budget."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

import encoders
import encoders.hyena
from encoders import EncoderError
from encoders.hyena import direct_causal_conv, fft_causal_conv
from numerics import TINY, assert_close

TEXTS = ["short", "dense retrieval with a long convolution encoder", "",
         "a much longer text about implicit filters, gating and fast fourier transforms " * 6]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return encoders.load("hyena", preset="tiny", show_progress=False)


@pytest.mark.parametrize("L", [1, 2, 7, 64, 129, 255])
def test_fft_conv_matches_direct_conv(L):
    torch.manual_seed(L)
    u, k, bias = torch.randn(3, 5, L), torch.randn(5, L), torch.randn(5)
    # FFT of length 2L: each output mixes all 2L terms through log2(2L) butterfly stages, forward and
    # inverse, then the pointwise product and the bias
    assert_close(fft_causal_conv(u, k, bias), direct_causal_conv(u, k, bias), terms=2 * L,
                 chains=2 * math.ceil(math.log2(2 * L)) + 4)
    # and the direct form really is y[t] = sum_{s<=t} k[t-s] u[s] + bias u[t]
    t = L - 1
    manual = sum(k[:, t - s] * u[..., s] for s in range(t + 1)) + bias * u[..., t]
    assert_close(direct_causal_conv(u, k, bias)[..., t], manual, terms=L + 1)  # L terms, another order


def test_model_with_fft_conv_matches_direct_conv(tiny):
    torch.manual_seed(1)
    ids = torch.randint(1000, 30000, (2, 37))  # odd length
    mask = torch.ones_like(ids)
    with torch.no_grad():
        fast = tiny(ids, mask)
        for layer in tiny.model.layers:
            layer.attn.conv = direct_causal_conv
        try:
            ref = tiny(ids, mask)
        finally:
            for layer in tiny.model.layers:
                layer.attn.conv = fft_causal_conv
    assert fast.abs().max() > 0.1  # not a trivially small output
    assert_close(fast, ref, **TINY)


def test_filters_for_length_L_are_a_prefix_of_the_full_filters(tiny):
    filt = tiny.model.layers[0].attn.filter
    with torch.no_grad():
        full = filt(filt.l_max)
        for L in (1, 13, 100):
            assert_close(filt(L), full[:, :L], **TINY, what=f"L={L}")  # the filter MLP on other shapes
    assert full.shape == (2 * 64, filt.l_max)  # one filter per channel per order
    assert full[:, -1].abs().max() < full[:, 0].abs().max()  # the decay window shortens them


def test_causal_states_ignore_later_tokens(tiny):
    torch.manual_seed(2)
    ids = torch.randint(1000, 30000, (1, 50))
    other = ids.clone()
    other[0, 20:] = torch.randint(1000, 30000, (30,))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a, b = tiny(ids, mask), tiny(other, mask)
    assert_close(a[:, :20], b[:, :20], **TINY)  # the FFT mixes later tokens' rounding in, never their values
    assert (a[:, 20:] - b[:, 20:]).abs().max() > 1e-3


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_padding_invariance(pooling):
    torch.manual_seed(0)
    enc = encoders.load("hyena", preset="tiny", pooling=pooling, show_progress=False)
    alone = np.stack([enc.encode([t])[0] for t in TEXTS])
    batched = enc.encode(TEXTS + ["padding makes the short texts wait " * 20], batch_tokens=100000)[:len(TEXTS)]
    assert_close(batched, alone, **TINY)


def test_save_and_reload_is_identical(tiny, tmp_path, capsys, caplog):
    tiny.save_pretrained(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["model_type"] == "hyena-encoder" and cfg["hidden_size"] == 64
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()  # so that caplog sees transformers' warnings
    try:
        loaded = encoders.load("hyena", checkpoint=str(tmp_path / "ckpt"), show_progress=False)
    finally:
        hf_logging.disable_propagation()
    # The tokenizer loads by its own class: no transformers warning about an unknown model type.
    assert "model of type" not in caplog.text + capsys.readouterr().err
    assert loaded.weights_digest() == tiny.weights_digest()
    assert loaded.label == "ckpt" and loaded.arch_config["order"] == 2
    assert_close(loaded.encode(TEXTS), tiny.encode(TEXTS), **TINY)


def test_bad_checkpoints_raise_encoder_error(tiny, tmp_path):
    from encoders.base import packaged_minilm_path

    with pytest.raises(EncoderError, match="not 'hyena-encoder'"):
        encoders.load("hyena", checkpoint=str(packaged_minilm_path()))  # a BERT directory
    with pytest.raises(EncoderError, match="no config.json"):
        encoders.load("hyena", checkpoint=str(tmp_path / "does-not-exist"))
    with pytest.raises(EncoderError, match="preset"):
        encoders.load("hyena", checkpoint=str(tmp_path), preset="tiny")
    good = tmp_path / "good"
    tiny.save_pretrained(good)
    # weights of another size than the config says
    wide = tmp_path / "wide"
    shutil.copytree(good, wide)
    cfg = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**cfg, "hidden_size": 96}))
    with pytest.raises(EncoderError, match="does not match"):
        encoders.load("hyena", checkpoint=str(wide))
    # missing weights file
    (good / "model.safetensors").unlink()
    with pytest.raises(EncoderError, match="no model.safetensors"):
        encoders.load("hyena", checkpoint=str(good))
    # past l_max the filter is zero (tests/test_long_docs.py): the operator is defined at any length
    assert encoders.load("hyena", preset="tiny", max_length=600).model.layers[0].attn(torch.zeros(1, 700, 64)).shape == (1, 700, 64)


def test_bidirectional(tiny):
    uni = tiny.encode(TEXTS)
    both = {m: encoders.load("hyena", preset="tiny", bidirectional=m, show_progress=False) for m in ("sum", "concat")}
    for enc in both.values():
        enc.load_state_dict(tiny.state_dict())
    s, c = both["sum"].encode(TEXTS), both["concat"].encode(TEXTS)
    assert s.shape == (len(TEXTS), 64) and c.shape == (len(TEXTS), 128)
    assert np.abs(s - uni).max() > 1e-3 and np.abs(c[:, :64] - uni).max() > 1e-3
    # concat's first half is the forward pass (normalised over the whole vector)
    fwd = c[:, :64] / np.linalg.norm(c[:, :64], axis=1, keepdims=True)
    assert_close(fwd, uni, **TINY)


def test_bfloat16_autocast_is_close(tiny):
    enc = encoders.load("hyena", preset="tiny", dtype="bfloat16", show_progress=False)
    enc.load_state_dict(tiny.state_dict())
    cos = (enc.encode(TEXTS) * tiny.encode(TEXTS)).sum(1)
    # 0.99: a relative error sqrt(2 (1 - cos)) = 0.14 = 36 bf16 roundings (u = 2^-8), far above the
    # ~sqrt(8) that a tiny network's 8 chained bf16 matmuls accumulate at random
    assert cos.min() > 0.99


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_parameter_count_matches_bert(preset):
    torch.manual_seed(0)
    hyena = encoders.load("hyena", preset=preset, show_progress=False)
    bert = encoders.load("bert", preset=preset, show_progress=False)
    assert abs(hyena.num_parameters / bert.num_parameters - 1) < 0.15
    f256, f1024 = hyena.flops_per_token(256), hyena.flops_per_token(1024)
    assert 0 < f256 < f1024 < 1.2 * f256  # the mixer grows with log L only


def test_pads_are_zeroed_around_the_long_convolution(tiny):
    # Right padding, huge values at the pads: the FFT mixes all positions, so without zeroing the
    # pads their rounding error (~1e-7 x 1e6 per tap) would reach the real positions.
    torch.manual_seed(3)
    hyena = tiny.model.layers[0].attn
    x = torch.randn(2, 20, 64)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[0, 12:] = 0
    noisy = x.clone()
    noisy[0, 12:] = 1e6
    with torch.no_grad():
        a, b = hyena(x, mask), hyena(noisy, mask)
    np.testing.assert_allclose(b[0, :12], a[0, :12], atol=1e-5)  # fp32 FFT of O(1) values over 40 bins
    np.testing.assert_allclose(b[1], a[1], atol=0)


def test_short_convolution_starts_without_a_bias():
    torch.manual_seed(0)
    enc = encoders.load("hyena", preset="tiny", show_progress=False)
    for layer in enc.model.layers:
        assert torch.count_nonzero(layer.attn.short_filter.bias) == 0
        assert layer.attn.short_filter.weight.abs().max() > 0  # the weights keep PyTorch's init
