"""Retrieval training for any registered encoder: distil a teacher's embeddings on a corpus, and/or
learn contrastively from a dataset's TRAIN qrels. Writes a checkpoint directory that
`python -m benchmarks.run --encoder NAME --checkpoint DIR` evaluates.

    python -m benchmarks.train --encoder mamba --preset small --dataset scifact --budget-minutes 20
    python -m benchmarks.train --config benchmarks/configs/train_all.yaml     # several, resumable

Objectives (weights as options; the loss is their weighted sum):
  cos          1 - cos(student, teacher) per text: embedding distillation
  kl           KL(teacher || student) between the in-batch similarity distributions (softmax over
               the other texts of the batch at --temperature): the teacher's similarity structure
  contrastive  InfoNCE of each train query against the batch's documents (its judged-relevant
               document the target, other relevant ones masked), optionally with hard negatives
               mined by the teacher from the corpus
Every step is one batch of train queries (each with one of its relevant documents) plus random
corpus documents. Texts: the corpus documents (whole, cut at --max-length) and the queries of the
TRAIN split of each dataset of --dataset (one, or a mix: scifact,nfcorpus); test queries and test
qrels are never read. Distilling on the corpus the model is then evaluated on is transductive, and
training.json says so.

Budgets: --steps N is the primary one: every student takes the same optimizer steps over the same
batches (--seed fixes the initialisation and the data order), and the schedule depends on the step
alone, so a resumed run ends with the weights of an uninterrupted one on any machine.
--budget-minutes M (wall-clock minutes of training steps) is the secondary one: the steps done and
the weights then depend on the machine and each architecture's kernels; training.json records which.
With the same tokenizer and, with --init-embeddings teacher, the teacher's token embeddings, the
students differ only in their architectures (the shared-* encoders: only in their sequence mixers).
Each encoder declares its optimizer groups (Encoder.optimizer_groups; e.g. Hyena's implicit filters
without weight decay). The checkpoint directory holds the model (loadable by encoders.load),
`trainer_state.pt` (optimizer, step, RNG, elapsed time: --resume continues a killed run to the same
budget) and `training.json` (recipe, data mix, budget and its mode, optimizer groups, steps done,
losses, versions). A YAML plan may list `seeds: [0, 1, 2]`: one checkpoint per seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from encoders import EncoderError

from .cli import run_command
from .pipeline.data import DataError
from .training import META_FILE, TrainConfig, TrainError, load_plan, run_plan, train

USER_ERRORS = (TrainError, DataError, EncoderError)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="a YAML plan of several students (the options below are then ignored)")
    p.add_argument("--only", help="with --config: train only these encoders of the plan (comma-separated), "
                                  "e.g. to split a plan across processes")
    p.add_argument("--resume", action="store_true", help="continue the run in the checkpoint directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    defaults = TrainConfig()
    helps = dict(
        preset="a randomly initialised student: tiny, small, base", checkpoint="start from this checkpoint instead",
        out="checkpoint directory (default: <output-dir>/<encoder>-<preset>-<dataset>-<name>)",
        budget_minutes="secondary budget: wall-clock minutes of training steps (machine-dependent)",
        steps="primary budget: optimizer steps (the schedule depends on the step alone)",
        dataset="a dataset, or a training mix: comma-separated (scifact,nfcorpus)",
        device="auto: cuda when available, else cpu", dtype="auto: bfloat16 on a GPU that has it; on a CPU the faster of float32 and bfloat16 by the matmul probe",
        teacher="registered encoder of the teacher (bert: the packaged all-MiniLM-L6-v2)",
        init_embeddings="teacher: copy the teacher's token embeddings into the student", hard_negatives=
        "mine one negative per pair from the teacher's top-k non-relevant documents (0: off)",
        cache_dir="teacher embedding cache (default: results/.cache/embeddings)",
    )
    for f in dataclasses.fields(TrainConfig):
        if f.name == "show_progress":
            continue
        kind = {int: int, float: float}.get(type(getattr(defaults, f.name)), None)
        kind = kind or {"budget_minutes": float, "steps": int, "limit_docs": int}.get(f.name, str)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=getattr(defaults, f.name),
                       help=helps.get(f.name, " "))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.config:
            plan = load_plan(args.config)
            if args.only:
                wanted = args.only.split(",")
                unknown = sorted(set(wanted) - {cfg.encoder for cfg in plan})
                if unknown:
                    raise TrainError(f"{args.config}: --only names encoders not in the plan: {', '.join(unknown)}")
                plan = [cfg for cfg in plan if cfg.encoder in wanted]
            if args.quiet:
                for cfg in plan:
                    cfg.show_progress = False
            run_plan(plan)
            return 0
        cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                             if f.name != "show_progress"}, show_progress=not args.quiet)
        out = train(cfg, resume=args.resume)
        meta = json.loads((out / META_FILE).read_text())
        print(f"checkpoint {out}: {meta['steps_done']} steps in {meta['train_seconds'] / 60:.1f} min, "
              f"final loss {meta['final_loss']['loss']:.4f}\n"
              f"evaluate:  python -m benchmarks.run --encoder {cfg.encoder} --checkpoint {out} --max-length {cfg.max_length}")
        return 0

    return run_command(body, USER_ERRORS, "the last checkpoint stays; run the same command with --resume to continue")


if __name__ == "__main__":
    sys.exit(main())
