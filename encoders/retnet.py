"""RetNet (Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large Language
Models"): multi-scale retention as the mixer of the shared block (`blocks.MixerModel`).

Per head h, with a fixed decay gamma_h = 1 - 2^(-5 - h) and rotary positions on q and k:

    S_t = gamma_h S_{t-1} + k_t^T v_t        o_t = (q_t / sqrt(K)) S_t

The layer is flash-linear-attention's `MultiScaleRetention` (fla/layers/multiscale_retention.py)
with its parameter names, so `RetNetForCausalLM` checkpoints (config.json with model_type "retnet")
load unchanged: q/k/v/g projections (expand_k, expand_v, optional grouped kv heads), rotary
(GPT-NeoX halves, base 10000) on q and k, retention, a per-head RMSNorm of the output gated by
swish(g_proj x) (`g_norm_swish_gate`, or `g_norm` when fla does not fuse them), and `o_proj`.

Three forms of the same retention (they agree to float rounding):
  parallel   O = ((Q K^T) * D) V with D[n, m] = gamma^(n - m) for n >= m (O(L^2))
  recurrent  the recurrence above, one step at a time (O(L), the reference)
  chunkwise  parallel within chunks of C tokens, the recurrence across chunks (O(L C))
On the CPU the default ("auto") takes the parallel form up to PARALLEL_MAX_LEN tokens and the
chunkwise form beyond (measured, see the constants). On CUDA with fla installed it calls fla's
Triton `chunk_retention`.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from . import register_encoder
from .base import PRESETS, Encoder, EncoderError
from .pruning import Group, PruningError, gated_mlp_group, head_groups, register_pruner
from .blocks import MixerModel, gated_mlp_size, init_fla_encoder, load_fla_state, save_fla_checkpoint

MODES = ("auto", "parallel", "chunkwise", "recurrent", "fla")
# Measured on the CPU (small preset's 12 heads of K=32, V=64; fp32, 1 thread; 8k tokens a batch):
# the parallel form is fastest up to ~128 tokens; beyond, chunkwise with 64-token chunks wins (at 512
# tokens ~4x: parallel grows as L^2), and 64 beat 16, 32 and 128 from 256 tokens up.
CHUNK_SIZE = 64
PARALLEL_MAX_LEN = 128


# -- retention in its three forms ----------------------------------------------------------------
# q, k: (B, H, L, K), v: (B, H, L, V); q is already scaled by 1/sqrt(K). log_gamma: (H,), < 0.
def log_decays(num_heads: int, device=None) -> torch.Tensor:
    """log gamma_h, gamma_h = 1 - 2^(-5 - h): fla's (and the paper's) fixed per-head decays."""
    return torch.log1p(-torch.pow(2.0, -5.0 - torch.arange(num_heads, dtype=torch.float32, device=device)))


def decay_matrix(log_gamma: torch.Tensor, n: int) -> torch.Tensor:
    """D[h, i, j] = gamma_h^(i - j) for i >= j, else 0: (H, n, n), fp32."""
    pos = torch.arange(n, device=log_gamma.device, dtype=torch.float32)
    dist = pos[:, None] - pos[None, :]
    D = torch.exp(dist.clamp(min=0) * log_gamma[:, None, None])  # clamp: no overflow above the diagonal
    return D * (dist >= 0)


def retention_parallel(q, k, v, log_gamma):
    return (q @ k.transpose(-1, -2)).mul_(decay_matrix(log_gamma, q.shape[2])) @ v


def retention_recurrent(q, k, v, log_gamma):
    B, H, L, K = q.shape
    gamma = log_gamma.exp()[:, None, None]
    S = q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32)
    out = []
    for t in range(L):
        S = gamma * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        out.append(q[:, :, t, None, :] @ S)
    return torch.cat(out, 2)


def retention_chunkwise(q, k, v, log_gamma, chunk_size=CHUNK_SIZE):
    B, H, L, K = q.shape
    V, C = v.shape[-1], min(chunk_size, L)  # a short text is one chunk
    pad = -L % C  # zero steps at the end: they change nothing before them
    q, k, v = (F.pad(x, (0, 0, 0, pad)).reshape(B, H, -1, C, x.shape[-1]) for x in (q, k, v))
    lg = log_gamma[:, None, None, None]  # (H, 1, 1, 1) against (B, H, N, C, d)
    i = torch.arange(C, device=q.device, dtype=torch.float32)[:, None]  # position within the chunk

    o = (q @ k.transpose(-1, -2)).mul_(decay_matrix(log_gamma, C)[:, None]) @ v  # inside each chunk
    # What chunk n adds to the state after it: sum_i gamma^(C-1-i) k_i^T v_i.
    chunk_kv = (k * torch.exp((C - 1 - i) * lg)).transpose(-1, -2) @ v  # (B, H, N, K, V)
    decay = torch.exp(C * log_gamma)[:, None, None]
    S = q.new_zeros(B, H, K, V, dtype=chunk_kv.dtype)
    before = []  # the state each chunk starts from
    for n in range(chunk_kv.shape[2]):
        before.append(S)
        S = decay * S + chunk_kv[:, :, n]
    o = o + (q * torch.exp((i + 1) * lg)) @ torch.stack(before, 2)  # position i sees S decayed i+1 times
    return o.reshape(B, H, -1, V)[:, :, :L]


def fla_chunk_retention():
    """fla's Triton chunk_retention, or None when flash-linear-attention does not import."""
    try:
        from fla.ops.retention import chunk_retention
    except Exception:  # not installed, or no working triton
        return None
    return chunk_retention


def rotary(x: torch.Tensor) -> torch.Tensor:
    """fla's RotaryEmbedding(dim=K) (non-interleaved halves, base 10000) at positions 0..L-1.
    x: (B, H, L, K). Right padding keeps every text's positions starting at 0."""
    L, K = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, K, 2, device=x.device, dtype=torch.float32) / K))
    freqs = torch.outer(torch.arange(L, device=x.device, dtype=torch.float32), inv_freq)
    cos, sin = freqs.cos(), freqs.sin()
    x1, x2 = x.float().chunk(2, -1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


# -- the layer ----------------------------------------------------------------------------------
class GatedRMSNorm(nn.Module):
    """fla's FusedRMSNormGated (swish): rmsnorm(o) * weight * swish(g), in fp32. Without a gate it
    is the plain per-head RMSNorm (fla's `g_norm`)."""

    def __init__(self, dim: int, eps: float, elementwise_affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x, gate=None):
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            x = x * self.weight.float()
        return x if gate is None else x * F.silu(gate.float())


class MultiScaleRetention(nn.Module):
    """fla.layers.MultiScaleRetention without short convolutions (fla's RetNet model never builds
    them); same parameters, same arithmetic."""

    def __init__(self, hidden_size, num_heads, expand_k=1.0, expand_v=2.0, num_kv_heads=None, feature_map=None,
                 use_output_gate=True, elementwise_affine=True, norm_eps=1e-6, fuse_norm=True, mode="auto"):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        self.num_kv_groups = num_heads // self.num_kv_heads
        self.key_dim, self.value_dim = round(hidden_size * expand_k), round(hidden_size * expand_v)
        if self.key_dim % num_heads or self.value_dim % num_heads or num_heads % self.num_kv_heads:
            raise EncoderError(f"RetNet: key dim {self.key_dim} and value dim {self.value_dim} must divide into "
                               f"{num_heads} heads (and heads into {self.num_kv_heads} kv heads)")
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, self.value_dim // num_heads
        if self.head_k_dim % 2:
            raise EncoderError(f"RetNet: rotary needs an even key head dim, got {self.head_k_dim}")
        if feature_map is not None:
            from transformers.activations import ACT2FN
            self.feature_map = ACT2FN[feature_map]
        else:
            self.feature_map = None
        self.use_output_gate = use_output_gate
        self.mode = mode
        # Each head's original index, which fixes its decay gamma_h; structured pruning keeps a subset.
        self.head_index = list(range(num_heads))

        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim // self.num_kv_groups, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim // self.num_kv_groups, bias=False)
        if use_output_gate:
            self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)
        # fla names the norm after whether it is fused with the swish gate; keep its state-dict key.
        self.norm_name = "g_norm_swish_gate" if use_output_gate and fuse_norm else "g_norm"
        setattr(self, self.norm_name, GatedRMSNorm(self.head_v_dim, norm_eps, elementwise_affine))

    def heads(self, x, dim):  # (B, L, h*dim) -> (B, L, H, dim), repeating kv heads as fla does
        x = x.unflatten(-1, (-1, dim))
        return x.repeat_interleave(self.num_kv_groups, dim=2) if self.num_kv_groups > 1 else x

    def forward(self, x, mask=None):
        # Right padding and a causal mixer: real tokens never see the pads, so the mask is unused.
        q, k = self.q_proj(x).unflatten(-1, (-1, self.head_k_dim)), self.k_proj(x).unflatten(-1, (-1, self.head_k_dim))
        if self.feature_map is not None:
            q, k = self.feature_map(q), self.feature_map(k)
        v = self.heads(self.v_proj(x), self.head_v_dim).transpose(1, 2)  # (B, H, L, V)
        # Rotary in fp32, then back to the compute dtype (bf16 under autocast), as fla's kernels see it.
        q = rotary(q.transpose(1, 2)).to(v.dtype)
        k = rotary(k.transpose(1, 2)).to(v.dtype)
        if self.num_kv_groups > 1:
            k = k.repeat_interleave(self.num_kv_groups, dim=1)

        L = x.shape[1]
        mode = self.mode if self.mode != "auto" else ("parallel" if L <= PARALLEL_MAX_LEN else "chunkwise")
        if mode == "fla" and self.head_index != list(range(self.num_heads)):
            mode = "chunkwise"  # fla's kernel derives the decays from head positions 0..H-1, not from head_index
        if mode == "fla":
            chunk_retention = fla_chunk_retention()
            o, _ = chunk_retention(q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(),
                                   v.transpose(1, 2).contiguous())  # (B, L, H, V); scale 1/sqrt(K) inside
        else:
            form = {"parallel": retention_parallel, "chunkwise": retention_chunkwise,
                    "recurrent": retention_recurrent}[mode]
            o = form(q * self.head_k_dim ** -0.5, k, v, log_decays(self.head_index[-1] + 1, x.device)[self.head_index]).transpose(1, 2)

        norm = getattr(self, self.norm_name)
        o = norm(o, self.g_proj(x).unflatten(-1, (-1, self.head_v_dim)) if self.use_output_gate else None)
        return self.o_proj(o.flatten(-2).to(x.dtype))


# -- checkpoints in fla's format ----------------------------------------------------------------
def preset_config(preset: str, vocab_size: int, pad_token_id: int, bos_token_id, eos_token_id) -> dict:
    """fla RetNetConfig fields (fla/models/retnet/configuration_retnet.py) for a preset. fla's own
    defaults (expand_k 1, expand_v 2, hidden_ratio 2) give 8 d^2 retention + 4 d^2 MLP per layer,
    BERT's 12 d^2, so the parameter counts match BERT's presets."""
    p = PRESETS[preset]
    return dict(
        model_type="retnet", architectures=["RetNetForCausalLM"], attn_mode="chunk",
        hidden_size=p["hidden_size"], expand_k=1, expand_v=2, hidden_ratio=2,
        intermediate_size=gated_mlp_size(p["hidden_size"], 2), num_hidden_layers=p["num_layers"],
        num_heads=p["num_heads"], num_kv_heads=None, feature_map=None, hidden_act="swish",
        use_short_conv=False, conv_size=4, use_output_gate=True, max_position_embeddings=2048,
        elementwise_affine=True, norm_eps=1e-6, attn=None, use_cache=True, pad_token_id=pad_token_id,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, tie_word_embeddings=True,
        initializer_range=0.02, fuse_norm=True, fuse_swiglu=True, fuse_cross_entropy=True,
        fuse_linear_cross_entropy=False, use_l2warp=False, vocab_size=vocab_size,
    )


def check_config(cfg: dict, source: str) -> None:
    """Refuse what this implementation does not compute (one clear line each)."""
    if cfg.get("model_type") != "retnet":
        raise EncoderError(f"checkpoint {source!r} is a {cfg.get('model_type')!r} model, not fla RetNet (model_type 'retnet')"
                           + (f" (try --encoder {cfg['model_type']})" if cfg.get("model_type") else ""))
    for key in ("attn", "attnres_block_size"):  # hybrid attention layers, attention residuals
        if cfg.get(key) is not None:
            raise EncoderError(f"RetNet checkpoint {source!r} sets {key}={cfg[key]!r}, which this implementation does not support")
    if cfg.get("hidden_act", "swish") != "swish":
        raise EncoderError(f"RetNet checkpoint {source!r} uses hidden_act={cfg['hidden_act']!r}; only swish is supported")


def to_mixer_state(state: dict) -> dict:
    """RetNetForCausalLM keys -> MixerModel keys: strip `model.`, drop the LM head."""
    return {k.removeprefix("model."): t for k, t in state.items() if not k.startswith("lm_head.")}


@register_encoder("retnet")
class RetNetEncoder(Encoder):
    """RetNet on the shared block: an fla checkpoint (dir or hub id) or a random preset.
    `mode`: auto (default; fla on CUDA when installed, else parallel/chunkwise by length),
    parallel, chunkwise, recurrent, fla."""

    is_causal = True

    def __init__(self, checkpoint: str | None = None, preset: str | None = None, mode: str | None = None, **opts):
        if mode is not None and mode not in MODES:
            raise EncoderError(f"RetNet mode must be one of {', '.join(MODES)}, got {mode!r}")
        cfg, state, source = init_fla_encoder(self, checkpoint, preset, opts, check_config, preset_config, "RetNet")

        if mode in (None, "auto"):
            mode = "fla" if self.device.type == "cuda" and fla_chunk_retention() is not None else "auto"
        if mode == "fla" and (self.device.type != "cuda" or fla_chunk_retention() is None):
            raise EncoderError("RetNet mode 'fla' needs a CUDA device and flash-linear-attention installed")
        self.mode = mode
        self.retnet_config = cfg
        self.model = self.build(cfg, mode)
        if state is not None:
            load_fla_state(self.model, to_mixer_state(state), source, "RetNet")
        self.kernel_path = {"fla": "fla chunk", "recurrent": "torch recurrent", "parallel": "torch parallel",
                            "chunkwise": f"torch chunkwise{CHUNK_SIZE}",
                            "auto": f"torch parallel (L<={PARALLEL_MAX_LEN}) / chunkwise{CHUNK_SIZE}"}[mode]
        self.arch_config = {k: cfg.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "num_heads",
                                                   "num_kv_heads", "expand_k", "expand_v", "feature_map",
                                                   "use_output_gate", "vocab_size")}
        self.arch_config.update(intermediate_size=self.intermediate_size(cfg), source=source)

    @staticmethod
    def intermediate_size(cfg: dict) -> int:
        ratio = cfg.get("hidden_ratio", 2)  # fla's GatedMLP takes 4 when the config says null
        return cfg.get("intermediate_size") or gated_mlp_size(cfg.get("hidden_size", 2048), 4 if ratio is None else ratio)

    def build(self, cfg: dict, mode: str) -> MixerModel:
        # fla's RetNetConfig defaults wherever a config.json leaves a field out.
        eps, hidden = cfg.get("norm_eps", 1e-6), cfg.get("hidden_size", 2048)

        def make_mixer(i):
            return MultiScaleRetention(
                hidden, cfg.get("num_heads", 8), expand_k=cfg.get("expand_k", 1.0), expand_v=cfg.get("expand_v", 2.0),
                num_kv_heads=cfg.get("num_kv_heads"), feature_map=cfg.get("feature_map"),
                use_output_gate=cfg.get("use_output_gate", True),
                elementwise_affine=cfg.get("elementwise_affine", True) is not False, norm_eps=eps,
                fuse_norm=cfg.get("fuse_norm", True), mode=mode)

        return MixerModel(cfg.get("vocab_size", 32000), hidden, cfg.get("num_hidden_layers", 24), make_mixer,
                          self.intermediate_size(cfg), norm_eps=eps, pad_token_id=cfg.get("pad_token_id"),
                          initializer_range=cfg.get("initializer_range", 0.02))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)

    def save_pretrained(self, directory) -> None:
        save_fla_checkpoint(directory, self.retnet_config, self.model, self.tokenizer)

    def flops_per_token(self, seq_len: int) -> float:
        """2 x weights, plus retention per token and layer (multiply-adds x 2) for the path that runs
        at this length, with K/V = key/value dims summed over heads, H heads, C = chunk size:
          parallel:  the full L x L score matrix and its product with V: L x (K + V)
          chunkwise (and fla chunk): full C x C blocks, C x (K + V), plus reading the state q @ S
                     and writing it k^T v: 2 x K x V / H
          recurrent: 2 x K x V / H"""
        attn = self.model.layers[0].attn
        K, V, H = attn.key_dim, attn.value_dim, attn.num_heads
        mode = self.mode if self.mode != "auto" else ("parallel" if seq_len <= PARALLEL_MAX_LEN else "chunkwise")
        per_layer = {"parallel": seq_len * (K + V),
                     "chunkwise": min(CHUNK_SIZE, seq_len) * (K + V) + 2 * K * V / H,
                     "fla": min(CHUNK_SIZE, seq_len) * (K + V) + 2 * K * V / H,
                     "recurrent": 2 * K * V / H}[mode]
        return super().flops_per_token(seq_len) + 2.0 * per_layer * len(self.model.layers)


# -- structured pruning (encoders/pruning.py): the structures this architecture has ----------
@register_pruner(RetNetEncoder)
def retnet_groups(encoder: RetNetEncoder) -> list[Group]:
    for layer in encoder.model.layers:
        if not hasattr(layer.attn, "head_index"):
            raise PruningError("RetNet head pruning needs MultiScaleRetention.head_index (each kept head's "
                                    "original index fixes its decay); this encoders/retnet.py predates it")
    return [g for layer in encoder.model.layers for g in (head_groups(layer.attn), gated_mlp_group(layer.mlp))]
