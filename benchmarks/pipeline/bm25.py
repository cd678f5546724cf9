"""BM25, the lexical baseline on every frontier, with `bm25s` (sparse-matrix BM25 in numpy/scipy).

Default: Lucene's scoring variant with Anserini/Pyserini's k1=0.9, b=0.4, English stopwords and the
Snowball English stemmer, over one field (title + " " + text) — the configuration of Pyserini's "flat"
BEIR baseline. The summary records every knob.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace

import torch

from encoders.base import load_tokenizer, title_text

from .measure import REPEATS, time_calls
from .retrievers import register_retriever


@register_retriever("bm25")
class BM25Retriever:
    """The `Retriever` interface over bm25s. Token counts (truncation perturbations, query lengths) use
    the default BERT WordPiece, so "64 tokens" means the same text for every retriever."""

    name = "bm25"
    model = None  # nothing for model-side perturbations to act on
    title_sep = " "
    device = torch.device("cpu")

    def __init__(self, k1: float = 0.9, b: float = 0.4, method: str = "lucene", stemmer: str | None = "english",
                 stopwords: str | None = "en"):
        import bm25s

        self.k1, self.b, self.method, self.stemmer_name, self.stopwords = k1, b, method, stemmer, stopwords
        self._stemmer = None
        if stemmer:
            import Stemmer  # PyStemmer: Snowball stemmers in C

            self._stemmer = Stemmer.Stemmer(stemmer)
        self.model = bm25s.BM25(method=method, k1=k1, b=b)
        self.doc_ids: list[str] = []
        self.label = f"bm25s-{method}-k{k1:g}-b{b:g}"
        self.tokenizer = load_tokenizer()

    @classmethod
    def resolve(cls, cfg):
        return replace(cfg, device="cpu", dtype=None)  # no tensors: a dtype would only split identities

    @classmethod
    def from_config(cls, cfg, cache=None):
        return cls(**cfg.encoder_options)

    def tag(self) -> str:
        return f"{self.name}-{self.label}"

    def describe(self) -> dict:
        return dict(name=self.name, tag=self.tag(), config=self.config(), fingerprint=self.fingerprint,
                    num_parameters=0, kernel_path="bm25s (numpy, scipy.sparse)", flops_per_token=0.0,
                    batch_tokens=None, embedding_dim=None)

    def config(self) -> dict:
        return dict(encoder=self.name, label=self.label, k1=self.k1, b=self.b, method=self.method,
                    stemmer=self.stemmer_name, stopwords=self.stopwords, fields="title + text, one field")

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).hexdigest()

    def _tokenize(self, texts: list[str], ids: bool):
        import bm25s

        return bm25s.tokenize(texts, stopwords=self.stopwords, stemmer=self._stemmer, return_ids=ids,
                              show_progress=False)

    def index(self, corpus) -> dict:
        start = time.perf_counter()
        self.doc_ids = list(corpus)
        texts = [title_text(d, self.title_sep) for _, chunk in corpus.chunks() for d in chunk.values()]
        tokens = self._tokenize(texts, ids=True)
        self.model.index(tokens, show_progress=False)
        seconds = time.perf_counter() - start
        n_tokens = sum(len(t) for t in tokens.ids)
        return dict(texts=len(texts), tokens=n_tokens, seconds=seconds, texts_per_s=len(texts) / seconds,
                    tokens_per_s=n_tokens / seconds, flops_per_token=0.0, flops_per_s=0.0, cached=False)

    def search(self, query_ids: list[str], texts: list[str], top_k: int = 100) -> tuple[dict, dict]:
        """({qid: {docid: score}}, stats), best first; only documents sharing a term with the query (as
        Lucene returns them), ties broken by document id descending like trec_eval."""
        run = {}
        for qid, tokens in zip(query_ids, self._tokenize(texts, ids=False)):
            if not tokens:  # every word a stopword or unknown: nothing matches
                run[qid] = {}
                continue
            # One beyond the cut shows whether a group of equal scores crosses it; if so, retrieve
            # deeper (twice, until the group is closed) so that the cut is by id, not bm25s's order.
            k = min(len(self.doc_ids), top_k + 1)
            while True:
                idx, scores = self.model.retrieve([tokens], k=k, show_progress=False)
                row = scores[0]  # best first
                if not (k < len(self.doc_ids) and len(row) > top_k and row[-1] == row[top_k - 1] > 0):
                    break
                k = min(len(self.doc_ids), 2 * k)
            hits = sorted(((float(s), self.doc_ids[i]) for s, i in zip(scores[0], idx[0]) if s > 0), reverse=True)
            run[qid] = {d: s for s, d in hits[:top_k]}  # score desc, then doc id desc
        return run, dict(top_k=top_k, similarity="bm25")

    def query_latency(self, queries: list[str], n: int = 100, repeats: int = REPEATS, warmup: int = 10,
                      top_k: int = 100) -> dict:
        """Per-query latency at batch size 1: tokenize + score + top-k, as at serving time."""
        return time_calls(lambda text: self.search(["q"], [text], top_k), queries, n=n, repeats=repeats, warmup=warmup)
