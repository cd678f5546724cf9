"""Checkpoints: model + trainer state + training.json, written atomically; resumable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..pipeline.record import TRAINING_META as META_FILE
from ..pipeline.results import atomic_dir
from .config import TrainError

STATE_FILE = "trainer_state.pt"


def token_embeddings(encoder) -> torch.nn.Embedding:
    model = encoder.model
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else getattr(model, "embeddings", None)
    if not isinstance(emb, torch.nn.Embedding):
        raise TrainError(f"cannot find the token embeddings of encoder {encoder.name!r}")
    return emb


def write_checkpoint(out: Path, student, state: dict, meta: dict) -> None:
    """Model + trainer state + training.json, replacing `out` as a whole: a kill mid-save leaves the
    previous checkpoint (as `out`, or as `.out.old` during the swap, which --resume picks up)."""
    with atomic_dir(out) as tmp:
        student.save_pretrained(tmp)  # loadable by encoders.load(name, checkpoint=out)
        torch.save(state, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")


def read_meta(out: Path) -> dict | None:
    old = out.with_name(f".{out.name}.old")
    if not out.exists() and old.exists():  # killed during the swap
        os.replace(old, out)
    try:
        return json.loads((out / META_FILE).read_text())
    except (OSError, ValueError):
        return None


