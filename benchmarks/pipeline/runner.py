"""One run as a sequence of named stages:

    check options -> load data -> load retriever -> perturb model -> perturb corpus -> index -> search
    -> score -> measure costs -> write the record

Every stage talks to the retriever through its interface (pipeline/retrievers.py) and to perturbations
through theirs (benchmarks/perturbations), so this file knows no retriever or perturbation kind by name.
"""

from __future__ import annotations

import random
import time
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
    start = time.perf_counter()
    perturbation = check_options(cfg)
    ds = load_dataset(cfg.dataset, cfg.split, cfg.data_dir)
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
                  clean_texts=[title_text(d, retriever.title_sep) for d in ds.corpus.values()],
                  judged=frozenset(d for judged in ds.qrels.values() for d in judged), progress=cfg.show_progress)
    steps = perturbation.apply_model(retriever, ctx)
    load_s = time.perf_counter() - t_load
    corpus, corpus_steps = perturbation.apply_corpus(ds.corpus, ctx)

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
    return perturbation


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def retrieve(retriever, ds: Dataset, corpus: dict, cfg: RunConfig) -> tuple[dict, dict, dict]:
    """Index the (perturbed) corpus, search every judged query -> (run, retrieval stats, timings)."""
    index_stats = retriever.index(list(corpus), list(corpus.values()))
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
    shared = [q for q in ds.queries if q in ds.corpus]
    if not shared:
        return False
    same = sum(1 for q in shared if ds.queries[q].strip() in (ds.corpus[q]["text"].strip(), title_text(ds.corpus[q])))
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
    out = {}
    for q in ds.queries:
        lengths = [len(title_text(ds.corpus[d]).split()) for d, rel in ds.qrels[q].items()
                   if rel > 0 and d in ds.corpus]
        out[q] = float(np.mean(lengths)) if lengths else float("nan")
    return out
