"""One benchmark run: encode a BEIR dataset, search it with FAISS, score every query, write results.

    python -m benchmarks.run --encoder bert --dataset scifact
    python -m benchmarks.run --encoder mamba --preset small --perturbation prune:0.5+sentence-shuffle
    python -m benchmarks.run --encoder bm25           # the lexical baseline, same layout

Writes results/<dataset>/<encoder-tag>/<perturbation>/<run-id>/{summary.json, per_query.csv, run.trec}.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import encoders
from encoders import EncoderError

from . import perturbations
from .pipeline import index, metrics
from .pipeline import measure as latency
from .pipeline.bm25 import BM25Retriever
from .pipeline.cache import EmbeddingCache
from .pipeline.data import DataError, Dataset, load_dataset
from .perturbations import PerturbationError
from .pipeline.results import ResultsError, environment, new_run_id, run_dir, check_target, write_run

USER_ERRORS = (DataError, EncoderError, ResultsError, PerturbationError)
LEXICAL = ("bm25",)  # retrievers that are not dense encoders; same runner, same results layout


@dataclass
class RunConfig:
    encoder: str = "bert"
    dataset: str = "scifact"
    split: str = "test"
    data_dir: str | None = None
    checkpoint: str | None = None
    preset: str | None = None
    encoder_module: str | None = None
    max_length: int | None = None  # None: the encoder's (or checkpoint's) own default
    batch_tokens: int | None = None
    pooling: str | None = None
    bidirectional: str | None = None
    perturbation: str = "clean"  # see benchmarks/perturbations/__init__.py, e.g. "prune:0.5+sentence-shuffle"
    device: str = "auto"
    dtype: str = "auto"  # auto: the fastest of the device by a matmul probe (encoders/dtype.py)
    top_k: int = 100
    drop_self_hits: str = "auto"  # auto | on | off
    output_dir: str = "results"
    run_id: str | None = None
    overwrite: bool = False
    seed: int = 0
    cache: bool = True
    cache_dir: str | None = None
    latency_queries: int = 100
    show_progress: bool = True
    encoder_options: dict = field(default_factory=dict)  # further keyword arguments for the encoder


@dataclass
class RunResult:
    path: Path
    summary: dict
    per_query: object  # pandas DataFrame
    run: dict


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    same = sum(1 for q in shared if ds.queries[q].strip() in (ds.corpus[q]["text"].strip(),
                                                             (ds.corpus[q]["title"] + " " + ds.corpus[q]["text"]).strip()))
    return same >= len(shared) / 2


def encoder_tag(encoder) -> str:
    tag = f"{encoder.name}-{encoder.label}"
    if getattr(encoder, "bidirectional", None):
        tag += f"-bi{encoder.bidirectional}"
    if getattr(encoder, "dtype_name", "float32") != "float32":
        tag += f"-{encoder.dtype_name}"
    return tag


def embed(encoder, texts: list[str], what: str, cache: EmbeddingCache, fingerprint: str):
    """Embeddings for `texts`, from the cache when a valid entry exists -> (array, stats)."""
    hit = cache.load(fingerprint, texts)
    if hit is not None:
        emb, meta = hit
        return emb, dict(meta.get("stats", {}), cached=True)
    emb = encoder.encode(texts, desc=what)
    stats = dict(encoder.last_stats)
    stats.update(texts_per_s=stats["texts"] / stats["seconds"], tokens_per_s=stats["tokens"] / stats["seconds"])
    # Achieved compute, with the FLOPs per token of a text of the mean length (attention's share
    # grows with length, so this slightly undercounts a corpus of mixed lengths).
    stats["flops_per_token"] = encoder.flops_per_token(max(1, round(stats["tokens"] / max(stats["texts"], 1))))
    stats["flops_per_s"] = stats["flops_per_token"] * stats["tokens_per_s"]
    cache.save(fingerprint, texts, emb, stats)
    return emb, dict(stats, cached=False)


def relevant_doc_words(ds: Dataset) -> dict[str, float]:
    """Mean word count (title + text, unperturbed) of each query's relevant documents in the corpus:
    lets the analysis join every run's per-query scores to document length."""
    out = {}
    for q in ds.queries:
        lengths = [len(f"{ds.corpus[d]['title']} {ds.corpus[d]['text']}".split())
                   for d, rel in ds.qrels[q].items() if rel > 0 and d in ds.corpus]
        out[q] = float(np.mean(lengths)) if lengths else float("nan")
    return out


def load_retriever(cfg: RunConfig):
    """The dense encoder (or BM25) a run uses, on its device, not yet perturbed."""
    if cfg.encoder in LEXICAL:
        return BM25Retriever(**cfg.encoder_options)
    return encoders.load(cfg.encoder, checkpoint=cfg.checkpoint, preset=cfg.preset, max_length=cfg.max_length,
                         batch_tokens=cfg.batch_tokens, pooling=cfg.pooling, bidirectional=cfg.bidirectional,
                         device=resolve_device(cfg.device), dtype=cfg.dtype, show_progress=cfg.show_progress,
                         **cfg.encoder_options)


def retrieve_dense(cfg: RunConfig, encoder, ds: Dataset, corpus: dict, cache: EmbeddingCache):
    """Encode (or take from the cache) corpus and queries, search -> (run, search stats, timings)."""
    doc_ids, query_ids = list(corpus), list(ds.queries)
    fingerprint = encoder.fingerprint
    doc_emb, corpus_stats = embed(encoder, encoder.corpus_texts([corpus[d] for d in doc_ids]), "corpus",
                                  cache, fingerprint)
    query_emb, query_stats = embed(encoder, encoder.query_texts([ds.queries[q] for q in query_ids]), "queries",
                                   cache, fingerprint)
    t_search = time.perf_counter()
    drop = self_hit_rule(ds, cfg.drop_self_hits)
    run, search_stats = index.search(doc_emb, doc_ids, query_emb, query_ids, top_k=cfg.top_k, drop_self_hits=drop)
    search_stats.update(drop_self_hits=drop, drop_self_hits_mode=cfg.drop_self_hits, similarity=encoder.similarity)
    timings = dict(corpus_encode=corpus_stats, query_encode=query_stats, search_s=time.perf_counter() - t_search)
    return run, search_stats, timings


def retrieve_lexical(cfg: RunConfig, bm25: BM25Retriever, ds: Dataset, corpus: dict):
    doc_ids = list(corpus)
    bm25.index(doc_ids, [f"{corpus[d]['title']} {corpus[d]['text']}".strip() for d in doc_ids])
    t_search = time.perf_counter()
    run = bm25.search(list(ds.queries), list(ds.queries.values()), cfg.top_k)
    if self_hit_rule(ds, cfg.drop_self_hits):
        run = {q: {d: v for d, v in hits.items() if d != q} for q, hits in run.items()}
    timings = dict(corpus_encode=bm25.last_stats, search_s=time.perf_counter() - t_search)
    return run, dict(top_k=cfg.top_k, similarity="bm25"), timings


def describe_retriever(retriever, embedding_dim: int | None) -> dict:
    if isinstance(retriever, BM25Retriever):
        return dict(name=retriever.name, tag=encoder_tag(retriever), config=retriever.config(),
                    fingerprint=retriever.fingerprint, num_parameters=0, kernel_path="bm25s (numpy, scipy.sparse)",
                    flops_per_token=0.0, batch_tokens=None, embedding_dim=None)
    return dict(name=retriever.name, tag=encoder_tag(retriever), config=retriever.config(),
                fingerprint=retriever.fingerprint, num_parameters=retriever.num_parameters,
                kernel_path=retriever.kernel_path, flops_per_token=retriever.flops_per_token(retriever.max_length),
                batch_tokens=retriever.batch_tokens, embedding_dim=embedding_dim, dtype_probe=retriever.dtype_probe)


def run_benchmark(cfg: RunConfig) -> RunResult:
    start = time.perf_counter()
    if cfg.drop_self_hits not in ("auto", "on", "off"):
        raise EncoderError(f"--drop-self-hits must be auto, on or off, got {cfg.drop_self_hits!r}")
    if cfg.top_k < 1:
        raise EncoderError(f"--top-k must be positive, got {cfg.top_k}")
    perturbation = perturbations.parse(cfg.perturbation)
    lexical = cfg.encoder in LEXICAL
    if lexical and perturbation.prune_step:
        raise PerturbationError(f"perturbation {perturbation.name!r}: pruning applies to neural encoders, not {cfg.encoder}")
    set_seed(cfg.seed)
    if cfg.encoder_module:
        encoders.import_encoder_module(cfg.encoder_module)
    if not lexical:
        encoders.get(cfg.encoder)  # unknown encoder: fail before loading data
    ds = load_dataset(cfg.dataset, cfg.split, cfg.data_dir)

    t_load = time.perf_counter()
    retriever = load_retriever(cfg)
    run_id = cfg.run_id or new_run_id()
    target = run_dir(cfg.output_dir, ds.name, encoder_tag(retriever), perturbation.slug, run_id)
    check_target(target, cfg.overwrite)
    steps = []
    if perturbation.prune_step:  # calibration texts (activation criterion) come from the clean corpus
        steps.append(perturbations.prune_model(retriever, perturbation.prune_step,
                                               retriever.corpus_texts(list(ds.corpus.values())), cfg.seed))
    load_s = time.perf_counter() - t_load

    # Truncation counts tokens of the encoder's tokenizer (BM25: the default BERT WordPiece, so
    # "64 tokens" means the same text for every retriever).
    tokenizer = encoders.base.load_tokenizer() if lexical else retriever.tokenizer
    title_sep = " " if lexical else retriever.title_sep
    corpus, text_steps = perturbations.perturb_corpus(ds.corpus, perturbation, cfg.seed, tokenizer, title_sep,
                                                      progress=cfg.show_progress)
    steps += text_steps

    cache = EmbeddingCache(Path(cfg.cache_dir or Path(cfg.output_dir) / ".cache" / "embeddings"), enabled=cfg.cache)
    if lexical:
        run, search_stats, timings = retrieve_lexical(cfg, retriever, ds, corpus)
    else:
        run, search_stats, timings = retrieve_dense(cfg, retriever, ds, corpus, cache)
    retrieval_s = time.perf_counter() - t_load  # model load + encoding + search: what BEIR's retrieve() does

    per_query = metrics.evaluate(ds.qrels, run)
    query_texts = list(ds.queries.values())
    query_tokens = (tokenizer(query_texts)["input_ids"] if lexical
                    else retriever.tokenize(retriever.query_texts(query_texts)))
    per_query.insert(0, "query_tokens", [len(x) for x in query_tokens])
    per_query.insert(1, "num_relevant", [sum(1 for s in ds.qrels[q].values() if s > 0) for q in per_query.index])
    per_query.insert(2, "num_retrieved", [len(run.get(q, {})) for q in per_query.index])
    doc_words = relevant_doc_words(ds)
    per_query.insert(3, "relevant_doc_words", [doc_words[q] for q in per_query.index])
    aggregates = metrics.aggregate(per_query)

    if lexical:
        lat = retriever.query_latency(query_texts, n=cfg.latency_queries, top_k=cfg.top_k)
        device = torch.device("cpu")
    else:
        lat = latency.query_latency(retriever, query_texts, n=cfg.latency_queries)
        device = retriever.device
    timings.update(model_load_s=load_s, retrieval_s=retrieval_s, query_latency=lat,
                   **latency.peak_memory(device), total_s=time.perf_counter() - start)
    summary = dict(
        run_id=run_id, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), dataset=ds.describe(), metrics=aggregates,
        perturbation=dict(name=perturbation.name, slug=perturbation.slug, steps=steps),
        retrieval=search_stats,
        encoder=describe_retriever(retriever, None if lexical else int(retriever.embedding_dim)),
        config=asdict(cfg), timings=timings, environment=environment(device),
    )
    write_run(target, summary, per_query, run, run_tag=encoder_tag(retriever), overwrite=cfg.overwrite)
    return RunResult(target, summary, per_query, run)


def format_summary(result: RunResult) -> str:
    s = result.summary
    m, t = s["metrics"], s["timings"]
    enc = t["corpus_encode"]
    lines = [
        f"dataset   {s['dataset']['name']} ({s['dataset']['split']}): {s['dataset']['documents']} documents, "
        f"{s['dataset']['queries']} judged queries",
        f"encoder   {s['encoder']['tag']}  ({s['encoder']['num_parameters'] / 1e6:.1f}M parameters, "
        f"{s['encoder']['kernel_path']}, {s['encoder']['config'].get('dtype', s['config']['dtype'])})",
        f"quality   NDCG@10 {m['ndcg@10']:.4f}   Recall@100 {m['recall@100']:.4f}   MRR@10 {m['mrr@10']:.4f}   "
        f"MAP@100 {m['map@100']:.4f}",
        f"speed     corpus {enc.get('texts_per_s', float('nan')):.1f} docs/s, {enc.get('tokens_per_s', float('nan')):.0f} tokens/s"
        f"{' (cached)' if enc.get('cached') else ''}   query p50 {t['query_latency'].get('p50_ms', float('nan')):.1f} ms "
        f"p95 {t['query_latency'].get('p95_ms', float('nan')):.1f} ms   wall {t['total_s']:.1f} s   "
        f"peak RSS {t['peak_rss_mb']:.0f} MB",
    ]
    for name, count in s["dataset"]["warnings"].items():
        lines.append(f"warning   {count} {name.replace('_', ' ')}")
    if warning := latency.latency_warning(t["query_latency"]):
        lines.append(f"warning   {warning}")
    lines.append(f"results   {result.path}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--encoder", default="bert", help="registered encoder name (see --list), or bm25")
    p.add_argument("--dataset", default="scifact", help="BEIR dataset name, or a path to a BEIR folder")
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir", help="folder holding BEIR datasets (then $BEIR_DATA_DIR, then ./data)")
    p.add_argument("--checkpoint", help="hub id or local directory (default: the encoder's own)")
    p.add_argument("--preset", help="build a randomly initialised model at a shared size: tiny, small, base")
    p.add_argument("--encoder-module", help="import this module first, so its @register_encoder classes exist")
    p.add_argument("--max-length", type=int, help="tokens per text, truncating longer ones (default: the model's)")
    p.add_argument("--batch-tokens", type=int, help="padded tokens per batch (default 4096 on CPU, 32768 on GPU)")
    p.add_argument("--pooling", choices=["mean", "cls", "last"], help="default: the model's")
    p.add_argument("--bidirectional", choices=["sum", "concat"], help="causal backbones: add a reversed pass")
    p.add_argument("--perturbation", default="clean",
                   help="clean, prune:0.5[:activation], sentence-shuffle, token-shuffle, truncate:head|tail:N, "
                        "pad:prefix|suffix:2x; compose with +")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: the fastest this device computes in, by a short matmul probe (cached per machine)")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--drop-self-hits", default="auto", choices=["auto", "on", "off"],
                   help="BEIR's rule of dropping a document whose id equals the query id")
    p.add_argument("--output-dir", default="results")
    p.add_argument("--run-id", help="name of the run directory (default: timestamp)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run with the same --run-id")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    p.add_argument("--cache-dir", help="default: <output-dir>/.cache/embeddings")
    p.add_argument("--latency-queries", type=int, default=100, help="queries timed one by one for p50/p95, in each of 3 repeats")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--list", action="store_true", help="list registered encoders and exit")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(encoder=args.encoder, dataset=args.dataset, split=args.split, data_dir=args.data_dir,
                     checkpoint=args.checkpoint, preset=args.preset, encoder_module=args.encoder_module,
                     max_length=args.max_length, batch_tokens=args.batch_tokens, pooling=args.pooling,
                     bidirectional=args.bidirectional, perturbation=args.perturbation, device=args.device,
                     dtype=args.dtype, top_k=args.top_k,
                     drop_self_hits=args.drop_self_hits, output_dir=args.output_dir, run_id=args.run_id,
                     overwrite=args.overwrite, seed=args.seed, cache=not args.no_cache, cache_dir=args.cache_dir,
                     latency_queries=args.latency_queries, show_progress=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.list:
            if args.encoder_module:
                encoders.import_encoder_module(args.encoder_module)
            print("\n".join(encoders.available() + list(LEXICAL)))
            return 0
        result = run_benchmark(config_from_args(args))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    print(format_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
