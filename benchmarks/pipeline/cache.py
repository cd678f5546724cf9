"""On-disk embedding store, also the cache: keyed by encoder fingerprint + a hash of the exact input texts.

An entry is a directory of shards, `shard-00000.npy` + `shard-00000.json`, each holding `shard_rows`
consecutive texts' embeddings (the last one fewer). Shards are written one by one as they are encoded,
each atomically, so a killed run loses at most the shard it was encoding: the next run finds the
entry, re-encodes only the shards missing or damaged, and a second identical run encodes nothing.

A shard is validated before use (fingerprint, row range, dtype, shape, and a content checksum per chunk
of rows, so that a damaged file is caught without reading a large shard into memory at once). A damaged
shard is reported (one warning naming it) and recomputed. Valid shards are read as memory maps: search
reads them chunk by chunk, never holding a second copy of the corpus's embeddings.

A disabled cache (`--no-cache`) is a scratch directory of its own, removed when the cache object goes:
the store still lives on disk, but nothing is read from or left for another run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Iterable, Iterator
from itertools import zip_longest
from pathlib import Path

import numpy as np

SHARD_ROWS = 65536  # texts per shard: the unit of resumption, and of length-sorted batching (embed.py)


def texts_digest(texts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x1e")  # record separator: ["ab"] and ["a", "b"] differ
    return h.hexdigest()


class EmbeddingCache:
    def __init__(self, root: str | Path, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            self.root = Path(root)
        else:
            self.root = Path(tempfile.mkdtemp(prefix="embeddings-"))
            weakref.finalize(self, shutil.rmtree, self.root, ignore_errors=True)

    def store(self, fingerprint: str, digest: str, rows: int, shard_rows: int = 0) -> "Store":
        """The entry of `rows` texts with this digest (new, partly written, or complete)."""
        shard_rows = shard_rows or SHARD_ROWS
        key = hashlib.sha256(f"{fingerprint}:{digest}:{shard_rows}".encode()).hexdigest()[:32]
        return Store(self.root / fingerprint[:16] / key, fingerprint, rows, shard_rows)

    def load(self, fingerprint: str, texts: list[str]) -> tuple[np.ndarray, dict] | None:
        """(embeddings, metadata) if every shard of the entry is valid, else None."""
        store = self.store(fingerprint, texts_digest(texts), len(texts))
        if not self.enabled or store.missing():
            return None
        return store.array(), dict(fingerprint=fingerprint, shape=[store.rows, store.dim], stats=store.stats())

    def save(self, fingerprint: str, texts: list[str], emb: np.ndarray, stats: dict) -> None:
        if not self.enabled:
            return
        store = self.store(fingerprint, texts_digest(texts), len(texts))
        for i in range(store.n_shards):
            start, stop = store.bounds(i)
            store.write(i, emb[start:stop], stats if store.n_shards == 1 else {})


class Store:
    """One entry: shards of `shard_rows` rows; `missing()` says which still need encoding."""

    def __init__(self, path: Path, fingerprint: str, rows: int, shard_rows: int):
        self.path, self.fingerprint, self.rows, self.shard_rows = Path(path), fingerprint, rows, shard_rows
        self.n_shards = max(1, -(-rows // shard_rows))  # an empty entry is one empty shard
        self._valid: dict[int, np.ndarray] = {}

    def bounds(self, i: int) -> tuple[int, int]:
        return i * self.shard_rows, min((i + 1) * self.shard_rows, self.rows)

    def files(self, i: int) -> tuple[Path, Path]:
        base = self.path / f"shard-{i:05d}"
        return base.with_suffix(".npy"), base.with_suffix(".json")

    def missing(self) -> list[int]:
        """Shards without a valid file (a damaged one is reported once and counted missing)."""
        return [i for i in range(self.n_shards) if self.shard(i) is None]

    def shard(self, i: int) -> np.ndarray | None:
        """Shard i as a validated memory map, or None."""
        if i not in self._valid:
            emb = self._check(i)
            if emb is None:
                return None
            self._valid[i] = emb
        return self._valid[i]

    def _check(self, i: int) -> np.ndarray | None:
        npy, meta_path = self.files(i)
        if not (npy.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            emb = np.load(npy, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            return damaged(npy, f"unreadable ({e})")
        start, stop = self.bounds(i)
        if (meta.get("fingerprint") != self.fingerprint or meta.get("start") != start or emb.dtype != np.float32
                or emb.ndim != 2 or emb.shape[0] != stop - start or list(emb.shape) != meta.get("shape")):
            return damaged(npy, "its metadata does not match its data")
        check = meta.get("checksum") or {}
        if check.get("algorithm") != CHECKSUM or not check.get("chunk_rows"):
            return damaged(npy, "no content checksum (written by an older version)")
        rows = check["chunk_rows"]
        bad = [j for j, (got, want) in enumerate(zip_longest(chunk_digests(emb, rows), check.get("chunks", [])))
               if got != want]
        if bad:
            more = f" and {len(bad) - 1} more chunk(s)" if len(bad) > 1 else ""
            first = start + bad[0] * rows
            return damaged(npy, f"rows {first}..{min(first + rows, stop) - 1}{more} fail their content checksum")
        return emb

    def write(self, i: int, emb: np.ndarray, stats: dict) -> None:
        """Shard i, atomically (data first, then the metadata that makes it count)."""
        npy, meta_path = self.files(i)
        npy.parent.mkdir(parents=True, exist_ok=True)
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        rows = chunk_rows(emb)
        meta = dict(fingerprint=self.fingerprint, start=self.bounds(i)[0], shape=list(emb.shape), dtype="float32",
                    stats=stats, checksum=dict(algorithm=CHECKSUM, chunk_rows=rows, chunks=list(chunk_digests(emb, rows))))
        for path, write in ((npy, lambda f: np.save(f, emb)),
                            (meta_path, lambda f: f.write(json.dumps(meta).encode()))):
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        self._valid.pop(i, None)

    # -- reading a complete entry ----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.shard(0).shape[1])

    def shards(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, memory map) of each shard, in order; every shard must be valid."""
        for i in range(self.n_shards):
            emb = self.shard(i)
            if emb is None:
                raise RuntimeError(f"embedding store {self.path}: shard {i} is missing")
            yield self.bounds(i)[0], emb

    def array(self) -> np.ndarray:
        """The whole entry in memory (queries, training: small entries)."""
        return np.concatenate([emb for _, emb in self.shards()])

    def stats(self) -> dict:
        return merge_stats([json.loads(self.files(i)[1].read_text()).get("stats") or {} for i in range(self.n_shards)])


def merge_stats(parts: list[dict]) -> dict:
    """Encoding stats of several shards: counts and seconds add up (a lone part is returned as it is)."""
    if len(parts) == 1:
        return dict(parts[0])
    keys = {k for p in parts for k, v in p.items() if isinstance(v, (int, float))}
    return {k: sum(p.get(k, 0) for p in parts) for k in sorted(keys)}


CHECKSUM = "blake2b-128"
CHUNK_BYTES = 64 << 20  # one checksum per 64 MiB of rows: a large shard is checked without reading it whole


def chunk_rows(emb: np.ndarray) -> int:
    return max(1, CHUNK_BYTES // max(1, emb.shape[1] * emb.itemsize))


def chunk_digests(emb: np.ndarray, rows: int):
    """Content hash of each block of `rows` rows."""
    for start in range(0, max(len(emb), 1), rows):
        yield hashlib.blake2b(np.ascontiguousarray(emb[start:start + rows]).tobytes(), digest_size=16).hexdigest()


def damaged(path: Path, why: str) -> None:
    warnings.warn(f"embedding cache entry {path} is damaged: {why}; recomputing it", stacklevel=3)
    return None
