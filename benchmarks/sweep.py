"""A resumable grid of runs: encoders x datasets x perturbations, from one YAML file.

    python -m benchmarks.sweep benchmarks/configs/archaeology.yaml [--dry-run] [--quiet] [--perturbations clean]
        [--ray [ADDRESS]] [--ray-cpus-per-point N] [--rebuild-table]

```yaml
name: archaeology                  # the run id of every run: results/<dataset>/<tag>/<perturbation>/<name>-<identity>
output_dir: results
datasets: [scifact]
defaults: {max_length: 256}        # any RunConfig field (benchmarks/pipeline/record.py)
seeds: [0, 1, 2]                   # optional repeat axis: each configuration once per seed
                                   # (a checkpoint may name its seed: `.../student-seed{seed}`)
perturbations: [clean, prune:0.5, sentence-shuffle]
encoders:
  - {encoder: bert}
  - {encoder: mamba, preset: small}
  - {encoder: bm25, perturbations: [clean], seeds: [0]}   # per-encoder lists
```

A run is complete when a run directory of this sweep (they appear atomically) records the same identity
(the hash of the resolved configuration: benchmarks/pipeline/record.py), so a killed sweep resumes where
it stopped and never redoes or half-writes a run. Each point runs in a fresh process (a crash fails
that point only) and records its own peak memory: one after another here, or all at once as Ray tasks
with `--ray` (benchmarks/sweep_ray.py). Each finished run is added to the table of all runs,
`<output_dir>/runs.parquet` (+ runs.csv); `--rebuild-table` rebuilds it from every run directory.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, fields, replace
from pathlib import Path

import yaml
from tqdm.auto import tqdm

import encoders

from . import perturbations, sweep_ray
from .cli import run_command
from .pipeline import record, retrievers
from .pipeline.data import find_dataset
from .pipeline.record import RunConfig
from .pipeline.results import remove_stale
from .pipeline.runner import USER_ERRORS, run_benchmark

SWEEP_SET = ("dataset", "perturbation", "run_id", "output_dir", "overwrite")  # set by the sweep, not by entries
ENTRY_FIELDS = {f.name for f in fields(RunConfig)} - set(SWEEP_SET)


class SweepError(Exception):
    """A malformed sweep file; printed as one line naming the file and the problem."""


@dataclass
class Sweep:
    name: str
    output_dir: Path
    points: list[RunConfig]


def identity(cfg: RunConfig) -> str:
    """The identity the run will record (benchmarks/pipeline/record.py), known before it runs."""
    return record.identity(retrievers.resolve(cfg))


def load_sweep(path: str | Path, output_dir: str | None = None) -> Sweep:
    """Parse and validate the whole grid before anything runs -> Sweep, or SweepError."""
    path = Path(path)
    spec = read_spec(path)

    def bad(msg: str):
        return SweepError(f"{path}: {msg}")

    name, out = spec["name"], str(output_dir or spec.get("output_dir", "results"))
    defaults, seeds = spec.get("defaults") or {}, spec.get("seeds", [(spec.get("defaults") or {}).get("seed", 0)])
    points = []
    for i, entry in enumerate(spec["encoders"], 1):
        entry = dict(entry)
        entry_seeds = check_seeds(entry.pop("seeds", seeds), lambda m: bad(f"encoders entry {i}: {m}"))
        for p in entry_perturbations(entry, spec.get("perturbations") or ["clean"], lambda m: bad(f"encoders entry {i}: {m}")):
            for ds in spec["datasets"]:
                for seed in entry_seeds:
                    try:
                        points.append(RunConfig(**{**defaults, **entry, "dataset": ds, "perturbation": p.name,
                                                   "seed": seed, "run_id": name, "output_dir": out}))
                    except TypeError as e:
                        raise bad(f"encoders entry {i}: {e}") from None
    for ds in spec["datasets"]:  # a missing dataset fails now, not an hour in
        find_dataset(ds, defaults.get("data_dir"), download=False)
    keys = [identity(c) for c in points]
    if len(set(keys)) != len(keys):
        raise bad("the grid lists the same run twice")
    return Sweep(name, Path(out), points)


def read_spec(path: Path) -> dict:
    """The sweep file, its top level checked (one line naming the file and the problem)."""
    try:
        spec = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SweepError(f"{path}: cannot read the sweep file ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: malformed YAML: {str(e).splitlines()[0]}") from None

    def bad(msg: str):
        return SweepError(f"{path}: {msg}")

    if not isinstance(spec, dict):
        raise bad("expected a mapping with name, datasets, encoders, perturbations")
    unknown = set(spec) - {"name", "output_dir", "datasets", "defaults", "perturbations", "encoders", "seeds"}
    if unknown:
        raise bad(f"unknown key(s) {', '.join(sorted(unknown))}")
    if not isinstance(spec.get("name"), str) or not spec["name"].strip():
        raise bad("'name' (the run id of every run of this sweep) is required")
    datasets, entries = spec.get("datasets"), spec.get("encoders")
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, str) for d in datasets):
        raise bad("'datasets' must be a non-empty list of dataset names")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise bad("'encoders' must be a non-empty list of mappings, e.g. {encoder: mamba, preset: small}")
    defaults = spec.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - ENTRY_FIELDS:
        raise bad(f"'defaults' may only set RunConfig fields; unknown: {', '.join(sorted(set(defaults) - ENTRY_FIELDS))}")
    check_seeds(spec.get("seeds", [0]), bad)  # the repeat axis: each configuration once per seed
    return spec


def check_seeds(seeds, bad) -> list[int]:
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise bad("'seeds' must be a non-empty list of integers (each configuration runs once per seed)")
    return seeds


def entry_perturbations(entry: dict, default: list, bad) -> list:
    """Check one `encoders` entry (popping its own perturbation list) -> its parsed perturbations."""
    perts = entry.pop("perturbations", default)
    if set(entry) - ENTRY_FIELDS:
        raise bad(f"unknown field(s) {', '.join(sorted(set(entry) - ENTRY_FIELDS))}")
    if "encoder" not in entry:
        raise bad("'encoder' is required")
    if entry.get("encoder_module"):
        encoders.import_encoder_module(entry["encoder_module"])
    if entry["encoder"] not in retrievers.names():
        raise bad(f"unknown encoder {entry['encoder']!r}; known: {', '.join(retrievers.names())}")
    if not isinstance(perts, list) or not perts:
        raise bad("'perturbations' must be a non-empty list")
    parsed = []
    for p in perts:
        try:
            parsed.append(perturbations.parse(str(p)))
        except perturbations.PerturbationError as e:
            raise bad(str(e)) from None
        if parsed[-1].needs_model and not retrievers.has_model(entry["encoder"]):
            raise bad(f"{p!r} changes a model; {entry['encoder']} has none")
    return parsed


def completed(sweep: Sweep) -> dict[str, Path]:
    """identity -> run dir, for every run of this sweep already on disk (unreadable ones are not complete)."""
    found = record.summaries(sweep.output_dir, pattern=f"*/*/*/{sweep.name}*")
    return {s["identity"]: d for d, s in found.items() if s.get("run_id") == sweep.name}


def refuse_stale(sweep: Sweep, done: dict[str, Path]) -> None:
    """A completed run whose checkpoint has been retrained since would be skipped and its old result
    reported as the new student's: refuse the sweep instead, naming the runs to move away."""
    digests, stale = {}, []
    for cfg in sweep.points:
        path = cfg.checkpoint_path()
        if path is None or identity(cfg) not in done:
            continue
        recorded = json.loads((done[identity(cfg)] / "summary.json").read_text()).get("checkpoint_digest")
        if path not in digests:
            digests[path] = record.checkpoint_digest(path)
        if recorded is not None and recorded != digests[path]:
            stale.append(done[identity(cfg)])
    if stale:
        raise SweepError(f"{len(stale)} completed run(s) were made from a checkpoint that has changed since "
                         f"(e.g. {stale[0]}); move them out of {sweep.output_dir} to run them again")


def remove_partial(sweep: Sweep) -> int:
    """Temporary run directories a killed run left behind (`.<name>.*` beside the run dirs); those of a
    run still being written by another process are kept."""
    return len(remove_stale(sweep.output_dir.glob(f"*/*/*/.{sweep.name}-*")))


def select_perturbations(sweep: Sweep, specs: list[str], path) -> Sweep:
    """The part of the grid under these perturbations (each must be in the grid)."""
    try:
        wanted = [perturbations.parse(s.strip()).name for s in specs]
    except perturbations.PerturbationError as e:
        raise SweepError(f"--perturbations: {e}") from None
    missing = sorted(set(wanted) - {c.perturbation for c in sweep.points})
    if missing:
        raise SweepError(f"--perturbations: {', '.join(missing)} not in the grid of {path}")
    return Sweep(sweep.name, sweep.output_dir, [c for c in sweep.points if c.perturbation in wanted])


def select_datasets(sweep: Sweep, names: list[str], path) -> Sweep:
    """The part of the grid on these datasets (each must be in the grid)."""
    missing = sorted(set(names) - {c.dataset for c in sweep.points})
    if missing:
        raise SweepError(f"--datasets: {', '.join(missing)} not in the grid of {path}")
    return Sweep(sweep.name, sweep.output_dir, [c for c in sweep.points if c.dataset in names])


def describe(cfg: RunConfig) -> str:
    what = cfg.checkpoint_path() or cfg.preset or "default"
    return f"{cfg.encoder}({what}) {cfg.dataset} {cfg.perturbation} seed {cfg.seed}"


def run_sweep(sweep: Sweep, show_progress: bool = True, dry_run: bool = False, execute=None) -> dict:
    """Run the points not yet complete with `execute` (`in_processes`, the default, or `on_ray(...)`),
    adding each finished run to the runs table; a failed point is reported and the rest go on."""
    done = completed(sweep)
    refuse_stale(sweep, done)
    todo = [c for c in sweep.points if identity(c) not in done]
    if dry_run:
        return list_sweep(sweep, done, todo)
    removed = remove_partial(sweep)
    if removed:
        print(f"removed {removed} partial run director{'y' if removed == 1 else 'ies'} of an interrupted sweep")
    print(f"sweep {sweep.name}: {len(sweep.points)} runs, {len(sweep.points) - len(todo)} already complete, "
          f"{len(todo)} to do")
    failed, start = [], time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"sweep {sweep.name}", unit="run", disable=not show_progress, position=0)
    for cfg, outcome in (execute or in_processes)(todo, show_progress, lambda c: bar.set_postfix_str(describe(c))):
        bar.update()
        if isinstance(outcome, str):
            failed.append(f"{describe(cfg)}: {outcome}")
            tqdm.write(f"FAIL  {describe(cfg)}: {outcome}")
            continue
        path, ndcg, seconds = outcome
        tqdm.write(f"done  {describe(cfg)}: NDCG@10 {ndcg:.4f}  ({seconds:.0f} s)  {path}")
        record.add_to_table(sweep.output_dir, [path])
    bar.close()
    # Also the runs a killed sweep finished but did not add, and the table itself when none ran.
    record.add_to_table(sweep.output_dir, completed(sweep).values())
    return dict(total=len(sweep.points), skipped=len(sweep.points) - len(todo), ran=len(todo) - len(failed),
                failed=failed, seconds=time.perf_counter() - start)


def list_sweep(sweep: Sweep, done: dict, todo: list) -> dict:
    """--dry-run: each point, done or to do, and the recorded run time of those done."""
    seconds = 0.0
    for c in sweep.points:
        line = ("done " if identity(c) in done else "todo ") + describe(c)
        if identity(c) in done:
            took = json.loads((done[identity(c)] / "summary.json").read_text())["timings"]["total_s"]
            seconds += took
            line += f"  ({took:.0f} s)"
        print(line)
    print(f"{len(sweep.points) - len(todo)} of {len(sweep.points)} runs complete; their recorded run times "
          f"(summary.json timings.total_s) add up to {seconds / 3600:.2f} h")
    return dict(total=len(sweep.points), skipped=len(sweep.points) - len(todo), ran=0, failed=[], seconds=seconds)


def run_point(cfg: RunConfig) -> tuple[str, float, float]:
    result = run_benchmark(cfg)
    return str(result.path), result.summary["metrics"]["ndcg@10"], result.summary["timings"]["total_s"]


# -- executing the points -------------------------------------------------------------------------
# An executor takes (points, show_progress, started) and yields (point, outcome) as each point ends:
# outcome is run_point's (path, NDCG@10, seconds), or one line (a str) saying why the point failed.
def in_processes(points: list[RunConfig], show_progress: bool, started):
    """One point after another, each in a fresh local process."""
    for cfg in points:
        started(cfg)
        cfg.show_progress = show_progress
        try:
            yield cfg, in_fresh_process(run_point, cfg)
        except USER_ERRORS as e:  # one bad point does not stop the grid
            yield cfg, str(e)
        except BrokenProcessPool:
            yield cfg, "the worker process died"


def in_fresh_process(fn, *args):
    """Run fn(*args) in a new process: each point starts from a clean interpreter (no memory, threads or
    caches left by the previous point), and a crash in one point (a segfault, the OOM killer) is that
    point's failure, not the sweep's."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        return pool.submit(fn, *args).result()


def die_with_parent(parent: int) -> None:
    """A killed sweep takes its worker with it (Linux: PR_SET_PDEATHSIG), so no orphan goes on writing
    a run, or holds its temporary directory's lock, after the sweep is gone."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        return  # not Linux: a killed sweep's worker finishes its point on its own
    if os.getppid() != parent:  # the sweep died before the line above
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.split("\n")[0])
    p.add_argument("config", help="sweep YAML file, e.g. benchmarks/configs/archaeology.yaml")
    p.add_argument("--output-dir", help="override the file's output_dir")
    p.add_argument("--dry-run", action="store_true", help="list the runs and which are complete; run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--perturbations", help="only this part of the grid, e.g. clean,prune:0.5 (comma-separated)")
    p.add_argument("--datasets", help="only this part of the grid, e.g. scifact (comma-separated)")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run the points as Ray tasks: on a local Ray (no ADDRESS), or on the cluster at ADDRESS "
                        "('auto': the one `ray start` runs on this machine)")
    p.add_argument("--ray-cpus-per-point", type=float, default=1, metavar="N",
                   help="CPUs each point asks Ray for (default 1; a CUDA point also asks for one GPU)")
    p.add_argument("--rebuild-table", action="store_true",
                   help="rebuild <output_dir>/runs.parquet from every run directory under it; run nothing")
    args = p.parse_args(argv)

    def body() -> int:
        if args.ray_cpus_per_point <= 0:
            raise SweepError(f"--ray-cpus-per-point must be positive, got {args.ray_cpus_per_point:g}")
        if args.rebuild_table:
            out = args.output_dir or read_spec(Path(args.config)).get("output_dir", "results")
            print(f"runs table: {record.write_table(out)}")
            return 0
        sweep = load_sweep(args.config, args.output_dir)
        if args.perturbations:
            sweep = select_perturbations(sweep, args.perturbations.split(","), args.config)
        if args.datasets:
            sweep = select_datasets(sweep, [d.strip() for d in args.datasets.split(",")], args.config)
        if args.ray is None:
            outcome = run_sweep(sweep, show_progress=not args.quiet, dry_run=args.dry_run)
        else:
            with sweep_ray.connected(args.ray or None) as ray:
                sweep = replace(sweep, points=sweep_ray.resolve_on_cluster(ray, sweep.points))
                outcome = run_sweep(sweep, show_progress=not args.quiet, dry_run=args.dry_run,
                                    execute=sweep_ray.on_ray(ray, run_point, args.ray_cpus_per_point))
        if not args.dry_run:
            print(f"sweep {sweep.name}: {outcome['ran']} run, {outcome['skipped']} skipped (already complete), "
                  f"{len(outcome['failed'])} failed, {outcome['seconds'] / 60:.1f} min; table: "
                  f"{sweep.output_dir / 'runs.parquet'}")
            for line in outcome["failed"]:
                print(f"failed: {line}", file=sys.stderr)
        return 1 if outcome["failed"] else 0

    return run_command(body, (SweepError, sweep_ray.ClusterError, *USER_ERRORS), "completed runs are kept; run the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
