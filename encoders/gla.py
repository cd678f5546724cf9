"""Gated linear attention (Yang et al. 2024, "Gated Linear Attention Transformers with
Hardware-Efficient Training") as the mixer of the shared block (`blocks.MixerModel`).

Per head, with a data-dependent diagonal decay exp(g_t) in (0, 1)^K:

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T        o_t = (q_t / sqrt(K)) S_t

The layer is flash-linear-attention's `GatedLinearAttention` (fla/layers/gla.py) with its parameter
names, so `GLAForCausalLM` checkpoints (config.json with model_type "gla") load unchanged:
q/k/v/g projections (expand_k, expand_v), a low-rank gate projection `gk_proj` whose output goes
through logsigmoid / gate_logit_normalizer, a per-head RMSNorm of the output gated by swish(g_proj x)
(`g_norm_swish_gate`), and `o_proj`.

Compute paths: `naive_recurrent_gla` (fla's reference, one step at a time), `chunk_gla_torch`
(parallel within chunks, a short recurrence across them; the default on the CPU), and fla's Triton
`chunk_gla` on CUDA when flash-linear-attention is installed. The chunked form is inference-only
(in-place updates): when a gradient is wanted, the layer runs the step-by-step form instead.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from . import register_encoder
from .base import PRESETS, Encoder, EncoderError
from .pruning import Group, gated_mlp_group, head_groups, register_pruner
from .blocks import MixerModel, gated_mlp_size, init_fla_encoder, load_fla_state, save_fla_checkpoint

MODES = ("chunk", "recurrent", "fla")
# fla's published GLA models use 4 heads (head_k = hidden/8, head_v = hidden/4); tiny keeps 2.
PRESET_HEADS = {"tiny": 2, "small": 4, "base": 4}
# Fastest on the CPU of chunk 8/16/32/64 x sub-chunk 2/4/8/16, for 128-512 tokens and again (chunk_gla_torch
# alone, small preset's heads, 1 thread, 4096 tokens) at 256 and 2048: 16/4 first at both, the next
# best 16/8 and 16/2 (11-19% slower), 32/x 13-75% slower, 8/x 40-100% slower.
CHUNK_SIZE, SUB_CHUNK_SIZE = 16, 4


# -- the recurrence in its forms ----------------------------------------------------------------
def naive_recurrent_gla(q, k, v, gk, initial_state=None, output_final_state=False):
    """Reference recurrence, ported verbatim from fla/ops/gla/naive.py (naive_recurrent_gla).
    q, k, gk: (B, T, H, K); v: (B, T, H, V); gk is the log decay (<= 0). Returns (o, final state)."""
    dtype = q.dtype
    q, k, v, gk = (x.transpose(1, 2).float() for x in (q, k, v, gk))
    B, H, T, K, V = *q.shape, v.shape[-1]
    o = torch.zeros_like(v)
    scale = K ** -0.5

    h = q.new_zeros(B, H, K, V, dtype=torch.float32)
    if initial_state is not None:
        h += initial_state.float()

    for i in range(T):
        q_i = q[:, :, i] * scale
        k_i = k[:, :, i]
        v_i = v[:, :, i]
        gk_i = gk[:, :, i].exp()
        kv_i = k_i[..., None] * v_i[..., None, :]
        h = h * gk_i[..., None] + kv_i
        o[:, :, i] = (q_i[..., None] * h).sum(-2)

    if not output_final_state:
        h = None
    return o.transpose(1, 2).to(dtype), h


def chunk_gla_torch(q, k, v, g, scale=None, chunk_size=CHUNK_SIZE, sub_chunk_size=SUB_CHUNK_SIZE):
    """Chunkwise GLA on any torch device: same inputs and output as `naive_recurrent_gla`.

    Within a chunk of C steps, G = cumsum(g) is the log decay from the chunk start (<= 0, falling).
    Every exponent taken is a difference G[x] - G[y] with y <= x, so it is <= 0 and nothing overflows
    however strong the gates are (fla's secondary chunking, Yang et al. 2024 sec. 4.2):
      query x in sub-chunk i, key y in an earlier sub-chunk: exp(G[x] - G[y]) factors through the
          first step s_i of sub-chunk i as exp(G[x] - G[s_i]) * exp(G[s_i] - G[y]), one matmul
      query and key in the same sub-chunk: pairwise differences (a c x c x K tensor)
      from the state: q[x] * exp(G[x]) @ S_prev
      state update:   S = exp(G[-1]) * S_prev + (k * exp(G[-1] - G))^T @ v
    Only the last line is sequential (one multiply-add of a (K, V) state per chunk)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    C, c = chunk_size, sub_chunk_size
    assert C % c == 0, "the chunk must split into whole sub-chunks"
    M = C // c
    pad = -T % C  # padded steps come last (g = 0, k = v = 0), so they change nothing before them

    def split(x):  # (B, T, H, D) -> (B, H, N, C, D) in fp32, one copy
        x = F.pad(x.float().transpose(1, 2), (0, 0, 0, pad))
        return x.reshape(B, H, -1, C, x.shape[-1])

    q, k, v, g = map(split, (q, k, v, g))
    N = q.shape[2]
    q = q * scale
    G = g.cumsum(-2)
    G_last = G[..., -1:, :]
    inf = float("-inf")

    # Across sub-chunks: queries decayed to the start of their own sub-chunk, and for each query
    # sub-chunk i, every key y before it decayed from y up to that start (masked to 0 from i on).
    Gs = G.view(B, H, N, M, c, K)
    start = Gs[..., :1, :]  # (B, H, N, M, 1, K)
    q_dec = q.view(B, H, N, M, c, K) * (Gs - start).exp()
    before = torch.arange(C, device=q.device) < c * torch.arange(M, device=q.device)[:, None]  # (M, C)
    k_dec = (start - G.unsqueeze(3)).masked_fill_(~before[..., None], inf).exp_().mul_(k.unsqueeze(3))
    A = q_dec @ k_dec.transpose(-1, -2)  # (B, H, N, M, c, C): row block i of the C x C scores
    # Within a sub-chunk: pairwise differences, added to the (still zero) diagonal blocks.
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    diff = (Gs.unsqueeze(-2) - Gs.unsqueeze(-3)).masked_fill_(~causal[:, :, None], inf)
    D = diff.exp_().mul_(q.view(B, H, N, M, c, 1, K)).mul_(k.view(B, H, N, M, 1, c, K)).sum(-1)
    A.view(B, H, N, M, c, M, c).diagonal(0, 3, 5).add_(D.permute(0, 1, 2, 4, 5, 3))
    o = A.view(B, H, N, C, C) @ v

    chunk_kv = (k * (G_last - G).exp()).transpose(-1, -2) @ v  # (B, H, N, K, V)
    decay = G_last.exp().transpose(-1, -2)  # (B, H, N, K, 1)
    states = q.new_empty(B, H, N, K, V)  # the state each chunk starts from
    states[:, :, 0] = 0
    for n in range(1, N):
        torch.addcmul(chunk_kv[:, :, n - 1], states[:, :, n - 1], decay[:, :, n - 1], out=states[:, :, n])
    o += (q * G.exp()) @ states
    return o.reshape(B, H, -1, V)[:, :, :T].transpose(1, 2)


def fla_chunk_gla():
    """fla's Triton chunk_gla, or None when flash-linear-attention does not import."""
    try:
        from fla.ops.gla import chunk_gla
    except Exception:  # not installed, or no working triton
        return None
    return chunk_gla


# -- the layer ----------------------------------------------------------------------------------
class GatedRMSNorm(nn.Module):
    """fla's FusedRMSNormGated (swish): rmsnorm(o) * weight * swish(g), computed in fp32. Without a
    gate it is fla's plain RMSNorm (the layer's `g_norm` when use_output_gate is off)."""

    def __init__(self, dim: int, eps: float, elementwise_affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x, gate=None):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            x = x * self.weight.float()
        if gate is not None:
            x = x * F.silu(gate.float())
        return x.to(dtype)


class GatedLinearAttention(nn.Module):
    """fla.layers.gla.GatedLinearAttention without short convolutions or feature maps (which no
    published fla GLA checkpoint uses); same parameters, same arithmetic."""

    def __init__(self, hidden_size, num_heads, expand_k=0.5, expand_v=1.0, num_kv_heads=None,
                 gate_low_rank_dim=16, gate_logit_normalizer=16, clamp_min=None, use_output_gate=True,
                 elementwise_affine=True, norm_eps=1e-6, fuse_norm=True, mode="chunk"):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        self.num_kv_groups = num_heads // self.num_kv_heads
        self.key_dim = int(hidden_size * expand_k)
        self.value_dim = int(hidden_size * expand_v)
        if self.key_dim % num_heads or self.value_dim % num_heads or num_heads % self.num_kv_heads:
            raise EncoderError(f"GLA: key dim {self.key_dim} and value dim {self.value_dim} must divide into "
                               f"{num_heads} heads (and heads into {self.num_kv_heads} kv heads)")
        self.head_k_dim = self.key_dim // num_heads
        self.head_v_dim = self.value_dim // num_heads
        kv_key_dim, kv_value_dim = self.key_dim // self.num_kv_groups, self.value_dim // self.num_kv_groups
        self.gate_logit_normalizer = gate_logit_normalizer
        self.clamp_min = clamp_min
        self.use_output_gate = use_output_gate
        self.mode = mode

        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, kv_key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, kv_value_dim, bias=False)
        if use_output_gate:
            self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(hidden_size, gate_low_rank_dim, bias=False),
                                     nn.Linear(gate_low_rank_dim, kv_key_dim, bias=True))
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)
        # fla names the norm after whether it is fused with the swish gate; keep its key in the state dict.
        self.norm_name = "g_norm_swish_gate" if use_output_gate and fuse_norm else "g_norm"
        setattr(self, self.norm_name, GatedRMSNorm(self.head_v_dim, norm_eps, elementwise_affine))

    def heads(self, x, dim):  # (B, T, h*dim) -> (B, T, H, dim), repeating kv heads as fla does
        x = x.unflatten(-1, (-1, dim))
        return x.repeat_interleave(self.num_kv_groups, dim=2) if self.num_kv_groups > 1 else x

    def forward(self, x, mask=None):
        # Right padding and a causal recurrence: real tokens never see the pads, so the mask is unused.
        q = self.heads(self.q_proj(x), self.head_k_dim)
        k = self.heads(self.k_proj(x), self.head_k_dim)
        v = self.heads(self.v_proj(x), self.head_v_dim)
        gk = self.heads(F.logsigmoid(self.gk_proj(x).float()) / self.gate_logit_normalizer, self.head_k_dim)
        if self.clamp_min is not None:
            gk = gk.clamp_min(self.clamp_min)

        if self.mode == "fla":
            chunk_gla = fla_chunk_gla()
            kwargs = {"head_first": False} if "head_first" in inspect.signature(chunk_gla).parameters else {}
            o, _ = chunk_gla(q=q, k=k, v=v, g=gk.to(q.dtype), **kwargs)
        else:  # the torch forms compute in fp32 (fla's kernels accumulate in fp32 too), autocast or not
            # The chunked form updates tensors in place, which autograd cannot follow: with a gradient
            # wanted (training), the step-by-step form, which computes the same function.
            training = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, gk))
            with torch.autocast(x.device.type, enabled=False):
                if self.mode == "recurrent" or training:
                    o = naive_recurrent_gla(q, k, v, gk)[0]
                else:
                    o = chunk_gla_torch(q, k, v, gk)

        norm = getattr(self, self.norm_name)
        o = norm(o, self.heads(self.g_proj(x), self.head_v_dim) if self.use_output_gate else None)
        return self.o_proj(o.flatten(-2).to(x.dtype))


# -- checkpoints in fla's format ----------------------------------------------------------------
# GLAConfig fields (fla/models/gla/configuration_gla.py) written by save_pretrained.
def preset_config(preset: str, vocab_size: int, pad_token_id: int, bos_token_id, eos_token_id) -> dict:
    p = PRESETS[preset]
    return dict(
        model_type="gla", architectures=["GLAForCausalLM"],
        hidden_size=p["hidden_size"], expand_k=0.5, expand_v=1, hidden_ratio=4,
        intermediate_size=gated_mlp_size(p["hidden_size"]), num_hidden_layers=p["num_layers"],
        num_heads=PRESET_HEADS[preset], num_kv_heads=None, feature_map=None, attn_mode="chunk",
        use_short_conv=False, conv_size=4, use_output_gate=True, clamp_min=None, hidden_act="swish",
        max_position_embeddings=2048, elementwise_affine=True, norm_eps=1e-6, use_gk=True, use_gv=False,
        attn=None, use_cache=True, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
        eos_token_id=eos_token_id, tie_word_embeddings=True, initializer_range=0.02, fuse_norm=True,
        fuse_swiglu=True, fuse_cross_entropy=True, use_l2warp=False, vocab_size=vocab_size,
    )


def check_config(cfg: dict, source: str) -> None:
    """Refuse what this implementation does not compute (one clear line each)."""
    if cfg.get("model_type") != "gla":
        raise EncoderError(f"checkpoint {source!r} is a {cfg.get('model_type')!r} model, not fla GLA (model_type 'gla')"
                           + (f" (try --encoder {cfg['model_type']})" if cfg.get("model_type") else ""))
    unsupported = {"use_short_conv": False, "feature_map": None, "attn": None, "attnres_block_size": None}
    for key, ok in unsupported.items():
        if cfg.get(key, ok) != ok:
            raise EncoderError(f"GLA checkpoint {source!r} sets {key}={cfg[key]!r}, which this implementation does not support")
    if cfg.get("hidden_act", "swish") not in ("swish", "silu"):
        raise EncoderError(f"GLA checkpoint {source!r} uses hidden_act={cfg['hidden_act']!r}; only swish is supported")


def to_mixer_state(state: dict, intermediate_size: int) -> dict:
    """GLAForCausalLM keys -> MixerModel keys: strip `model.`, drop lm_head, and convert what older
    fla versions stored differently (embed_tokens; gate and up projections fused in one gate_proj)."""
    out = {}
    for key, t in state.items():
        if key.startswith("lm_head."):
            continue
        key = key.removeprefix("model.").replace("embed_tokens.", "embeddings.")
        if key.endswith("mlp.gate_proj.weight") and t.shape[0] == 2 * intermediate_size:
            out[key], out[key.replace("gate_proj", "up_proj")] = t.chunk(2, 0)  # forward did gate, y = chunk(2)
            continue
        out[key] = t
    return out


@register_encoder("gla")
class GLAEncoder(Encoder):
    """GLA on the shared block: an fla checkpoint (dir or hub id) or a random preset."""

    is_causal = True

    def __init__(self, checkpoint: str | None = None, preset: str | None = None, mode: str | None = None, **opts):
        if mode is not None and mode not in MODES:
            raise EncoderError(f"GLA mode must be one of {', '.join(MODES)}, got {mode!r}")
        cfg, state, source = init_fla_encoder(self, checkpoint, preset, opts, check_config, preset_config, "GLA")

        if mode is None:
            mode = "fla" if self.device.type == "cuda" and fla_chunk_gla() is not None else "chunk"
        if mode == "fla" and (self.device.type != "cuda" or fla_chunk_gla() is None):
            raise EncoderError("GLA mode 'fla' needs a CUDA device and flash-linear-attention installed")
        self.mode = mode
        self.gla_config = cfg
        self.model = self.build(cfg, mode)
        if state is not None:
            load_fla_state(self.model, to_mixer_state(state, self.intermediate_size(cfg)), source, "GLA")
        self.kernel_path = {"fla": "fla chunk", "recurrent": "torch naive recurrent",
                            "chunk": f"torch chunk{'' if self.device.type == 'cpu' else ' ' + self.device.type}"}[mode]
        self.arch_config = {k: cfg.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "num_heads",
                                                   "num_kv_heads", "expand_k", "expand_v", "vocab_size")}
        self.arch_config.update(intermediate_size=self.intermediate_size(cfg), source=source,
                                gate_low_rank_dim=cfg.get("gate_low_rank_dim", 16),
                                gate_logit_normalizer=cfg.get("gate_logit_normalizer", 16),
                                clamp_min=cfg.get("clamp_min"), use_output_gate=cfg.get("use_output_gate", True))

    @staticmethod
    def intermediate_size(cfg: dict) -> int:
        return cfg.get("intermediate_size") or gated_mlp_size(cfg["hidden_size"], cfg.get("hidden_ratio") or 4)

    def build(self, cfg: dict, mode: str) -> MixerModel:
        eps = cfg.get("norm_eps", cfg.get("rms_norm_eps", 1e-6))

        def make_mixer(i):
            return GatedLinearAttention(
                cfg["hidden_size"], cfg["num_heads"], expand_k=cfg.get("expand_k", 0.5),
                expand_v=cfg.get("expand_v", 1), num_kv_heads=cfg.get("num_kv_heads"),
                gate_low_rank_dim=cfg.get("gate_low_rank_dim", 16),
                gate_logit_normalizer=cfg.get("gate_logit_normalizer", 16), clamp_min=cfg.get("clamp_min"),
                use_output_gate=cfg.get("use_output_gate", True),
                elementwise_affine=cfg.get("elementwise_affine", True) is not False, norm_eps=eps,
                fuse_norm=cfg.get("fuse_norm", True), mode=mode)

        return MixerModel(cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"], make_mixer,
                          self.intermediate_size(cfg), norm_eps=eps, pad_token_id=cfg.get("pad_token_id"),
                          initializer_range=cfg.get("initializer_range", 0.02))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)

    def save_pretrained(self, directory) -> None:
        save_fla_checkpoint(directory, self.gla_config, self.model, self.tokenizer)

    def flops_per_token(self, seq_len: int) -> float:
        """2 x weights, plus the recurrence per token and layer (2 x multiply-adds), with K and V the
        key and value widths summed over the H heads and C the chunk (16 here, 64 in fla's kernel):
          intra-chunk scores and scores @ v, as computed (full C x C blocks, masked): C x (K + V)
          reading the carried state (q @ S) and adding to it (k^T v):               2 x K x V / H
        The naive recurrent path costs only the second term (one step at a time). Both are linear in
        the length: the cost per token does not grow with seq_len beyond C."""
        attn = self.model.layers[0].attn
        K, V, H = attn.key_dim, attn.value_dim, attn.num_heads
        C = min(64 if self.mode == "fla" else CHUNK_SIZE, seq_len)
        intra = 0.0 if self.mode == "recurrent" else C * (K + V)
        per_layer = 2.0 * (intra + 2 * K * V / H)
        return super().flops_per_token(seq_len) + per_layer * len(self.model.layers)


# -- structured pruning (encoders/pruning.py): the structures this architecture has ----------
@register_pruner(GLAEncoder)
def gla_groups(encoder: GLAEncoder) -> list[Group]:
    return [g for layer in encoder.model.layers for g in (head_groups(layer.attn), gated_mlp_group(layer.mlp))]
