"""RWKV-4 encoders on transformers' `RwkvModel`: a Hugging Face RWKV-4 checkpoint (hub id such as
`RWKV/rwkv-4-169m-pile`, or a local directory), a BlinkDL RWKV-4 `.pth` state dict, or a randomly
initialised RWKV-4 at one of the shared presets.

RWKV is a causal RNN: `RwkvModel` ignores `attention_mask`. The base class pads on the right, so a
real token never sees a pad, and pooling takes real tokens only; padding cannot change an embedding.

WKV (the time-mixing recurrence) runs transformers' CUDA kernel when transformers loaded it (it
fetches `kernels-community/rwkv` through the `kernels` package, so it needs that package, ninja and
the hub or its cache) and the tensors are on CUDA. Elsewhere (`wkv` option): transformers' torch
recurrence `rwkv_linear_attention_cpu`, which loops over time vectorised over batch x channels, or
`wkv_chunked`, the same function as matmuls within chunks and a recurrence across them. The
recurrence is faster while batch x channels is large (short texts in a fixed token budget), the
chunked form when it is small (long texts, single queries); "auto" picks by that width.

RWKV-5/6/7 (the `rwkv` pip package's later checkpoints, HF model types rwkv5/6/7) are different
architectures (multi-head matrix-valued state, data-dependent decay) and are refused.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from . import register_encoder
from .base import PRESETS, Encoder, EncoderError, _first_line, checkpoint_label, checkpoint_tokenizer, load_hf_config, resolve_preset
from .pruning import Group, Slice, linear_slices, register_pruner, units

# Per channel and token the WKV recurrence does 4 exp, 2 max and ~18 add/mul/div (output and state
# update, as in rwkv_linear_attention_cpu); each counts as one FLOP.
WKV_FLOPS_PER_CHANNEL = 24
WKV_MODES = ("auto", "recurrent", "chunked")
WKV_CHUNK = 32  # time steps per chunk of the chunked WKV (of 16/32/64, 32 was fastest at 2048 tokens)
# "auto": the recurrence costs ~14 small ops per time step, each over batch x channels elements; when
# that is small (long texts in a fixed token budget, single queries) the per-op overhead dominates
# and the chunked form, ~30 ops per call, wins. Measured at 1 thread, 384 channels, 4096 tokens: the
# recurrence 2x faster at batch 16 x 256, even at 4 x 1024, the chunked form 2.3x faster at 2 x 2048.
WKV_CHUNKED_WIDTH = 1536
# The chunked form works in one scale per chunk, e^(max key), instead of the recurrence's running
# maximum. Every exponent it then takes lies within +-(WKV_RANGE + |time_first|) <= 80 nats, so every
# term is a normal fp32 number (exp(+-87)) and it rounds like the recurrence. A call with a chunk
# whose keys span more, a |time_first| above WKV_TIME_FIRST, or a carried state more than WKV_RANGE
# above a chunk's keys runs the recurrence instead (keys of trained RWKV-4 models span a few tens).
WKV_RANGE, WKV_TIME_FIRST = 60.0, 20.0


def wkv(att, key: torch.Tensor, value: torch.Tensor, mode: str = "auto") -> torch.Tensor:
    """WKV of transformers' RwkvSelfAttention `att` (no carried state): the CUDA kernel where it
    loaded, else the recurrence or the chunked form as `mode` says. One home for the choice, so that
    the RWKV encoder and the shared block's RWKV mixer (encoders/shared.py) run the same kernels."""
    from transformers.models.rwkv import modeling_rwkv as hf

    form = wkv_form(key, mode)
    if form == "cuda":
        return hf.RwkvLinearAttention.apply(att.time_decay, att.time_first, key, value, None, False)[0]
    out = wkv_chunked(att.time_decay, att.time_first, key, value) if form == "chunked" else None
    if out is None:  # the recurrence by choice, or a call outside the chunked form's exponent range
        out = hf.rwkv_linear_attention_cpu(att.time_decay, att.time_first, key, value)[0]
    return out


def wkv_form(key: torch.Tensor, mode: str = "auto") -> str:
    """Which form `wkv` runs for keys of this shape and device: "cuda" (transformers' kernel),
    "chunked" or "recurrence" (the chunked form may still hand a call outside its exponent range to
    the recurrence)."""
    from transformers.models.rwkv import modeling_rwkv as hf

    kernel = hf.rwkv_cuda_kernel
    batch, length, channels = key.shape
    if (key.is_cuda and kernel is not None and 1 < length <= kernel.max_seq_length
            and batch * channels % min(channels, 32) == 0):
        return "cuda"
    chunked = mode == "chunked" or (mode == "auto" and batch * channels <= WKV_CHUNKED_WIDTH)
    return "chunked" if chunked else "recurrence"


def wkv_chunked(time_decay, time_first, key, value, chunk_size: int = WKV_CHUNK):
    """RWKV-4's WKV, the function transformers' `rwkv_linear_attention_cpu` computes (its output), in
    chunks: parallel within a chunk, recurrent across chunks. With w = -exp(time_decay) < 0 and
    u = time_first, per channel:

        S_t = e^w S_{t-1} + e^{k_t} (v_t, 1)        wkv_t = num / den of  S_{t-1} + e^{u + k_t} (v_t, 1)

    Query j of a chunk (t = t0 + j) sees e^{j w} S_{t0-1} (the state the chunk starts from), the
    chunk's earlier keys i < j with weight e^{(j-1-i) w} and its own key with weight e^u. Those
    weights depend on the channel only, not on the data, so the chunk part is one batched matmul per
    channel over every chunk and batch row at once: (chunk+1, chunk) weights @ (chunk, chunks x batch
    x [v, 1]), scaled by e^{k - max k}; the extra row (j = chunk, no own key) is the chunk's addition
    to the state it hands on. Across chunks the state is carried as (num, den) / e^p with the
    running maximum p, as in the recurrence. key, value: (batch, length, channels); returns
    (batch, length, channels) in key's dtype, or None when a call is outside the exponent range
    stated at WKV_RANGE (the caller then runs the recurrence)."""
    B, L, C = key.shape
    T = min(chunk_size, L)
    N = -(-L // T)
    u = time_first.float()
    if u.abs().max() > WKV_TIME_FIRST:
        return None
    k, v = key.float(), value.float()
    if N * T > L:  # pad the last chunk: a repeated key keeps its range, a zero value adds nothing
        k = torch.cat([k, k[:, -1:].expand(B, N * T - L, C)], 1)
        v = torch.cat([v, v.new_zeros(B, N * T - L, C)], 1)
    # Contiguous (channels, time in chunk, chunk, batch): channels batch the matmul, time is its inner
    # dimension; one transposing copy in (k, v) and one out, every op between on contiguous memory.
    k = k.view(B, N, T, C).permute(3, 2, 1, 0).contiguous()
    v = v.view(B, N, T, C).permute(3, 2, 1, 0).contiguous()
    m = k.amax(1, keepdim=True)  # (C, 1, N, B): each chunk's scale
    if (m - k.amin(1, keepdim=True)).max() > WKV_RANGE:
        return None
    w = -torch.exp(time_decay.float())

    ek = torch.exp(k - m)  # in [e^-WKV_RANGE, 1]
    X = torch.stack([ek * v, ek], 2).view(C, T, 2 * N * B)
    j = torch.arange(T + 1, device=k.device)
    gap = (j[:, None] - 1 - j[None, :T]).to(w.dtype)  # (T + 1, T): steps from key i to just before query j
    weights = torch.exp(w[:, None, None] * gap.clamp(min=0)) * (gap >= 0)
    weights.diagonal(0, 1, 2).copy_(torch.exp(u)[:, None].expand(C, T))  # own key: e^u
    out = (weights @ X).view(C, T + 1, 2, N, B)  # (num, den) / e^m, before the carried state

    # The state each chunk starts from, carried chunk to chunk as (num, den) / e^p.
    m = m[:, 0]  # (C, N, B)
    p = k.new_full((C, B), float("-inf"))
    state = k.new_zeros(C, 2, B)
    P, S = [], []
    for n in range(N):
        P.append(p), S.append(state)
        if n + 1 < N:
            decayed = p + T * w[:, None]
            p_next = torch.maximum(decayed, m[:, n])
            state = torch.exp(decayed - p_next)[:, None] * state + torch.exp(m[:, n] - p_next)[:, None] * out[:, T, :, n]
            p = p_next
    rel = torch.stack(P, 1) - m  # (C, N, B): the carried state's scale over the chunk's
    if rel.max() > WKV_RANGE:
        return None
    carried = torch.exp(rel)[:, None] * torch.stack(S, 2)  # (C, 2, N, B) / e^m
    decay = torch.exp(w[:, None] * j[:T])  # (C, T): e^{j w}
    out = torch.addcmul(out[:, :T], decay[:, :, None, None, None], carried[:, None])
    wkv = out[:, :, 0] / out[:, :, 1]  # (C, T, N, B)
    return wkv.permute(3, 2, 1, 0).reshape(B, N * T, C)[:, :L].to(key.dtype)


def blinkdl_to_hf(state_dict: dict) -> dict:
    """Rename a BlinkDL RWKV-4 state dict to `RwkvModel` names (as transformers'
    convert_rwkv_checkpoint_to_hf.py does, without the `rwkv.` prefix and the LM head)."""
    out = {}
    for name, weight in state_dict.items():
        if name == "head.weight":
            continue  # the LM head; an encoder does not use it
        name = name.replace("emb.", "embeddings.", 1) if name.startswith("emb.") else name
        name = name.replace("blocks.0.ln0.", "blocks.0.pre_ln.")
        name = re.sub(r"blocks\.(\d+)\.att\.", r"blocks.\1.attention.", name)
        name = re.sub(r"blocks\.(\d+)\.ffn\.", r"blocks.\1.feed_forward.", name)
        name = re.sub(r"\.time_mix_k$", ".time_mix_key", name)
        name = re.sub(r"\.time_mix_v$", ".time_mix_value", name)
        name = re.sub(r"\.time_mix_r$", ".time_mix_receptance", name)
        weight = weight.float()
        # Some exports squeeze the time_* vectors; RwkvModel wants (1, 1, D) mixes and (D,) decays.
        if ".time_mix_" in name:
            weight = weight.reshape(1, 1, -1)
        elif name.endswith((".time_decay", ".time_first")):
            weight = weight.reshape(-1)
        out[name] = weight
    return out


def rwkv_version(state_dict: dict) -> str:
    """Which RWKV generation a BlinkDL state dict is, from its key names."""
    keys = set(state_dict)
    if any(".att.ln_x." in k for k in keys):
        return "5"  # RWKV-5 (and 6) normalise the multi-head WKV output with ln_x
    if any(".att.time_maa" in k for k in keys):
        return "6"
    if any(k.endswith((".att.w0", ".att.x_r")) for k in keys):
        return "7"
    if "blocks.0.att.time_mix_k" in keys and "blocks.0.att.time_first" in keys:
        return "4"
    return "unknown"


@register_encoder("rwkv")
class RwkvEncoder(Encoder):
    """RWKV-4 (transformers' RwkvModel): token-shift + WKV time mixing, squared-ReLU channel mixing."""

    is_causal = True

    def __init__(self, checkpoint: str | None = None, preset: str | None = None, wkv: str = "auto", **opts):
        from transformers import RwkvConfig

        preset = resolve_preset(checkpoint, preset)
        if wkv not in WKV_MODES:
            raise EncoderError(f"RWKV wkv must be one of {', '.join(WKV_MODES)}, got {wkv!r}")
        if preset:
            super().__init__(opts.pop("tokenizer", None), **opts)
            p = PRESETS[preset]
            # RWKV-4 has 5 D^2 matrices per layer outside the FFN's up/down (k, v, r, o and the
            # channel-mix receptance), BERT 4: narrowing the FFN by D/2 pays for the extra one.
            config = RwkvConfig(vocab_size=len(self.tokenizer), hidden_size=p["hidden_size"],
                                num_hidden_layers=p["num_layers"], attention_hidden_size=p["hidden_size"],
                                intermediate_size=p["intermediate_size"] - p["hidden_size"] // 2,
                                context_length=max(1024, self.max_length),  # the CUDA kernel's length limit
                                pad_token_id=self.pad_token_id)
            self.model = self._build(config)  # random init from the global torch seed
            self.label, source = preset, f"preset:{preset}"
        elif str(checkpoint).endswith(".pth"):
            tokenizer = opts.pop("tokenizer", None)
            super().__init__(tokenizer, **opts)
            self.model = self._load_pth(str(checkpoint), tokenizer_given=tokenizer is not None)
            self.label, source = Path(checkpoint).stem, str(checkpoint)
        else:
            source = str(checkpoint)
            config = self._hf_config(source)
            tokenizer = opts.pop("tokenizer", None) or checkpoint_tokenizer(source)
            super().__init__(tokenizer, **opts)
            self.model = self._load_hf(source, config)
            self.label = checkpoint_label(source)
        cfg = self.model.config
        if len(self.tokenizer) > cfg.vocab_size:
            raise EncoderError(f"the tokenizer has {len(self.tokenizer)} tokens but the model embeds only "
                               f"{cfg.vocab_size}; pass the checkpoint's tokenizer")
        self.model.eval()
        self.arch_config = {k: getattr(cfg, k) for k in ("model_type", "hidden_size", "num_hidden_layers",
                            "attention_hidden_size", "intermediate_size", "vocab_size", "context_length",
                            "rescale_every", "layer_norm_epsilon")}
        self.arch_config["source"] = source
        self.wkv_mode = wkv  # not in arch_config: every mode computes the same function
        self.kernel_path = self._kernel_path()

    # -- building and loading -------------------------------------------------------------------
    @staticmethod
    def _build(config):
        from transformers import RwkvModel

        # transformers tries to load its WKV CUDA kernel while building the attention layers; a
        # failure there is only logged, and the torch recurrence is used instead.
        return RwkvModel(config)

    @staticmethod
    def _hf_config(source: str):
        return load_hf_config(source, {"rwkv"}, "RWKV-4 (model_type 'rwkv'; RWKV-5/6/7 are different architectures)")

    @staticmethod
    def _load_hf(source: str, config):
        from transformers import RwkvModel

        try:
            # RwkvForCausalLM checkpoints (the hub's RWKV/*) keep the backbone under `rwkv.`;
            # from_pretrained strips that prefix and drops the LM head.
            model, info = RwkvModel.from_pretrained(source, config=config, dtype=torch.float32,
                                                    output_loading_info=True)
        except Exception as e:
            raise EncoderError(f"checkpoint {source!r} does not load: {_first_line(e)}") from None
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            raise EncoderError(f"checkpoint {source!r} lacks {len(missing)} RWKV weights (e.g. {missing[0]})")
        return model

    def _load_pth(self, path: str, tokenizer_given: bool):
        from transformers import RwkvConfig

        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise EncoderError(f"checkpoint {path!r} does not load: {_first_line(e)}") from None
        if not isinstance(raw, dict) or "emb.weight" not in raw:
            raise EncoderError(f"checkpoint {path!r} is not a BlinkDL RWKV state dict (no emb.weight)")
        version = rwkv_version(raw)
        if version != "4":
            raise EncoderError(f"checkpoint {path!r} is RWKV-{version}, not RWKV-4; only RWKV-4 maps onto "
                               "transformers' RwkvModel (RWKV-5/6/7 use a multi-head matrix state)")
        sd = blinkdl_to_hf(raw)
        vocab, hidden = sd["embeddings.weight"].shape
        if not tokenizer_given and vocab != len(self.tokenizer):
            raise EncoderError(f"{path!r} embeds {vocab} tokens and a .pth carries no tokenizer: pass "
                               "tokenizer= (e.g. EleutherAI/gpt-neox-20b for the RWKV-4 Pile models)")
        layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        config = RwkvConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                            attention_hidden_size=sd["blocks.0.attention.key.weight"].shape[0],
                            intermediate_size=sd["blocks.0.feed_forward.key.weight"].shape[0],
                            context_length=max(1024, self.max_length), pad_token_id=self.pad_token_id)
        # Build on the meta device (no random init of weights about to be replaced), then take the
        # checkpoint's tensors; strict, so a missing or extra weight is an error, not a silent init.
        with torch.device("meta"):
            model = self._build(config)
        try:
            model.load_state_dict(sd, strict=True, assign=True)
        except RuntimeError as e:
            raise EncoderError(f"checkpoint {path!r} does not match RWKV-4: {_first_line(e)}") from None
        return model

    def _kernel_path(self) -> str:
        from transformers.models.rwkv import modeling_rwkv

        if self.device.type == "cuda" and modeling_rwkv.rwkv_cuda_kernel is not None:
            return "wkv cuda kernel (transformers, kernels-community/rwkv)"
        cpu = {"recurrent": "torch recurrence", "chunked": "torch chunked wkv",
               "auto": f"torch chunked wkv (batch x channels <= {WKV_CHUNKED_WIDTH}) / recurrence"}[self.wkv_mode]
        return f"{cpu} {self.device.type}"

    def save_pretrained(self, directory) -> None:
        """A directory `encoders.load("rwkv", checkpoint=directory)` reloads: backbone and tokenizer."""
        self.model.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))

    # -- forward --------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # RwkvModel.forward, block by block, with one difference: transformers' inference-time
        # rescaling (halve the hidden state every `rescale_every` layers, against fp16 overflow)
        # divides the output weights in place on the first eval call, which would change the weights
        # (and the cache fingerprint) under our feet. Dividing the inputs of those two projections
        # instead is the same arithmetic (powers of two) and leaves the weights alone.
        model, every = self.model, self.model.config.rescale_every
        hidden = model.embeddings(input_ids)
        for i, block in enumerate(model.blocks):
            scale = 2.0 ** (i // every) if every > 0 else 1.0
            if i == 0:
                hidden = block.pre_ln(hidden)
            att = block.attention
            receptance, key, value, _ = att.extract_key_value(block.ln1(hidden))
            hidden = hidden + att.output(receptance * wkv(att, key, value, self.wkv_mode) / scale)
            ffn, x = block.feed_forward, block.ln2(hidden)
            shifted = ffn.time_shift(x)  # token shift: x_{t-1}, zero at t = 0
            key = torch.square(torch.relu(ffn.key(x * ffn.time_mix_key + shifted * (1 - ffn.time_mix_key))))
            gate = torch.sigmoid(ffn.receptance(x * ffn.time_mix_receptance + shifted * (1 - ffn.time_mix_receptance)))
            hidden = hidden + gate * ffn.value(key / scale)
            if every > 0 and (i + 1) % every == 0:
                hidden = hidden / 2
        return model.ln_out(hidden)

    def flops_per_token(self, seq_len: int) -> float:
        # An RNN: the mixer's cost per token does not grow with seq_len.
        cfg = self.model.config
        return super().flops_per_token(seq_len) + WKV_FLOPS_PER_CHANNEL * cfg.attention_hidden_size * cfg.num_hidden_layers


# -- structured pruning (encoders/pruning.py): the structures this architecture has ----------
@register_pruner(RwkvEncoder)
def rwkv_groups(encoder: RwkvEncoder) -> list[Group]:
    """Time-mix channels (key/value/receptance rows, output columns, time_decay/time_first; the
    time_mix_* vectors mix the hidden width and stay) and channel-mix FFN channels (key rows, value
    columns; its receptance is hidden x hidden and stays)."""
    cfg, groups = encoder.model.config, []
    for block in encoder.model.blocks:
        att, ffn = block.attention, block.feed_forward
        a = units(att.output.in_features)
        slices = linear_slices([att.key, att.value, att.receptance], [att.output], a)
        slices += [Slice(att, "time_decay", 0, a), Slice(att, "time_first", 0, a)]

        def resize(kept, att=att):
            att.attention_hidden_size = cfg.attention_hidden_size = len(kept)  # flops_per_token reads it

        def resize_ffn(kept):
            cfg.intermediate_size = len(kept)

        groups.append(Group("attention_channels", slices, att.output, a, resize))
        f = units(ffn.value.in_features)
        groups.append(Group("ffn_channels", linear_slices([ffn.key], [ffn.value], f), ffn.value, f, resize_ffn))
    return groups
