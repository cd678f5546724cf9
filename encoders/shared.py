"""One block for all six: the shared-block family, for comparing sequence mixers and nothing else.

Every member is `blocks.MixerModel`: token embeddings and an RMSNorm on them, then `num_layers`
pre-norm residual blocks

    x = x + mixer(RMSNorm(x), mask)
    x = x + SwiGLU-MLP(RMSNorm(x))

and a final RMSNorm, at one preset size (`encoders.base.PRESETS`). Only the mixer differs, as in
zoology's mixer comparisons. The mixers, declared in `MIXERS` below, each sized to ~4 d^2 parameters
(what BERT's attention has), so that the members are parameter-matched (within 5% at `small`; see
`parameter_table`):

    bert    bidirectional softmax attention (q, k, v, o with biases; rotary positions, as the
            family has no position embeddings)
    mamba   Mamba's selective SSM (transformers' MambaMixer on encoders/mamba.py's chunked scan),
            inner width 1.25 d instead of Mamba's 2 d (its own block has no MLP to pay for)
    rwkv    RWKV-4's time-mix (transformers' RwkvSelfAttention: token shift + WKV)
    hyena   the Hyena operator of encoders/hyena.py (order 2, implicit filters)
    retnet  multi-scale retention of encoders/retnet.py (key width d/2, value width d, output gate)
    gla     gated linear attention of encoders/gla.py (fla's published shape: key d/2, value d)

No member has a position table (attention's positions are rotary), so every member encodes texts of any
length (`--max-length 8192`). `l_max`, fixed when a member is built, is the length of Hyena's filters
(zero beyond it: encoders/hyena.py) and of RWKV's CUDA kernel; the CPU paths have no limit.

Each is registered as an encoder named `shared-<mixer>` (`--encoder shared-hyena --preset small`),
and saves and reloads its own checkpoint format (config.json with model_type "shared-block",
model.safetensors). The checkpoint-compatible encoders (`--encoder hyena`, ...) are untouched.
Mixers that come with an upstream initialisation (Mamba's dt and A, RWKV's decays and token-shift
mixes) keep it (`own_init`); the others get the block's normal(0, 0.02).

Why the embedding norm: students start from the teacher's token embeddings (rms ~0.06, made for
BERT's embedding LayerNorm). Without a norm the residual stream starts that small, and what each
untrained block adds (rms 0.04-0.27 at `small`) is as large or larger. The attention mixer, nearly
uniform at init, adds one and the same vector to every token of a text: after six blocks a text's
token states had mean pairwise cosine 0.98 (with the norm: 0.03), and the attention student learnt
far slower than the others (issue 17; `tests/test_shared.py::test_untrained_students_keep_tokens_apart`). Checkpoints
saved before the norm (no `embed_norm` in config.json) load without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import register_encoder
from .base import PRESETS, Encoder, EncoderError, resolve_preset
from .blocks import MixerModel, gated_mlp_size, init_from_json_checkpoint, read_json_config, save_json_checkpoint

MODEL_TYPE = "shared-block"


# -- the mixers ---------------------------------------------------------------------------------
class BidirectionalAttention(nn.Module):
    """Softmax self-attention over all real tokens (pads masked as keys), BERT's projections (with
    biases), rotary positions on queries and keys (encoders/retnet.py's `rotary`)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        if hidden_size % num_heads or (hidden_size // num_heads) % 2:
            raise EncoderError(f"attention: hidden size {hidden_size} must split into {num_heads} heads of even width")
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(hidden_size, hidden_size) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from .retnet import rotary

        def heads(t):  # (B, L, D) -> (B, H, L, D/H)
            return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        q, k = rotary(q).to(v.dtype), rotary(k).to(v.dtype)
        keys = None if bool(mask.all()) else mask[:, None, None, :].bool()  # (B, 1, 1, L)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)
        return self.o_proj(o.transpose(1, 2).flatten(-2))


class MambaMixer(nn.Module):
    """transformers' MambaMixer as a block mixer, on encoders/mamba.py's chunked scan (CPU) or
    mamba-ssm's kernels (CUDA, when installed), with mamba-ssm's initialisation."""
    own_init = True

    def __init__(self, mixer: nn.Module):
        super().__init__()
        self.mixer = mixer

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mixer(x, attention_mask=None if bool(mask.all()) else mask)


class RwkvTimeMix(nn.Module):
    """transformers' RwkvSelfAttention (RWKV-4 time-mix) as a block mixer, with RWKV's initialisation.
    Causal and recurrent: with right padding real tokens never see a pad. Its forward, with WKV as the
    RWKV encoder runs it (encoders/rwkv.wkv: the chunked form for narrow calls such as one query or a
    long text, where transformers' CPU path loops over every time step)."""
    own_init = True

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.attention = attention

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from .rwkv import wkv

        att = self.attention
        receptance, key, value, _ = att.extract_key_value(x)
        return att.output(receptance * wkv(att, key, value))


def attention_mixers(cfg: dict) -> list[nn.Module]:
    return [BidirectionalAttention(cfg["hidden_size"], cfg["num_heads"]) for _ in range(cfg["num_layers"])]


def mamba_mixers(cfg: dict) -> list[nn.Module]:
    from transformers import MambaConfig, MambaModel

    from .mamba import D_CONV, D_STATE, bind_chunked_scan, mamba_kernels_available, reference_init

    config = MambaConfig(vocab_size=1, hidden_size=cfg["hidden_size"], num_hidden_layers=cfg["num_layers"], expand=1,
                         state_size=D_STATE, conv_kernel=D_CONV, use_cache=False)
    config.intermediate_size = cfg["mamba_inner"]  # MambaConfig takes only an integer `expand`
    model = MambaModel(config)  # transformers' init (A, D, dt), then mamba-ssm's (encoders/mamba.py)
    reference_init(model)
    if not (torch.cuda.is_available() and mamba_kernels_available()):
        bind_chunked_scan(model)
    return [MambaMixer(layer.mixer) for layer in model.layers]


def rwkv_mixers(cfg: dict) -> list[nn.Module]:
    from transformers import RwkvConfig, RwkvModel

    d = cfg["hidden_size"]
    model = RwkvModel(RwkvConfig(vocab_size=1, hidden_size=d, num_hidden_layers=cfg["num_layers"],
                                 attention_hidden_size=d, intermediate_size=d,
                                 context_length=max(1024, cfg["l_max"])))  # RWKV's own init per layer
    return [RwkvTimeMix(block.attention) for block in model.blocks]


def hyena_mixers(cfg: dict) -> list[nn.Module]:
    from .hyena import Hyena

    return [Hyena(cfg["hidden_size"], cfg["l_max"], order=2, short_filter_order=3, emb_dim=33, filter_order=64)
            for _ in range(cfg["num_layers"])]


def retnet_mixers(cfg: dict) -> list[nn.Module]:
    from .retnet import MultiScaleRetention

    return [MultiScaleRetention(cfg["hidden_size"], cfg["num_heads"], expand_k=0.5, expand_v=1.0)
            for _ in range(cfg["num_layers"])]


def gla_mixers(cfg: dict) -> list[nn.Module]:
    from .gla import GatedLinearAttention

    return [GatedLinearAttention(cfg["hidden_size"], cfg["gla_heads"], expand_k=0.5, expand_v=1.0)
            for _ in range(cfg["num_layers"])]


@dataclass(frozen=True)
class MixerSpec:
    build: Callable[[dict], list[nn.Module]]  # config -> one mixer per layer
    causal: bool  # whether a token sees only the tokens before it (then --bidirectional applies)


MIXERS: dict[str, MixerSpec] = {
    "bert": MixerSpec(attention_mixers, causal=False),
    "mamba": MixerSpec(mamba_mixers, causal=True),
    "rwkv": MixerSpec(rwkv_mixers, causal=True),
    "hyena": MixerSpec(hyena_mixers, causal=True),
    "retnet": MixerSpec(retnet_mixers, causal=True),
    "gla": MixerSpec(gla_mixers, causal=True),
}


def preset_config(mixer: str, preset: str, vocab_size: int, pad_token_id: int, max_length: int) -> dict:
    """Everything that builds a member: the preset's size, the shared MLP, each mixer's knobs."""
    p = PRESETS[preset]
    d = p["hidden_size"]
    return dict(model_type=MODEL_TYPE, mixer=mixer, vocab_size=vocab_size, hidden_size=d,
                num_layers=p["num_layers"], num_heads=p["num_heads"], intermediate_size=gated_mlp_size(d),
                mamba_inner=int(1.25 * d), gla_heads=max(2, p["num_heads"] // 3),
                l_max=max(512, max_length), norm_eps=1e-6, pad_token_id=pad_token_id, embed_norm=True)


def build_model(cfg: dict) -> MixerModel:
    mixers = MIXERS[cfg["mixer"]].build(cfg)
    return MixerModel(cfg["vocab_size"], cfg["hidden_size"], cfg["num_layers"], lambda i: mixers[i],
                      cfg["intermediate_size"], norm_eps=cfg["norm_eps"], pad_token_id=cfg["pad_token_id"],
                      embed_norm=cfg.get("embed_norm", False))  # absent from checkpoints saved before it


# -- the encoders -------------------------------------------------------------------------------
class SharedBlockEncoder(Encoder):
    """A member of the shared-block family; subclasses (registered below) fix `mixer`."""

    mixer: str = ""

    def __init__(self, checkpoint: str | None = None, preset: str | None = None, **opts):
        preset = resolve_preset(checkpoint, preset)
        if checkpoint:
            cfg, source = init_from_json_checkpoint(self, checkpoint, opts, lambda path: read_config(path, self.mixer),
                                                    build_model)
        else:
            super().__init__(opts.pop("tokenizer", None), **opts)
            cfg = preset_config(self.mixer, preset, len(self.tokenizer), self.pad_token_id, self.max_length)
            self.model = build_model(cfg)  # random init from the global torch seed
            self.label, source = preset, f"preset:{preset}"
        self.cfg = cfg
        self.arch_config = {**cfg, "source": source}
        self.kernel_path = f"shared block, {self.mixer} mixer, torch {self.device.type}"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)

    def save_pretrained(self, path: str | Path) -> None:
        save_json_checkpoint(path, self.cfg, self.model, self.tokenizer)


CONFIG_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "mamba_inner",
               "gla_heads", "l_max")


def read_config(path: Path, mixer: str) -> dict:
    cfg = read_json_config(path, MODEL_TYPE, CONFIG_KEYS)
    if cfg.get("mixer") != mixer:
        raise EncoderError(f"checkpoint {str(path)!r} has the {cfg.get('mixer')!r} mixer, not {mixer!r} "
                           f"(load it with --encoder shared-{cfg.get('mixer')})")
    return cfg


def parameter_table(preset: str = "small", max_length: int = 256) -> dict[str, dict]:
    """Per member at `preset`: total, non-embedding and mixer parameters. Built with a one-token
    vocabulary (the embedding table, vocabulary x hidden, is the same for all and added after), so
    that counting does not initialise six full models."""
    from .base import load_tokenizer

    vocab = len(load_tokenizer())
    out = {}
    for mixer in MIXERS:
        model = build_model(preset_config(mixer, preset, 1, 0, max_length))
        non_embedding = sum(p.numel() for p in model.parameters()) - model.embeddings.weight.numel()
        out[mixer] = dict(total=non_embedding + vocab * model.embeddings.embedding_dim, non_embedding=non_embedding,
                          mixer=sum(p.numel() for layer in model.layers for p in layer.attn.parameters()))
    return out


for _name, _spec in MIXERS.items():  # one registered encoder per declared mixer
    register_encoder(f"shared-{_name}")(type(f"Shared{_name.capitalize()}Encoder", (SharedBlockEncoder,),
                                             dict(mixer=_name, is_causal=_spec.causal, __module__=__name__)))
