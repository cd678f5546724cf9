"""Mamba (selective state space model) encoders on transformers' `MambaModel`: a Hugging Face Mamba
checkpoint (hub id such as `state-spaces/mamba-130m-hf`, or a local directory) or a randomly
initialised Mamba at one of the shared presets.

Compute paths (`kernel_path`):
- "mamba-ssm cuda": on CUDA with mamba-ssm and causal-conv1d installed, transformers' own mixer
  runs their fused kernels; we leave it alone.
- "chunked-scan <device>": everywhere else. transformers' fallback loops over every token in Python
  and materialises (batch, d_inner, length, d_state) tensors; `chunked_mixer_forward` (bound to each
  mixer instance, transformers untouched) computes the same thing chunk by chunk in
  O(batch x d_inner x chunk x d_state) memory, several times faster. When a gradient is wanted
  (training) the same scan runs inside `SelectiveScan`, whose backward is the adjoint recurrence.
"""

from __future__ import annotations

import importlib
import math
import types

import torch
import torch.nn.functional as F

from . import register_encoder
from .base import PRESETS, Encoder, EncoderError, _first_line, checkpoint_label, checkpoint_tokenizer, load_hf_config, resolve_preset
from .pruning import Group, Slice, linear_slices, register_pruner, units

# Preset shape. Mamba has no MLP blocks, so at n_layer = num_layers the mixer must carry the
# parameters BERT spends on its MLP: expand 4 puts tiny/small/base within 3-5% of BERT.
EXPAND, D_STATE, D_CONV = 4, 16, 4
CHUNK_SIZE = 8  # time steps per chunk, at most; at batch 8 (small preset) 4 and 8 are close, 16 is ~40% slower
# ... and fewer for wide batches: the scan's two chunk buffers stay within this many bytes (batch 8 x
# chunk 8 at the small preset). At batch 16-32 (4096 tokens of 128-256) chunk 8 overflows the cache
# and ran 35-70% slower than chunk 2-4 (measured on the shared 2-core AMD EPYC).
SCAN_BUFFER_BYTES = 12 * 2**20
# Memory traffic of `selective_scan_chunked` per state element (batch, channel, state) and time step,
# in passes over its fp32 chunk buffers: dt*A written (1), exp2 in place (2), dt x B written (1), the
# step's multiply-add reads decay, previous and own state and writes one (4), the read-out reads
# the state (1). 9 x 4 bytes: the figure a memory-bound scan is held to (benchmarks.studies.efficiency).
SCAN_BYTES_PER_STATE = 9 * 4


def scan_chunk(length: int, batch: int, d_inner: int, d_state: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Time steps per chunk of `selective_scan_chunked`: chunk_size, or fewer so that its two fp32
    (chunk, batch, d_state, d_inner) buffers fit in SCAN_BUFFER_BYTES; at least 1, at most length."""
    fits = SCAN_BUFFER_BYTES // (2 * batch * d_state * d_inner * 4)
    return max(1, min(chunk_size, fits, length))


def selective_scan_chunked(x, dt, A, B, C, chunk_size: int = CHUNK_SIZE):
    """Mamba's selective scan, per (batch, channel e, state n):

        h_t = exp(dt_t A) * h_{t-1} + dt_t x_t B_t,    y_t = sum_n C_t[n] h_t[n]

    Time-major and float32: x, dt: (length, batch, d_inner), dt after softplus; A: (d_inner,
    d_state), negative; B, C: (length, batch, d_state). Returns y: (length, batch, d_inner).

    Recurrent across chunks, carrying h. Within a chunk the discretisation exp(dt A), the input
    dt x B and the read-out C.h are computed for all positions at once, and the state update is
    one fused in-place multiply-add per step. Every decay factor is exp of a non-positive number,
    so nothing can overflow. The segment-sum form of Mamba-2's SSD (exp(S_t - S_s) for s <= t) does
    not pay here: Mamba-1's decay differs per (channel, state), so its chunk-squared term costs
    ~chunk/2 extra exps per element and no matmul absorbs it (measured 3-6x slower on CPU).
    Memory: two (chunk, batch, d_state, d_inner) buffers, reused by every chunk (`scan_chunk`).
    """
    length, batch, d_inner = x.shape
    d_state = A.shape[1]
    # Chunk tensors are (time, batch, state, channel): a time step is one contiguous block, and the
    # read-out is a (1 x d_state) @ (d_state x d_inner) product over contiguous rows.
    u = (dt * x)[:, :, None, :]
    dt = dt[:, :, None, :]
    B = B[..., None]
    C = C.contiguous()
    # exp(dt A) as exp2(dt A log2(e)): torch's exp2 is about twice as fast as its exp on CPU.
    A2 = (A * math.log2(math.e)).t().contiguous()
    chunk = scan_chunk(length, batch, d_inner, d_state, chunk_size)
    decay = x.new_empty(chunk, batch, d_state, d_inner)
    states = x.new_empty(chunk, batch, d_state, d_inner)
    h = x.new_zeros(batch, d_state, d_inner)
    y = x.new_empty(length, batch, d_inner)
    for start in range(0, length, chunk):
        end = min(start + chunk, length)
        n = end - start
        a, s = decay[:n], states[:n]
        torch.exp2(torch.mul(dt[start:end], A2, out=a), out=a)  # in (0, 1]
        torch.mul(u[start:end], B[start:end], out=s)  # the input term; the recurrence makes it the state
        s[0].addcmul_(a[0], h)
        for t in range(1, n):
            s[t].addcmul_(a[t], s[t - 1])
        torch.bmm(C[start:end].view(n * batch, 1, d_state), s.view(n * batch, d_state, d_inner),
                  out=y[start:end].view(n * batch, 1, d_inner))
        h.copy_(s[n - 1])
    return y


class SelectiveScan(torch.autograd.Function):
    """`selective_scan_chunked` with a gradient, for training. The scan writes into preallocated
    buffers, which autograd cannot follow; so the forward runs it as is and the backward is the
    adjoint recurrence, run backwards in time:
        g_t = C_t dy_t + a_{t+1} g_{t+1}    (g_t = dL/dh_t, a_t = exp(dt_t A))
    from which dx, d(dt), dA, dB, dC follow elementwise. States are recomputed, not stored."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk_size=CHUNK_SIZE):
        ctx.save_for_backward(x, dt, A, B, C)
        return selective_scan_chunked(x, dt, A, B, C, chunk_size)

    @staticmethod
    def backward(ctx, dy):
        x, dt, A, B, C = ctx.saved_tensors  # (L, b, e), (L, b, e), (e, n), (L, b, n), (L, b, n)
        dy = dy.contiguous()
        u = dt * x
        a = torch.exp(dt[:, :, None, :] * A.t().contiguous())  # (L, b, n, e), contiguous like h and g
        h = u[:, :, None, :] * B[..., None]  # the input terms, turned into the states in place
        for t in range(1, len(h)):
            h[t].addcmul_(a[t], h[t - 1])
        g = C[..., None] * dy[:, :, None, :]
        for t in range(len(g) - 2, -1, -1):
            g[t].addcmul_(a[t + 1], g[t + 1])
        # The contractions over e and n as batched matmuls over (time x batch) on contiguous memory.
        Lb, n, e = len(x) * x.shape[1], A.shape[1], A.shape[0]
        dC = torch.bmm(h.view(Lb, n, e), dy.reshape(Lb, e, 1)).view_as(C)
        du = torch.bmm(B.reshape(Lb, 1, n), g.view(Lb, n, e)).view_as(x)
        dB = torch.bmm(g.view(Lb, n, e), u.reshape(Lb, e, 1)).view_as(B)
        # d(dt A)_t = g_t h_{t-1} a_t, reusing a's memory (h_{-1} = 0).
        dz = a.mul_(g)
        dz[1:].mul_(h[:-1])
        dz[0].zero_()
        ddt = du * x
        for k in range(n):  # + sum_n dz[.., n, e] A[e, n], one contiguous slice at a time
            ddt.addcmul_(dz[:, :, k], A[:, k])
        # dA[e, n] = sum over (time, batch) of dz dt: a matrix-vector product with ones.
        dz.mul_(dt[:, :, None, :])
        dA = torch.mm(dz.new_ones(1, Lb), dz.view(Lb, n * e)).view(n, e).t()
        return du * dt, ddt, dA, dB, dC, None


def chunked_mixer_forward(self, hidden_states, cache_params=None, attention_mask=None, **kwargs):
    """`MambaMixer.forward` without a cache, on `selective_scan_chunked` (`SelectiveScan` when a
    gradient is wanted). Bound to a
    mixer instance (`bind_chunked_scan`). Computes what transformers' torch path computes, step by
    step, including where the attention mask zeroes pads (before in_proj and after the conv), but
    time-major throughout: every elementwise op then runs on contiguous memory (on (batch, d_inner,
    length) views they cost as much as the scan itself)."""
    if cache_params is not None:
        raise ValueError("the chunked Mamba scan runs without a cache; call the model with use_cache=False")
    dtype = hidden_states.dtype
    mask = None if attention_mask is None else attention_mask.t()[:, :, None]  # (length, batch, 1)
    hidden_states = hidden_states.transpose(0, 1)
    if mask is not None:
        hidden_states = (hidden_states * mask).to(dtype)
    x, gate = self.in_proj(hidden_states.contiguous()).chunk(2, dim=-1)  # (length, batch, d_inner) each
    # On x as a strided half of in_proj's output the conv's multiply-adds below run ~4x slower than on
    # a contiguous copy, and the copy costs less than the difference. (Two products on in_proj's
    # halves would do as well, but a view of the weight defeats Encoder.held_weights' bf16 casts.)
    x = x.contiguous()
    # Causal depthwise conv as shifted multiply-adds: out[t] = bias + sum_k w[k] x[t - (K-1) + k].
    # Each tap's weights as one contiguous row: a strided (d_inner,) factor makes every multiply-add 4-10x slower.
    w = self.conv1d.weight[:, 0, :].t().contiguous()  # (K, d_inner)
    K = len(w)
    conv = x * w[K - 1] if self.conv1d.bias is None else torch.addcmul(self.conv1d.bias, x, w[K - 1])
    for k in range(K - 1):
        shift = K - 1 - k
        conv[shift:].addcmul_(x[:-shift], w[k])
    x = self.act(conv)
    if mask is not None:
        x = (x * mask).to(x.dtype)
    time_step, B, C = torch.split(self.x_proj(x), [self.time_step_rank, self.ssm_state_size, self.ssm_state_size],
                                  dim=-1)
    dt = F.linear(time_step, self.dt_proj.weight)
    # The scan in float32 (float64 for a float64 model) whatever the autocast dtype: states
    # accumulate over the whole text.
    f = torch.promote_types(dtype, torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        dt = F.softplus(dt.to(f) + self.dt_proj.bias.to(f))
        A = -torch.exp(self.A_log.to(f))
        x = x.to(f)
        B, C = B.to(f), C.to(f)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, dt, A, B, C)):  # training
            y = SelectiveScan.apply(x, dt, A, B, C, self.scan_chunk_size)
        else:
            y = selective_scan_chunked(x, dt, A, B, C, self.scan_chunk_size)
        y = y.addcmul_(x, self.D.to(f)).mul_(F.silu(gate.to(f)))
    return self.out_proj(y.to(dtype)).transpose(0, 1)


def bind_chunked_scan(model, chunk_size: int = CHUNK_SIZE) -> None:
    """Route every MambaMixer of `model` through `chunked_mixer_forward`."""
    from transformers.models.mamba.modeling_mamba import MambaMixer

    for module in model.modules():
        if isinstance(module, MambaMixer):
            module.scan_chunk_size = chunk_size
            module.forward = types.MethodType(chunked_mixer_forward, module)


def unbind_chunked_scan(model) -> None:
    """Back to transformers' own MambaMixer.forward (its kernels, or its per-token torch loop)."""
    for module in model.modules():
        if "forward" in vars(module) and getattr(module.forward, "__func__", None) is chunked_mixer_forward:
            del module.forward


def mamba_kernels_available() -> bool:
    """Whether transformers' Mamba can run mamba-ssm's selective scan and causal-conv1d (CUDA only).
    Imported here, guarded: neither package exists on a CPU-only machine."""
    try:
        importlib.import_module("mamba_ssm.ops.selective_scan_interface")
        importlib.import_module("causal_conv1d")
    except Exception:
        return False
    return True


def reference_init(model) -> None:
    """Re-initialise a fresh MambaModel the way mamba-ssm (the reference implementation,
    mixer_seq_simple._init_weights) does. transformers draws every Linear from N(0, 0.1)
    (initializer_range), 3-7x the default nn.Linear scale of in_proj and x_proj that mamba-ssm keeps;
    measured on SciFact documents with the teacher's token embeddings copied in, the pooled output
    of the N(0, 0.1) init keeps almost none of the embeddings' similarity structure (correlation with
    the teacher's similarities 0.06, this init 0.39), which a 20-minute training did not recover.
    A, D, dt_proj: transformers' init already equals mamba-ssm's and is kept."""
    n_layer = model.config.num_hidden_layers
    with torch.no_grad():
        torch.nn.init.normal_(model.embeddings.weight, std=0.02)
        for layer in model.layers:
            mixer = layer.mixer
            for linear in (mixer.in_proj, mixer.x_proj):  # nn.Linear's default init, bias zero
                linear.reset_parameters()
                if linear.bias is not None:
                    linear.bias.zero_()
            mixer.conv1d.reset_parameters()  # nn.Conv1d's default, bias included
            # out_proj: kaiming-uniform scaled by 1/sqrt(n_layer) (GPT-2's residual rescaling)
            torch.nn.init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
            mixer.out_proj.weight /= math.sqrt(n_layer)
            if mixer.out_proj.bias is not None:
                mixer.out_proj.bias.zero_()


@register_encoder("mamba")
class MambaEncoder(Encoder):
    """A (causal) Mamba backbone from transformers' MambaModel; pool over its token states."""

    is_causal = True

    def __init__(self, checkpoint: str | None = None, preset: str | None = None, chunk_size: int = CHUNK_SIZE,
                 **opts):
        from transformers import MambaConfig, MambaModel

        preset = resolve_preset(checkpoint, preset)
        if int(chunk_size) < 1:
            raise EncoderError(f"chunk_size must be positive, got {chunk_size}")
        if preset:
            p = PRESETS[preset]
            super().__init__(opts.pop("tokenizer", None), **opts)
            config = MambaConfig(vocab_size=len(self.tokenizer), hidden_size=p["hidden_size"],
                                 num_hidden_layers=p["num_layers"], expand=EXPAND, state_size=D_STATE,
                                 conv_kernel=D_CONV, pad_token_id=self.pad_token_id, use_cache=False)
            self.model = MambaModel(config)  # random init from the global torch seed
            reference_init(self.model)
            self.label = preset
            source = f"preset:{preset}"
        else:
            config = load_hf_config(checkpoint, {"mamba"}, "Mamba")
            tokenizer = opts.pop("tokenizer", None) or checkpoint_tokenizer(checkpoint)
            super().__init__(tokenizer, **opts)  # None: the default BERT tokenizer (our presets' own saves)
            if len(self.tokenizer) > config.vocab_size:
                raise EncoderError(f"the tokenizer has {len(self.tokenizer)} tokens but checkpoint {checkpoint!r} "
                                   f"embeds only {config.vocab_size}")
            try:
                # A MambaForCausalLM checkpoint (backbone.* weights) loads into the bare backbone.
                self.model, info = MambaModel.from_pretrained(checkpoint, config=config, output_loading_info=True)
            except Exception as e:
                raise EncoderError(f"checkpoint {checkpoint!r} does not load: {_first_line(e)}") from None
            if info["missing_keys"]:  # transformers would silently leave them randomly initialised
                missing = sorted(info["missing_keys"])
                raise EncoderError(f"checkpoint {checkpoint!r} lacks {len(missing)} Mamba weights, e.g. {missing[0]}")
            self.label = checkpoint_label(checkpoint)
            source = checkpoint
        self.model.eval()
        if self.device.type == "cuda" and mamba_kernels_available():
            self.kernel_path = "mamba-ssm cuda"  # transformers' mixer calls the fused kernels itself
        else:
            bind_chunked_scan(self.model, int(chunk_size))
            self.kernel_path = f"chunked-scan {self.device.type}"
        cfg = self.model.config
        self.arch_config = dict(model_type="mamba", hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                                expand=cfg.expand, intermediate_size=cfg.intermediate_size, state_size=cfg.state_size,
                                conv_kernel=cfg.conv_kernel, time_step_rank=cfg.time_step_rank,
                                vocab_size=cfg.vocab_size, source=source)
        if preset:
            self.arch_config["init"] = "mamba-ssm"

    def save_pretrained(self, directory) -> None:
        """A directory `encoders.load("mamba", checkpoint=directory)` reloads: backbone and tokenizer."""
        self.model.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Right padding: real tokens never see the pads after them. Without pads, skip the mask.
        mask = None if bool(attention_mask.all()) else attention_mask
        return self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state

    def flops_per_token(self, seq_len: int) -> float:
        cfg = self.model.config
        # The scan per token, layer, channel and state: exp(dt A) and dt*A (2), dt x B (2), the state
        # update (2), the read-out C.h (2), softplus/skip/gate amortised (~1): about 9. The depthwise
        # conv is one multiply-add per weight and token, already inside super()'s 2 x weights.
        return super().flops_per_token(seq_len) + 9.0 * cfg.intermediate_size * cfg.state_size * cfg.num_hidden_layers


# -- structured pruning (encoders/pruning.py): the structures this architecture has ----------
@register_pruner(MambaEncoder)
def mamba_groups(encoder: MambaEncoder) -> list[Group]:
    """Inner channels d_inner. The state size is not pruned: A_log's columns and x_proj's B/C rows are
    a small share of the parameters, and d_state is shared by all channels of the scan."""
    cfg, groups = encoder.model.config, []
    for layer in encoder.model.layers:
        m = layer.mixer
        d = units(m.intermediate_size)
        slices = linear_slices([m.in_proj], [], units(m.intermediate_size, copies=2))  # rows [x | z]
        slices += linear_slices([m.conv1d, m.dt_proj], [m.x_proj, m.out_proj], d)
        slices += [Slice(m, "A_log", 0, d), Slice(m, "D", 0, d)]

        def resize(kept, m=m):
            m.intermediate_size = cfg.intermediate_size = len(kept)  # flops_per_token reads the config

        chunked = getattr(m.forward, "__func__", None) is chunked_mixer_forward  # it calls out_proj time-major
        groups.append(Group("inner_channels", slices, m.out_proj, d, resize, time_major=chunked))
    return groups
