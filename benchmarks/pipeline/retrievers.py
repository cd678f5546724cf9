"""Retrievers: the one interface the runner drives. A retriever indexes a corpus, searches queries,
times batch-1 queries and describes itself; a run never asks which kind it has.

    dense    any registered encoder (encoders.load) + FAISS search over its embeddings: exact, or an
             approximate index (--index) that also reports its agreement with exact search
    bm25     lexical (benchmarks/pipeline/bm25.py), registered with @register_retriever("bm25")

A user's kind (say a learned sparse retriever) is a class with the `Retriever` members and a
`from_config(config, cache)` classmethod, registered with `@register_retriever("name")`; then
`--encoder name` runs it through the same runner, record and results layout.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

import numpy as np

import encoders
from encoders import EncoderError

from . import index, measure
from .index import EXACT
from .windows import LongDocs
from .cache import EmbeddingCache
from .embed import Texts, embed, embed_texts
from .record import unfinished


class Retriever(Protocol):
    name: str
    model: object  # the encoder model-side perturbations act on; None for a retriever without one
    tokenizer: object  # counts tokens: truncation perturbations, per-query lengths
    title_sep: str  # between a document's title and text
    device: object  # a torch.device: where peak memory is read

    @classmethod
    def resolve(cls, config): ...  # -> the config as it will run (device, dtype)
    @classmethod
    def from_config(cls, config, cache): ...
    def tag(self) -> str: ...  # short name for result paths
    def index(self, corpus) -> dict: ...  # a pipeline.corpus.Corpus (a mapping id -> doc) -> indexing stats (throughput)
    def search(self, query_ids: list[str], queries: list[str], top_k: int) -> tuple[dict, dict]: ...  # -> (run, stats)
    # stats may hold "exact_run": the exact search an approximate one stands for (scored against it)
    def query_latency(self, queries: list[str], n: int) -> dict: ...
    def describe(self) -> dict: ...  # name, tag, config, fingerprint, num_parameters, kernel_path, ...


_KINDS: dict[str, type] = {}


def register_retriever(name: str):
    """Class decorator: `--encoder name` builds this retriever (`cls.from_config(config, cache)`)."""
    def decorate(cls):
        _KINDS[name] = cls
        return cls
    return decorate


def names() -> list[str]:
    """Every name `--encoder` accepts: registered encoders (dense) and retriever kinds."""
    return encoders.available() + sorted(_KINDS)


def check(name: str) -> None:
    if name not in _KINDS:
        encoders.get(name)  # unknown: one line naming what exists


def has_model(name: str) -> bool:
    return getattr(_KINDS.get(name), "model", True) is not None


def searches_vectors(name: str) -> bool:
    """Whether `--index` applies: the retriever searches embeddings with FAISS."""
    return getattr(_KINDS.get(name, DenseRetriever), "searches_vectors", False)


def load(config, cache: EmbeddingCache) -> Retriever:
    return _KINDS.get(config.encoder, DenseRetriever).from_config(config, cache)


def resolve(config):
    """The configuration as it will run (device and dtype settled), without loading anything: the run's
    identity is computed from it, by the runner and by a sweep deciding what is already done."""
    return _KINDS.get(config.encoder, DenseRetriever).resolve(config)


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_encoder(cfg):
    """The run's encoder, as the configuration names it (a preset is initialised from the global torch seed)."""
    # evaluated, an unfinished student would give a result under the finished one's configuration
    why = cfg.checkpoint_path() and unfinished(cfg.checkpoint_path())
    if why:
        raise EncoderError(f"checkpoint {cfg.checkpoint_path()!r} is unfinished training ({why}): finish it (its "
                           f"`benchmarks.train` command with --resume), or evaluate a copy without training.json")
    return encoders.load(cfg.encoder, checkpoint=cfg.checkpoint_path(), preset=cfg.preset, max_length=cfg.max_length,
                         batch_tokens=cfg.batch_tokens, pooling=cfg.pooling, bidirectional=cfg.bidirectional,
                         device=cfg.device, dtype=cfg.dtype, show_progress=cfg.show_progress, **cfg.encoder_options)


def encoder_tag(encoder) -> str:
    tag = f"{encoder.name}-{encoder.label}"
    if getattr(encoder, "bidirectional", None):
        tag += f"-bi{encoder.bidirectional}"
    if getattr(encoder, "dtype_name", "float32") != "float32":
        tag += f"-{encoder.dtype_name}"
    return tag


class DenseRetriever:
    """A registered encoder + inner-product search (exact, or the approximate `index_spec` with its
    `index_params`); the encoder's similarity decides the vectors searched (cos: normalised, dot: as
    the encoder gives them)."""

    searches_vectors = True

    def __init__(self, encoder, cache: EmbeddingCache, index_spec: str = EXACT,
                 index_params: dict | None = None, seed: int = 0, encode_shards=None,
                 long_docs: LongDocs | None = None):
        self.model, self.cache, self.encode_shards = encoder, cache, encode_shards  # None: encode here
        self.long_docs = long_docs or LongDocs()  # --long-doc: whole documents, or windows (pipeline/windows.py)
        self.index_spec, self.index_params, self.seed = index_spec, dict(index_params or {}), seed
        if index_spec != EXACT or self.index_params:  # refused now, before a run directory is opened
            index.build(index_spec, self.index_params, int(encoder.embedding_dim))
        self.doc_ids = []
        self.doc_emb = None  # the corpus's embeddings as searched (a Searchable over the store)

    @classmethod
    def resolve(cls, cfg):
        from encoders.dtype import resolve_dtype

        device = resolve_device(cfg.device)
        return replace(cfg, device=device, dtype=resolve_dtype(cfg.dtype, device)[0])

    @classmethod
    def from_config(cls, cfg, cache):
        encoder = load_encoder(cfg)
        encode_shards = None
        if cfg.workers > 1:
            from .workers import shard_encoder

            encode_shards = shard_encoder(cfg)
        return cls(encoder, cache, cfg.index, cfg.index_params, cfg.seed, encode_shards,
                   LongDocs(cfg.long_doc, cfg.window, cfg.stride))

    name = property(lambda self: self.model.name)
    tokenizer = property(lambda self: self.model.tokenizer)
    title_sep = property(lambda self: self.model.title_sep)
    device = property(lambda self: self.model.device)

    def tag(self) -> str:
        return encoder_tag(self.model)

    def searchable(self, emb: np.ndarray) -> np.ndarray:
        if self.model.similarity == "cos":  # an encoder that does not normalise still searches by cosine
            return emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
        return emb

    def index(self, corpus):
        store, stats = embed(self.model, self.long_docs.as_texts(self.model, corpus), "corpus", self.cache,
                             encode_shards=self.encode_shards)
        searched = self.long_docs.fold(store, self.model.normalize)  # the store, or windows as an array
        self.doc_ids = corpus.ids
        self.doc_emb = Searchable(searched, self.searchable) if searched is store else self.searchable(searched)
        return dict(stats, documents=len(corpus), **self.long_docs.stats())

    def search(self, query_ids, queries, top_k):
        emb, stats = embed_texts(self.model, self.model.query_texts(queries), "queries", self.cache)
        query_emb = self.searchable(emb)
        exact, search_stats = self.long_docs.search(self.doc_emb, self.doc_ids, query_emb, query_ids, top_k)
        stats = dict(search_stats, similarity=self.model.similarity, query_encode=stats)
        if self.index_spec == EXACT:
            return exact, stats
        run, stats["approximate"] = index.approximate_search(self.doc_emb, self.doc_ids, query_emb, query_ids, top_k,
                                                             self.index_spec, self.index_params, self.seed,
                                                             str(self.device))
        return run, dict(stats, exact_run=exact)

    def query_latency(self, queries, n):
        return measure.query_latency(self.model, queries, n=n)

    def describe(self) -> dict:
        m = self.model
        return dict(name=m.name, tag=self.tag(), config=m.config(), fingerprint=m.fingerprint,
                    num_parameters=m.num_parameters, kernel_path=m.kernel_path,
                    flops_per_token=m.flops_per_token(m.max_length), batch_tokens=m.batch_tokens,
                    embedding_dim=int(m.embedding_dim), dtype_probe=m.dtype_probe)


class Searchable:
    """An embedding store's rows as searched (`to_search` applied, e.g. normalised), shard by shard:
    a copy of one shard at a time, never of the whole store."""

    def __init__(self, store, to_search):
        self.store, self.to_search = store, to_search
        self.rows = store.rows

    def shards(self):
        for start, emb in self.store.shards():
            yield start, self.to_search(emb)


__all__ = ["DenseRetriever", "EncoderError", "Retriever", "check", "encoder_tag", "has_model", "load", "names",
           "register_retriever", "resolve", "resolve_device", "searches_vectors"]

from . import bm25  # noqa: E402,F401  (registers "bm25")
