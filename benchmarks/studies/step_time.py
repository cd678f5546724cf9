"""Seconds per training step of each shared-block student, timed side by side in one process, to size
a step budget (benchmarks/configs/train_fair.yaml). The members take turns, one step each per round,
so a change in the machine's load reaches all of them alike; the ratios to the first member are the
figures to trust on a shared machine, the seconds hold only for its load at the time.

    python -m benchmarks.studies.step_time --preset small --max-length 128 --steps 4

Each step is the trainer's own (benchmarks.training.train_step: forward, the three losses, backward,
clipping, AdamW) on the real batches of the first steps of the mix; the teacher's embeddings are
replaced by random unit vectors of the same shape, which costs the same.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import encoders
from encoders.shared import MIXERS, parameter_table

from ..training import TrainConfig, load_train_data, make_batch, make_optimizer, train_step


def time_steps(cfg: TrainConfig, members: list[str], steps: int) -> dict[str, list[float]]:
    runs = {}
    for name in members:
        torch.manual_seed(cfg.seed)
        student = encoders.load(name, preset=cfg.preset, max_length=cfg.max_length, show_progress=False,
                                device=cfg.resolved_device(), dtype=cfg.resolved_dtype())
        data = load_train_data(cfg, student)
        rng = np.random.default_rng(0)
        fake = [rng.standard_normal((n, student.embedding_dim)).astype(np.float32) for n in (len(data.queries), len(data.docs))]
        tq, td = (f / np.linalg.norm(f, axis=1, keepdims=True) for f in fake)
        student.to(student.device).train()
        runs[name] = dict(student=student, data=data, ids=student.tokenize(data.queries + data.docs),
                          optimizer=make_optimizer(cfg, student), tq=tq, td=td, seconds=[])
    for step in range(steps + 1):  # step 0 warms up (allocations, first calls) and is not counted
        for name, r in runs.items():
            batch = make_batch(r["data"], cfg, step, None)
            if r["student"].device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            train_step(cfg, r["student"], r["optimizer"], r["data"], r["ids"], batch, r["tq"], r["td"], factor=1.0)
            if r["student"].device.type == "cuda":
                torch.cuda.synchronize()
            if step:
                r["seconds"].append(time.perf_counter() - start)
    return {name: r["seconds"] for name, r in runs.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.step_time", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=4, help="timed steps per member (after one warm-up step)")
    p.add_argument("--dataset", default="scifact,nfcorpus")
    p.add_argument("--data-dir")
    p.add_argument("--batch-pairs", type=int, default=8)
    p.add_argument("--batch-docs", type=int, default=8)
    p.add_argument("--members", default=",".join(MIXERS), help="mixers of the family, comma-separated")
    args = p.parse_args(argv)
    members = [f"shared-{m}" for m in args.members.split(",")]
    cfg = TrainConfig(encoder=members[0], preset=args.preset, dataset=args.dataset, data_dir=args.data_dir, steps=1,
                      max_length=args.max_length, batch_pairs=args.batch_pairs, batch_docs=args.batch_docs)
    params = parameter_table(args.preset, args.max_length)
    seconds = time_steps(cfg, members, args.steps)
    first = statistics.median(seconds[members[0]])
    print(f"{args.preset}, {args.max_length} tokens, batches of {args.batch_pairs} queries + up to "
          f"{2 * args.batch_pairs + args.batch_docs} documents, torch threads {torch.get_num_threads()}, "
          f"device {cfg.resolved_device()} {cfg.resolved_dtype()}")
    print(f"{'student':15} {'params':>11} {'non-emb':>11} {'s/step (median)':>16} {'x ' + members[0]:>20}")
    for name in members:
        med = statistics.median(seconds[name])
        row = params[name.removeprefix("shared-")]
        print(f"{name:15} {row['total']:>11,} {row['non_embedding']:>11,} {med:>16.2f} {med / first:>20.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
