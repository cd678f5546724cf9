"""The training loop: optimizer, schedule, steps, periodic checkpoints, resume; and plans of several students."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import encoders
from encoders.dtype import resolve_dtype

from ..pipeline.cache import EmbeddingCache
from ..pipeline.results import environment
from .checkpoints import STATE_FILE, read_meta, token_embeddings, write_checkpoint
from .config import TrainConfig, TrainError, check_config
from .data import load_train_data, make_batch, mine_hard_negatives, teacher_embeddings
from .losses import losses


def lr_factor(step: int, progress: float, warmup_steps: int) -> float:
    """Linear warmup over the first steps, then cosine decay to 0 over the budget (progress 0..1)."""
    return min(1.0, (step + 1) / max(1, warmup_steps)) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def progress_of(cfg: TrainConfig, step: int, seconds: float) -> float:
    """How much of the budget is spent. Under a step budget the step alone: the schedule, and so the
    weights, are the same on any machine and after any resume. Under a wall-clock budget the seconds."""
    return step / cfg.steps if cfg.budget_mode == "steps" else seconds / (60 * cfg.budget_minutes)


def train_step(cfg, student, optimizer, data, ids, batch, tq, td, factor: float) -> dict:
    """One optimizer step at `factor` x each group's own learning rate (see make_optimizer)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    out = losses(cfg, student, data, ids, batch, tq, td)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    out["grad_norm"] = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
    optimizer.step()
    return {k: float(v.detach()) for k, v in out.items()}


def make_optimizer(cfg: TrainConfig, student) -> torch.optim.Optimizer:
    """AdamW over the parameter groups the encoder declares (Encoder.optimizer_groups: matrices decay,
    vectors do not, and an architecture's own hints, e.g. Hyena's filters), each group's base
    learning rate kept as `base_lr` for the schedule to scale."""
    groups = student.optimizer_groups(cfg.lr, cfg.weight_decay)
    for group in groups:
        group["base_lr"] = group["lr"]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))


def describe_groups(student, optimizer) -> list[dict]:
    """Each optimizer group's hyperparameters and the parameters in it, for training.json."""
    names = {id(p): n for n, p in student.named_parameters()}
    return [dict(lr=g["base_lr"], weight_decay=g["weight_decay"], parameters=sum(p.numel() for p in g["params"]),
                 tensors=len(g["params"]), example=names.get(id(g["params"][0])) if g["params"] else None)
            for g in optimizer.param_groups]


BUDGET_NOTES = {
    "steps": "primary: every student takes the same optimizer steps over the same batches; the schedule "
             "depends on the step alone, so the result does not depend on the machine",
    "wall-clock": "secondary: the same minutes of training steps; the steps done, the schedule and the final "
                  "weights depend on the machine, its load and each architecture's kernels",
}


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
        if meta.get("dtype", cfg.resolved_dtype()) != cfg.resolved_dtype():  # `auto` differs between machines
            raise TrainError(f"--resume: {out} was trained in {meta['dtype']} so far, and --dtype {cfg.dtype} gives "
                             f"{cfg.resolved_dtype()} here; pass --dtype {meta['dtype']}")

    torch.manual_seed(cfg.seed)  # the student's random init
    opts = dict(max_length=cfg.max_length, show_progress=False, device=cfg.resolved_device(),
                dtype=cfg.resolved_dtype())
    if resume:
        student = encoders.load(cfg.encoder, checkpoint=str(out), **opts)
    else:
        student = encoders.load(cfg.encoder, checkpoint=cfg.checkpoint, preset=cfg.preset, **opts)
    data = load_train_data(cfg, student)

    tq = td = negatives = None
    teacher_info = None
    if cfg.uses_teacher:
        if teacher is None:
            teacher = encoders.load(cfg.teacher, checkpoint=cfg.teacher_checkpoint, max_length=cfg.max_length,
                                    show_progress=cfg.show_progress, device=cfg.resolved_device(),
                                    dtype=cfg.resolved_dtype())
        cache = EmbeddingCache(Path(cfg.cache_dir or "results/.cache/embeddings"))
        tq, td = teacher_embeddings(teacher, data.sources, cache)
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
    # what `auto` measured on the CPU (encoders/dtype.py), as every run's summary records it
    dtype_probe = resolve_dtype("auto", student.device)[1] if cfg.dtype == "auto" and student.device.type == "cpu" else None

    def checkpoint(complete: bool, last: dict) -> None:
        recent = [h[1] for h in state["history"][-20:]]
        info = dict(
            complete=complete, encoder=cfg.encoder, start=f"preset:{cfg.preset}" if cfg.preset else cfg.checkpoint,
            created=created, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), recipe=cfg.recipe(), seed=cfg.seed,
            budget=dict(mode=cfg.budget_mode, steps=cfg.steps, minutes=cfg.budget_minutes,
                        note=BUDGET_NOTES[cfg.budget_mode]), steps_done=state["step"],
            train_seconds=state["train_seconds"], wall_seconds=state["wall_seconds"] + time.perf_counter() - wall_start,
            sessions=state["sessions"], final_loss=dict(last, mean_last_20=float(np.mean(recent)) if recent else None),
            loss_curve=state["history"][::max(1, len(state["history"]) // 50)],  # [step, loss, seconds]
            data=data.describe, teacher=teacher_info, kernel_path=student.kernel_path,
            device=str(student.device), dtype=student.dtype_name, dtype_probe=dtype_probe,
            optimizer_groups=describe_groups(student, optimizer),
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
            factor = lr_factor(step, progress_of(cfg, step, state["train_seconds"]), cfg.warmup_steps)
            lr = cfg.lr * factor
            t = time.perf_counter()
            last = train_step(cfg, student, optimizer, data, ids, make_batch(data, cfg, step, negatives), tq, td, factor)
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
