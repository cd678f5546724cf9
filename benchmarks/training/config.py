"""Training configuration: one student's recipe (`TrainConfig`), its checks, and YAML plans of several."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import encoders

from ..pipeline.results import slug


class TrainError(Exception):
    """A bad training option or checkpoint directory; the CLI prints it as one line."""


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
