"""Texts -> embeddings through the cache: the one function the runner and training both use.

A cache hit returns the stored embeddings (the cache verifies them), but never the throughput recorded
when the entry was made: that was another run, maybe on another machine or under other load. When
`measure` is set, this run times a fixed sample of the texts itself; otherwise throughput is absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from encoders import EncoderError

from .cache import SHARD_ROWS, EmbeddingCache, Store, merge_stats, texts_digest

THROUGHPUT_SAMPLE = 128  # texts timed on a cache hit (every k-th text, so the lengths are representative)


@dataclass
class Texts:
    """`n` texts as the model sees them, read by row range (`read`) or by rows (`at`): a list, or a
    corpus read from disk a shard at a time."""
    n: int
    read: Callable[[int, int], list[str]]
    at: Callable[[list[int]], list[str]]

    @classmethod
    def of_list(cls, texts: list[str]) -> "Texts":
        return cls(len(texts), lambda a, b: texts[a:b], lambda rows: [texts[i] for i in rows])

    @classmethod
    def of_corpus(cls, corpus, encoder) -> "Texts":
        def read(a, b):
            return encoder.corpus_texts([doc for _, chunk in corpus.chunks(a, b) for doc in chunk.values()])
        return cls(len(corpus), read, lambda rows: encoder.corpus_texts([corpus.doc(i) for i in rows]))

    def digest(self) -> str:
        return texts_digest(t for a in range(0, self.n, SHARD_ROWS) for t in self.read(a, min(a + SHARD_ROWS, self.n)))


def embed_texts(encoder, texts: list[str], what: str, cache: EmbeddingCache, measure: bool = True):
    """-> (float32 array (len(texts), dim), stats): `embed` for a list held in memory (queries, training)."""
    store, stats = embed(encoder, Texts.of_list(texts), what, cache, measure)
    return store.array(), stats


def embed(encoder, texts: Texts, what: str, cache: EmbeddingCache, measure: bool = True,
          encode_shards: Callable | None = None) -> tuple[Store, dict]:
    """Texts -> their embedding store, encoding only the shards not stored yet, each written as soon as
    it is encoded (by `encode_shards(encoder, texts, store, todo, what)`: here, or over workers) ->
    (store, stats: texts, tokens, seconds, texts_per_s, tokens_per_s, flops_per_token, flops_per_s,
    cached, measured_on, shards, shards_reused)."""
    store = cache.store(encoder.fingerprint, texts.digest(), texts.n)
    todo = store.missing()
    if not todo:
        stats = sample_throughput(encoder, texts, what) if measure and texts.n else {}
        return store, dict(stats, cached=True, measured_on=stats.get("texts", 0))
    parts = (encode_shards or encode_here)(encoder, texts, store, todo, what)
    stats = throughput(encoder, merge_stats(parts))
    return store, dict(stats, cached=False, measured_on=stats["texts"], shards=store.n_shards,
                       shards_reused=store.n_shards - len(todo))


def encode_here(encoder, texts: Texts, store: Store, todo: list[int], what: str) -> list[dict]:
    """Encode the shards `todo` in this process, one at a time: a shard's texts are tokenized and sorted
    by length together (a window of `SHARD_ROWS` texts), so batching keeps its benefit, in bounded memory."""
    parts = []
    for n, i in enumerate(todo, 1):
        start, stop = store.bounds(i)
        desc = what if store.n_shards == 1 else f"{what} shard {n}/{len(todo)}"
        emb = encoder.encode(texts.read(start, stop), desc=desc)
        require_finite(emb, encoder, what, start)
        store.write(i, emb, encoder.last_stats)
        parts.append(encoder.last_stats)
    return parts


def sample_throughput(encoder, texts: Texts, what: str) -> dict:
    """A cache hit's throughput: this run times a fixed sample of the texts itself."""
    rows = list(range(0, texts.n, max(1, texts.n // THROUGHPUT_SAMPLE)))[:THROUGHPUT_SAMPLE]
    encoder.encode(texts.at(rows), desc=f"{what} (timing sample)", show_progress=False)
    return throughput(encoder, encoder.last_stats)


def throughput(encoder, stats: dict) -> dict:
    """Speed from encode() stats (texts, tokens, seconds). Achieved compute uses the FLOPs per token of a text of the mean
    length (attention's share grows with length, so this slightly undercounts mixed lengths)."""
    s = dict(stats)
    seconds = max(s["seconds"], 1e-9)
    s.update(texts_per_s=s["texts"] / seconds, tokens_per_s=s["tokens"] / seconds)
    s["flops_per_token"] = encoder.flops_per_token(max(1, round(s["tokens"] / max(s["texts"], 1))))
    s["flops_per_s"] = s["flops_per_token"] * s["tokens_per_s"]
    return s


def require_finite(emb: np.ndarray, encoder, what: str, first: int = 0) -> None:
    """A NaN or inf embedding would be searched and scored as if it meant something: refuse."""
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise EncoderError(f"encoder {encoder.name!r} ({encoder.label}) gave non-finite embeddings for "
                           f"{int(bad.sum())} of {len(emb)} {what} texts (first: text #{first + int(np.argmax(bad))}); "
                           "nothing was written")
