"""Mamba encoder: the chunked CPU scan against transformers' own torch path, padding, checkpoints."""

import numpy as np
import pytest
import torch
from transformers import MambaConfig, MambaForCausalLM, MambaModel
from transformers.models.mamba import modeling_mamba
from transformers.utils import logging as hf_logging

import encoders
import encoders.mamba as mamba
from encoders import EncoderError
from numerics import TINY, TINY_BACKWARD, U64, assert_close

hf_logging.set_verbosity_error()  # transformers' "falling back to the reference implementation"

TEXTS = ["a short query", "dense retrieval with state space models " * 6, "mid length text about mamba", "x"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return encoders.load("mamba", preset="tiny", show_progress=False)


def naive_inputs(batch, length, d_inner, d_state, dtype=torch.float64):
    g = torch.Generator().manual_seed(length)
    x = torch.randn(length, batch, d_inner, generator=g, dtype=dtype)
    # dt spans small and large steps, so some decays are ~1 and some underflow to 0.
    dt = torch.nn.functional.softplus(3 * torch.randn(length, batch, d_inner, generator=g, dtype=dtype) - 2)
    A = -torch.exp(torch.randn(d_inner, d_state, generator=g, dtype=dtype) + 1)
    B = torch.randn(length, batch, d_state, generator=g, dtype=dtype)
    C = torch.randn(length, batch, d_state, generator=g, dtype=dtype)
    # transformers' torch scan casts x and B to float32 whatever their dtype: make them exact there.
    return x.float().to(dtype), dt, A, B.float().to(dtype), C


@pytest.mark.parametrize("length", [1, 7, 19, 64])
@pytest.mark.parametrize("chunk", [1, 3, 8, 32])
def test_scan_equals_transformers_scan(length, chunk):
    """Our scan vs transformers' own torch scan (the per-token loop), float64, same inputs."""
    x, dt, A, B, C = naive_inputs(2, length, 12, 5)
    ours = mamba.selective_scan_chunked(x, dt, A, B, C, chunk_size=chunk)
    ref = modeling_mamba.mamba_selective_scan(x.permute(1, 2, 0), dt.permute(1, 2, 0), A, B.permute(1, 2, 0),
                                              C.permute(1, 2, 0))  # (batch, d_inner, length)
    # float64; each output sums length x d_state decayed terms, through exp: a few roundings each
    assert_close(ours.permute(1, 2, 0), ref, terms=length * 5, chains=4, unit=U64)


def test_wide_batches_scan_in_shorter_chunks(monkeypatch):
    """The chunk shrinks so that the two chunk buffers stay within SCAN_BUFFER_BYTES, and the scan in
    those chunks still equals transformers' scan."""
    assert [mamba.scan_chunk(256, b, 1536, 16) for b in (1, 8, 16, 32, 1024)] == [8, 8, 4, 2, 1]
    assert mamba.scan_chunk(5, 1, 1536, 16) == 5 and mamba.scan_chunk(256, 1, 1536, 16, chunk_size=3) == 3
    x, dt, A, B, C = naive_inputs(2, 19, 12, 5)
    monkeypatch.setattr(mamba, "SCAN_BUFFER_BYTES", 2 * 3 * 2 * 5 * 12 * 4)  # room for 3 steps at batch 2
    assert mamba.scan_chunk(19, 2, 12, 5) == 3
    ref = modeling_mamba.mamba_selective_scan(x.permute(1, 2, 0), dt.permute(1, 2, 0), A, B.permute(1, 2, 0),
                                              C.permute(1, 2, 0))
    assert_close(mamba.selective_scan_chunked(x, dt, A, B, C).permute(1, 2, 0), ref, terms=19 * 5, chains=4, unit=U64)


def test_scan_float32_accuracy():
    x, dt, A, B, C = naive_inputs(2, 200, 16, 16)
    exact = mamba.selective_scan_chunked(x, dt, A, B, C)
    ours = mamba.selective_scan_chunked(*(t.float() for t in (x, dt, A, B, C)))
    # fp32 against float64: the recurrence over 200 steps then the sum over 16 states (decays make
    # the effective length shorter; the bound does not count on it)
    assert_close(ours, exact, terms=200 * 16, chains=1)


def test_model_equals_transformers_reference(tiny):
    """The whole backbone, fp32: chunked mixers vs transformers' MambaMixer.forward, with right padding
    (pad positions included) and lengths that are no multiple of the chunk size."""
    torch.manual_seed(1)
    ids = torch.randint(1, 30522, (3, 37))
    mask = torch.ones_like(ids)
    mask[1, 21:] = 0
    mask[2, 5:] = 0
    with torch.inference_mode():
        ours = tiny(ids, mask)
        mamba.unbind_chunked_scan(tiny.model)
        try:
            ref = tiny(ids, mask)
        finally:
            mamba.bind_chunked_scan(tiny.model)
        again = tiny(ids, mask)
    assert_close(ours, ref, **TINY)  # two fp32 computations of the same network
    assert torch.equal(ours, again)  # rebinding restores the chunked path


def test_projection_bias_and_biasless_conv_equal_transformers_reference():
    """The config's other bias choices (in_proj with a bias, the conv without one; the presets have
    the opposite): chunked mixers vs transformers' MambaMixer.forward, fp32, with right padding."""
    torch.manual_seed(0)
    config = MambaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, expand=2, state_size=4, conv_kernel=4,
                         use_bias=True, use_conv_bias=False, use_cache=False)
    model = MambaModel(config).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.mixer.in_proj.bias.normal_()  # initialised to zero: give it something to get wrong
    ids = torch.randint(1, 50, (2, 13))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.inference_mode():
        mamba.bind_chunked_scan(model)
        ours = model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        mamba.unbind_chunked_scan(model)
        ref = model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    assert_close(ours, ref, terms=64, chains=4 * 2)  # widest sum: d_inner 64; ~4 reductions per layer


def test_padding_invariance(tiny):
    for pooling in ("mean", "last"):
        tiny.pooling = pooling
        alone = np.stack([tiny.encode([t])[0] for t in TEXTS])
        batched = tiny.encode(TEXTS, batch_tokens=10_000)  # one batch, padded to the longest text
        assert_close(batched, alone, **TINY, what=pooling)  # other shapes: other summation orders
    tiny.pooling = "mean"


def test_preset_checkpoint_reloads_identically(tiny, tmp_path):
    ref = tiny.encode(TEXTS)
    tiny.model.save_pretrained(tmp_path / "mamba-tiny")
    back = encoders.load("mamba", checkpoint=str(tmp_path / "mamba-tiny"), show_progress=False)
    assert back.kernel_path == "chunked-scan cpu" and back.label == "mamba-tiny"
    assert_close(back.encode(TEXTS), ref, **TINY)  # same weights; bitwise on one CPU, not promised across


def test_causal_lm_checkpoint_loads_its_backbone(tiny, tmp_path):
    """Hub checkpoints (state-spaces/mamba-*-hf) are MambaForCausalLM: backbone.* weights, own tokenizer."""
    lm = MambaForCausalLM(tiny.model.config)
    lm.backbone.load_state_dict(tiny.model.state_dict())
    lm.save_pretrained(tmp_path / "lm")
    tiny.tokenizer.save_pretrained(tmp_path / "lm")
    back = encoders.load("mamba", checkpoint=str(tmp_path / "lm"), show_progress=False)
    assert_close(back.encode(TEXTS), tiny.encode(TEXTS), **TINY)


def test_wrong_checkpoints_raise(tmp_path):
    with pytest.raises(EncoderError, match="does not load"):
        encoders.load("mamba", checkpoint=str(tmp_path / "nope"))
    torch.manual_seed(0)
    encoders.load("bert", preset="tiny").model.save_pretrained(tmp_path / "bert")
    with pytest.raises(EncoderError, match="not Mamba"):
        encoders.load("mamba", checkpoint=str(tmp_path / "bert"))
    mamba_cfg_only = tmp_path / "cfg-only"
    encoders.load("mamba", preset="tiny").model.config.save_pretrained(mamba_cfg_only)
    with pytest.raises(EncoderError, match="does not load"):
        encoders.load("mamba", checkpoint=str(mamba_cfg_only))
    with pytest.raises(EncoderError, match="unknown preset"):
        encoders.load("mamba", preset="huge")
    with pytest.raises(EncoderError, match="not both"):
        encoders.load("mamba", preset="tiny", checkpoint="x")


def test_bidirectional(tiny):
    uni = tiny.encode(TEXTS)
    torch.manual_seed(0)
    s = encoders.load("mamba", preset="tiny", bidirectional="sum", show_progress=False).encode(TEXTS)
    torch.manual_seed(0)
    c = encoders.load("mamba", preset="tiny", bidirectional="concat", show_progress=False).encode(TEXTS)
    assert s.shape == uni.shape and c.shape == (len(TEXTS), 2 * uni.shape[1])
    assert np.abs(s - uni).max() > 1e-3 and np.abs(c[:, :uni.shape[1]] * np.sqrt(2) - uni).max() > 1e-3


def test_bfloat16_autocast_close_to_float32(tiny):
    torch.manual_seed(0)
    bf16 = encoders.load("mamba", preset="tiny", dtype="bfloat16", show_progress=False)
    cos = (bf16.encode(TEXTS) * tiny.encode(TEXTS)).sum(1)
    # 0.99: a relative error sqrt(2 (1 - cos)) = 0.14 = 36 bf16 roundings (u = 2^-8), far above the
    # ~sqrt(8) that a tiny network's 8 chained bf16 matmuls accumulate at random
    assert cos.min() > 0.99


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_parameters_match_bert(preset):
    torch.manual_seed(0)
    m = encoders.load("mamba", preset=preset)
    b = encoders.load("bert", preset=preset)
    assert abs(m.num_parameters / b.num_parameters - 1) < 0.15
    cfg = m.model.config
    scan = 9.0 * cfg.intermediate_size * cfg.state_size * cfg.num_hidden_layers
    assert m.flops_per_token(256) == pytest.approx(2.0 * (m.num_parameters - m.num_embedding_parameters) + scan)


def plain_scan(x, dt, A, B, C):
    """The recurrence step by step, in differentiable torch ops: autograd's reference."""
    h, ys = x.new_zeros(x.shape[1], A.shape[1], A.shape[0]), []
    for t in range(len(x)):
        h = torch.exp(dt[t][:, None, :] * A.t()) * h + (dt[t] * x[t])[:, None, :] * B[t][..., None]
        ys.append((C[t][..., None] * h).sum(1))
    return torch.stack(ys)


@pytest.mark.parametrize("length, chunk", [(1, 8), (11, 4), (19, 8)])
def test_selective_scan_gradient_matches_autograd(length, chunk):
    """SelectiveScan's hand-written backward against autograd through the plain recurrence, float64."""
    args = [t.requires_grad_() for t in naive_inputs(2, length, 5, 3)]
    dy = torch.randn(length, 2, 5, dtype=torch.float64)
    want = torch.autograd.grad((plain_scan(*args) * dy).sum(), args)
    got = torch.autograd.grad((mamba.SelectiveScan.apply(*args, chunk) * dy).sum(), args)
    for w, g in zip(want, got):
        assert_close(g, w, terms=length * 3 * 5, chains=8, unit=U64)  # float64 forward + backward


def test_encoder_trains_through_the_chunked_path(monkeypatch):
    """With a gradient wanted, the mixer runs SelectiveScan: same outputs as inference, and the
    parameters' gradients equal those through transformers' own (differentiable) torch path."""
    torch.manual_seed(0)
    enc = encoders.load("mamba", preset="tiny", show_progress=False)
    ids = torch.randint(1, 30522, (2, 13))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.no_grad():
        inference = enc(ids, mask)
    out = enc(ids, mask)
    assert out.requires_grad and torch.equal(out.detach(), inference)
    weights = torch.randn_like(out)
    ours = torch.autograd.grad((out * weights).sum(), list(enc.parameters()), allow_unused=True)
    mamba.unbind_chunked_scan(enc.model)
    ref = torch.autograd.grad((enc(ids, mask) * weights).sum(), list(enc.parameters()), allow_unused=True)
    mamba.bind_chunked_scan(enc.model)
    for (name, _), a, b in zip(enc.named_parameters(), ours, ref):
        assert (a is None) == (b is None), name
        if a is not None:
            # Norm-wise per parameter: an element-wise rtol failed on Sapphire Rapids for one small
            # embedding-gradient element (1.5e-4 off, the tensor's values reach ~400).
            assert_close(a, b, **TINY_BACKWARD, what=name)
    # Inference never enters the autograd Function.
    monkeypatch.setattr(mamba.SelectiveScan, "apply", None)
    with torch.no_grad():
        assert torch.equal(enc(ids, mask), inference)


def test_presets_use_mamba_ssm_initialisation(tiny):
    """mamba-ssm's scales, not transformers' N(0, 0.1) for every Linear (see reference_init)."""
    model, n_layer = tiny.model, tiny.model.config.num_hidden_layers
    mixer = model.layers[0].mixer

    def uniform_bound(w):  # nn.Linear / kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        return 1 / np.sqrt(w.shape[1] * np.prod(w.shape[2:], dtype=int))

    for w, scale in ((mixer.in_proj.weight, 1), (mixer.x_proj.weight, 1), (mixer.out_proj.weight, 1 / np.sqrt(n_layer))):
        bound = uniform_bound(w) * scale
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound  # uniform on exactly that range
    assert model.embeddings.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert tiny.arch_config["init"] == "mamba-ssm"
    # transformers' own A and dt initialisation is kept: A_log = log(1..d_state) per channel.
    assert torch.equal(mixer.A_log[0], torch.log(torch.arange(1, mixer.ssm_state_size + 1, dtype=torch.float32)))


def test_scan_benchmark_agrees_and_counts_page_faults(capsys):
    """benchmarks.studies.bench_mamba_scan at a tiny size: both paths in alternating pairs, agreeing."""
    from benchmarks.studies import bench_mamba_scan

    assert bench_mamba_scan.main(["--preset", "tiny", "--batch", "2", "--length", "20", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "median of 2 alternating pairs" in out and "OK at 1e-4" in out and "page faults" in out
    assert "bound: reference / projections alone" in out
