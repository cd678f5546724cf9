"""The shared-block family (encoders/shared.py): one block, six mixers, parameter-matched; each
member pads, trains and reloads like any encoder."""

import numpy as np
import pytest
import torch

import encoders
from encoders import EncoderError
from encoders.blocks import Block, GatedMLP
from encoders.shared import MIXERS, parameter_table

MEMBERS = [f"shared-{m}" for m in MIXERS]
TEXTS = ["short", "dense retrieval with one block and six mixers", "",
         "a longer text about selective state spaces, retention, gating and implicit long filters " * 3]


def test_six_mixers_one_block():
    assert sorted(MIXERS) == ["bert", "gla", "hyena", "mamba", "retnet", "rwkv"]
    kinds = set()
    for name in MEMBERS:
        torch.manual_seed(0)
        enc = encoders.load(name, preset="tiny", max_length=32, show_progress=False)
        layers = enc.model.layers
        assert all(type(layer) is Block and type(layer.mlp) is GatedMLP for layer in layers)
        # the same block around a different mixer: same norms, same MLP shapes
        assert [tuple(p.shape) for n, p in layers[0].named_parameters() if not n.startswith("attn.")] == [
            (64,), (64,), (256, 64), (256, 64), (64, 256)]
        kinds.add(type(layers[0].attn).__name__)
    assert len(kinds) == 6


def test_parameter_matched_within_5_percent_at_small():
    table = parameter_table("small")
    counts = {m: row["non_embedding"] for m, row in table.items()}
    print("\n".join(f"{m:7} {row['total']:>10,} total {row['non_embedding']:>10,} non-embedding "
                    f"{row['mixer']:>9,} in mixers" for m, row in table.items()))
    assert max(counts.values()) <= 1.05 * min(counts.values()), counts
    assert len({row["total"] - row["non_embedding"] for row in table.values()}) == 1  # one embedding table


@pytest.mark.parametrize("name", MEMBERS)
def test_member_pads_trains_and_reloads(name, tmp_path):
    torch.manual_seed(0)
    enc = encoders.load(name, preset="tiny", max_length=64, show_progress=False)
    # padding: a text embedded alone equals the same text in a padded batch
    alone = np.stack([enc.encode([t])[0] for t in TEXTS])
    batched = enc.encode(TEXTS, batch_tokens=10 ** 6)
    np.testing.assert_allclose(batched, alone, atol=1e-5)  # fp32 over <= 64 positions and a few layers
    # every parameter is reached by a gradient (none is dead weight in the comparison)
    enc.train()
    ids, mask = enc.pad(enc.tokenize(TEXTS))
    enc.embed_batch(ids, mask).sum().backward()
    dead = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == [], dead
    enc.eval()
    with torch.no_grad():  # weights no preset init would give, so only a real reload can match
        for p in enc.parameters():
            p.add_(0.01 * torch.randn_like(p))
    enc.save_pretrained(tmp_path / name)
    again = encoders.load(name, checkpoint=str(tmp_path / name), max_length=64, show_progress=False)
    assert again.weights_digest() == enc.weights_digest()
    assert torch.equal(torch.from_numpy(again.encode(TEXTS)), torch.from_numpy(enc.encode(TEXTS)))


def test_a_checkpoint_of_another_mixer_is_refused(tmp_path):
    torch.manual_seed(0)
    encoders.load("shared-gla", preset="tiny", show_progress=False).save_pretrained(tmp_path / "gla")
    with pytest.raises(EncoderError, match="has the 'gla' mixer, not 'retnet'.*--encoder shared-gla"):
        encoders.load("shared-retnet", checkpoint=str(tmp_path / "gla"))


def test_attention_mixer_equals_a_hand_softmax_with_padding():
    """The shared attention against a reference written from the definition, in float64: per head,
    rotary (halves, base 10000) on q and k, softmax(q k^T / sqrt(head width)) over the real keys only."""
    from encoders.shared import BidirectionalAttention

    torch.manual_seed(0)
    B, L, D, H = 2, 7, 16, 2
    attention = BidirectionalAttention(D, H).double()
    for p in attention.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(B, L, D, dtype=torch.float64)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 4:] = 0  # the second text has 4 real tokens, then 3 pads

    q, k, v = attention.q_proj(x), attention.k_proj(x), attention.v_proj(x)
    w = D // H
    angle = torch.arange(L, dtype=torch.float64)[:, None] / 10000.0 ** (torch.arange(0, w, 2, dtype=torch.float64) / w)

    def rotate(t):
        a, b = t[..., :w // 2], t[..., w // 2:]
        return torch.cat([a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()], -1)

    heads = []
    for h in range(H):
        cols = slice(h * w, (h + 1) * w)
        scores = rotate(q[..., cols]) @ rotate(k[..., cols]).transpose(1, 2) / w ** 0.5
        scores = scores.masked_fill(mask[:, None, :] == 0, float("-inf"))
        heads.append(scores.softmax(-1) @ v[..., cols])
    expected = attention.o_proj(torch.cat(heads, -1))
    got = attention(x, mask)
    real = mask.bool()
    # the module computes rotary in float32 (encoders/retnet.py), so agreement is to float32 rounding
    # of O(1) scores and outputs: ~1e-7 relative, a few ulps through softmax and two projections
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)


def uniformity(states: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean pairwise cosine of each text's real-token states, averaged over the texts."""
    out = []
    for h, m in zip(states, mask.bool()):
        z = torch.nn.functional.normalize(h[m], dim=-1)
        n = len(z)
        out.append(((z @ z.T).sum() - n) / (n * (n - 1)))
    return float(torch.stack(out).mean())


def test_untrained_students_keep_tokens_apart():
    """Issue 17: without the embedding norm the residual stream starts at the embeddings' small scale,
    nearly uniform attention adds one vector to every token, and after six blocks the attention
    student's token states of a text are nearly parallel (mean pairwise cosine 0.98); that student
    then learnt far slower than the others. With the norm every member keeps a text's tokens apart."""
    from encoders.shared import build_model

    texts = ["dense retrieval with one block and six mixers, each sized to the same parameters", TEXTS[3]]
    seen = {}
    for name in MEMBERS:
        torch.manual_seed(0)
        enc = encoders.load(name, preset="small", max_length=64, show_progress=False)
        assert enc.cfg["embed_norm"] is True
        ids, mask = enc.pad(enc.tokenize(texts))
        with torch.no_grad():
            seen[name] = uniformity(enc.model(ids, mask), mask)
    torch.manual_seed(0)
    without = build_model({**enc.cfg, "mixer": "bert", "embed_norm": False}).eval()
    with torch.no_grad():
        seen["shared-bert without the norm"] = uniformity(without(ids, mask), mask)
    print("\ntoken-state uniformity after the stack, untrained:", {k: round(v, 2) for k, v in seen.items()})
    assert seen.pop("shared-bert without the norm") > 0.9  # the defect this guards against, reproduced
    assert max(seen.values()) < 0.3, seen


def test_a_checkpoint_saved_before_the_embedding_norm_loads_without_it(tmp_path):
    import json

    torch.manual_seed(0)
    enc = encoders.load("shared-retnet", preset="tiny", max_length=32, show_progress=False)
    enc.save_pretrained(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["embed_norm"] is True
    # an older checkpoint: no embed_norm key in config.json, no embed_norm weight
    from encoders.blocks import save_json_checkpoint
    cfg = {k: v for k, v in enc.cfg.items() if k != "embed_norm"}
    enc.model.embed_norm = None
    save_json_checkpoint(tmp_path / "old", cfg, enc.model, enc.tokenizer)
    old = encoders.load("shared-retnet", checkpoint=str(tmp_path / "old"), max_length=32, show_progress=False)
    assert old.model.embed_norm is None
    assert old.weights_digest() == enc.weights_digest()


def test_rwkv_mixer_runs_the_rwkv_encoders_wkv(monkeypatch):
    """The shared RWKV mixer picks its WKV as the RWKV encoder does (encoders/rwkv.wkv): the chunked
    form for a narrow call (one query, a long text), where transformers' CPU path steps through every
    token in Python, the recurrence for a wide one; both equal transformers' own forward."""
    import encoders.rwkv as rwkv

    torch.manual_seed(0)
    enc = encoders.load("shared-rwkv", preset="tiny", max_length=512, show_progress=False, dtype="float32")
    mixer = enc.model.layers[0].attn
    calls = []
    chunked = rwkv.wkv_chunked
    monkeypatch.setattr(rwkv, "wkv_chunked", lambda *a, **k: calls.append(a[2].shape) or chunked(*a, **k))
    for batch, length in ((1, 300), (32, 40)):  # 1 x 64 channels: narrow; 32 x 64 = 2048 > 1536: wide
        x = torch.randn(batch, length, 64)
        with torch.no_grad():
            assert torch.allclose(mixer(x, None), mixer.attention(x)[0], atol=1e-4, rtol=1e-4)
    assert calls == [torch.Size([1, 300, 64])]
