"""One benchmark run: encode a BEIR dataset, search it with FAISS, score every query, write results.

    python -m benchmarks.run --encoder bert --dataset scifact
    python -m benchmarks.run --encoder mamba --preset small --perturbation prune:0.5+sentence-shuffle
    python -m benchmarks.run --encoder bm25           # the lexical baseline, same layout

Writes results/<dataset>/<encoder-tag>/<perturbation>/<run-id>-<identity>/{summary.json, per_query.csv, run.trec}
(the run record: benchmarks/pipeline/record.py); the stages are in benchmarks/pipeline/runner.py.
"""

from __future__ import annotations

import argparse
import sys

import encoders

from .cli import run_command
from .pipeline import measure, retrievers
from .pipeline.index import parse_params
from .pipeline.record import RunConfig
from .pipeline.runner import USER_ERRORS, RunResult, run_benchmark

__all__ = ["RunConfig", "RunResult", "run_benchmark", "main"]


def format_summary(result: RunResult) -> str:
    s = result.summary
    m, t = s["metrics"], s["timings"]
    enc = t["corpus_encode"]
    lines = [
        f"dataset   {s['dataset']['name']} ({s['dataset']['split']}): {s['dataset']['documents']} documents, "
        f"{s['dataset']['queries']} judged queries",
        f"encoder   {s['encoder']['tag']}  ({s['encoder']['num_parameters'] / 1e6:.1f}M parameters, "
        f"{s['encoder']['kernel_path']}{', ' + s['config']['dtype'] if s['config']['dtype'] else ''})",
        f"quality   NDCG@10 {m['ndcg@10']:.4f}   Recall@100 {m['recall@100']:.4f}   MRR@10 {m['mrr@10']:.4f}   "
        f"MAP@100 {m['map@100']:.4f}",
        f"speed     corpus {enc.get('texts_per_s', float('nan')):.1f} docs/s, {enc.get('tokens_per_s', float('nan')):.0f} tokens/s"
        f"{' (cached)' if enc.get('cached') else ''}   query p50 {t['query_latency'].get('p50_ms', float('nan')):.1f} ms "
        f"p95 {t['query_latency'].get('p95_ms', float('nan')):.1f} ms   wall {t['total_s']:.1f} s   "
        f"peak RSS {t['peak_rss_mb']:.0f} MB",
    ]
    if w := enc.get("long_doc"):
        lines.append(f"long docs {w['rule']}: {w['windows']} windows of {w['window']} tokens, "
                     f"{w['windows_per_document_mean']:.2f} per document (at most {w['windows_per_document_max']})")
    if a := s["retrieval"].get("approximate"):
        lines.append(f"index     {a['index']} {a['params']}: overlap@{a['k']} with exact {a['overlap@k']:.4f}   "
                     f"NDCG@10 {a['ndcg@10_delta']:+.4f} against exact ({a['ndcg@10_exact']:.4f})")
    for name, count in s["dataset"]["warnings"].items():
        lines.append(f"warning   {count} {name.replace('_', ' ')}")
    if warning := measure.latency_warning(t["query_latency"]):
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
    p.add_argument("--checkpoint", help="hub id or local directory (default: the encoder's own); {seed} in it stands for --seed")
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
    p.add_argument("--index", default="Flat",
                   help="FAISS index-factory string: Flat (exact) or approximate, e.g. HNSW32, IVF1024,Flat, IVF1024,PQ48; "
                        "an approximate run also records its overlap with exact search")
    p.add_argument("--index-params", default="", help="search parameters of --index, e.g. efSearch=128 or nprobe=16")
    p.add_argument("--long-doc", default="first", choices=["first", "maxp", "mean"],
                   help="documents longer than a window: first (truncate), maxp (best window), mean (mean of windows)")
    p.add_argument("--window", type=int, help="maxp/mean: tokens per window (default: --max-length)")
    p.add_argument("--stride", type=int, help="maxp/mean: tokens between window starts (default: no overlap)")
    p.add_argument("--drop-self-hits", default="auto", choices=["auto", "on", "off"],
                   help="BEIR's rule of dropping a document whose id equals the query id")
    p.add_argument("--output-dir", default="results")
    p.add_argument("--run-id", help="name of the run directory (default: timestamp)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run with the same --run-id")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    p.add_argument("--cache-dir", help="default: <output-dir>/.cache/embeddings")
    p.add_argument("--workers", type=int, default=1,
                   help="encode the corpus over this many Ray actors (one GPU each where there are GPUs); "
                        "changes no result")
    p.add_argument("--ray-address", help="the Ray cluster for --workers (default: start a local one)")
    p.add_argument("--latency-queries", type=int, default=100, help="queries timed one by one for p50/p95, in each of 3 repeats")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--list", action="store_true", help="list registered encoders and exit")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(encoder=args.encoder, dataset=args.dataset, split=args.split, data_dir=args.data_dir,
                     checkpoint=args.checkpoint, preset=args.preset, encoder_module=args.encoder_module,
                     max_length=args.max_length, batch_tokens=args.batch_tokens, pooling=args.pooling,
                     bidirectional=args.bidirectional, perturbation=args.perturbation, device=args.device,
                     dtype=args.dtype, top_k=args.top_k, index=args.index, index_params=parse_params(args.index_params),
                     drop_self_hits=args.drop_self_hits, long_doc=args.long_doc, window=args.window,
                     stride=args.stride, output_dir=args.output_dir, run_id=args.run_id,
                     overwrite=args.overwrite, seed=args.seed, cache=not args.no_cache, cache_dir=args.cache_dir,
                     latency_queries=args.latency_queries, show_progress=not args.quiet, workers=args.workers,
                     ray_address=args.ray_address)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.list:
            if args.encoder_module:
                encoders.import_encoder_module(args.encoder_module)
            print("\n".join(retrievers.names()))
            return 0
        print(format_summary(run_benchmark(config_from_args(args))))
        return 0

    return run_command(body, USER_ERRORS, "nothing was written")


if __name__ == "__main__":
    sys.exit(main())
