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
    dataset: str | list[str] = "scifact"  # one dataset, or a training mix: a list (CLI: comma-separated)
    data_dir: str | None = None
    name: str = "distill"  # recipe name: part of the default checkpoint path
    output_dir: str = "results/checkpoints"
    out: str | None = None  # default: <output_dir>/<encoder>-<preset>-<dataset>-<name>
    steps: int | None = None  # the primary budget: optimizer steps; the schedule depends on the step alone
    budget_minutes: float | None = None  # the secondary one: wall-clock minutes of training steps (teacher
    #   encoding excluded); steps done and final weights then depend on the machine and its load
    seed: int = 0  # the student's initialisation and the data order
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
    device: str = "auto"  # auto: cuda when torch sees one, else cpu
    dtype: str = "auto"  # autocast dtype; auto: bfloat16 on a GPU that has it, else float32; on the CPU the faster by the probe
    show_progress: bool = True

    @property
    def datasets(self) -> list[str]:
        """The training mix: dataset names (or folders), in order."""
        names = self.dataset.split(",") if isinstance(self.dataset, str) else list(self.dataset)
        return [n.strip() for n in names if str(n).strip()]

    @property
    def budget_mode(self) -> str:
        return "steps" if self.steps is not None else "wall-clock"

    def resolved_device(self) -> str:
        import torch

        return ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device

    def resolved_dtype(self) -> str:
        """bf16 autocast on a GPU that has it (no loss scaling needed; weights and optimizer stay
        float32); on the CPU the faster of fp32 and bf16 by the runner's matmul probe
        (encoders/dtype.py): bf16 autocast steps were 1.6-1.8x faster than fp32 on an AMD EPYC with
        native bf16, and bf16 matmuls are 2x slower than fp32 on a Xeon without (issue 15)."""
        import torch

        if self.dtype != "auto":
            return self.dtype
        if not self.resolved_device().startswith("cuda"):
            from encoders.dtype import resolve_dtype

            return resolve_dtype("auto", "cpu")[0]
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"

    @property
    def uses_teacher(self) -> bool:
        return bool(self.cos_weight or self.kl_weight or self.hard_negatives or self.init_embeddings == "teacher")

    def recipe(self) -> dict:
        """What determines the trained model (a resumed run must match it)."""
        skip = ("out", "output_dir", "save_every_minutes", "cache_dir", "show_progress", "data_dir", "device")
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        start = self.preset or (Path(self.checkpoint).name if self.checkpoint else "default")
        mix = "+".join(Path(d).name for d in self.datasets)
        return Path(self.output_dir) / slug(f"{self.encoder}-{start}-{mix}-{self.name}")


def check_config(cfg: TrainConfig) -> None:
    if not hasattr(encoders.get(cfg.encoder), "save_pretrained"):  # (an unknown encoder: one line, before loading)
        raise TrainError(f"encoder {cfg.encoder!r} has no save_pretrained(directory) to write its checkpoints")
    if (cfg.budget_minutes is None) == (cfg.steps is None):
        raise TrainError("give one budget: --steps N (the primary, reproducible one) or --budget-minutes M "
                         "(wall-clock: its steps depend on the machine)")
    if not cfg.datasets:
        raise TrainError("--dataset names no dataset")
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
    if cfg.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise TrainError(f"--dtype must be auto, float32, bfloat16 or float16, got {cfg.dtype!r}")
    if cfg.resolved_dtype() == "float16":
        raise TrainError("--dtype float16 would need loss scaling, which this trainer does not do; use bfloat16")


def load_plan(path: str | Path) -> list[TrainConfig]:
    """A YAML file: `defaults` (any TrainConfig field) and `runs` (a list of mappings, each at least
    {encoder: ...}); see benchmarks/configs/train_all.yaml. `seeds: [0, 1, 2]` (in defaults or a run)
    expands a run into one student per seed, each in its own checkpoint (`<name>-seed<N>`). The plan is
    seed-major (every run's first seed, then every run's second, ...), so a plan cut short has every
    architecture at its first seeds rather than one architecture at all of them."""
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
        seeds = merged.pop("seeds", None)
        if set(merged) - known:
            raise TrainError(f"{path}: runs entry {i}: unknown field(s) {', '.join(sorted(set(merged) - known))}")
        if seeds is not None:
            if "seed" in merged:
                raise TrainError(f"{path}: runs entry {i}: give seed or seeds, not both")
            if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)
                    and len(set(seeds)) == len(seeds)):
                raise TrainError(f"{path}: runs entry {i}: seeds must be a non-empty list of distinct integers")
        for rank, seed in enumerate(seeds if seeds is not None else [None]):
            one = merged if seed is None else {**merged, "seed": seed,
                                               "name": f"{merged.get('name', TrainConfig.name)}-seed{seed}"}
            cfg = TrainConfig(**one)
            try:
                check_config(cfg)
            except TrainError as e:
                raise TrainError(f"{path}: runs entry {i}: {e}") from None
            plan.append((rank, cfg))
    plan = [cfg for _, cfg in sorted(plan, key=lambda rc: rc[0])]  # stable: runs keep their order per rank
    if len({c.out_dir() for c in plan}) != len(plan):
        raise TrainError(f"{path}: two runs would write the same checkpoint directory")
    return plan
