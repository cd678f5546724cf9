"""The tidy table of all runs: one row per run directory (configuration, aggregates, latency).

`collect(results_dir)` rebuilds it from the runs' summary.json files, so it can never disagree with
them; the sweep writes it to `<results>/runs.parquet` (and `runs.csv`) after every run.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from .metrics import METRICS


def perturbation_columns(perturbation: dict | None) -> dict:
    """Flatten a summary's `perturbation` entry into one column per knob (None where unused)."""
    row = dict(perturbation="clean", prune_sparsity=None, prune_realised=None, prune_criterion=None, shuffle=None,
               truncate_side=None, truncate_tokens=None, pad_side=None, pad_factor=None)
    if not perturbation:
        return row
    row["perturbation"] = perturbation.get("name", "clean")
    for step in perturbation.get("steps", []):
        kind = step.get("kind")
        if kind == "prune":
            row.update(prune_sparsity=step.get("sparsity"), prune_criterion=step.get("criterion"),
                       prune_realised=step.get("report", {}).get("realised_sparsity"))
        elif kind in ("sentence-shuffle", "token-shuffle"):
            row["shuffle"] = kind.split("-")[0]
        elif kind == "truncate":
            row.update(truncate_side=step.get("side"), truncate_tokens=step.get("tokens"))
        elif kind == "pad":
            row.update(pad_side=step.get("side"), pad_factor=step.get("factor"))
    return row


def summary_row(summary: dict, path: str | Path) -> dict:
    enc, cfg, t = summary["encoder"], summary.get("config", {}), summary.get("timings", {})
    corpus, lat, env = t.get("corpus_encode", {}), t.get("query_latency", {}), summary.get("environment", {})
    row = dict(path=str(path), run_id=summary.get("run_id"), created=summary.get("created"),
               dataset=summary["dataset"]["name"], split=summary["dataset"].get("split"), encoder=enc["name"],
               label=enc.get("config", {}).get("label"), tag=enc.get("tag"), preset=cfg.get("preset"),
               checkpoint=cfg.get("checkpoint"), dtype=enc.get("config", {}).get("dtype", cfg.get("dtype")),
               max_length=enc.get("config", {}).get("max_length"), seed=cfg.get("seed"))
    row.update(perturbation_columns(summary.get("perturbation")))
    row.update(num_parameters=enc.get("num_parameters"), flops_per_token=enc.get("flops_per_token"),
               embedding_dim=enc.get("embedding_dim"), kernel_path=enc.get("kernel_path"))
    row.update({m: summary["metrics"].get(m) for m in METRICS})
    row.update(query_p50_ms=lat.get("p50_ms"), query_p95_ms=lat.get("p95_ms"),
               corpus_docs_per_s=corpus.get("texts_per_s"), corpus_tokens_per_s=corpus.get("tokens_per_s"),
               corpus_cached=corpus.get("cached"), total_s=t.get("total_s"), device=env.get("device"),
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


def collect(results_dir: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """(one row per readable run, one line per run that could not be read)."""
    rows, problems = [], []
    for d in run_dirs(results_dir):
        try:
            rows.append(summary_row(json.loads((d / "summary.json").read_text()), d))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            problems.append(f"{d / 'summary.json'}: {type(e).__name__}: {e}")
    return pd.DataFrame(rows), problems


def write_table(results_dir: str | Path) -> Path:
    """Rebuild `<results>/runs.parquet` and `runs.csv` atomically; returns the parquet path."""
    root = Path(results_dir)
    frame, _ = collect(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, write in (("runs.parquet", lambda p: frame.to_parquet(p, index=False)),
                        ("runs.csv", lambda p: frame.to_csv(p, index=False))):
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, root / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return root / "runs.parquet"
