import copy

import numpy as np
import pytest
import torch

import encoders
import encoders.rwkv  # noqa: F401  (registers "rwkv")
from encoders.base import EncoderError
from numerics import TINY, assert_close

TEXTS = ["short one", "a somewhat longer text about dense retrieval with recurrent networks",
         "photosynthesis turns light into sugar " * 12]


def tiny(**opts):
    torch.manual_seed(0)
    return encoders.load("rwkv", preset="tiny", show_progress=False, **opts)


def test_forward_equals_transformers_reference():
    # Our block loop (rescaling on activations, not weights) against RwkvModel.forward, with
    # rescale_every=1 so that the rescaling is exercised at every layer; odd lengths.
    enc = tiny()
    enc.model.config.rescale_every = 1
    ref_model = copy.deepcopy(enc.model).eval()
    before = enc.weights_digest()
    for length in (1, 7, 37):
        ids = torch.randint(0, 30522, (3, length))
        mask = torch.ones_like(ids)
        with torch.no_grad():
            ours = enc(ids, mask)
            # use_cache=False: transformers' cached one-token path disagrees with its own sequence
            # path (position 0 of a longer input); the sequence path is the causal reference.
            ref = ref_model(input_ids=ids, use_cache=False).last_hidden_state
        assert_close(ours, ref, **TINY, what=f"length {length}")
    assert ref_model.layers_are_rescaled  # transformers rescaled its copy's weights in place...
    assert enc.weights_digest() == before  # ...ours are untouched, so the fingerprint is stable


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_padding_does_not_change_embedding(pooling):
    enc = tiny(pooling=pooling)
    alone = enc.encode(TEXTS[:1])
    batched = enc.encode(TEXTS)  # padded to the longest text
    assert enc.last_stats["batches"] == 1
    assert_close(batched[0], alone[0], **TINY)
    assert_close(enc.encode(TEXTS[1:2])[0], batched[1], **TINY)


def test_save_pretrained_reloads_identically(tmp_path):
    enc = tiny()
    enc.model.save_pretrained(tmp_path / "ckpt")  # config.json + model.safetensors, no tokenizer
    again = encoders.load("rwkv", checkpoint=str(tmp_path / "ckpt"), show_progress=False)
    assert again.weights_digest() == enc.weights_digest()
    assert_close(again.encode(TEXTS), enc.encode(TEXTS), **TINY)
    assert again.label == "ckpt" and again.arch_config["hidden_size"] == 64


def test_causal_lm_checkpoint_loads(tmp_path):
    # The hub's RWKV/* checkpoints are RwkvForCausalLM: backbone under `rwkv.`, plus an LM head.
    from transformers import RwkvForCausalLM

    enc = tiny()
    torch.manual_seed(1)
    lm = RwkvForCausalLM(enc.model.config)
    lm.save_pretrained(tmp_path / "lm")
    enc.tokenizer.save_pretrained(tmp_path / "lm")  # a checkpoint that ships its tokenizer
    loaded = encoders.load("rwkv", checkpoint=str(tmp_path / "lm"), show_progress=False)
    ids = torch.randint(0, 30522, (2, 9))
    with torch.no_grad():
        ref = lm.eval().rwkv(input_ids=ids).last_hidden_state
        assert_close(loaded(ids, torch.ones_like(ids)), ref, **TINY)


def to_blinkdl(model) -> dict:
    """RwkvModel state dict under BlinkDL's RWKV-4 .pth key names (as RWKV-LM saves them)."""
    names = {"embeddings.": "emb.", "pre_ln.": "ln0.", "attention.": "att.", "feed_forward.": "ffn.",
             "time_mix_key": "time_mix_k", "time_mix_value": "time_mix_v", "time_mix_receptance": "time_mix_r"}
    out = {}
    for key, value in model.state_dict().items():
        for old, new in names.items():
            key = key.replace(old, new)
        out[key] = value.clone()
    out["head.weight"] = torch.zeros_like(out["emb.weight"])
    return out


def test_blinkdl_pth_loads(tmp_path):
    enc = tiny()
    with torch.no_grad():  # BlinkDL files are usually bf16: round the reference weights the same way
        for p in enc.model.parameters():
            p.copy_(p.bfloat16().float())
    sd = {k: v.bfloat16() for k, v in to_blinkdl(enc.model).items()}
    assert {"emb.weight", "blocks.0.ln0.weight", "blocks.1.att.time_mix_k", "blocks.1.ffn.time_mix_r",
            "blocks.0.att.time_first", "ln_out.bias"} <= set(sd)
    sd["blocks.0.att.time_decay"] = sd["blocks.0.att.time_decay"].reshape(1, 1, -1)  # some exports keep 3-D
    torch.save(sd, tmp_path / "RWKV-4-tiny.pth")
    loaded = encoders.load("rwkv", checkpoint=str(tmp_path / "RWKV-4-tiny.pth"), show_progress=False)
    assert loaded.label == "RWKV-4-tiny" and loaded.arch_config["intermediate_size"] == 224
    assert loaded.weights_digest() == enc.weights_digest()
    assert_close(loaded.encode(TEXTS), enc.encode(TEXTS), **TINY)


def test_wrong_checkpoints_raise(tmp_path):
    bert = encoders.load("bert", preset="tiny", show_progress=False)
    bert.model.save_pretrained(tmp_path / "bert")
    with pytest.raises(EncoderError, match="'bert' model, not RWKV-4"):
        encoders.load("rwkv", checkpoint=str(tmp_path / "bert"))
    with pytest.raises(EncoderError, match="does not load"):
        encoders.load("rwkv", checkpoint=str(tmp_path / "nowhere"))
    with pytest.raises(EncoderError, match="does not load"):
        encoders.load("rwkv", checkpoint=str(tmp_path / "nowhere.pth"))
    sd = to_blinkdl(tiny().model)
    torch.save({"blocks.0.att.ln_x.weight": torch.ones(64), **sd}, tmp_path / "v5.pth")
    with pytest.raises(EncoderError, match="RWKV-5, not RWKV-4"):
        encoders.load("rwkv", checkpoint=str(tmp_path / "v5.pth"))
    torch.save({k: v for k, v in sd.items() if "ln2" not in k}, tmp_path / "broken.pth")
    with pytest.raises(EncoderError, match="does not match RWKV-4"):
        encoders.load("rwkv", checkpoint=str(tmp_path / "broken.pth"))
    torch.save({**sd, "emb.weight": torch.zeros(50277, 64)}, tmp_path / "pile.pth")
    with pytest.raises(EncoderError, match="carries no tokenizer"):
        encoders.load("rwkv", checkpoint=str(tmp_path / "pile.pth"))
    with pytest.raises(EncoderError):
        encoders.load("rwkv", preset="huge")
    with pytest.raises(EncoderError):
        encoders.load("rwkv", preset="tiny", checkpoint=str(tmp_path / "bert"))


def test_bidirectional_shapes():
    uni = tiny().encode(TEXTS)
    both = tiny(bidirectional="sum").encode(TEXTS)
    cat = tiny(bidirectional="concat").encode(TEXTS)
    assert uni.shape == both.shape == (3, 64) and cat.shape == (3, 128)
    assert np.abs(both - uni).max() > 1e-3
    # concat = [forward, backward] each normalised together: the forward half is the unidirectional one
    assert_close(cat[:, :64] / np.linalg.norm(cat[:, :64], axis=1, keepdims=True), uni, **TINY)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_parameters_match_bert(preset):
    torch.manual_seed(0)
    rwkv = encoders.load("rwkv", preset=preset).num_parameters
    bert = encoders.load("bert", preset=preset).num_parameters
    assert abs(rwkv / bert - 1) < 0.15


def test_flops_per_token_adds_wkv():
    enc = tiny()
    dense = 2.0 * (enc.num_parameters - enc.num_embedding_parameters)
    assert enc.flops_per_token(256) == dense + 24 * 64 * 2
    assert enc.flops_per_token(256) == enc.flops_per_token(4096)  # an RNN: constant per token


# -- the chunked WKV against transformers' recurrence ------------------------------------------------
def wkv_inputs(batch, length, channels, key_scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    key = key_scale * torch.randn(batch, length, channels, generator=g)
    value = torch.randn(batch, length, channels, generator=g)
    # time_decay from -3 (decay e^-0.05 per step) to 3 (e^-20: the state is gone after a step or two)
    time_decay = torch.linspace(-3, 3, channels)
    time_first = 2 * torch.randn(channels, generator=g)
    return time_decay, time_first, key, value


def close(ours, ref):
    """fp32: both sum at most `length` terms of e^(..) v, each rounded to ~6e-8 of its size; 1e-4 of
    the output's scale leaves room for that at every length tested here."""
    return (ours - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("length,chunk", [(1, 32), (5, 32), (37, 8), (64, 16), (100, 32), (130, 64)])
def test_wkv_chunked_equals_recurrence(length, chunk):
    from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

    from encoders.rwkv import wkv_chunked

    for key_scale in (1.0, 6.0):  # keys within a chunk spanning a few nats and ~50
        args = wkv_inputs(3, length, 16, key_scale, seed=length)
        ours = wkv_chunked(*args, chunk_size=chunk)
        assert ours is not None and close(ours, rwkv_linear_attention_cpu(*args)[0])


def test_wkv_chunked_gradient_equals_recurrence():
    from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

    from encoders.rwkv import wkv_chunked

    grads = []
    weight = torch.randn(2, 45, 8)
    for fn in (lambda *a: wkv_chunked(*a, chunk_size=16), lambda *a: rwkv_linear_attention_cpu(*a)[0]):
        args = [t.clone().requires_grad_() for t in wkv_inputs(2, 45, 8)]
        (fn(*args) * weight).sum().backward()
        grads.append([a.grad for a in args])
    for ours, ref in zip(*grads):
        assert close(ours, ref)


def test_wkv_chunked_declines_keys_beyond_its_range():
    from encoders.rwkv import WKV_RANGE, wkv_chunked

    time_decay, time_first, key, value = wkv_inputs(1, 20, 4)
    key[0, 3, 0] = WKV_RANGE + 10  # one key far above the rest of its chunk
    assert wkv_chunked(time_decay, time_first, key, value) is None


def test_encoder_wkv_modes_agree():
    ids = torch.randint(1000, 30522, (2, 70))
    mask = torch.ones_like(ids)
    outs = {}
    for mode in ("recurrent", "chunked", "auto"):
        enc = tiny(wkv=mode)
        with torch.no_grad():
            outs[mode] = enc(ids, mask)
    assert close(outs["chunked"], outs["recurrent"]) and close(outs["auto"], outs["recurrent"])
    with pytest.raises(EncoderError, match="wkv"):
        tiny(wkv="parallel")


def test_wkv_form_is_the_form_wkv_runs(monkeypatch):
    """`wkv_form` names what `wkv` runs: chunked up to WKV_CHUNKED_WIDTH batch x channels under auto,
    the recurrence beyond it, and what a mode forces."""
    from transformers.models.rwkv import modeling_rwkv as hf

    from encoders import rwkv

    calls = []
    recurrence = hf.rwkv_linear_attention_cpu
    monkeypatch.setattr(hf, "rwkv_linear_attention_cpu", lambda *a: calls.append("recurrence") or recurrence(*a))
    att = tiny().model.blocks[0].attention
    channels = att.time_decay.numel()
    for batch, mode in [(1, "auto"), (rwkv.WKV_CHUNKED_WIDTH // channels + 1, "auto"), (1, "recurrent"), (8, "chunked")]:
        key, value = torch.randn(2, batch, 6, channels)
        calls.clear()
        rwkv.wkv(att, key, value, mode)
        assert rwkv.wkv_form(key, mode) == (calls[0] if calls else "chunked"), (batch, mode)
    assert rwkv.wkv_form(torch.randn(1, 6, channels), "auto") == "chunked"
    assert rwkv.wkv_form(torch.randn(rwkv.WKV_CHUNKED_WIDTH // channels + 1, 6, channels), "auto") == "recurrence"
