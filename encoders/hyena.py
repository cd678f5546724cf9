"""Hyena (Poli et al. 2023, "Hyena Hierarchy") as the sequence mixer of the shared block.

After HazyResearch's safari (`src/models/sequence/hyena.py`) and zoology (`zoology/mixers/hyena.py`):
an input projection to (order + 1) x width, a short causal depthwise convolution (kernel 3) over
the projections, then `order` rounds of "long causal convolution, then elementwise gate":

    x_1, ..., x_N, v = short_conv(in_proj(u))
    for n in 1..N:  v = x_n * (h_n * v + bias_n * v)        (* = causal convolution over time)
    y = out_proj(v)

Order N here follows the paper's Algorithm 3 (N long filters, N gates). safari's code counts
differently: its `order=2` has one long filter and two gates; our order 2 has two of each.

Each long filter h_n is implicit: a small FFN with sin activations (one learnable frequency per
hidden unit, shared by the layers, as safari) maps positional features (t and complex exponentials)
to one value per channel and position, times an exponential decay window. The filter is generated
for the actual length L (a prefix of the l_max filter), and the convolution is an FFT of size 2L.

Beyond l_max. The positional features z are a trained table of l_max rows, so the FFN defines the
filter at lags 0..l_max-1 only. A longer sequence is convolved with that same filter, zero at lags
>= l_max: the trained operator, with a receptive field of l_max tokens. The decay window has already
brought every channel's filter to at most exp(-|delta|) <= exp(-ln(100)/1.5) = 4.6% of its FFN output
by lag l_max - 1 (t = 1), and to 1% or less for the faster 87% of channels, so the cut drops little.
The alternative, extrapolating z and t past 1, would feed the FFN inputs it never saw.

Checkpoint format (our own): a directory with `config.json` (model_type "hyena-encoder") and
`model.safetensors` (the MixerModel state dict); `save_pretrained(dir)` writes one.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from . import register_encoder
from .base import PRESETS, Encoder, EncoderError, resolve_preset, set_optim_hint
from .pruning import Group, Slice, gated_mlp_group, linear_slices, register_pruner, units
from .blocks import MixerModel, gated_mlp_size, init_from_json_checkpoint, read_json_config, save_json_checkpoint

MODEL_TYPE = "hyena-encoder"
POS_LR_SCALE = 0.02  # the positional features' learning rate relative to the model's: safari's 1e-5 against 5e-4


def fft_causal_conv(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """y[..., t] = sum_{s <= t} k[c, t - s] u[..., c, s] + bias[c] u[..., c, t], as safari's `fftconv_ref`.

    u: (B, C, L), k: (C, L), bias: (C,). Zero-padding to n = 2L turns the FFT's circular
    convolution into a linear one, so no output position sees a later input: causal. The skip
    term is a filter tap at lag 0 (bias x delta), whose spectrum is the constant `bias`: adding it
    to the filter's spectrum saves a pass over u."""
    L = u.shape[-1]
    n = 2 * L
    k_f = torch.fft.rfft(k, n=n) + bias.unsqueeze(-1)
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * k_f, n=n)[..., :L]


def direct_causal_conv(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The O(L^2) reference of `fft_causal_conv`: an explicit lower-triangular Toeplitz matrix."""
    L = u.shape[-1]
    lag = torch.arange(L, device=u.device)
    lag = lag[:, None] - lag[None, :]  # (t, s) -> t - s
    toeplitz = k[:, lag.clamp(min=0)] * (lag >= 0)  # (C, L, L); zero above the diagonal
    return torch.einsum("cts,bcs->bct", toeplitz, u) + u * bias.unsqueeze(-1)


class HyenaFilter(nn.Module):
    """Implicit long filters: FFN(positional features) * exponential decay window, for `channels`
    channels (order x width). Hyperparameters as safari's Pile config (emb_dim 33, FFN width 64,
    two inner layers, sin frequency w = 14; decay from 1e-2 at 30% to 150% of l_max)."""

    def __init__(self, channels: int, l_max: int, emb_dim: int = 33, filter_order: int = 64,
                 num_inner_mlps: int = 2, w: float = 14.0, fast_decay_pct: float = 0.3,
                 slow_decay_pct: float = 1.5, target: float = 1e-2):
        super().__init__()
        if emb_dim < 3 or emb_dim % 2 == 0:
            raise EncoderError(f"Hyena filter emb_dim must be odd and >= 3 (t, cos, sin), got {emb_dim}")
        self.l_max, self.emb_dim, self.w = l_max, emb_dim, w
        # Positional features; filled by reset_parameters. A parameter as in safari, where they train at
        # lr_pos_emb (1e-5 by default, against a model lr of ~6e-4): a tiny learning rate.
        self.z = nn.Parameter(torch.empty(l_max, emb_dim))
        self.register_buffer("t", torch.linspace(0, 1, l_max)[:, None], persistent=False)  # (l_max, 1)
        self.freq = nn.Parameter(torch.empty(filter_order))  # Sin activation, shared by the FFN layers
        self.inp = nn.Linear(emb_dim, filter_order)
        self.hidden = nn.ModuleList(nn.Linear(filter_order, filter_order) for _ in range(num_inner_mlps))
        self.out = nn.Linear(filter_order, channels, bias=False)
        # Decay rates spread over the channels, from slow to fast (safari's ExponentialModulation;
        # not trained there either: modulation_lr = 0).
        max_decay = math.log(target) / fast_decay_pct
        min_decay = math.log(target) / slow_decay_pct
        self.register_buffer("deltas", torch.linspace(min_decay, max_decay, channels).abs(), persistent=False)
        self.bias = nn.Parameter(torch.empty(channels))  # the per-channel skip term "D" of the long conv
        # safari's optimizer hints (HyenaFilter's `_optim`, PositionalEmbedding's lr_pos_emb), honoured
        # by Encoder.optimizer_groups: the implicit filter's FFN and frequencies without weight decay
        # (decay would pull the filters towards zero), the positional features at a tiny rate.
        set_optim_hint([self.freq, *self.inp.parameters(), *self.hidden.parameters(), *self.out.parameters()],
                       weight_decay=0.0)
        set_optim_hint([self.z], lr_scale=POS_LR_SCALE, weight_decay=0.0)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # safari's PositionalEmbedding: [t, Re, Im of exp(-i f w)] with `bands` frequencies.
        bands = (self.emb_dim - 1) // 2
        w = 2 * math.pi * torch.arange(self.l_max)[:, None] / self.l_max
        f = torch.linspace(1e-4, bands - 1, bands)[None]
        self.z.copy_(torch.cat([self.t, torch.cos(f * w), -torch.sin(f * w)], dim=-1))
        self.freq.fill_(self.w)
        nn.init.normal_(self.bias)  # safari: torch.randn

    def forward(self, L: int) -> torch.Tensor:
        """The filters for positions 0..L-1: (channels, L), in float32; zero at lags >= l_max (see the
        module docstring)."""
        taps = min(L, self.l_max)
        with torch.autocast(self.z.device.type, enabled=False):
            h = torch.sin(self.freq * self.inp(self.z[:taps].float()))
            for layer in self.hidden:
                h = torch.sin(self.freq * layer(h))
            h = self.out(h) * torch.exp(-self.t[:taps] * self.deltas)  # (taps, channels)
        return torch.nn.functional.pad(h.t(), (0, L - taps))


class Hyena(nn.Module):
    """The Hyena operator: `mixer(x, mask)` on (B, L, D). Causal: with right padding real tokens never
    see the pads after them. The pads are still zeroed before and after every long convolution (as
    StripedHyena does): the FFT mixes all positions, so without it a pad's value would reach real
    positions through rounding, and through the signal itself for left padding or a reversed pass."""

    def __init__(self, hidden_size: int, l_max: int, order: int = 2, short_filter_order: int = 3, **filter_args):
        super().__init__()
        self.hidden_size, self.order, self.l_max = hidden_size, order, l_max
        self.in_proj = nn.Linear(hidden_size, (order + 1) * hidden_size)
        width = (order + 1) * hidden_size
        # Depthwise; padding k-1 on both sides, then keep the first L outputs: causal.
        self.short_filter = nn.Conv1d(width, width, short_filter_order, groups=width, padding=short_filter_order - 1)
        # Channel c of filter n sits at index c * order + n (safari's '(v o)' layout), so every
        # order gets the whole range of decay rates.
        self.filter = HyenaFilter(order * hidden_size, l_max, **filter_args)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.conv = fft_causal_conv  # tests swap in direct_causal_conv

    def reset_mixer_parameters(self) -> None:
        # safari's LM init touches only Linear and Embedding: the short conv keeps PyTorch's default
        # weights. Not its default bias, U(+-1/sqrt(3)) with a fan-in of 3 taps: that constant, as large
        # as the projected signal, enters every gate and value, and their product adds one fixed vector
        # to every token of every text. Mean-pooled, untrained Hyena embeddings of 48 SciFact documents
        # then had a mean pairwise cosine of 0.97 (the shared-block attention student: 0.75); with a
        # zero bias, 0.61. A language model learns around such a constant; a pooled embedding is
        # dominated by it, so it starts at zero here.
        self.short_filter.reset_parameters()
        nn.init.zeros_(self.short_filter.bias)
        self.filter.reset_parameters()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, _ = x.shape
        D = self.out_proj.in_features  # the inner width: hidden_size, unless structured pruning narrowed it
        u = self.short_filter(self.in_proj(x).transpose(1, 2))[..., :L]  # (B, (N+1)D, L)
        *gates, v = u.split(D, dim=1)
        k = self.filter(L).view(D, self.order, L)
        bias = self.filter.bias.view(D, self.order)
        dtype = v.dtype
        keep = None if mask is None or bool(mask.all()) else mask[:, None, :].float()  # (B, 1, L)
        with torch.autocast(x.device.type, enabled=False):  # FFTs in float32, as safari
            v = v.float()
            for n in range(self.order):
                if keep is not None:
                    v = v * keep
                v = gates[n].float() * self.conv(v, k[:, n], bias[:, n].float())
            if keep is not None:
                v = v * keep
        return self.out_proj(v.to(dtype).transpose(1, 2))


@register_encoder("hyena")
class HyenaEncoder(Encoder):
    """Hyena operator in the shared pre-norm block (blocks.MixerModel), from a preset or a
    checkpoint directory written by `save_pretrained`."""

    is_causal = True

    def __init__(self, checkpoint: str | None = None, preset: str | None = None, **opts):
        preset = resolve_preset(checkpoint, preset)
        if checkpoint:
            cfg, source = init_from_json_checkpoint(self, checkpoint, opts, lambda path: read_json_config(
                path, MODEL_TYPE, CONFIG_KEYS), build_model)
        else:
            super().__init__(opts.pop("tokenizer", None), **opts)
            p = PRESETS[preset]
            cfg = dict(model_type=MODEL_TYPE, vocab_size=len(self.tokenizer), hidden_size=p["hidden_size"],
                       num_layers=p["num_layers"],
                       # SwiGLU at fla's default width (2/3 x 4 x hidden): the same MLP as RetNet/GLA.
                       intermediate_size=gated_mlp_size(p["hidden_size"]),
                       order=2, filter_order=64, emb_dim=33, short_filter_order=3,
                       l_max=max(512, self.max_length),  # filters exist for every length up to l_max
                       norm_eps=1e-6, pad_token_id=self.pad_token_id)
            self.model = build_model(cfg)  # random init from the global torch seed
            self.label = preset
            source = f"preset:{preset}"
        self.cfg = cfg
        self.arch_config = {**cfg, "source": source}
        self.kernel_path = f"torch.fft {self.device.type}"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)

    def flops_per_token(self, seq_len: int) -> float:
        # super(): 2 x non-embedding weights. That covers the projections, short conv, MLP and the
        # filter FFN (its L positions are generated once per sequence: 2 x FFN weights per token, an
        # upper bound as the filter is shared by the batch). The positional features z are inputs,
        # not weights: take them out. On top, per layer, order and channel, per token:
        #   FFT conv with n = 2L: rfft(u) + irfft, 2 x 2.5 n log2 n / L = 10 log2(2L); rfft of the
        #   filter once per sequence, 5 log2(2L); spectrum product 6 (a complex multiply-add on
        #   L + 1 bins; the bias skip is folded into the filter's spectrum); gate 1; decay window 1.
        # So per token: 2 x weights - 2 x |z| + layers x order x width x (15 log2(2L) + 8).
        cfg = self.cfg
        z = cfg["num_layers"] * cfg["l_max"] * cfg["emb_dim"]
        per_channel = 15.0 * math.log2(2 * seq_len) + 8.0
        inner = sum(layer.attn.out_proj.in_features for layer in self.model.layers)  # hidden x layers unless pruned
        return super().flops_per_token(seq_len) - 2.0 * z + cfg["order"] * inner * per_channel

    def save_pretrained(self, path: str | Path) -> None:
        save_json_checkpoint(path, self.cfg, self.model, self.tokenizer)


CONFIG_KEYS = ("vocab_size", "hidden_size", "num_layers", "intermediate_size", "order", "filter_order",
               "emb_dim", "short_filter_order", "l_max")


def build_model(cfg: dict) -> MixerModel:
    def make_mixer(layer_idx: int) -> Hyena:
        return Hyena(cfg["hidden_size"], cfg["l_max"], order=cfg["order"], short_filter_order=cfg["short_filter_order"],
                     emb_dim=cfg["emb_dim"], filter_order=cfg["filter_order"])

    return MixerModel(cfg["vocab_size"], cfg["hidden_size"], cfg["num_layers"], make_mixer, cfg["intermediate_size"],
                      norm_eps=cfg.get("norm_eps", 1e-6), pad_token_id=cfg.get("pad_token_id"))


# -- structured pruning (encoders/pruning.py): the structures this architecture has ----------
@register_pruner(HyenaEncoder)
def hyena_groups(encoder: HyenaEncoder) -> list[Group]:
    """Inner channels: channel c is gate_n[c] and v[c] of in_proj (order + 1 blocks) and the short
    conv, long filter channels c * order + n (filter rows, skip bias, decay rate), out_proj column c.
    Channels never mix inside the operator (depthwise convs, elementwise gates), so they prune cleanly.
    The filter FFN (shared by all channels) and the positional features stay."""
    groups = []
    for layer in encoder.model.layers:
        h = layer.attn
        width, order, filt = h.out_proj.in_features, h.order, h.filter
        d, blocks, taps = units(width), units(width, copies=order + 1), units(width, order)
        slices = linear_slices([h.in_proj, h.short_filter], [h.out_proj], blocks, col_layout=d)
        slices += linear_slices([filt.out], [], taps) + [Slice(filt, "bias", 0, taps), Slice(filt, "deltas", 0, taps)]
        groups += [Group("inner_channels", slices, h.out_proj, d), gated_mlp_group(layer.mlp)]
    return groups
