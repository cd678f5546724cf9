"""Write a run's scores as an MTEB result file, beside MTEB's own results.

    python -m benchmarks.export_mteb RUN_DIR [--out DIR] [--task NAME]

Reads the run's summary.json (per_query.csv must be there too: a run directory is whole) and writes, with mteb's own `TaskResult` and
`ResultCache`, `DIR/results/<model>/<revision>/<Task>.json` plus `model_meta.json`: the layout of mteb's
results cache (default DIR: mteb's, `$MTEB_CACHE` or ~/.cache/mteb) and of the embeddings-benchmark/results
repository, so that `mteb.load_results` and the leaderboard tools read it. The model is named
`encoder-bench/<encoder tag>[-<perturbation>]`, its revision is the first 12 hex digits of the encoder's
fingerprint. Scores are the run's means over its judged queries (the record's metrics) under MTEB's names (ndcg@10 -> ndcg_at_10); main_score is the task's (NDCG@10 for BEIR's).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

# BEIR dataset name -> MTEB task name.
MTEB_TASKS = {
    "scifact": "SciFact", "nfcorpus": "NFCorpus", "arguana": "ArguAna", "fiqa": "FiQA2018", "scidocs": "SCIDOCS",
    "trec-covid": "TRECCOVID", "quora": "QuoraRetrieval", "nq": "NQ", "hotpotqa": "HotpotQA", "fever": "FEVER",
    "climate-fever": "ClimateFEVER", "dbpedia-entity": "DBPedia", "webis-touche2020": "Touche2020", "msmarco": "MSMARCO",
}


class ExportError(Exception):
    """A run directory that cannot be exported; printed as one line."""


@dataclass
class ExportedRun:
    """What the export needs from a run record."""
    dataset: str
    split: str
    documents: int
    queries: int
    model: str  # encoder tag, plus the perturbation when there is one
    fingerprint: str
    num_parameters: int | None
    embedding_dim: int | None
    similarity: str
    max_length: int | None
    seconds: float
    metrics: dict[str, float]  # means over the judged queries, e.g. "ndcg@10"


def read_run(run_dir: Path) -> ExportedRun:
    """The run record (benchmarks/pipeline/record.py), reduced to what MTEB's result file holds."""
    from .pipeline import record

    try:
        s = record.read(run_dir).summary
    except ValueError as e:
        raise ExportError(f"{run_dir}: not a run directory this export reads ({e})") from None
    slug = s["perturbation"]["slug"]
    return ExportedRun(
        dataset=s["dataset"]["name"], split=s["dataset"]["split"], documents=s["dataset"]["documents"],
        queries=s["dataset"]["queries"], model=s["encoder"]["tag"] + ("" if slug == "clean" else f"-{slug}"),
        fingerprint=s["encoder"]["fingerprint"], num_parameters=s["encoder"].get("num_parameters"),
        embedding_dim=s["encoder"].get("embedding_dim"), similarity=s["retrieval"].get("similarity"),
        max_length=(s["encoder"].get("config") or {}).get("max_length"), seconds=s["timings"]["total_s"],
        metrics=dict(s["metrics"]))


def mteb_scores(metrics: dict[str, float]) -> dict[str, float]:
    """Under MTEB's metric names: ndcg@10 -> ndcg_at_10, mrr@10 -> mrr_at_10, ..."""
    return {name.replace("@", "_at_"): float(value) for name, value in metrics.items()}


def export(run_dir: Path, out: Path | None = None, task_name: str | None = None) -> Path:
    """Write the run's MTEB result file; returns its path."""
    import mteb
    from mteb.cache import ResultCache
    from mteb.models.model_meta import ModelMeta, ScoringFunction
    from mteb.results import TaskResult

    run = read_run(run_dir)
    task_name = task_name or MTEB_TASKS.get(run.dataset)
    if task_name is None:
        raise ExportError(f"dataset {run.dataset!r} has no known MTEB task: pass --task NAME")
    try:
        task = mteb.get_task(task_name)
    except Exception as e:
        raise ExportError(f"--task {task_name!r}: {type(e).__name__}: {e}") from None
    stats = (task.metadata.descriptive_stats or {}).get(run.split) or {}
    if (stats.get("num_documents"), stats.get("num_queries")) != (run.documents, run.queries):
        print(f"warning: this run has {run.documents} documents and {run.queries} queries, MTEB's {task_name} "
              f"{run.split} split {stats.get('num_documents')} and {stats.get('num_queries')}: "
              "its scores are not comparable with MTEB's", file=sys.stderr)

    scores = mteb_scores(run.metrics)
    scores["main_score"] = scores[task.metadata.main_score]
    result = TaskResult.from_task_results(task, {run.split: {"default": scores}}, evaluation_time=run.seconds)
    similarity = {"cos": ScoringFunction.COSINE, "dot": ScoringFunction.DOT_PRODUCT}.get(run.similarity)
    meta = ModelMeta.create_empty(overwrites=dict(
        name=f"encoder-bench/{run.model}", revision=run.fingerprint[:12], n_parameters=run.num_parameters or None,
        embed_dim=run.embedding_dim, max_tokens=run.max_length, similarity_fn_name=similarity))
    cache = ResultCache(out)
    cache.save_to_cache(result, meta)
    return cache.get_task_result_path(task_name, meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory (holding summary.json and per_query.csv)")
    parser.add_argument("--out", type=Path, help="mteb results cache to write into (default: mteb's own)")
    parser.add_argument("--task", help="MTEB task name (default: from the run's dataset, e.g. nfcorpus -> NFCorpus)")
    args = parser.parse_args(argv)
    try:
        path = export(args.run_dir, args.out, args.task)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
