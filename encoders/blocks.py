"""The shared block for architectures implemented here (Hyena, RetNet, GLA), after zoology:

    x = x + mixer(attn_norm(x), mask)
    x = x + mlp(mlp_norm(x))

Only the sequence mixer differs between them. Parameter names follow flash-linear-attention's
models (`embeddings`, `layers.{i}.attn_norm`, `layers.{i}.attn`, `layers.{i}.mlp_norm`,
`layers.{i}.mlp.{gate,up,down}_proj`, `norm`), so that fla checkpoints load into the same modules.

A mixer is any module called as `mixer(x, mask)` with x of shape (batch, length, hidden) and mask
(batch, length), 1 for real tokens, returning (batch, length, hidden). A mixer that needs an
initialisation other than normal(0, 0.02) defines `reset_mixer_parameters()`, or sets `own_init = True`
to keep the one it was built with. With right padding a
causal mixer may ignore the mask: real tokens never see the pads that follow them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def gated_mlp_size(hidden_size: int, hidden_ratio: float = 4) -> int:
    """fla's default GatedMLP width: 2/3 * ratio * hidden, rounded up to a multiple of 256."""
    size = int(hidden_size * hidden_ratio * 2 / 3)
    return 256 * ((size + 255) // 256)


class GatedMLP(nn.Module):
    """SwiGLU MLP: down(silu(gate(x)) * up(x)), as fla's GatedMLP."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, hidden_size: int, mixer: nn.Module, intermediate_size: int, norm_eps: float = 1e-6):
        super().__init__()
        self.attn_norm = nn.RMSNorm(hidden_size, eps=norm_eps)
        self.attn = mixer
        self.mlp_norm = nn.RMSNorm(hidden_size, eps=norm_eps)
        self.mlp = GatedMLP(hidden_size, intermediate_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask)
        return x + self.mlp(self.mlp_norm(x))


class MixerModel(nn.Module):
    """Token embeddings -> `num_layers` blocks, each with a mixer from `make_mixer(layer_idx)` -> final norm."""

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int, make_mixer: Callable[[int], nn.Module],
                 intermediate_size: int, norm_eps: float = 1e-6, pad_token_id: int | None = None,
                 initializer_range: float = 0.02, embed_norm: bool = False):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, hidden_size, padding_idx=pad_token_id)
        # An RMSNorm on the token embeddings (BERT's embedding LayerNorm does the same job) starts the
        # residual stream at rms 1, whatever the scale of embeddings copied in from a teacher.
        self.embed_norm = nn.RMSNorm(hidden_size, eps=norm_eps) if embed_norm else None
        self.layers = nn.ModuleList(Block(hidden_size, make_mixer(i), intermediate_size, norm_eps)
                                    for i in range(num_layers))
        self.norm = nn.RMSNorm(hidden_size, eps=norm_eps)
        self.initializer_range = initializer_range
        # A mixer that keeps an upstream initialisation of its own (`own_init`) is left out of the
        # generic one.
        own = {id(m) for layer in self.layers if getattr(layer.attn, "own_init", False) for m in layer.attn.modules()}
        for module in self.modules():
            if id(module) not in own:
                self._init_weights(module)
        for layer in self.layers:  # a mixer with an initialisation of its own applies it last
            if hasattr(layer.attn, "reset_mixer_parameters"):
                layer.attn.reset_mixer_parameters()

    def _init_weights(self, module: nn.Module) -> None:
        # fla's initialisation: normal(0, 0.02) for linear, conv and embedding weights, zero biases.
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(module.weight, std=self.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.initializer_range)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        for layer in self.layers:
            x = layer(x, attention_mask)
        return self.norm(x)


# -- flash-linear-attention's checkpoint format (RetNet, GLA) -------------------------------------
def read_fla_checkpoint(source: str, check_config: Callable[[dict, str], None]) -> tuple[Path, dict, dict]:
    """(directory, config, state dict with fla's `model.` keys) of a local directory or hub id
    holding an fla `*ForCausalLM` checkpoint; `check_config` raises EncoderError on a config of the
    wrong kind."""
    from .base import EncoderError, _first_line

    path = Path(source)
    if not path.is_dir():
        if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
            raise EncoderError(f"checkpoint {source!r} is not a directory with config.json (or a hub id)")
        try:
            from huggingface_hub import snapshot_download
            path = Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.model", "*.txt"]))
        except Exception as e:
            raise EncoderError(f"checkpoint {source!r} does not load: {_first_line(e)}") from None
    if not (path / "config.json").is_file():
        raise EncoderError(f"checkpoint {source!r} has no config.json")
    try:
        cfg = json.loads((path / "config.json").read_text())
    except ValueError as e:
        raise EncoderError(f"checkpoint {source!r}: config.json is not JSON: {_first_line(e)}") from None
    check_config(cfg, source)

    from safetensors.torch import load_file
    files = sorted(path.glob("*.safetensors"))
    if files:
        state = {k: t for f in files for k, t in load_file(str(f)).items()}
    elif (path / "pytorch_model.bin").is_file():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise EncoderError(f"checkpoint {source!r} has no model.safetensors or pytorch_model.bin")
    return path, cfg, state


def save_fla_checkpoint(directory, config: dict, model: MixerModel, tokenizer) -> None:
    """Write fla's `*ForCausalLM` format: config.json, model.safetensors (`model.` keys; the LM head is
    tied to the embeddings, so none is stored) and the tokenizer. fla's from_pretrained loads it."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {f"model.{k}": t.detach().cpu().contiguous() for k, t in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(directory))


def init_fla_encoder(encoder, checkpoint, preset, opts: dict, check_config, preset_config, what: str):
    """The start of RetNet's and GLA's __init__: run `Encoder.__init__` with the right tokenizer and
    -> (config, state dict or None, source) for an fla checkpoint (dir or hub id) or a random preset."""
    from .base import Encoder, EncoderError, checkpoint_label, checkpoint_tokenizer, resolve_preset

    preset = resolve_preset(checkpoint, preset)
    state = None
    if checkpoint:
        path, cfg, state = read_fla_checkpoint(str(checkpoint), check_config)
        # fla checkpoints ship their own (Llama/Mistral) tokenizer
        Encoder.__init__(encoder, opts.pop("tokenizer", None) or checkpoint_tokenizer(path), **opts)
        encoder.label, source = checkpoint_label(checkpoint), str(checkpoint)
    else:
        Encoder.__init__(encoder, opts.pop("tokenizer", None), **opts)
        tok = encoder.tokenizer
        cfg = preset_config(preset, len(tok), encoder.pad_token_id, tok.cls_token_id, tok.sep_token_id)
        encoder.label, source = preset, f"preset:{preset}"
    if len(encoder.tokenizer) > cfg.get("vocab_size", 32000):
        raise EncoderError(f"tokenizer has {len(encoder.tokenizer)} tokens but the {what} model only {cfg.get('vocab_size', 32000)}")
    return cfg, state, source


def load_fla_state(model: nn.Module, state: dict, source: str, what: str) -> None:
    """Load a converted fla state dict, refusing one that does not match (one line)."""
    from .base import EncoderError

    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = [s.strip() for s in str(e).splitlines() if s.strip()]
        raise EncoderError(f"checkpoint {source!r} does not match fla {what}: {' '.join(lines[1:3])[:300]}") from None


# -- checkpoints of our own models (Hyena, the shared-block family): config.json + model.safetensors ----
def save_json_checkpoint(path: str | Path, cfg: dict, model: nn.Module, tokenizer) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    tokenizer.save_pretrained(str(path))


def read_json_config(path: Path, model_type: str, int_keys: tuple[str, ...]) -> dict:
    """config.json of a directory `save_json_checkpoint` wrote, refused (one line) unless it is of
    `model_type` and has every key of `int_keys` as an integer."""
    from .base import EncoderError, _first_line

    file = path / "config.json"
    if not file.is_file():
        raise EncoderError(f"checkpoint {str(path)!r} has no config.json (expected a directory written by save_pretrained)")
    try:
        cfg = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise EncoderError(f"checkpoint {str(path)!r}: config.json does not parse: {_first_line(e)}") from None
    if cfg.get("model_type") != model_type:
        raise EncoderError(f"checkpoint {str(path)!r} is a {cfg.get('model_type')!r} model, not {model_type!r}")
    missing = [k for k in int_keys if not isinstance(cfg.get(k), int)]
    if missing:
        raise EncoderError(f"checkpoint {str(path)!r}: config.json lacks integer {', '.join(missing)}")
    return cfg


def load_safetensors(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    from .base import EncoderError, _first_line

    file = path / "model.safetensors"
    if not file.is_file():
        raise EncoderError(f"checkpoint {str(path)!r} has no model.safetensors")
    try:
        model.load_state_dict(load_file(str(file)), strict=True)
    except Exception as e:  # safetensors header errors, missing/unexpected keys, shape mismatches
        raise EncoderError(f"checkpoint {str(path)!r} does not match its config: {_first_line(e)}") from None


def init_from_json_checkpoint(encoder, checkpoint: str, opts: dict, read_config, build_model) -> tuple[dict, str]:
    """The checkpoint branch of Hyena's and the shared family's __init__: `Encoder.__init__` with the
    checkpoint's tokenizer, the model built from its config and its weights loaded -> (config, source)."""
    from .base import Encoder, EncoderError, checkpoint_tokenizer

    path = Path(checkpoint)
    cfg = read_config(path)
    Encoder.__init__(encoder, opts.pop("tokenizer", None) or checkpoint_tokenizer(path), **opts)
    if len(encoder.tokenizer) > cfg["vocab_size"]:
        raise EncoderError(f"the tokenizer has {len(encoder.tokenizer)} tokens but checkpoint {checkpoint!r} "
                           f"embeds only {cfg['vocab_size']}")
    encoder.model = build_model(cfg)
    load_safetensors(encoder.model, path)
    encoder.label = path.name
    return cfg, str(path)

