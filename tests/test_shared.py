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
