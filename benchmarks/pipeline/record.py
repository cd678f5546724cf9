"""The run record: what one run records, its identity, and how it is written, read back and flattened.

A run directory holds
    summary.json    configuration + identity, dataset description, retriever description, perturbation
                    steps, retrieval statistics, aggregate metrics, timings, environment (`SCHEMA`)
    per_query.csv   one row per judged query: lengths and every metric, at full precision
    run.trec        the ranking in TREC format, full-precision scores

Identity. `identity(config)` hashes every option that can change a result (`RunConfig` minus the
bookkeeping in `NOT_IDENTITY`), with the dataset reduced to its name and the perturbation to its
canonical spec. The runner hashes the *resolved* configuration (device and dtype as they ran), so two
runs that differ in any result-changing option never share an identity. An option added later goes into
`ADDED_LATER` with its default, and is left out of the hash at that default, so existing results keep
their identity. `group` is the identity without the repeat axes (the seed): runs sharing it are repeats
of one configuration, and the analysis pools them; `base` is the group of the unperturbed configuration;
`setup` is the group without the dataset (one model configuration across datasets).

The runner, the sweep, the runs table and the analysis all go through this module; `read` upgrades
records written before this schema, so old results keep loading and old sweeps keep resuming.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd
import pyarrow as pa

from .. import perturbations
from .metrics import METRICS
from .results import Staging, atomic_dir, locked, stage_run  # noqa: F401 (atomic_dir: the analysis writes reports with it)

SCHEMA = 2
# RunConfig fields that say where things are or how the run is shown, not what it computes.
NOT_IDENTITY = ("data_dir", "encoder_module", "output_dir", "run_id", "overwrite", "cache", "cache_dir",
                "show_progress", "workers", "ray_address")
REPEAT_AXES = ("seed",)  # runs differing only here are repeats of one configuration
# Options added after results existed -> their default then: left out of the identity at that value.
ADDED_LATER: dict[str, object] = {"index": "Flat", "index_params": {}, "long_doc": "first", "window": None,
                                  "stride": None}


@dataclass
class RunConfig:
    encoder: str = "bert"  # a registered encoder, or a registered retriever kind (bm25)
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
    index: str = "Flat"  # a FAISS index-factory string: Flat (exact), HNSW32, IVF1024,Flat, IVF1024,PQ48, ...
    index_params: dict = field(default_factory=dict)  # its search parameters, e.g. {"efSearch": 128, "nprobe": 16}
    drop_self_hits: str = "auto"  # auto | on | off
    long_doc: str = "first"  # first (truncate) | maxp | mean: documents longer than a window (pipeline/windows.py)
    window: int | None = None  # maxp/mean: tokens per window (None: the encoder's max length)
    stride: int | None = None  # maxp/mean: body tokens between window starts (None: no overlap)
    output_dir: str = "results"
    run_id: str | None = None
    overwrite: bool = False
    seed: int = 0
    cache: bool = True
    cache_dir: str | None = None
    latency_queries: int = 100
    show_progress: bool = True
    encoder_options: dict = field(default_factory=dict)  # further keyword arguments for the encoder
    workers: int = 1  # >1: the corpus encoded by that many Ray actors (pipeline/workers.py); same results
    ray_address: str | None = None  # the Ray cluster of --workers (None: start a local one)

    def checkpoint_path(self) -> str | None:
        """The checkpoint this run loads. `{seed}` in `checkpoint` stands for the run's seed: trained
        students have one checkpoint per training seed, and with the placeholder kept in the record,
        their runs differ only in the seed, so they stay repeats of one configuration (`group`)."""
        return self.checkpoint.replace("{seed}", str(self.seed)) if self.checkpoint else None


CONFIG_FIELDS = tuple(f.name for f in fields(RunConfig))


TRAINING_META = "training.json"  # benchmarks.train writes it into every checkpoint, `complete` false until done


def unfinished(path: str | Path) -> str | None:
    """Why the checkpoint at `path` is unfinished training (being written, or stopped before its
    budget), or None (finished, or not written by benchmarks.train)."""
    try:
        meta = json.loads((Path(path) / TRAINING_META).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("complete", True):
        return None
    budget = meta.get("budget") or {}
    return (f"{meta.get('steps_done')} of {budget.get('steps') or budget.get('minutes', '?')} "
            f"{'steps' if budget.get('steps') else 'minutes'} done")


def checkpoint_digest(path: str | None) -> str | None:
    """sha256 over a local checkpoint directory's weight files (names and bytes); None without a
    checkpoint or for a hub id. A run records it, so that a sweep can tell a run whose checkpoint was
    retrained since (same path and configuration, so the same identity, but other weights)."""
    if not path or not Path(path).is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(Path(path).glob("*.safetensors")) + sorted(Path(path).glob("*.bin")):
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


# -- identity -------------------------------------------------------------------------------------
def identity_fields(config: RunConfig | dict, drop: tuple[str, ...] = ()) -> dict:
    """The result-changing part of a configuration, canonicalised."""
    d = asdict(config) if isinstance(config, RunConfig) else dict(config)
    out = {k: v for k, v in d.items() if k not in NOT_IDENTITY and k not in drop
           and not (k in ADDED_LATER and v == ADDED_LATER[k])}
    out["dataset"] = Path(str(out.get("dataset", ""))).name  # a name, wherever the folder lives
    if "perturbation" in out:
        out["perturbation"] = perturbations.parse(out["perturbation"]).name
    return out


def _hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def identity(config: RunConfig | dict) -> str:
    return _hash(identity_fields(config))


def group(config: RunConfig | dict) -> str:
    return _hash(identity_fields(config, drop=REPEAT_AXES))


def base(config: RunConfig | dict) -> str:
    return _hash(dict(identity_fields(config, drop=REPEAT_AXES), perturbation="clean"))


def setup(config: RunConfig | dict) -> str:
    """The group without the dataset: one model configuration, to be compared across datasets."""
    return _hash(identity_fields(config, drop=REPEAT_AXES + ("dataset",)))


def run_dir_name(run_id: str, config: RunConfig | dict) -> str:
    """`<run-id>-<identity[:8]>`: one run id (a sweep's name) holds many configurations side by side."""
    return f"{run_id}-{identity(config)[:8]}"


# -- the record -----------------------------------------------------------------------------------
@dataclass
class RunRecord:
    summary: dict  # summary.json (see `new_record` for its keys)
    per_query: pd.DataFrame  # index qid
    run: dict | None = None  # {qid: {doc id: score}} in rank order; None when read without it


def new_record(*, run_id: str, config: RunConfig, dataset: dict, retriever: dict, perturbation: dict,
               retrieval: dict, metrics: dict, timings: dict, environment: dict, per_query: pd.DataFrame,
               run: dict) -> RunRecord:
    """The one place the fields of a run record are listed."""
    summary = dict(
        schema=SCHEMA, run_id=run_id, identity=identity(config), group=group(config), base=base(config),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), config=asdict(config),
        checkpoint_digest=checkpoint_digest(config.checkpoint_path()), dataset=dataset,
        encoder=retriever, perturbation=perturbation, retrieval=retrieval, metrics=metrics, timings=timings,
        environment=environment,
    )
    return RunRecord(summary, per_query, run)


def write(record: RunRecord, target: Path | Staging, overwrite: bool = False) -> Path:
    """Write the run directory: into `target`'s staging directory (one the runner opened when the run
    began, or a new one), then put in place whole. Scores and metrics at full precision (shortest
    round-trip repr): 6 decimals would print distinct scores as ties."""
    stage = target if isinstance(target, Staging) else stage_run(target, overwrite)
    tag = record.summary["encoder"]["tag"]
    try:
        (stage.path / "summary.json").write_text(json.dumps(record.summary, indent=2, default=str) + "\n")
        record.per_query.to_csv(stage.path / "per_query.csv")  # pandas writes floats as repr: round-trips
        with open(stage.path / "run.trec", "w") as f:
            for qid, docs in record.run.items():
                for rank, (did, score) in enumerate(docs.items(), 1):
                    f.write(f"{qid} Q0 {did} {rank} {float(score)!r} {tag}\n")
    except BaseException:
        stage.discard()
        raise
    return stage.commit()


def read(d: str | Path, with_run: bool = False) -> RunRecord:
    """A run directory -> RunRecord (records of older schemas upgraded); ValueError says what is wrong."""
    d = Path(d)
    try:
        summary = upgrade(json.loads((d / "summary.json").read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"summary.json is not valid JSON ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"summary.json cannot be read ({e})") from None
    except (KeyError, TypeError, AttributeError, perturbations.PerturbationError) as e:
        raise ValueError(f"summary.json lacks a field a run record has ({type(e).__name__}: {e})") from None
    if not (d / "per_query.csv").is_file():
        raise ValueError("per_query.csv is missing")
    try:
        pq = pd.read_csv(d / "per_query.csv", dtype={"qid": str}).set_index("qid")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, KeyError) as e:
        raise ValueError(f"per_query.csv cannot be parsed ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return RunRecord(summary, pq, read_trec(d / "run.trec") if with_run else None)


def read_trec(path: Path) -> dict:
    run: dict[str, dict[str, float]] = {}
    with open(path) as f:
        for line in f:
            qid, _, did, _, score, _ = line.split()
            run.setdefault(qid, {})[did] = float(score)
    return run


def upgrade(summary: dict) -> dict:
    """A summary of an older schema in today's form (schema 1: no identity, steps without columns,
    the device as asked rather than as run)."""
    if summary.get("schema") == SCHEMA:
        return summary
    summary = dict(summary)
    config = {k: v for k, v in summary["config"].items() if k in CONFIG_FIELDS}
    # Resolved as the runner now does: the device it ran on, the dtype the retriever used (none for BM25).
    if config.get("device") == "auto":
        config["device"] = str(summary.get("environment", {}).get("device", "cpu"))
    config["dtype"] = (summary["encoder"].get("config") or {}).get("dtype")
    steps = [dict(s, target=perturbations.step_target(s), columns=perturbations.step_columns(s))
             for s in (summary.get("perturbation") or {}).get("steps", [])]
    summary["perturbation"] = dict(summary.get("perturbation") or {"name": "clean", "slug": "clean"}, steps=steps)
    summary.update(schema=SCHEMA, config=config, identity=identity(config), group=group(config), base=base(config))
    return summary


# -- flattening: the runs table -------------------------------------------------------------------
PERTURBATION_COLUMNS = ("prune_sparsity", "prune_realised", "prune_criterion", "shuffle", "truncate_side",
                        "truncate_tokens", "pad_side", "pad_factor", "needle_position", "needle_tokens")


def perturbation_kind(steps: list[dict]) -> str:
    """clean | model (only model steps) | input (only corpus steps) | mixed."""
    targets = {s["target"] for s in steps}
    return {frozenset(): "clean", frozenset({"model"}): "model", frozenset({"corpus"}): "input"}.get(
        frozenset(targets), "mixed")


def flatten(summary: dict, path: str | Path) -> dict:
    """One row of the runs table: identity, configuration, perturbation columns, metrics, costs."""
    enc, cfg, t = summary["encoder"], summary["config"], summary.get("timings", {})
    corpus, lat, env = t.get("corpus_encode", {}), t.get("query_latency", {}), summary.get("environment", {})
    steps = summary["perturbation"]["steps"]
    row = dict(path=str(path), run_id=summary.get("run_id"), identity=summary["identity"], group=summary["group"],
               base=summary["base"], created=summary.get("created"), dataset=summary["dataset"]["name"],
               split=summary["dataset"].get("split"), encoder=enc["name"], label=enc.get("config", {}).get("label"),
               tag=enc.get("tag"), preset=cfg.get("preset"), checkpoint=cfg.get("checkpoint"),
               dtype=enc.get("config", {}).get("dtype", cfg.get("dtype")),
               max_length=enc.get("config", {}).get("max_length"), seed=cfg.get("seed"),
               index=cfg.get("index", ADDED_LATER["index"]), long_doc=cfg.get("long_doc", ADDED_LATER["long_doc"]),
               perturbation=summary["perturbation"].get("name", "clean"), kind=perturbation_kind(steps))
    row.update(dict.fromkeys(PERTURBATION_COLUMNS))
    for step in steps:
        row.update(step["columns"])
    prune = next((s.get("stats") or s.get("report") or {} for s in steps if s["kind"] == "prune"), {})
    row.update(num_parameters=enc.get("num_parameters"), params_before=prune.get("params_before", enc.get("num_parameters")),
               params_after=prune.get("params_after", enc.get("num_parameters")),
               flops_per_token=enc.get("flops_per_token"), embedding_dim=enc.get("embedding_dim"),
               kernel_path=enc.get("kernel_path"))
    row.update({m: summary["metrics"].get(m) for m in METRICS})
    approx = summary.get("retrieval", {}).get("approximate", {})  # an approximate index against exact search
    row.update(overlap_with_exact=approx.get("overlap@k"), ndcg10_delta_vs_exact=approx.get("ndcg@10_delta"))
    repeats = lat.get("p50_ms_repeats") or []
    row.update(query_p50_ms=lat.get("p50_ms"), query_p95_ms=lat.get("p95_ms"),
               query_p50_ms_spread=statistics.stdev(repeats) if len(repeats) > 1 else None,  # across the run's repeats
               corpus_docs_per_s=corpus.get("texts_per_s"), corpus_tokens_per_s=corpus.get("tokens_per_s"),
               corpus_cached=corpus.get("cached"), corpus_documents=corpus.get("documents"),
               corpus_texts=corpus.get("texts"), total_s=t.get("total_s"), peak_rss_mb=t.get("peak_rss_mb"),
               cuda_peak_mb=t.get("cuda_peak_mb"), device=env.get("device"),
               cpu=env.get("cpu"), git_commit=env.get("git", {}).get("commit"))
    return row


def run_dirs(results_dir: str | Path) -> list[Path]:
    """Every run directory under `results_dir` (hidden temporary dirs and the cache excluded)."""
    root = Path(results_dir)
    found = []
    for p in sorted(root.rglob("summary.json")):
        rel = p.parent.relative_to(root)
        if not any(part.startswith(".") for part in rel.parts):
            found.append(p.parent)
    return found


def summaries(results_dir: str | Path, pattern: str = "**") -> dict[Path, dict]:
    """run dir -> upgraded summary, for every readable run under results_dir matching `pattern`."""
    out = {}
    for p in sorted(Path(results_dir).glob(f"{pattern}/summary.json")):
        if any(part.startswith(".") for part in p.parent.relative_to(results_dir).parts):
            continue
        try:
            out[p.parent] = upgrade(json.loads(p.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, perturbations.PerturbationError):
            pass  # unreadable: not a complete run
    return out


def collect(results_dir: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """(one row per readable run, one line per run that could not be read)."""
    rows, problems = [], []
    for d in run_dirs(results_dir):
        try:
            rows.append(flatten(upgrade(json.loads((d / "summary.json").read_text())), d))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, perturbations.PerturbationError) as e:
            problems.append(f"{d / 'summary.json'}: {type(e).__name__}: {e}")
    return table_frame(rows), problems


def table_frame(rows: list[dict]) -> pd.DataFrame:
    """The runs table from its rows, in `run_dirs` order, column types inferred from the values: the
    same frame whether the rows came from the summaries or back from the table file."""
    return pd.DataFrame(sorted(rows, key=lambda r: Path(r["path"]).parts))


# -- the runs table: <results>/runs.parquet + runs.csv, one row per run ----------------------------
TABLE, TABLE_CSV, TABLE_LOCK = "runs.parquet", "runs.csv", ".runs.lock"


def _replace(path: Path, write_fn) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_frame(root: Path, frame: pd.DataFrame) -> Path:
    _replace(root / TABLE, lambda p: frame.to_parquet(p, index=False))
    _replace(root / TABLE_CSV, lambda p: frame.to_csv(p, index=False))
    return root / TABLE


def write_table(results_dir: str | Path) -> Path:
    """Rebuild the runs table from every run under `results_dir` (each file replaced atomically);
    returns the parquet path."""
    root = Path(results_dir)
    root.mkdir(parents=True, exist_ok=True)
    with locked(root / TABLE_LOCK):  # one writer of the table at a time, whatever process
        return _write_frame(root, collect(root)[0])


def add_to_table(results_dir: str | Path, dirs) -> Path:
    """Put these runs' rows into the runs table (replacing rows of the same run directory), reading
    the table and their summaries only, not every run's: a sweep adds each run as it finishes. The
    table is rebuilt from every run when it is missing, cannot be read, or its columns are not the
    ones `flatten` gives today."""
    root = Path(results_dir)
    rows = {}
    for d in dirs:
        d = root / Path(d).resolve().relative_to(root.resolve())  # the path as a rebuild would write it
        try:
            rows[str(d)] = flatten(upgrade(json.loads((d / "summary.json").read_text())), d)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, perturbations.PerturbationError):
            pass  # unreadable: not a complete run (collect skips it too)
    root.mkdir(parents=True, exist_ok=True)
    with locked(root / TABLE_LOCK):
        try:
            table = pd.read_parquet(root / TABLE)
        except (OSError, ValueError, pa.ArrowException):  # missing or damaged
            return _write_frame(root, collect(root)[0])
        if not rows:
            return root / TABLE
        if list(table.columns) != list(next(iter(rows.values()))):  # written by a version with other columns
            return _write_frame(root, collect(root)[0])
        kept = [r for r in table.to_dict("records") if r["path"] not in rows]
        return _write_frame(root, table_frame(kept + list(rows.values())))


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
