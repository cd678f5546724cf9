"""Texts -> embeddings through the cache: the one function the runner and training both use.

A cache hit returns the stored embeddings (the cache verifies them), but never the throughput recorded
when the entry was made: that was another run, maybe on another machine or under other load. When
`measure` is set, this run times a fixed sample of the texts itself; otherwise throughput is absent.
"""

from __future__ import annotations

import numpy as np

from encoders import EncoderError

from .cache import EmbeddingCache

THROUGHPUT_SAMPLE = 128  # texts timed on a cache hit (every k-th text, so the lengths are representative)


def embed_texts(encoder, texts: list[str], what: str, cache: EmbeddingCache, measure: bool = True):
    """-> (float32 array (len(texts), dim), stats: texts, tokens, seconds, texts_per_s, tokens_per_s,
    flops_per_token, flops_per_s, cached, measured_on)."""
    fingerprint = encoder.fingerprint
    hit = cache.load(fingerprint, texts)
    if hit is not None:
        stats = {}
        if measure and texts:
            sample = texts[::max(1, len(texts) // THROUGHPUT_SAMPLE)][:THROUGHPUT_SAMPLE]
            encoder.encode(sample, desc=f"{what} (timing sample)", show_progress=False)
            stats = throughput(encoder)
        return hit[0], dict(stats, cached=True, measured_on=stats.get("texts", 0))
    emb = encoder.encode(texts, desc=what)
    require_finite(emb, encoder, what)
    stats = throughput(encoder)
    cache.save(fingerprint, texts, emb, stats)
    return emb, dict(stats, cached=False, measured_on=len(texts))


def throughput(encoder) -> dict:
    """The last encode() call's speed. Achieved compute uses the FLOPs per token of a text of the mean
    length (attention's share grows with length, so this slightly undercounts mixed lengths)."""
    s = dict(encoder.last_stats)
    seconds = max(s["seconds"], 1e-9)
    s.update(texts_per_s=s["texts"] / seconds, tokens_per_s=s["tokens"] / seconds)
    s["flops_per_token"] = encoder.flops_per_token(max(1, round(s["tokens"] / max(s["texts"], 1))))
    s["flops_per_s"] = s["flops_per_token"] * s["tokens_per_s"]
    return s


def require_finite(emb: np.ndarray, encoder, what: str) -> None:
    """A NaN or inf embedding would be searched and scored as if it meant something: refuse."""
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise EncoderError(f"encoder {encoder.name!r} ({encoder.label}) gave non-finite embeddings for "
                           f"{int(bad.sum())} of {len(emb)} {what} texts (first: text #{int(np.argmax(bad))}); "
                           "nothing was written")
