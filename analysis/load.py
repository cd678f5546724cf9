"""Read every run under a results directory into tidy frames.

`load_results(dir)` -> `Results` with
    runs       one row per run: the columns of `benchmarks.pipeline.record.flatten` (identity, group,
               base, kind: clean | model | input | mixed, ...), plus arch (encoder name), model (what a
               plot calls it), params (after pruning), config_key (the record's group: runs sharing
               it are repeats of one configuration, over seeds: analysis/seeds.py), base_key (the
               group of its unperturbed run) and setup_key (the group without the dataset: one
               configuration across datasets)
    per_query  one row per (run path, judged query): the run's per_query.csv
    summaries  path -> summary.json
    problems   one line per run that was skipped: "<path>: <what is wrong>"

A broken run (malformed summary.json, a missing or unreadable per_query.csv, ...) is skipped and
named in `problems`, so that one bad directory never hides all the good ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmarks.pipeline import record
from benchmarks.pipeline.data import DataError, Dataset, load_dataset


class AnalysisError(Exception):
    """Results that cannot be analysed at all (e.g. an empty directory); printed as one line."""


@dataclass
class Results:
    root: Path
    runs: pd.DataFrame
    per_query: pd.DataFrame
    summaries: dict[str, dict]
    problems: list[str] = field(default_factory=list)


def read_run(d: Path) -> tuple[dict, dict, pd.DataFrame]:
    """(summary, table row, per-query frame) of one run directory; ValueError says what is wrong."""
    rec = record.read(d)
    row = record.flatten(rec.summary, d)
    if not record.is_number(row.get("ndcg@10")):
        raise ValueError(f"summary.json has no numeric metrics.ndcg@10 (got {row.get('ndcg@10')!r})")
    pq = rec.per_query.reset_index()
    if "ndcg@10" not in pq.columns:
        raise ValueError("per_query.csv has no column ndcg@10")
    if pq["qid"].isna().any() or pq["qid"].duplicated().any():
        raise ValueError("per_query.csv has empty or duplicate qids")
    if not pd.api.types.is_numeric_dtype(pq["ndcg@10"]):
        raise ValueError("per_query.csv column ndcg@10 is not numeric")
    return rec.summary, row, pq


def _derive(row: dict, summary: dict) -> dict:
    cfg = summary["encoder"].get("config") or {}
    row["arch"] = row["encoder"]
    variant = row.get("label") or row.get("preset") or (Path(str(row["checkpoint"])).name if row.get("checkpoint") else "")
    bi = f" bi-{cfg['bidirectional']}" if cfg.get("bidirectional") else ""
    checkpoint = str(row.get("checkpoint") or "")
    if "{seed}" in checkpoint:  # one checkpoint per seed: name the configuration, not one seed's directory
        variant = Path(checkpoint).name.replace("-seed{seed}", "").replace("{seed}", "")
    variant = "" if variant == row["encoder"] else variant  # bm25's label is "bm25"
    variant = variant.removeprefix(f"{row['encoder']}-")  # checkpoint "mamba-small-..." -> "mamba small-..."
    row["model"] = f"{row['encoder']} {variant}{bi}".strip()
    dtype = {"float32": "", "bfloat16": " bf16", "float16": " fp16", None: ""}.get(row.get("dtype"), f" {row.get('dtype')}")
    row["name"] = row["model"] + dtype  # the model as a plot legend names it
    row["params"], row["params_clean"] = row["params_after"], row["params_before"]
    # Repeats are runs of one group: the same resolved configuration but for run id and seed (the seed of
    # an untrained preset changes its weights, so repeats over seeds show that spread too).
    row["config_key"], row["base_key"] = row["group"], row["base"]
    row["setup_key"] = record.setup(summary["config"])  # the configuration across datasets
    return row


def load_results(results_dir: str | Path, run_ids: list[str] | None = None,
                 perturbations: list[str] | None = None) -> Results:
    """Every run under results_dir; with run_ids, only the runs with one of those run ids (a sweep's
    runs carry the sweep's name as run id); with perturbations, only runs under one of those (e.g.
    ["clean"]). A name that matches no run is an error, so that a typo does not thin a report silently."""
    root = Path(results_dir)
    if not root.is_dir():
        raise AnalysisError(f"results directory {root} does not exist")
    dirs = record.run_dirs(root)
    if not dirs:
        raise AnalysisError(f"no runs under {root} (no <dataset>/<encoder>/.../summary.json found)")
    if run_ids:
        dirs = [d for d in dirs if record_run_id(d) in run_ids]
        if not dirs:
            raise AnalysisError(f"no runs under {root} with run id {', '.join(run_ids)}")
    rows, frames, summaries, problems = [], [], {}, []
    for d in dirs:
        try:
            summary, row, pq = read_run(d)
        except ValueError as e:
            problems.append(f"{d}: {e}")
            continue
        rows.append(_derive(row, summary))
        summaries[str(d)] = summary
        frames.append(pq.assign(path=str(d)))
    if not rows:
        raise AnalysisError(f"no readable runs under {root}: {len(problems)} broken, e.g. {problems[0]}")
    runs = pd.DataFrame(rows)
    runs["perturbation"] = runs["perturbation"].fillna("clean")
    runs["created"] = pd.to_datetime(runs["created"], errors="coerce", utc=True)
    per_query = pd.concat(frames, ignore_index=True)
    if perturbations:
        found = set(runs["perturbation"])
        missing = [p for p in perturbations if p not in found]
        if missing:
            raise AnalysisError(f"no runs with perturbation {', '.join(missing)} under {root}"
                                f"{' with run id ' + ', '.join(run_ids) if run_ids else ''}; "
                                f"found: {', '.join(sorted(found))}")
        runs = runs[runs["perturbation"].isin(perturbations)]
        per_query = per_query[per_query["path"].isin(runs["path"])].reset_index(drop=True)
        summaries = {path: summaries[path] for path in runs["path"]}
    return Results(root, runs.reset_index(drop=True), per_query, summaries, problems)


def record_run_id(d: Path) -> str | None:
    """The run id a run directory's record carries (a sweep's name), without reading the whole record."""
    try:
        return json.loads((d / "summary.json").read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def latest_per_config(runs: pd.DataFrame) -> pd.DataFrame:
    """One run per configuration (the newest), for analyses that pair queries across runs."""
    return runs.sort_values(["created", "path"]).groupby("config_key", sort=False).tail(1)


def find_dataset_texts(summary: dict, results_root: Path) -> tuple[Dataset | None, str]:
    """The run's dataset (for query and document texts), or None and why not.

    summary.dataset.path may be relative to where the run was made: try it as given, relative to the
    results directory's parent (runs are usually made from the repo root), then the name through
    $BEIR_DATA_DIR and ./data. Never downloads.
    """
    ds, split = summary["dataset"], summary["dataset"].get("split", "test")
    candidates = [ds.get("path"), str(results_root.resolve().parent / ds["path"]) if ds.get("path") else None,
                  ds["name"]]
    candidates = list(dict.fromkeys(c for c in candidates if c))
    for candidate in candidates:
        try:
            return load_dataset(candidate, split, download=False), ""
        except DataError as e:
            last = str(e)
    return None, (f"the texts of dataset {ds['name']!r} ({split}) were not found (tried {', '.join(candidates)} "
                  f"and $BEIR_DATA_DIR; last error: {last})")
