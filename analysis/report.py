"""The report: figures (PNG and SVG) and report.md from every run under a results directory.

    python -m analysis.report --results results/ --out results/report/

Sections in order: efficiency frontier, pruning, position sensitivity, per-query error analysis,
environment and configuration. Works on whatever subset of runs exists and says what is missing.
The report appears whole or not at all (written to a hidden temporary directory, then renamed), and
an existing non-empty --out is never replaced unless --overwrite asks for it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import errors, long_docs, pareto, plots, sensitivity
from benchmarks.pipeline.record import atomic_dir

from .load import AnalysisError, Results, find_dataset_texts, latest_per_config, load_results


def md_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A markdown table (no tabulate dependency): floats to `digits` significant digits."""
    def cell(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        if isinstance(v, (float, np.floating)):
            return f"{v:.{digits}g}"
        return str(v).replace("|", "\\|").replace("\n", " ")
    head = "| " + " | ".join(map(str, frame.columns)) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return head + "".join("| " + " | ".join(cell(v) for v in row) + " |\n" for row in frame.itertuples(index=False))


def figure(md: list[str], path: str | None, caption: str) -> None:
    if path:
        md.append(f"![{caption}]({path})\n\n*{caption}* ([SVG]({Path(path).with_suffix('.svg')}))\n")


def section_frontier(res: Results, out: Path, md: list[str]) -> None:
    md.append("## 1. Quality against cost: the Pareto frontier\n")
    # Input perturbations change what is measured, not the model: only clean and pruned runs compete.
    runs = res.runs[res.runs["kind"].isin(["clean", "model"])]
    if runs.empty:
        md.append("No clean or pruned runs: frontier skipped.\n")
        return
    for x, what in (("query_p50_ms", "query latency"), ("corpus_docs_per_s", "corpus throughput")):
        if runs[x].isna().all():
            md.append(f"No run recorded {what} ({x}): that frontier is skipped.\n")
            continue
        name = "frontier_latency" if x == "query_p50_ms" else "frontier_throughput"
        path, front, omitted = pareto.plot_frontier(runs, x, out, name)
        caption = (f"NDCG@10 against {what}; ringed points joined by the dashed step line: Pareto frontier; error bars: standard deviation "
                   f"over repeated runs of one configuration")
        if omitted:
            caption += f"; {omitted} point label(s) left out where they would overlap (all points are in the table)"
        figure(md, path, caption)
        if x == "query_p50_ms":
            points = pareto.aggregate_repeats(runs[runs[x].notna()], x, "ndcg@10")
            points["frontier"] = np.where(points["config_key"].isin(front["config_key"]), "yes", "")
            points["params (M)"] = points["params"] / 1e6
            cols = ["dataset", "name", "perturbation", "params (M)", "query_p50_ms", "corpus_docs_per_s", "ndcg@10",
                    "repeats", "frontier"]
            md.append(md_table(points.sort_values(["dataset", "ndcg@10"], ascending=[True, False])[cols]))
    if runs["corpus_cached"].fillna(False).astype(bool).any():
        md.append("\nSome corpus encodings came from the embedding cache; their throughput is the one measured "
                  "when the cache entry was written.\n")


def section_pruning(res: Results, out: Path, md: list[str], floor: float) -> None:
    md.append("## 2. Pruning sensitivity\n")
    path, data = sensitivity.plot_pruning(res.runs, out, floor=floor)
    if path is None:
        md.append(f"{data}.\n")
        return
    figure(md, path, "NDCG@10 relative to each model's unpruned run, against requested sparsity (left) and "
                     "remaining parameters (right)")
    if data["flagged"].any():
        md.append(sensitivity.FLAG_NOTE.format(floor=floor) + "\n")
    data = data.assign(**{"params (M)": data["params"] / 1e6}, flagged=np.where(data["flagged"], "†", ""))
    md.append(md_table(data[["dataset", "name", "sparsity", "realised", "params (M)", "ndcg", "relative", "flagged"]]))


def section_position(res: Results, out: Path, md: list[str], floor: float, resamples: int, seed: int) -> None:
    md.append("## 3. Position sensitivity\n")
    runs = latest_per_config(res.runs)
    clean = runs[runs["kind"] == "clean"].set_index("base_key")["path"]
    perturbed = runs[runs["kind"].isin(["input", "mixed"]) & runs["base_key"].isin(clean.index)]
    pairs = [(f"{r['name']}: {r['perturbation']}", r["path"], clean[r["base_key"]]) for _, r in perturbed.iterrows()]
    sig = errors.compare(pairs, res.per_query, n_resamples=resamples, seed=seed) if pairs else None
    path, table = sensitivity.plot_position(res.runs, out, floor=floor, significance=sig)
    if path is None:
        md.append(f"{table}.\n")
    else:
        figure(md, path, "NDCG@10 under each input perturbation relative to the same model's clean run")
        md.append("Paired sign-flip permutation test of each perturbed run against its clean run, per query "
                  f"(NDCG@10, {resamples} resamples, Holm-corrected over the {len(sig)} comparisons):\n\n")
        md.append(significance_table(sig))
    path, table = sensitivity.plot_length_buckets(res.runs, res.per_query, out)
    if path is None:
        md.append(f"\n{table}.\n")
    else:
        figure(md, path, "NDCG@10 of the clean runs by length of the relevant documents")
    path, table = sensitivity.plot_truncation(res.runs, out)
    if path is None:
        md.append(f"\n{table}.\n")
    else:
        figure(md, path, "NDCG@10 against kept document tokens (head vs tail)")
        md.append(md_table(table))


def significance_table(sig: pd.DataFrame) -> str:
    t = sig.assign(**{"95% CI": [f"[{lo:+.4f}, {hi:+.4f}]" for lo, hi in zip(sig["ci_low"], sig["ci_high"])],
                      "W/L/T": [f"{w}/{l}/{t}" for w, l, t in zip(sig["wins"], sig["losses"], sig["ties"])]})
    t = t.rename(columns={"mean_diff": "mean Δ", "cohens_dz": "d_z", "p_holm": "p (Holm)"})
    return md_table(t[["comparison", "n", "mean_a", "mean_b", "mean Δ", "95% CI", "d_z", "W/L/T", "p", "p (Holm)"]])


def pick_reference(runs: pd.DataFrame, dataset: str, reference: str) -> pd.Series | None:
    """The clean run of `reference` (encoder name, tag or model) on `dataset`: the packaged checkpoint
    (no preset, no checkpoint) in float32 first, then the newest."""
    c = runs[(runs["dataset"] == dataset) & (runs["kind"] == "clean")
             & ((runs["encoder"] == reference) | (runs["tag"] == reference) | (runs["model"] == reference))]
    if c.empty:
        return None
    rank = c["preset"].notna().astype(int) + c["checkpoint"].notna().astype(int) + (c["dtype"] != "float32").astype(int)
    return c.assign(_rank=rank).sort_values(["_rank", "created"], ascending=[True, False]).iloc[0]


def section_errors(res: Results, out: Path, md: list[str], reference: str, resamples: int, seed: int) -> list[str]:
    md.append(f"## 4. Per-query error analysis against {reference}\n")
    notes = []
    runs = latest_per_config(res.runs)
    clean = runs[runs["kind"] == "clean"]
    pairs, diffs, features = [], [], {}
    for dataset in sorted(clean["dataset"].unique()):
        ref = pick_reference(runs, dataset, reference)
        if ref is None:
            notes.append(f"{dataset}: no clean {reference} run, so no comparisons on it")
            continue
        others = clean[(clean["dataset"] == dataset) & (clean["path"] != ref["path"])]
        if others.empty:
            notes.append(f"{dataset}: only the reference run is clean, nothing to compare")
            continue
        texts, why = find_dataset_texts(res.summaries[ref["path"]], res.root)
        if texts is None:
            notes.append(f"{dataset}: {why}; query texts and lexical overlap skipped")
        ref_pq = res.per_query[res.per_query["path"] == ref["path"]]
        features[dataset] = errors.query_features(ref_pq, texts)
        ref_scores = ref_pq.set_index("qid")[errors.METRIC]
        for _, r in others.iterrows():
            label = f"{dataset}: {r['name']}" if clean["dataset"].nunique() > 1 else r["name"]
            pairs.append((f"{label} − {ref['name']}", r["path"], ref["path"]))
            scores = res.per_query[res.per_query["path"] == r["path"]].set_index("qid")[errors.METRIC]
            joined = pd.DataFrame({"score": scores, "reference_score": ref_scores}).dropna()
            text = (lambda q: texts.queries.get(q, "")) if texts else (lambda q: "")
            diffs.append(joined.assign(dataset=dataset, model=r["name"], qid=joined.index,
                                       diff=joined["score"] - joined["reference_score"],
                                       query=[text(q) for q in joined.index]).reset_index(drop=True))
    for note in notes:
        md.append(f"- {note}.\n")
    if not pairs:
        md.append("\nNo comparisons: error analysis skipped.\n")
        return notes
    sig = errors.compare(pairs, res.per_query, n_resamples=resamples, seed=seed)
    md.append(f"\nPaired sign-flip permutation test per comparison (per-query NDCG@10, model − reference; "
              f"{resamples} resamples; bootstrap 95% CI of the mean difference; Cohen's d_z = mean/sd of the "
              f"differences; W/L/T = queries won/lost/tied; p Holm-corrected over the {len(sig)} comparisons):\n\n")
    md.append(significance_table(sig))
    diffs = pd.concat(diffs, ignore_index=True)
    by_dataset = diffs.pivot_table(index="model", columns="dataset", values="diff", aggfunc="mean")
    md.append("\nMean ΔNDCG@10 against the reference by dataset (domain):\n\n" + md_table(by_dataset.reset_index()))
    feats = pd.concat(features, names=["dataset", "qid"])
    table = errors.breakdown(diffs, feats)
    if len(table):
        path = errors.plot_breakdown(table, plots.model_styles(clean), out, reference)
        figure(md, path, f"mean per-query ΔNDCG@10 against {reference} by bucket of each complexity proxy "
                         "(n = queries per bucket)")
        wide = table.pivot_table(index=["proxy", "rank", "bucket"], columns="model", values="mean", observed=True)
        wide.insert(0, "queries", table.groupby(["proxy", "rank", "bucket"], observed=True)["size"].max())
        md.append("Mean ΔNDCG@10 against the reference per bucket:\n\n" +
                  md_table(wide.reset_index().drop(columns="rank")))
    ext = errors.extremes(diffs)
    md.append("\nQueries each model wins and loses most against the reference:\n\n")
    md.append(md_table(ext[["model", "outcome", "dataset", "qid", "score", "reference_score", "diff", "query"]]
                       .assign(query=ext["query"].str.slice(0, 120))))
    return notes


def section_environment(res: Results, md: list[str]) -> None:
    md.append("## 5. Environment and configuration\n")
    runs = res.runs.assign(run=[os.path.relpath(p, res.root) for p in res.runs["path"]],
                           git=res.runs["git_commit"].fillna("").str.slice(0, 10),
                           python=[s.get("environment", {}).get("python") for s in map(res.summaries.get, res.runs["path"])])
    envs = runs.fillna({"device": "", "cpu": "", "python": ""}).groupby(["device", "cpu", "python", "git"]).size()
    md.append("Machines and code the runs were made with:\n\n" + md_table(envs.rename("runs").reset_index()))
    md.append("\nRuns:\n\n" + md_table(runs.sort_values("run")[["run", "name", "perturbation", "max_length", "seed",
                                                                   "kernel_path", "num_parameters", "created"]]))
    packages = {}
    for s in res.summaries.values():
        for k, v in (s.get("environment", {}).get("packages") or {}).items():
            packages.setdefault(k, set()).add(str(v))
    if packages:
        md.append("\nPackage versions across the runs:\n\n" + md_table(pd.DataFrame(
            [(k, ", ".join(sorted(v))) for k, v in sorted(packages.items())], columns=["package", "versions"])))


def write_report(res: Results, out: Path, reference: str = "bert", floor: float = sensitivity.FLOOR,
                 resamples: int = 9999, seed: int = 0) -> None:
    """Every figure and report.md into `out` (an existing, empty directory)."""
    md = [f"# Benchmark report\n\nResults: `{res.root}`, {len(res.runs)} runs "
          f"({res.runs['config_key'].nunique()} configurations) on {', '.join(sorted(res.runs['dataset'].unique()))}; "
          f"generated {time.strftime('%Y-%m-%d %H:%M:%S %z')}.\n"]
    if res.problems:
        md.append(f"\n**{len(res.problems)} run(s) skipped** (unreadable):\n\n" +
                  "".join(f"- `{p.split(': ', 1)[0]}`: {p.split(': ', 1)[1]}\n" for p in res.problems))
    section_frontier(res, out, md)
    section_pruning(res, out, md, floor)
    section_position(res, out, md, floor, resamples, seed)
    long_docs.section(res, out, md)
    section_errors(res, out, md, reference, resamples, seed)
    section_environment(res, md)
    (out / "report.md").write_text("\n".join(md))


def build_report(results_dir, out, overwrite: bool = False, run_ids: list[str] | None = None,
                 perturbations: list[str] | None = None, **options) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AnalysisError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise AnalysisError(f"--out {out} exists and is not empty; choose another --out or pass --overwrite")
    res = load_results(results_dir, run_ids, perturbations)
    for problem in res.problems:
        print(f"warning: skipped run {problem}", file=sys.stderr)
    with atomic_dir(out) as tmp:  # an existing report is replaced whole (checked above: empty, or --overwrite)
        write_report(res, tmp, **options)
    return out


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")  # the command writes files only, never a window (importing the module sets nothing)
    p = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--results", default="results", help="results directory (as written by benchmarks.run)")
    p.add_argument("--out", default=None, help="report directory (default: <results>/report)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    p.add_argument("--run-id", help="only runs with these run ids, comma-separated (a sweep's runs carry its name)")
    p.add_argument("--perturbations", help="only runs under these perturbations, comma-separated (e.g. clean)")
    p.add_argument("--reference", default="bert", help="encoder name, tag or model the error analysis compares against")
    p.add_argument("--floor", type=float, default=sensitivity.FLOOR,
                   help="clean NDCG@10 below which a relative score is flagged as meaningless")
    p.add_argument("--resamples", type=int, default=9999, help="permutation and bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        if args.resamples < 99:
            raise AnalysisError(f"--resamples must be at least 99, got {args.resamples}")
        out = build_report(args.results, args.out or Path(args.results) / "report", overwrite=args.overwrite,
                           run_ids=args.run_id.split(",") if args.run_id else None,
                           perturbations=args.perturbations.split(",") if args.perturbations else None,
                           reference=args.reference, floor=args.floor, resamples=args.resamples, seed=args.seed)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report written to {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
