"""One run as a sequence of named stages:

    check options -> load data -> load retriever -> perturb model -> perturb corpus -> index -> search
    -> score -> measure costs -> write the record

Every stage talks to the retriever through its interface (pipeline/retrievers.py) and to perturbations
through theirs (benchmarks/perturbations), so this file knows no retriever or perturbation kind by name.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import encoders
from encoders import EncoderError
from encoders.base import title_text

from .. import perturbations
from ..perturbations import Context, Perturbation, PerturbationError
from . import index, measure, metrics, record, retrievers, windows
from .cache import EmbeddingCache
from .corpus import Corpus
from .data import DataError, Dataset, load_dataset
from .index import IndexOptionError
from .record import RunConfig
from .results import ResultsError, environment, new_run_id, run_dir, stage_run

USER_ERRORS = (DataError, EncoderError, ResultsError, PerturbationError, IndexOptionError)


@dataclass
class RunResult:
    path: Path
    summary: dict
    per_query: pd.DataFrame
    run: dict


def run_benchmark(cfg: RunConfig) -> RunResult:
    """One run. The corpus (and each perturbation of it) is streamed into an Arrow file in a scratch
    directory ($TMPDIR) that goes when the run ends; its embeddings into the embedding store (cache.py)."""
    perturbation = check_options(cfg)
    with tempfile.TemporaryDirectory(prefix="benchmarks-run-") as work:
        return run_in(cfg, perturbation, Path(work))


def run_in(cfg: RunConfig, perturbation: Perturbation, work: Path) -> RunResult:
    start = time.perf_counter()
    ds = load_dataset(cfg.dataset, cfg.split, cfg.data_dir, store=work / "corpus.arrow")
    set_seed(cfg.seed)
    cache = EmbeddingCache(Path(cfg.cache_dir or Path(cfg.output_dir) / ".cache" / "embeddings"), enabled=cfg.cache)

    t_load = time.perf_counter()
    measure.reset_peak_memory()
    retriever = retrievers.load(replace(cfg, device=retrievers.resolve_device(cfg.device)), cache)
    cfg = as_run(cfg, retriever)  # device and dtype as they run: part of the run's identity
    run_id = cfg.run_id or new_run_id()
    target = run_dir(cfg.output_dir, ds.name, retriever.tag(), perturbation.slug, record.run_dir_name(run_id, cfg))
    staging = stage_run(target, cfg.overwrite)  # fails now if the run exists; locked temp dir until the end
    ctx = Context(seed=cfg.seed, tokenizer=retriever.tokenizer, title_sep=retriever.title_sep,
                  clean_texts=DocumentTexts(ds.corpus, retriever.title_sep),
                  judged=frozenset(d for judged in ds.qrels.values() for d in judged), progress=cfg.show_progress)
    steps = perturbation.apply_model(retriever, ctx)
    load_s = time.perf_counter() - t_load
    corpus, corpus_steps = perturbation.apply_corpus(ds.corpus, ctx, work)

    run, retrieval, timings = retrieve(retriever, ds, corpus, cfg)
    timings["retrieval_s"] = time.perf_counter() - t_load  # model load + encoding + search: BEIR's retrieve()
    per_query = score(ds, run, retriever)
    timings.update(model_load_s=load_s, query_latency=retriever.query_latency(list(ds.queries.values()),
                                                                               cfg.latency_queries),
                   **measure.peak_memory(retriever.device), total_s=time.perf_counter() - start)

    rec = record.new_record(
        run_id=run_id, config=cfg, dataset=ds.describe(), retriever=retriever.describe(),
        perturbation=dict(name=perturbation.name, slug=perturbation.slug, steps=steps + corpus_steps),
        retrieval=retrieval, metrics=metrics.aggregate(per_query), timings=timings,
        environment=environment(retriever.device), per_query=per_query, run=run)
    record.write(rec, staging)
    return RunResult(target, rec.summary, per_query, run)


# -- the stages -----------------------------------------------------------------------------------
def check_options(cfg: RunConfig) -> Perturbation:
    """Everything that can be checked before data or a model is loaded -> the parsed perturbation."""
    if cfg.drop_self_hits not in ("auto", "on", "off"):
        raise EncoderError(f"--drop-self-hits must be auto, on or off, got {cfg.drop_self_hits!r}")
    if cfg.top_k < 1:
        raise EncoderError(f"--top-k must be positive, got {cfg.top_k}")
    perturbation = perturbations.parse(cfg.perturbation)
    if cfg.encoder_module:
        encoders.import_encoder_module(cfg.encoder_module)
    retrievers.check(cfg.encoder)
    if (cfg.index != index.EXACT or cfg.index_params) and not retrievers.searches_vectors(cfg.encoder):
        raise IndexOptionError(f"--index / --index-params: {cfg.encoder} searches no embeddings (only {index.EXACT} applies)")
    windows.check_options(cfg, retrievers.searches_vectors(cfg.encoder))
    if perturbation.needs_model and not retrievers.has_model(cfg.encoder):
        raise PerturbationError(f"perturbation {perturbation.name!r} changes a model; {cfg.encoder} has none")
    check_workers(cfg, perturbation)
    return perturbation


def check_workers(cfg: RunConfig, perturbation: Perturbation) -> None:
    if cfg.workers < 1:
        raise EncoderError(f"--workers must be positive, got {cfg.workers}")
    if cfg.workers > 1 and not retrievers.searches_vectors(cfg.encoder):
        raise EncoderError(f"--workers: {cfg.encoder} encodes no corpus to share out")
    if cfg.workers > 1 and perturbation.needs_model:  # each worker loads the model from the configuration
        raise PerturbationError(f"--workers: perturbation {perturbation.name!r} changes the model, which the "
                                "workers load unchanged; run it with one worker")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class DocumentTexts(Sequence):
    """A corpus's texts (title + text), read a document at a time: pruning calibration samples a few."""

    def __init__(self, corpus: Corpus, title_sep: str):
        self.corpus, self.title_sep = corpus, title_sep

    def __len__(self):
        return len(self.corpus)

    def __getitem__(self, row):
        return title_text(self.corpus.doc(row), self.title_sep)


def retrieve(retriever, ds: Dataset, corpus: Corpus, cfg: RunConfig) -> tuple[dict, dict, dict]:
    """Index the (perturbed) corpus, search every judged query -> (run, retrieval stats, timings)."""
    index_stats = retriever.index(corpus)
    index_stats["peak_rss_mb"] = measure.peak_rss_mb()  # through encoding; the run's peak may come later, in search
    t_search = time.perf_counter()
    drop = self_hit_rule(ds, cfg.drop_self_hits)
    run, stats = retriever.search(list(ds.queries), list(ds.queries.values()), cfg.top_k + drop)
    run, dropped = drop_self_hits(run, cfg.top_k) if drop else (run, 0)
    if (exact := stats.pop("exact_run", None)) is not None:  # an approximate search, judged against exact
        exact = drop_self_hits(exact, cfg.top_k)[0] if drop else exact
        stats["approximate"] = dict(stats.get("approximate", {}), **index.against_exact(ds.qrels, run, exact, cfg.top_k))
    timings = dict(corpus_encode=index_stats, search_s=time.perf_counter() - t_search)
    if "query_encode" in stats:
        timings["query_encode"] = stats.pop("query_encode")
    stats.update(top_k=cfg.top_k, drop_self_hits=drop, drop_self_hits_mode=cfg.drop_self_hits,
                 self_hits_dropped=dropped)
    return run, stats, timings


def as_run(cfg: RunConfig, retriever) -> RunConfig:
    """The configuration as it runs: resolved as a sweep resolves it before running (retrievers.resolve),
    with the dtype the retriever actually computes in (an `auto` dtype's probe is the encoder's record)."""
    return replace(retrievers.resolve(cfg), dtype=retriever.describe()["config"].get("dtype"))


def self_hit_rule(ds: Dataset, mode: str) -> bool:
    """BEIR drops a retrieved document whose id equals the query id. That is right only where the
    queries are drawn from the corpus (ArguAna, Quora); on Cranfield, say, query and document ids
    are separate namespaces that overlap. `auto` applies the rule when id-sharing query/document
    pairs mostly share their text too."""
    if mode in ("on", "off"):
        return mode == "on"
    shared = [(q, ds.corpus.doc(r)) for q, r in zip(ds.queries, ds.corpus.rows(list(ds.queries))) if r >= 0]
    if not shared:
        return False
    same = sum(1 for q, doc in shared if ds.queries[q].strip() in (doc["text"].strip(), title_text(doc)))
    return same >= len(shared) / 2


def drop_self_hits(run: dict, top_k: int) -> tuple[dict, int]:
    """The one place the self-hit rule is applied, for every retriever: each query searched one deeper,
    its own id removed, then cut to top_k."""
    out, dropped = {}, 0
    for qid, hits in run.items():
        kept = [(d, s) for d, s in hits.items() if d != qid]
        dropped += len(hits) - len(kept)
        out[qid] = dict(kept[:top_k])
    return out, dropped


def score(ds: Dataset, run: dict, retriever) -> pd.DataFrame:
    """Per-query metrics plus the columns the analysis joins on (lengths, relevant documents)."""
    per_query = metrics.evaluate(ds.qrels, run)
    queries = [ds.queries[q] for q in per_query.index]
    per_query.insert(0, "query_tokens", [len(x) for x in retriever.tokenizer(queries)["input_ids"]])
    per_query.insert(1, "num_relevant", [sum(1 for s in ds.qrels[q].values() if s > 0) for q in per_query.index])
    per_query.insert(2, "num_retrieved", [len(run.get(q, {})) for q in per_query.index])
    doc_words = relevant_doc_words(ds)
    per_query.insert(3, "relevant_doc_words", [doc_words[q] for q in per_query.index])
    return per_query


def relevant_doc_words(ds: Dataset) -> dict[str, float]:
    """Mean word count (title + text, unperturbed) of each query's relevant documents in the corpus:
    lets the analysis join every run's per-query scores to document length."""
    relevant = sorted({d for q in ds.queries for d, rel in ds.qrels[q].items() if rel > 0})
    words = {d: len(title_text(ds.corpus.doc(r)).split()) for d, r in zip(relevant, ds.corpus.rows(relevant)) if r >= 0}
    out = {}
    for q in ds.queries:
        lengths = [words[d] for d, rel in ds.qrels[q].items() if rel > 0 and d in words]
        out[q] = float(np.mean(lengths)) if lengths else float("nan")
    return out
