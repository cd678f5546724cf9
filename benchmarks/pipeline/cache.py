"""On-disk embedding cache keyed by encoder fingerprint + a hash of the exact input texts.

A second identical run skips encoding. An entry is validated before use (fingerprint, row count,
dtype, shape, and a content checksum per chunk of rows, so that a damaged file is caught without
reading a large entry into memory at once), and written atomically, so a killed run never leaves a
half-written entry behind. A damaged entry is reported (one warning naming it) and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from itertools import zip_longest
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
        """(embeddings, metadata) if a valid entry exists, else None (the caller recomputes and saves,
        replacing the entry)."""
        if not self.enabled:
            return None
        npy, meta_path = self._paths(fingerprint, texts)
        if not (npy.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            emb = np.load(npy, allow_pickle=False)  # per-chunk checksums: a memory map can be checked block by block
        except (OSError, ValueError) as e:
            return damaged(npy, f"unreadable ({e})")
        if (meta.get("fingerprint") != fingerprint or emb.dtype != np.float32 or emb.ndim != 2
                or emb.shape[0] != len(texts) or list(emb.shape) != meta.get("shape")):
            return damaged(npy, "its metadata does not match its data")
        check = meta.get("checksum") or {}
        if check.get("algorithm") != CHECKSUM or not check.get("chunk_rows"):
            return damaged(npy, "no content checksum (written by an older version)")
        rows = check["chunk_rows"]
        bad = [i for i, (got, want) in enumerate(zip_longest(chunk_digests(emb, rows), check.get("chunks", [])))
               if got != want]
        if bad:
            more = f" and {len(bad) - 1} more chunk(s)" if len(bad) > 1 else ""
            return damaged(npy, f"rows {bad[0] * rows}..{min((bad[0] + 1) * rows, len(emb)) - 1}{more} "
                                "fail their content checksum")
        return emb, meta

    def save(self, fingerprint: str, texts: list[str], emb: np.ndarray, stats: dict) -> None:
        if not self.enabled:
            return
        npy, meta_path = self._paths(fingerprint, texts)
        npy.parent.mkdir(parents=True, exist_ok=True)
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        rows = chunk_rows(emb)
        meta = dict(fingerprint=fingerprint, shape=list(emb.shape), dtype="float32", texts=len(texts), stats=stats,
                    checksum=dict(algorithm=CHECKSUM, chunk_rows=rows, chunks=list(chunk_digests(emb, rows))))
        for path, write in ((npy, lambda f: np.save(f, emb)),
                            (meta_path, lambda f: f.write(json.dumps(meta).encode()))):
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)


CHECKSUM = "blake2b-128"
CHUNK_BYTES = 64 << 20  # one checksum per 64 MiB of rows: a large entry is checked without reading it whole


def chunk_rows(emb: np.ndarray) -> int:
    return max(1, CHUNK_BYTES // max(1, emb.shape[1] * emb.itemsize))


def chunk_digests(emb: np.ndarray, rows: int):
    """Content hash of each block of `rows` rows."""
    for start in range(0, max(len(emb), 1), rows):
        yield hashlib.blake2b(np.ascontiguousarray(emb[start:start + rows]).tobytes(), digest_size=16).hexdigest()


def damaged(path: Path, why: str) -> None:
    warnings.warn(f"embedding cache entry {path} is damaged: {why}; recomputing it", stacklevel=3)
    return None
