"""A resumable grid of runs: encoders x datasets x perturbations, from one YAML file.

    python -m benchmarks.sweep benchmarks/configs/archaeology.yaml [--dry-run] [--quiet] [--perturbations clean]

```yaml
name: archaeology                  # the run id of every run: results/<dataset>/<tag>/<perturbation>/<name>
output_dir: results
datasets: [scifact]
defaults: {dtype: bfloat16, max_length: 256}          # any RunConfig field (benchmarks/run.py)
perturbations: [clean, prune:0.5, sentence-shuffle]
encoders:
  - {encoder: bert}
  - {encoder: mamba, preset: small}
  - {encoder: bm25, perturbations: [clean]}          # per-encoder list
```

A run is complete when its run directory exists (they appear atomically) and records the same
configuration, so a killed sweep resumes where it stopped and never redoes or half-writes a run.
After every run the table of all runs, `<output_dir>/runs.parquet` (+ runs.csv), is rebuilt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml
from tqdm.auto import tqdm

import encoders

from . import perturbations
from .pipeline.data import find_dataset
from .run import LEXICAL, USER_ERRORS, RunConfig, run_benchmark
from .pipeline.results import remove_stale
from .pipeline.table import write_table

SWEEP_SET = ("dataset", "perturbation", "run_id", "output_dir", "overwrite")  # set by the sweep, not by entries
# Fields that do not change what a run computes: not part of its identity.
NOT_IDENTITY = ("show_progress", "overwrite", "output_dir", "cache", "cache_dir", "run_id")


class SweepError(Exception):
    """A malformed sweep file; printed as one line naming the file and the problem."""


@dataclass
class Sweep:
    name: str
    output_dir: Path
    points: list[RunConfig]


def identity(cfg: RunConfig | dict) -> str:
    d = asdict(cfg) if isinstance(cfg, RunConfig) else dict(cfg)
    return json.dumps({k: v for k, v in sorted(d.items()) if k not in NOT_IDENTITY}, sort_keys=True, default=str)


def load_sweep(path: str | Path, output_dir: str | None = None) -> Sweep:
    """Parse and validate the whole grid before anything runs -> Sweep, or SweepError."""
    path = Path(path)
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
    unknown = set(spec) - {"name", "output_dir", "datasets", "defaults", "perturbations", "encoders"}
    if unknown:
        raise bad(f"unknown key(s) {', '.join(sorted(unknown))}")
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip():
        raise bad("'name' (the run id of every run of this sweep) is required")
    datasets, entries = spec.get("datasets"), spec.get("encoders")
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, str) for d in datasets):
        raise bad("'datasets' must be a non-empty list of dataset names")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise bad("'encoders' must be a non-empty list of mappings, e.g. {encoder: mamba, preset: small}")
    allowed = {f.name for f in fields(RunConfig)} - set(SWEEP_SET)
    defaults = spec.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - allowed:
        raise bad(f"'defaults' may only set RunConfig fields; unknown: {', '.join(sorted(set(defaults) - allowed))}")
    default_perts = spec.get("perturbations") or ["clean"]

    points = []
    for i, entry in enumerate(entries, 1):
        entry = dict(entry)
        perts = entry.pop("perturbations", default_perts)
        if set(entry) - allowed:
            raise bad(f"encoders entry {i}: unknown field(s) {', '.join(sorted(set(entry) - allowed))}")
        if "encoder" not in entry:
            raise bad(f"encoders entry {i}: 'encoder' is required")
        if entry.get("encoder_module"):
            encoders.import_encoder_module(entry["encoder_module"])
        if entry["encoder"] not in LEXICAL and entry["encoder"] not in encoders.available():
            raise bad(f"encoders entry {i}: unknown encoder {entry['encoder']!r}; "
                      f"known: {', '.join(encoders.available() + list(LEXICAL))}")
        if not isinstance(perts, list) or not perts:
            raise bad(f"encoders entry {i}: 'perturbations' must be a non-empty list")
        for p in perts:
            try:
                parsed = perturbations.parse(str(p))
            except perturbations.PerturbationError as e:
                raise bad(f"encoders entry {i}: {e}") from None
            if parsed.prune_step and entry["encoder"] in LEXICAL:
                raise bad(f"encoders entry {i}: {p!r}: pruning applies to neural encoders, not {entry['encoder']}")
            for ds in datasets:
                try:
                    cfg = RunConfig(**{**defaults, **entry, "dataset": ds, "perturbation": parsed.name,
                                       "run_id": name, "output_dir": str(output_dir or spec.get("output_dir", "results"))})
                except TypeError as e:
                    raise bad(f"encoders entry {i}: {e}") from None
                points.append(cfg)
    for ds in datasets:  # a missing dataset fails now, not an hour in
        find_dataset(ds, defaults.get("data_dir"), download=False)
    keys = [identity(c) for c in points]
    if len(set(keys)) != len(keys):
        raise bad("the grid lists the same run twice")
    return Sweep(name, Path(output_dir or spec.get("output_dir", "results")), points)


def completed(sweep: Sweep) -> dict[str, Path]:
    """identity -> run dir, for every run of this sweep already on disk."""
    done = {}
    for summary in sweep.output_dir.glob(f"*/*/*/{sweep.name}/summary.json"):
        try:
            done[identity(json.loads(summary.read_text())["config"])] = summary.parent
        except (OSError, ValueError, KeyError):
            pass  # unreadable: not complete; rerunning it fails loudly on the existing directory
    return done


def remove_partial(sweep: Sweep) -> int:
    """Temporary run directories a killed run left behind (`.<name>.*` beside the run dirs); those of a
    run still being written by another process are kept."""
    return len(remove_stale(sweep.output_dir.glob(f"*/*/*/.{sweep.name}.*")))


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


def describe(cfg: RunConfig) -> str:
    what = cfg.checkpoint or cfg.preset or "default"
    return f"{cfg.encoder}({what}) {cfg.dataset} {cfg.perturbation}"


def run_sweep(sweep: Sweep, show_progress: bool = True, dry_run: bool = False) -> dict:
    done = completed(sweep)
    todo = [c for c in sweep.points if identity(c) not in done]
    if dry_run:
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
    removed = remove_partial(sweep)
    if removed:
        print(f"removed {removed} partial run director{'y' if removed == 1 else 'ies'} of an interrupted sweep")
    print(f"sweep {sweep.name}: {len(sweep.points)} runs, {len(sweep.points) - len(todo)} already complete, "
          f"{len(todo)} to do")
    failed, start = [], time.perf_counter()
    bar = tqdm(todo, desc=f"sweep {sweep.name}", unit="run", disable=not show_progress, position=0)
    for cfg in bar:
        bar.set_postfix_str(describe(cfg))
        cfg.show_progress = show_progress
        try:
            result = run_benchmark(cfg)
            tqdm.write(f"done  {describe(cfg)}: NDCG@10 {result.summary['metrics']['ndcg@10']:.4f}  "
                       f"({result.summary['timings']['total_s']:.0f} s)  {result.path}")
        except USER_ERRORS as e:  # one bad point (e.g. a checkpoint that does not load) does not stop the grid
            failed.append(f"{describe(cfg)}: {e}")
            tqdm.write(f"FAIL  {describe(cfg)}: {e}")
            continue
        write_table(sweep.output_dir)
    write_table(sweep.output_dir)  # also when everything was already complete
    return dict(total=len(sweep.points), skipped=len(sweep.points) - len(todo), ran=len(todo) - len(failed),
                failed=failed, seconds=time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.split("\n")[0])
    p.add_argument("config", help="sweep YAML file, e.g. benchmarks/configs/archaeology.yaml")
    p.add_argument("--output-dir", help="override the file's output_dir")
    p.add_argument("--dry-run", action="store_true", help="list the runs and which are complete; run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--perturbations", help="only this part of the grid, e.g. clean,prune:0.5 (comma-separated)")
    args = p.parse_args(argv)
    try:
        sweep = load_sweep(args.config, args.output_dir)
        if args.perturbations:
            sweep = select_perturbations(sweep, args.perturbations.split(","), args.config)
        outcome = run_sweep(sweep, show_progress=not args.quiet, dry_run=args.dry_run)
    except (SweepError, *USER_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: completed runs are kept; run the same command to resume", file=sys.stderr)
        return 130
    if not args.dry_run:
        print(f"sweep {sweep.name}: {outcome['ran']} run, {outcome['skipped']} skipped (already complete), "
              f"{len(outcome['failed'])} failed, {outcome['seconds'] / 60:.1f} min; table: "
              f"{sweep.output_dir / 'runs.parquet'}")
        for line in outcome["failed"]:
            print(f"failed: {line}", file=sys.stderr)
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
