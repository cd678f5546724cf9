"""Structured pruning: remove a fraction of each encoder's width-carrying structures (attention heads,
inner / key-value channels, MLP channels), slicing the tensors so that the model really shrinks.

Each architecture's pruner (`@register_pruner(EncoderClass)`, next to its encoder in encoders/<arch>.py) describes its structures as `Group`s:
one group per structure kind per layer, listing every tensor slice a structure spans (`Slice`: which
tensor, along which dim, and the indices each structure owns there), the module whose input carries
the structures' activations, and a `resize` that updates the attributes the forward pass and
`flops_per_token` read. One generic routine then ranks and slices every group, so importance and
surgery mean the same thing for all six architectures:

  magnitude   L2 norm of all parameters a structure spans (its rows and columns, biases, per-channel vectors)
  activation  mean |activation| of the structure over the real tokens of some calibration texts

Torch-Pruning (1.6.0 here) was tried on transformers 5's BertModel: with embeddings, the pooler and every
attention.output.dense / output.dense ignored, prune_num_heads=True and prune_head_dims=False, it does
remove whole heads and FFN channels and the forward still runs (it reshapes with -1 heads), but it leaves
BertSelfAttention.num_attention_heads / all_head_size stale, traces the graph on every call and can only
use our activation statistics through a custom Importance class. Hand surgery is ~20 lines for BERT, so
one code path serves all six. It does not fit the others: Mamba and RWKV run scans outside any traceable
module graph (Mamba's mixer forward is our own chunked scan, RWKV's block loop is the encoder's own), and
Hyena's channel layouts (in_proj in order+1 blocks, filters interleaved c*order+n) and RetNet/GLA's
per-head reshapes (with RetNet's per-head fixed decays) are invisible to its dependency graph.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .base import Encoder, EncoderError


class PruningError(EncoderError):
    """A pruning request that cannot apply (bad sparsity, no pruner for the encoder); printed as one line."""

CRITERIA = ("magnitude", "activation")


@dataclass
class Slice:
    """`getattr(module, name)` (a parameter or buffer) holds the structures along `dim`; structure s
    owns the indices `layout[s]` there."""
    module: nn.Module
    name: str
    dim: int
    layout: torch.Tensor  # (structures, indices per structure)


@dataclass
class Group:
    """One kind of structure in one layer (e.g. layer 3's attention heads)."""
    kind: str  # key in the report, e.g. "attention_heads"
    slices: list[Slice]
    site: nn.Module  # its input's last dim carries the structures' activations ...
    site_layout: torch.Tensor  # ... structure s at these indices
    resize: Callable[[torch.Tensor], None] = lambda kept: None  # update attributes from the kept indices
    time_major: bool = False  # the site's input is (length, batch, dim)

    @property
    def size(self) -> int:
        return self.slices[0].layout.shape[0]


def units(n: int, unit: int = 1, copies: int = 1, stride: int | None = None) -> torch.Tensor:
    """Layout of n structures of `unit` consecutive indices each, repeated in `copies` blocks `stride`
    apart (default: back to back, n x unit). E.g. heads: units(H, head_dim); Mamba's in_proj, whose rows
    are [x | z]: units(d_inner, copies=2)."""
    stride = n * unit if stride is None else stride
    idx = torch.arange(n)[:, None, None] * unit + torch.arange(copies)[None, :, None] * stride + torch.arange(unit)
    return idx.reshape(n, -1)


def linear_slices(rows: list[nn.Module], cols: list[nn.Module], layout: torch.Tensor,
                  col_layout: torch.Tensor | None = None) -> list[Slice]:
    """Output rows (weight and bias) of `rows` and input columns of `cols`."""
    out = []
    for m in rows:
        out.append(Slice(m, "weight", 0, layout))
        if getattr(m, "bias", None) is not None:
            out.append(Slice(m, "bias", 0, layout))
    return out + [Slice(m, "weight", 1, layout if col_layout is None else col_layout) for m in cols]


# -- registry -------------------------------------------------------------------------------------
_PRUNERS: dict[type, Callable[[Encoder], list[Group]]] = {}


def register_pruner(encoder_cls: type):
    """Decorator: `fn(encoder) -> list[Group]` prunes `encoder_cls` and its subclasses."""
    def decorate(fn):
        _PRUNERS[encoder_cls] = fn
        return fn
    return decorate


def pruner_for(encoder: Encoder) -> Callable[[Encoder], list[Group]]:
    for cls in type(encoder).__mro__:  # a user's subclass of BertEncoder is pruned as BERT
        if cls in _PRUNERS:
            return _PRUNERS[cls]
    name = type(encoder).__name__
    raise PruningError(f"no pruner for {name}; register one with @register_pruner({name}) from "
                            "encoders.pruning (a function returning the encoder's Groups)")


# -- the one entry point --------------------------------------------------------------------------
def prune(encoder: Encoder, sparsity: float, criterion: str = "magnitude",
          calibration_texts: list[str] | None = None) -> dict:
    """Remove `sparsity` of the encoder's prunable structures IN PLACE (tensors sliced, not masked).
    Every group keeps its top round((1 - sparsity) x n) structures (at least one) in their original
    order. Returns a JSON-able report."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 < sparsity < 1:
        raise PruningError(f"pruning sparsity must be in (0, 1), got {sparsity}")
    if criterion not in CRITERIA:
        raise PruningError(f"pruning criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if criterion == "activation" and not calibration_texts:
        raise PruningError("pruning criterion 'activation' needs calibration texts (a non-empty list of strings)")
    start = time.perf_counter()
    pruner = pruner_for(encoder)
    # The resizes below write the new sizes into the model's config and the encoder's arch_config: give
    # this model its own copies first, so no other model sharing those objects changes with it.
    model = getattr(encoder, "model", None)
    if hasattr(model, "config"):
        model.config = copy.deepcopy(model.config)
    encoder.arch_config = copy.deepcopy(encoder.arch_config)
    groups = pruner(encoder)
    before = dict(params=encoder.num_parameters, prunable=prunable_parameters(groups),
                  flops=encoder.flops_per_token(encoder.max_length))
    # Rank everything before cutting anything (activation statistics need the intact model).
    scores = activation_scores(encoder, groups, calibration_texts) if criterion == "activation" else \
        [magnitude_scores(g) for g in groups]
    sizes: dict[str, list[tuple[int, int]]] = {}
    with torch.no_grad():
        for g, score in zip(groups, scores):
            n = g.size
            keep = max(1, n - int(n * sparsity + 0.5))  # round half up; never empty a layer
            kept = torch.topk(score, keep, sorted=False).indices.sort().values  # original order
            for s in g.slices:
                select(s, s.layout[kept].flatten().sort().values)
            g.resize(kept)
            sizes.setdefault(g.kind, []).append((n, keep))
    after = dict(params=encoder.num_parameters, prunable=prunable_parameters(groups),
                 flops=encoder.flops_per_token(encoder.max_length))
    structures = {kind: describe(pairs) for kind, pairs in sizes.items()}
    record = encoder.arch_config.setdefault("pruned", {"steps": []})  # the summary shows the new sizes
    record["steps"].append({"sparsity": float(sparsity), "criterion": criterion})
    record.update({kind: [k for _, k in pairs] for kind, pairs in sizes.items()})
    return dict(requested_sparsity=float(sparsity),
                realised_sparsity=1 - after["prunable"] / before["prunable"], criterion=criterion,
                prunable_params_before=before["prunable"], prunable_params_after=after["prunable"],
                params_before=before["params"], params_after=after["params"],
                flops_per_token_before=before["flops"], flops_per_token_after=after["flops"],
                structures=structures,
                calibration_texts=len(calibration_texts) if criterion == "activation" else 0,
                seconds=time.perf_counter() - start)


def describe(pairs: list[tuple[int, int]]) -> str:
    if len(set(pairs)) == 1:
        return f"{pairs[0][0]} -> {pairs[0][1]} per layer"
    return ", ".join(f"{n} -> {k}" for n, k in pairs)


def prunable_parameters(groups: list[Group]) -> int:
    tensors = {id(t): t for g in groups for s in g.slices
               if isinstance(t := getattr(s.module, s.name), nn.Parameter)}
    return sum(t.numel() for t in tensors.values())


def select(s: Slice, index: torch.Tensor) -> None:
    """Keep `index` along the slice's dim; fix the shape attributes of Linear and depthwise Conv1d."""
    t = getattr(s.module, s.name)
    new = t.detach().index_select(s.dim, index.to(t.device)).clone()
    if isinstance(t, nn.Parameter):
        setattr(s.module, s.name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        setattr(s.module, s.name, new)  # a registered buffer stays one
    m = s.module
    if s.name == "weight" and isinstance(m, nn.Linear):
        m.out_features, m.in_features = new.shape
    elif s.name == "weight" and isinstance(m, nn.Conv1d) and m.groups == m.in_channels:  # depthwise
        m.in_channels = m.out_channels = m.groups = new.shape[0]


# -- importance -----------------------------------------------------------------------------------
def magnitude_scores(g: Group) -> torch.Tensor:
    total = torch.zeros(g.size, dtype=torch.float64)
    for s in g.slices:
        t = getattr(s.module, s.name)
        if not isinstance(t, nn.Parameter):
            continue  # buffers (e.g. Hyena's decay rates) are not weights
        sq = t.detach().double().movedim(s.dim, 0).reshape(t.shape[s.dim], -1).pow(2).sum(1)
        total += sq.cpu()[s.layout].sum(1)
    return total.sqrt()


@torch.no_grad()
def activation_scores(encoder: Encoder, groups: list[Group], texts: list[str],
                      batch_size: int = 16) -> list[torch.Tensor]:
    """Mean |input| of each group's site per structure, over the real tokens of `texts` (fp32, eval)."""
    sums: list[torch.Tensor | None] = [None] * len(groups)
    state = {}

    def hook(i):
        def fn(module, args):
            x = args[0].detach().float().abs()
            if groups[i].time_major:
                x = x.transpose(0, 1)
            part = x[state["mask"]].sum(0).double().cpu()  # (channels,), real tokens only
            sums[i] = part if sums[i] is None else sums[i] + part
        return fn

    handles = [g.site.register_forward_pre_hook(hook(i)) for i, g in enumerate(groups)]
    encoder.to(encoder.device).eval()
    tokens = 0
    try:
        ids = encoder.tokenize(list(texts))
        for b in range(0, len(ids), batch_size):
            input_ids, mask = encoder.pad(ids[b:b + batch_size])
            state["mask"] = mask.bool().to(encoder.device)
            encoder(input_ids.to(encoder.device), mask.to(encoder.device))
            tokens += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
    return [(sums[i] / tokens)[g.site_layout].mean(1) for i, g in enumerate(groups)]


# -- pieces several architectures share ------------------------------------------------------
def gated_mlp_group(mlp: nn.Module) -> Group:
    """blocks.GatedMLP (Hyena, RetNet, GLA): gate/up rows, down columns."""
    layout = units(mlp.down_proj.in_features)
    return Group("mlp_channels", linear_slices([mlp.gate_proj, mlp.up_proj], [mlp.down_proj], layout),
                 mlp.down_proj, layout)


def head_groups(attn: nn.Module) -> Group:
    """RetNet / GLA heads: q, k (head_k_dim) and v, g (head_v_dim) rows, GLA's gate rows, o columns."""
    if attn.num_kv_groups > 1:
        raise PruningError(f"pruning {type(attn).__name__} with grouped kv heads is not supported")
    H = attn.num_heads
    hk, hv = units(H, attn.head_k_dim), units(H, attn.head_v_dim)
    slices = linear_slices([attn.q_proj, attn.k_proj], [], hk)
    slices += linear_slices([attn.v_proj] + ([attn.g_proj] if attn.use_output_gate else []), [attn.o_proj], hv)
    if hasattr(attn, "gk_proj"):  # GLA's low-rank forget gate: its second linear writes one gate per key channel
        slices += linear_slices([attn.gk_proj[1]], [], hk)

    def resize(kept):
        attn.num_heads = attn.num_kv_heads = len(kept)
        attn.key_dim, attn.value_dim = len(kept) * attn.head_k_dim, len(kept) * attn.head_v_dim
        if hasattr(attn, "head_index"):  # RetNet: a head's decay is fixed by its original index
            attn.head_index = [attn.head_index[i] for i in kept.tolist()]

    return Group("attention_heads", slices, attn.o_proj, hv, resize)
