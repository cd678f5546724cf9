"""Structured pruning: size, FLOPs and encoding speed before and after, per architecture.

    python -m benchmarks.studies.bench_pruning [--preset small] [--encoders bert,mamba,...] [--sparsity 0.3,0.5,0.7]

For each architecture it builds the clean model and one pruned copy per sparsity (same seed, so the
same weights before pruning; BERT is the packaged all-MiniLM-L6-v2 unless --preset is given), then
times `encode()` of the same texts (--texts x --length tokens of seeded random vocabulary words) on
all of them in turn, round after round, so that every model sees the same machine state; the medians
over --repeats rounds (after one warm-up) are reported with the speed-up over the clean model.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import torch

from encoders import ARCHITECTURES



def make_texts(tokenizer, count: int, length: int, seed: int = 0) -> list[str]:
    """`count` texts of whole vocabulary words, long enough to fill `length` tokens after truncation."""
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 2]
    words.sort()  # vocab order is not guaranteed; the texts must be the same every run
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=2 * length)) for _ in range(count)]


def build(name: str, preset: str | None, **opts):
    import encoders

    torch.manual_seed(0)  # every copy starts from the same weights
    if name == "bert" and preset is None:
        return encoders.load("bert", **opts)  # the packaged all-MiniLM-L6-v2
    return encoders.load(name, preset=preset or "small", **opts)


def bench(name: str, args, sparsities: list[float]) -> list[dict]:
    from encoders.pruning import prune

    opts = dict(max_length=args.length, dtype=args.dtype, show_progress=False)
    models = {0.0: build(name, args.preset, **opts)}
    texts = make_texts(models[0.0].tokenizer, args.texts, args.length)
    reports = {0.0: None}
    for s in sparsities:
        models[s] = build(name, args.preset, **opts)
        calibration = texts[:16] if args.criterion == "activation" else None
        reports[s] = prune(models[s], s, criterion=args.criterion, calibration_texts=calibration)
    for enc in models.values():  # warm-up (and the token count)
        enc.encode(texts)
    tokens = models[0.0].last_stats["tokens"]
    times = {s: [] for s in models}
    for _ in range(args.repeats):
        for s, enc in models.items():
            start = time.perf_counter()
            enc.encode(texts)
            times[s].append(time.perf_counter() - start)
    rows = []
    for s, enc in models.items():
        t = statistics.median(times[s])
        rows.append(dict(encoder=name, label=enc.label, sparsity=s, params=enc.num_parameters,
                         flops_per_token=enc.flops_per_token(args.length), seconds=t, tokens_per_s=tokens / t,
                         realised=reports[s]["realised_sparsity"] if reports[s] else 0.0,
                         structures=reports[s]["structures"] if reports[s] else {}))
    clean = rows[0]["seconds"]
    for r in rows:
        r["speedup"] = clean / r["seconds"]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default=",".join(ARCHITECTURES))
    parser.add_argument("--preset", choices=["tiny", "small", "base"], default=None,
                        help="preset for every architecture (default: small; BERT: the packaged MiniLM)")
    parser.add_argument("--sparsity", default="0.3,0.5,0.7")
    parser.add_argument("--criterion", choices=["magnitude", "activation"], default="magnitude")
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--length", type=int, default=256, help="tokens per text")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)

    import encoders
    from encoders.pruning import PruningError as PerturbationError

    try:
        names = encoders.get_all(args.encoders)
        try:
            sparsities = [float(x) for x in args.sparsity.split(",")]
        except ValueError:
            raise PerturbationError(f"--sparsity must be comma-separated numbers, got {args.sparsity!r}") from None
        if args.threads:
            torch.set_num_threads(args.threads)
        print(f"{args.texts} texts x {args.length} tokens, {args.dtype}, {torch.get_num_threads()} thread(s), "
              f"median of {args.repeats}, criterion {args.criterion}")
        header = f"{'encoder':<22}{'sparsity':>9}{'realised':>9}{'params':>10}{'MFLOP/tok':>10}{'tokens/s':>10}{'speed-up':>9}"
        for name in names:
            rows = bench(name, args, sparsities)
            print(f"\n{header}")
            for r in rows:
                print(f"{name + ' ' + r['label']:<22}{r['sparsity']:>9.2f}{r['realised']:>9.3f}{r['params'] / 1e6:>9.2f}M"
                      f"{r['flops_per_token'] / 1e6:>10.2f}{r['tokens_per_s']:>10.0f}{r['speedup']:>8.2f}x")
            print("  " + "; ".join(f"{k}: {v}" for k, v in rows[-1]["structures"].items()) + f" (at {rows[-1]['sparsity']})")
    except (encoders.EncoderError, PerturbationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
