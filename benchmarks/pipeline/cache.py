"""On-disk embedding cache keyed by encoder fingerprint + a hash of the exact input texts.

A second identical run skips encoding. An entry is validated (fingerprint, row count, dtype, shape)
before use, and written atomically, so a killed run never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def texts_digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x1e")  # record separator: ["ab"] and ["a", "b"] differ
    return h.hexdigest()


class EmbeddingCache:
    def __init__(self, root: str | Path, enabled: bool = True):
        self.root = Path(root)
        self.enabled = enabled

    def _paths(self, fingerprint: str, texts: list[str]) -> tuple[Path, Path]:
        key = hashlib.sha256(f"{fingerprint}:{texts_digest(texts)}".encode()).hexdigest()[:32]
        base = self.root / fingerprint[:16] / key
        return base.with_suffix(".npy"), base.with_suffix(".json")

    def load(self, fingerprint: str, texts: list[str]) -> tuple[np.ndarray, dict] | None:
        """(embeddings, metadata) if a valid entry exists, else None."""
        if not self.enabled:
            return None
        npy, meta_path = self._paths(fingerprint, texts)
        if not (npy.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            emb = np.load(npy, mmap_mode=None, allow_pickle=False)
        except (OSError, ValueError):
            return None  # unreadable entry: recompute (and overwrite it)
        if (meta.get("fingerprint") != fingerprint or emb.dtype != np.float32 or emb.ndim != 2
                or emb.shape[0] != len(texts) or list(emb.shape) != meta.get("shape")):
            return None
        return emb, meta

    def save(self, fingerprint: str, texts: list[str], emb: np.ndarray, stats: dict) -> None:
        if not self.enabled:
            return
        npy, meta_path = self._paths(fingerprint, texts)
        npy.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(fingerprint=fingerprint, shape=list(emb.shape), dtype="float32", texts=len(texts), stats=stats)
        for path, write in ((npy, lambda f: np.save(f, emb.astype(np.float32, copy=False))),
                            (meta_path, lambda f: f.write(json.dumps(meta).encode()))):
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
