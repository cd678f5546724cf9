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
Every step is one batch of train (query, relevant document) pairs plus random corpus documents.
Texts: the corpus documents (whole, cut at --max-length) and the queries of the TRAIN split; test
queries and test qrels are never read. Distilling on the corpus the model is then evaluated on is
transductive, and training.json says so.

Every architecture gets the same budget (wall-clock --budget-minutes of training steps, and/or
--steps), the same data order (--seed), the same tokenizer and, with --init-embeddings teacher, the
teacher's token embeddings, so that they differ only in their sequence mixers. The checkpoint
directory holds the model (loadable by encoders.load), `trainer_state.pt` (optimizer, step, RNG,
elapsed time: --resume continues a killed run to the same budget) and `training.json` (recipe, data,
budget, steps done, losses, versions).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import encoders
from encoders import EncoderError

from .cache import EmbeddingCache
from .data import DataError, load_dataset
from .results import atomic_dir, environment, slug


class TrainError(Exception):
    """A bad training option or checkpoint directory; the CLI prints it as one line."""


USER_ERRORS = (TrainError, DataError, EncoderError)
STATE_FILE, META_FILE = "trainer_state.pt", "training.json"


@dataclass
class TrainConfig:
    encoder: str = "bert"
    preset: str | None = None  # a randomly initialised student at a shared size ...
    checkpoint: str | None = None  # ... or one to start from
    dataset: str = "scifact"
    data_dir: str | None = None
    name: str = "distill"  # recipe name: part of the default checkpoint path
    output_dir: str = "results/checkpoints"
    out: str | None = None  # default: <output_dir>/<encoder>-<preset>-<dataset>-<name>
    budget_minutes: float | None = None  # wall-clock seconds of training steps (teacher encoding excluded)
    steps: int | None = None  # optimizer steps; with both, whichever ends first
    seed: int = 0
    max_length: int = 256  # tokens per training text (teacher and student alike)
    batch_pairs: int = 8  # train (query, relevant document) pairs per step
    batch_docs: int = 8  # further random corpus documents per step
    hard_negatives: int = 0  # > 0: one negative per pair from the teacher's top-k non-relevant documents
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    cos_weight: float = 1.0
    kl_weight: float = 1.0
    contrastive_weight: float = 0.2
    temperature: float = 0.05
    teacher: str = "bert"  # a registered encoder; with no teacher_checkpoint, its default (bert: MiniLM)
    teacher_checkpoint: str | None = None
    init_embeddings: str = "teacher"  # teacher: copy the teacher's token embeddings; none: keep the random init
    limit_docs: int | None = None  # the first N corpus documents only (quick runs)
    save_every_minutes: float = 5.0
    cache_dir: str | None = None  # teacher embeddings; default: results/.cache/embeddings
    show_progress: bool = True

    @property
    def uses_teacher(self) -> bool:
        return bool(self.cos_weight or self.kl_weight or self.hard_negatives or self.init_embeddings == "teacher")

    def recipe(self) -> dict:
        """What determines the trained model (a resumed run must match it)."""
        skip = ("out", "output_dir", "save_every_minutes", "cache_dir", "show_progress", "data_dir")
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        start = self.preset or (Path(self.checkpoint).name if self.checkpoint else "default")
        return Path(self.output_dir) / slug(f"{self.encoder}-{start}-{Path(self.dataset).name}-{self.name}")


def check_config(cfg: TrainConfig) -> None:
    if not hasattr(encoders.get(cfg.encoder), "save_pretrained"):  # (an unknown encoder: one line, before loading)
        raise TrainError(f"encoder {cfg.encoder!r} has no save_pretrained(directory) to write its checkpoints")
    if cfg.budget_minutes is None and cfg.steps is None:
        raise TrainError("give a budget: --budget-minutes and/or --steps")
    if (cfg.budget_minutes is not None and not cfg.budget_minutes > 0) or (cfg.steps is not None and cfg.steps <= 0):
        raise TrainError(f"the budget must be positive, got --budget-minutes {cfg.budget_minutes} --steps {cfg.steps}")
    if cfg.batch_pairs < 1 or cfg.batch_docs < 0 or cfg.max_length < 8 or cfg.hard_negatives < 0:
        raise TrainError("--batch-pairs must be >= 1, --batch-docs and --hard-negatives >= 0, --max-length >= 8")
    if cfg.init_embeddings not in ("teacher", "none"):
        raise TrainError(f"--init-embeddings must be teacher or none, got {cfg.init_embeddings!r}")
    if min(cfg.cos_weight, cfg.kl_weight, cfg.contrastive_weight) < 0 or not (
            cfg.cos_weight or cfg.kl_weight or cfg.contrastive_weight):
        raise TrainError("loss weights must be >= 0 and not all 0")
    if not (cfg.lr > 0 and cfg.temperature > 0):
        raise TrainError("--lr and --temperature must be positive")


# -- data ---------------------------------------------------------------------------------------
@dataclass
class TrainData:
    """Training texts: TRAIN-split queries and corpus documents, as the student sees them."""
    query_ids: list[str]
    queries: list[str]
    doc_ids: list[str]
    docs: list[str]
    pairs: np.ndarray  # (n, 2): query index, relevant document index
    relevant: list[set[int]]  # per query: indices of its relevant documents
    describe: dict


def load_train_data(cfg: TrainConfig, student):
    """-> (TrainData, the train split's Dataset)."""
    ds = load_dataset(cfg.dataset, "train", cfg.data_dir)  # the train split only: no test query is read
    doc_ids = list(ds.corpus)[:cfg.limit_docs]
    position = {d: i for i, d in enumerate(doc_ids)}
    query_ids = list(ds.queries)
    relevant = [{position[d] for d, s in ds.qrels[q].items() if s > 0 and d in position} for q in query_ids]
    pairs = np.array([(qi, di) for qi, rel in enumerate(relevant) for di in sorted(rel)], dtype=np.int64)
    if len(pairs) == 0:
        raise TrainError(f"no train query of {ds.name!r} has a relevant document in the corpus used")
    queries = student.query_texts([ds.queries[q] for q in query_ids])
    docs = student.corpus_texts([ds.corpus[d] for d in doc_ids])
    digest = hashlib.sha256("\x1e".join(queries + docs).encode()).hexdigest()
    describe = dict(
        dataset=ds.name, path=str(ds.path), split="train", queries=len(queries), documents=len(docs),
        pairs=len(pairs), texts_digest=digest, query_ids_digest=hashlib.sha256("\x1e".join(query_ids).encode()).hexdigest(),
        test_queries_used=False,
        transductive=("the documents are the whole corpus, which the test queries are searched in: distilling "
                      "on them is transductive (the model has seen every document it will retrieve)"),
    )
    return TrainData(query_ids, queries, doc_ids, docs, pairs, relevant, describe), ds


def teacher_embeddings(teacher, queries: list[str], docs: list[dict], cache: EmbeddingCache):
    """The teacher's (normalised) embeddings of the train queries and the documents -> (tq, td), from
    the embedding cache when an entry exists (keyed by the teacher's fingerprint and the exact texts;
    the corpus entry is the one `benchmarks.run` writes for the same model and max length)."""
    fingerprint = teacher.fingerprint
    out = []
    for texts in (teacher.query_texts(queries), teacher.corpus_texts(docs)):
        hit = cache.load(fingerprint, texts)
        if hit is None:
            emb = teacher.encode(texts, desc="teacher")
            cache.save(fingerprint, texts, emb, dict(teacher.last_stats))
        else:
            emb = hit[0]
        out.append(emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12))
    return out[0], out[1]


def mine_hard_negatives(tq: np.ndarray, td: np.ndarray, relevant: list[set[int]], k: int) -> list[np.ndarray]:
    """Per train query: the teacher's top-k documents that are not judged relevant."""
    out = []
    for qi in range(len(tq)):
        top = np.argsort(-(td @ tq[qi]), kind="stable")[:k + len(relevant[qi])]
        out.append(np.array([d for d in top if d not in relevant[qi]][:k], dtype=np.int64))
    return out


@functools.lru_cache(maxsize=8)
def _permutation(n: int, seed: int, stream: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, stream, epoch]).permutation(n)


def sample(n: int, per_step: int, step: int, seed: int, stream: int) -> np.ndarray:
    """Items [step * per_step, (step + 1) * per_step) of an endless sequence of seeded epochs
    (permutations of range(n)): the batch of a step depends on (seed, step) only, so a resumed run
    sees exactly the data an uninterrupted one would."""
    i = np.arange(step * per_step, (step + 1) * per_step)
    return np.array([_permutation(n, seed, stream, int(e))[p] for e, p in zip(i // n, i % n)], dtype=np.int64)


def make_batch(data: TrainData, cfg: TrainConfig, step: int, negatives: list[np.ndarray] | None):
    """(query indices, document indices, target of each query in the document list)."""
    pairs = data.pairs[sample(len(data.pairs), cfg.batch_pairs, step, cfg.seed, 0)]
    docs = list(pairs[:, 1])
    if cfg.batch_docs:
        docs += list(sample(len(data.docs), cfg.batch_docs, step, cfg.seed, 1))
    if negatives is not None:
        rng = np.random.default_rng([cfg.seed, 2, step])
        docs += [int(rng.choice(negatives[q])) for q in pairs[:, 0] if len(negatives[q])]
    docs = list(dict.fromkeys(int(d) for d in docs))  # a document once, even if drawn twice
    where = {d: i for i, d in enumerate(docs)}
    return pairs[:, 0], np.array(docs, dtype=np.int64), np.array([where[int(d)] for d in pairs[:, 1]])


# -- model and checkpoint -----------------------------------------------------------------------
def token_embeddings(encoder) -> torch.nn.Embedding:
    model = encoder.model
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else getattr(model, "embeddings", None)
    if not isinstance(emb, torch.nn.Embedding):
        raise TrainError(f"cannot find the token embeddings of encoder {encoder.name!r}")
    return emb


def write_checkpoint(out: Path, student, state: dict, meta: dict) -> None:
    """Model + trainer state + training.json, replacing `out` as a whole: a kill mid-save leaves the
    previous checkpoint (as `out`, or as `.out.old` during the swap, which --resume picks up)."""
    with atomic_dir(out) as tmp:
        student.save_pretrained(tmp)  # loadable by encoders.load(name, checkpoint=out)
        torch.save(state, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")


def read_meta(out: Path) -> dict | None:
    old = out.with_name(f".{out.name}.old")
    if not out.exists() and old.exists():  # killed during the swap
        os.replace(old, out)
    try:
        return json.loads((out / META_FILE).read_text())
    except (OSError, ValueError):
        return None


def lr_factor(step: int, progress: float, warmup_steps: int) -> float:
    """Linear warmup over the first steps, then cosine decay to 0 over the budget (progress 0..1:
    the larger of steps done / --steps and seconds trained / budget)."""
    return min(1.0, (step + 1) / max(1, warmup_steps)) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def progress_of(cfg: TrainConfig, step: int, seconds: float) -> float:
    p = [step / cfg.steps] if cfg.steps else []
    p += [seconds / (60 * cfg.budget_minutes)] if cfg.budget_minutes else []
    return max(p)


# -- one step -----------------------------------------------------------------------------------
def losses(cfg: TrainConfig, student, data: TrainData, ids: list[list[int]], batch, tq, td) -> dict:
    q, d, target = batch
    nq = len(q)
    parts = []
    for rows in ([ids[i] for i in q], [ids[len(data.queries) + i] for i in d]):  # queries, then documents:
        input_ids, mask = student.pad(rows)  # padded separately (a query is ~10x shorter)
        parts.append(student.embed_batch(input_ids.to(student.device), mask.to(student.device)))
    emb = torch.cat(parts)  # normalised
    out = {}
    if tq is not None:
        teacher = torch.from_numpy(np.concatenate([tq[q], td[d]])).to(emb.device)
        if cfg.cos_weight:
            out["cos"] = (1 - (emb * teacher).sum(-1)).mean()
        if cfg.kl_weight:
            # Each text's similarity distribution over the other texts of the batch.
            diag = torch.eye(len(emb), dtype=torch.bool, device=emb.device)
            s = F.log_softmax((emb @ emb.t() / cfg.temperature).masked_fill(diag, -1e9), -1)
            t = F.log_softmax((teacher @ teacher.t() / cfg.temperature).masked_fill(diag, -1e9), -1)
            out["kl"] = F.kl_div(s, t, log_target=True, reduction="batchmean")
    if cfg.contrastive_weight:
        logits = emb[:nq] @ emb[nq:].t() / cfg.temperature
        # Another document judged relevant to the query is no negative.
        other = torch.tensor([[int(doc) in data.relevant[qi] for doc in d] for qi in q], device=emb.device)
        other[torch.arange(nq), torch.from_numpy(target)] = False
        out["contrastive"] = F.cross_entropy(logits.masked_fill(other, -1e9), torch.from_numpy(target).to(emb.device))
    weights = dict(cos=cfg.cos_weight, kl=cfg.kl_weight, contrastive=cfg.contrastive_weight)
    out["loss"] = sum(weights[k] * v for k, v in out.items())
    return out


def train_step(cfg, student, optimizer, data, ids, batch, tq, td, lr: float) -> dict:
    for group in optimizer.param_groups:
        group["lr"] = lr
    out = losses(cfg, student, data, ids, batch, tq, td)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    out["grad_norm"] = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
    optimizer.step()
    return {k: float(v.detach()) for k, v in out.items()}


def make_optimizer(cfg: TrainConfig, student) -> torch.optim.Optimizer:
    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]  # matrices and embeddings; not norms, biases, decays
    rest = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW([dict(params=decay, weight_decay=cfg.weight_decay), dict(params=rest, weight_decay=0.0)],
                             lr=cfg.lr, betas=(0.9, 0.98))


# -- the training run ---------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: bool = False, teacher=None) -> Path:
    """Train (or resume) one student; returns its checkpoint directory. `teacher`: an encoder to
    use instead of loading cfg.teacher (tests pass a tiny one)."""
    wall_start = time.perf_counter()
    check_config(cfg)
    out = cfg.out_dir()
    meta = read_meta(out)
    if meta is not None and not resume:
        state = "complete" if meta.get("complete") else "partial"
        raise TrainError(f"{out} already holds a {state} training run; pass --resume to continue it (or choose --out)")
    if resume:
        if meta is None or not (out / STATE_FILE).is_file():
            raise TrainError(f"--resume: {out} holds no training run to resume")
        if meta["recipe"] != json.loads(json.dumps(cfg.recipe())):
            diff = sorted(k for k in cfg.recipe() if meta["recipe"].get(k) != cfg.recipe()[k])
            raise TrainError(f"--resume: {out} was trained with other options ({', '.join(diff)})")

    torch.manual_seed(cfg.seed)  # the student's random init
    opts = dict(max_length=cfg.max_length, show_progress=False)
    if resume:
        student = encoders.load(cfg.encoder, checkpoint=str(out), **opts)
    else:
        student = encoders.load(cfg.encoder, checkpoint=cfg.checkpoint, preset=cfg.preset, **opts)
    data, ds = load_train_data(cfg, student)

    tq = td = negatives = None
    teacher_info = None
    if cfg.uses_teacher:
        if teacher is None:
            teacher = encoders.load(cfg.teacher, checkpoint=cfg.teacher_checkpoint, max_length=cfg.max_length,
                                    show_progress=cfg.show_progress)
        cache = EmbeddingCache(Path(cfg.cache_dir or "results/.cache/embeddings"))
        tq, td = teacher_embeddings(teacher, [ds.queries[q] for q in data.query_ids],
                                    [ds.corpus[d] for d in data.doc_ids], cache)
        teacher_info = dict(encoder=teacher.name, label=teacher.label, fingerprint=teacher.fingerprint,
                            max_length=teacher.max_length, embedding_dim=int(tq.shape[1]))
        width = student.embedding_dim
        if cfg.cos_weight and width != tq.shape[1]:
            raise TrainError(f"the cosine term needs the student's embedding width ({width}) to equal the "
                             f"teacher's ({tq.shape[1]}); use --cos-weight 0")
        if cfg.hard_negatives:
            negatives = mine_hard_negatives(tq, td, data.relevant, cfg.hard_negatives)
        if cfg.init_embeddings == "teacher" and not resume:
            src, dst = token_embeddings(teacher).weight, token_embeddings(student).weight
            if src.shape != dst.shape:
                raise TrainError(f"--init-embeddings teacher: the teacher's token embeddings are {tuple(src.shape)}, "
                                 f"the student's {tuple(dst.shape)}")
            with torch.no_grad():
                dst.copy_(src)

    ids = student.tokenize(data.queries + data.docs)
    student.to(student.device).train()
    optimizer = make_optimizer(cfg, student)
    state = dict(step=0, train_seconds=0.0, wall_seconds=0.0, sessions=0, history=[])
    if resume:
        saved = torch.load(out / STATE_FILE, map_location="cpu", weights_only=False)
        optimizer.load_state_dict(saved.pop("optimizer"))
        torch.set_rng_state(saved.pop("torch_rng"))
        state.update(saved)
    state["sessions"] += 1
    created = meta["created"] if meta else time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def checkpoint(complete: bool, last: dict) -> None:
        recent = [h[1] for h in state["history"][-20:]]
        info = dict(
            complete=complete, encoder=cfg.encoder, start=f"preset:{cfg.preset}" if cfg.preset else cfg.checkpoint,
            created=created, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), recipe=cfg.recipe(), seed=cfg.seed,
            budget=dict(minutes=cfg.budget_minutes, steps=cfg.steps), steps_done=state["step"],
            train_seconds=state["train_seconds"], wall_seconds=state["wall_seconds"] + time.perf_counter() - wall_start,
            sessions=state["sessions"], final_loss=dict(last, mean_last_20=float(np.mean(recent)) if recent else None),
            loss_curve=state["history"][::max(1, len(state["history"]) // 50)],  # [step, loss, seconds]
            data=data.describe, teacher=teacher_info, kernel_path=student.kernel_path,
            num_parameters=student.num_parameters, environment=environment(student.device),
        )
        saved = dict(state, optimizer=optimizer.state_dict(), torch_rng=torch.get_rng_state(),
                     wall_seconds=info["wall_seconds"])
        write_checkpoint(out, student, saved, info)

    from tqdm.auto import tqdm

    def done() -> bool:
        return progress_of(cfg, state["step"], state["train_seconds"]) >= 1.0

    last: dict = {}
    since_save = time.perf_counter()
    with tqdm(total=cfg.steps, initial=state["step"], desc=f"train {cfg.encoder}", unit="step",
              disable=not cfg.show_progress) as bar:
        while not done():
            step = state["step"]
            lr = cfg.lr * lr_factor(step, progress_of(cfg, step, state["train_seconds"]), cfg.warmup_steps)
            t = time.perf_counter()
            last = train_step(cfg, student, optimizer, data, ids, make_batch(data, cfg, step, negatives), tq, td, lr)
            state["train_seconds"] += time.perf_counter() - t
            state["step"] += 1
            state["history"].append([state["step"], last["loss"], round(state["train_seconds"], 3)])
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{lr:.2e}",
                            min=f"{state['train_seconds'] / 60:.1f}")
            if not done() and time.perf_counter() - since_save >= 60 * cfg.save_every_minutes:
                checkpoint(False, last)
                since_save = time.perf_counter()
    student.eval()
    checkpoint(True, last)
    return out


# -- several students from one file -------------------------------------------------------------
def load_plan(path: str | Path) -> list[TrainConfig]:
    """A YAML file: `defaults` (any TrainConfig field) and `runs` (a list of mappings, each at least
    {encoder: ...}); see benchmarks/configs/train_all.yaml."""
    import yaml

    try:
        spec = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise TrainError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise TrainError(f"{path}: malformed YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("runs"), list) or not spec["runs"]:
        raise TrainError(f"{path}: expected a mapping with a non-empty 'runs' list")
    if set(spec) - {"defaults", "runs"}:
        raise TrainError(f"{path}: unknown key(s) {', '.join(sorted(set(spec) - {'defaults', 'runs'}))}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    plan = []
    for i, entry in enumerate(spec["runs"], 1):
        merged = {**(spec.get("defaults") or {}), **(entry or {})}
        if set(merged) - known:
            raise TrainError(f"{path}: runs entry {i}: unknown field(s) {', '.join(sorted(set(merged) - known))}")
        cfg = TrainConfig(**merged)
        check_config(cfg)
        plan.append(cfg)
    if len({c.out_dir() for c in plan}) != len(plan):
        raise TrainError(f"{path}: two runs would write the same checkpoint directory")
    return plan


def run_plan(plan: list[TrainConfig], teacher=None) -> list[Path]:
    """Train each in turn: skip the complete ones, resume a partial one."""
    outs = []
    for cfg in plan:
        out = cfg.out_dir()
        meta = read_meta(out)
        if meta and meta.get("complete"):
            print(f"done      {out} ({meta['steps_done']} steps)")
        else:
            print(f"{'resume' if meta else 'train':9} {out}", flush=True)
            train(cfg, resume=meta is not None, teacher=teacher)
        outs.append(out)
    return outs


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
        budget_minutes="wall-clock minutes of training steps", steps="optimizer steps",
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
    try:
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
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint stays; run the same command with --resume to continue", file=sys.stderr)
        return 130
    meta = json.loads((out / META_FILE).read_text())
    print(f"checkpoint {out}: {meta['steps_done']} steps in {meta['train_seconds'] / 60:.1f} min, "
          f"final loss {meta['final_loss']['loss']:.4f}\n"
          f"evaluate:  python -m benchmarks.run --encoder {cfg.encoder} --checkpoint {out} --max-length {cfg.max_length}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
