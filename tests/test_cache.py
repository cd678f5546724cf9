"""The embedding cache: a damaged entry is caught by its content checksum, reported, and recomputed."""

import json

import numpy as np
import pytest

from benchmarks.pipeline import cache as cache_mod
from benchmarks.pipeline.cache import EmbeddingCache
from benchmarks.run import RunConfig, run_benchmark

TEXTS = [f"text {i}" for i in range(1000)]


def entry(tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    emb = np.random.default_rng(0).normal(size=(len(TEXTS), 16)).astype("float32")
    cache.save("fp" * 32, TEXTS, emb, {"seconds": 1.0})
    npy = next((tmp_path / "cache").rglob("*.npy"))
    return cache, emb, npy


def damage(npy, row, dim=16):
    """Flip one byte inside row `row` of the .npy data (its header is the first 128 bytes)."""
    data = bytearray(npy.read_bytes())
    offset = len(data) - (len(TEXTS) - row) * dim * 4 + 5
    data[offset] ^= 0x10
    npy.write_bytes(bytes(data))


def test_an_intact_entry_loads(tmp_path):
    cache, emb, _ = entry(tmp_path)
    got, meta = cache.load("fp" * 32, TEXTS)
    assert np.array_equal(got, emb) and meta["stats"] == {"seconds": 1.0}


def test_damaged_bytes_are_caught_chunk_by_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "CHUNK_BYTES", 100 * 16 * 4)  # 100 rows per checksum: 10 chunks
    cache, emb, npy = entry(tmp_path)
    assert len(json.loads(npy.with_suffix(".json").read_text())["checksum"]["chunks"]) == 10
    damage(npy, 437)
    with pytest.warns(UserWarning, match=r"cache entry .*\.npy is damaged: rows 400\.\.499 fail"):
        assert cache.load("fp" * 32, TEXTS) is None


def test_a_damaged_entry_is_recomputed_and_replaced_by_the_run(tiny_dataset, tmp_path):
    cfg = dict(encoder="bert", preset="tiny", dataset=str(tiny_dataset), output_dir=str(tmp_path / "r"),
               show_progress=False, latency_queries=2, cache_dir=str(tmp_path / "cache"))
    first = run_benchmark(RunConfig(**cfg, run_id="a"))
    corpus_entry = max((tmp_path / "cache").rglob("*.npy"), key=lambda p: p.stat().st_size)  # 6 docs > 4 queries
    data = bytearray(corpus_entry.read_bytes())
    data[-7] ^= 0x40  # one byte of the last document's embedding
    corpus_entry.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="damaged") as caught:
        second = run_benchmark(RunConfig(**cfg, run_id="b"))
    assert sum("damaged" in str(w.message) for w in caught) == 1  # once, naming the entry
    assert str(corpus_entry) in str(next(w.message for w in caught if "damaged" in str(w.message)))
    enc = second.summary["timings"]["corpus_encode"]
    assert enc["cached"] is False and second.summary["timings"]["query_encode"]["cached"] is True
    assert second.summary["metrics"] == first.summary["metrics"]  # recomputed, not the damaged numbers
    third = run_benchmark(RunConfig(**cfg, run_id="c"))  # the entry was replaced: a clean hit now
    assert third.summary["timings"]["corpus_encode"]["cached"] is True
    assert third.summary["metrics"] == first.summary["metrics"]


def test_an_entry_without_checksum_is_recomputed(tmp_path):
    cache, _, npy = entry(tmp_path)
    meta = json.loads(npy.with_suffix(".json").read_text())
    del meta["checksum"]
    npy.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="no content checksum"):
        assert cache.load("fp" * 32, TEXTS) is None
