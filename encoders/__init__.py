"""Encoder registry: `@register_encoder("name")`, `available()`, `load(name, **opts)`.

Built-in architectures register themselves on import below. A user's own encoder module registers
its subclasses the same way; `import_encoder_module("my_pkg.my_encoder")` (CLI: --encoder-module)
imports it so that `load` finds them.
"""

from __future__ import annotations

import importlib

from .base import PRESETS, Encoder, EncoderError, load_tokenizer, packaged_minilm_path

_REGISTRY: dict[str, type[Encoder]] = {}


def register_encoder(name: str):
    """Class decorator: make an `Encoder` subclass loadable as `name` (and `--encoder name`)."""

    def decorate(cls: type[Encoder]) -> type[Encoder]:
        if not (isinstance(cls, type) and issubclass(cls, Encoder)):
            raise TypeError(f"@register_encoder({name!r}) needs an Encoder subclass, got {cls!r}")
        other = _REGISTRY.get(name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"encoder name {name!r} is already registered by {other.__module__}.{other.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> type[Encoder]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EncoderError(f"unknown encoder {name!r}; available: {', '.join(available())} "
                           "(or register your own and pass --encoder-module)") from None


def get_all(names: str) -> list[str]:
    """A comma-separated list of registered names (a study's --encoders), each checked."""
    out = [n.strip() for n in names.split(",") if n.strip()]
    for n in out:
        get(n)
    return out


def load(name: str, **opts) -> Encoder:
    """Build a registered encoder; options are the class's keyword arguments (checkpoint, preset,
    pooling, dtype, ...). Options left at None take the class's (or the checkpoint's) default."""
    cls = get(name)
    opts = {k: v for k, v in opts.items() if v is not None}
    try:
        return cls(**opts)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise EncoderError(f"encoder {name!r} does not take that option: {e}") from None
        raise


def import_encoder_module(module: str) -> None:
    """Import a user's module so that its @register_encoder classes are registered."""
    try:
        importlib.import_module(module)
    except Exception as e:
        raise EncoderError(f"--encoder-module {module!r} does not import: {type(e).__name__}: {e}") from None


# Built-in architectures (each module registers itself). The one list of the six compared.
ARCHITECTURES = ("bert", "mamba", "rwkv", "hyena", "retnet", "gla")
from . import bert, gla, hyena, mamba, retnet, rwkv, shared  # noqa: E402,F401

__all__ = ["ARCHITECTURES", "Encoder", "EncoderError", "PRESETS", "register_encoder", "available", "get", "load",
           "import_encoder_module", "load_tokenizer", "packaged_minilm_path"]
