"""The report: figures (PNG and SVG) and report.md from every run under a results directory.

    python -m analysis.report --results results/ --out results/report/

Sections in order: headline (each model per dataset and pooled, against the reference), efficiency
frontier, pruning, position sensitivity, per-query error analysis, failure modes by query category,
environment and configuration. Every table and figure is per dataset and, where a configuration ran
on every dataset, pooled over them; a configuration repeated over seeds shows its mean with a 95%
t-interval over seeds (analysis/seeds.py). Every paired test in the report is Holm-corrected in one
family (errors.Family). Works on whatever subset of runs exists and says what is missing.
The report appears whole or not at all (written to a hidden temporary directory, then renamed), and
an existing non-empty --out is never replaced unless --overwrite asks for it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import categories, errors, long_docs, pareto, plots, seeds, sensitivity
from benchmarks.pipeline.record import atomic_dir

from .load import AnalysisError, Results, find_dataset_texts, load_results


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


@dataclass
class Comparisons:
    """The model-against-reference comparisons of a report, planned once and used by several sections:
    `parts` name -> [(dataset, model runs, reference runs)] (one part per dataset; pooled ones have
    several), `diffs` one row per (dataset, model, query) with seed-averaged scores."""
    reference: str
    parts: dict = field(default_factory=dict)
    pooled: list = field(default_factory=list)  # the names of the pooled comparisons
    diffs: pd.DataFrame = field(default_factory=pd.DataFrame)
    references: dict = field(default_factory=dict)  # dataset -> reference run (a row of runs)
    notes: list = field(default_factory=list)


def plan_comparisons(res: Results, reference: str) -> Comparisons:
    """Every clean configuration against the reference's clean configuration, per dataset, and
    pooled over the datasets where both ran (when that is more than one)."""
    plan = Comparisons(reference)
    clean = res.runs[res.runs["kind"] == "clean"]
    many = clean["dataset"].nunique() > 1
    by_setup: dict[str, list] = {}
    diffs = []
    for dataset in sorted(clean["dataset"].unique()):
        ref = pick_reference(res.runs, dataset, reference)
        if ref is None:
            plan.notes.append(f"{dataset}: no clean {reference} run, so no comparisons on it")
            continue
        plan.references[dataset] = ref
        ref_runs = clean[clean["config_key"] == ref["config_key"]]
        on = clean[(clean["dataset"] == dataset) & (clean["config_key"] != ref["config_key"])]
        if on.empty:
            plan.notes.append(f"{dataset}: only the reference configuration is clean, nothing to compare")
            continue
        ref_scores = seeds.seed_scores(res.per_query, ref_runs).mean(axis=1)
        for key, model_runs in on.groupby("config_key", sort=False):
            first = model_runs.iloc[0]
            name = f"{dataset + ': ' if many else ''}{first['name']} − {ref['name']}"
            plan.parts[name] = [(dataset, model_runs, ref_runs)]
            by_setup.setdefault((first["setup_key"], ref["setup_key"]), []).append((dataset, model_runs, ref_runs))
            scores = seeds.seed_scores(res.per_query, model_runs).mean(axis=1)
            joined = pd.DataFrame({"score": scores, "reference_score": ref_scores}).dropna()
            diffs.append(joined.assign(dataset=dataset, model=first["name"], qid=joined.index,
                                       diff=joined["score"] - joined["reference_score"]).reset_index(drop=True))
    for parts in by_setup.values():
        if len(parts) > 1:
            name = f"pooled ({', '.join(p[0] for p in parts)}): {parts[0][1].iloc[0]['name']} − {parts[0][2].iloc[0]['name']}"
            plan.parts[name] = parts
            plan.pooled.append(name)
    plan.diffs = pd.concat(diffs, ignore_index=True) if diffs else pd.DataFrame()
    return plan


def position_pairs(res: Results) -> dict:
    """name -> [(dataset, perturbed runs, clean runs)]: each input perturbation against the clean
    configuration of the same model on the same dataset."""
    runs = res.runs
    clean = runs[runs["kind"] == "clean"]
    perturbed = runs[runs["kind"].isin(["input", "mixed"]) & runs["base_key"].isin(clean["config_key"])]
    many = runs["dataset"].nunique() > 1
    out = {}
    for key, g in perturbed.groupby("config_key", sort=False):
        first = g.iloc[0]
        name = f"{first['dataset'] + ': ' if many else ''}{first['name']}: {first['perturbation']}"
        out[name] = [(first["dataset"], g, clean[clean["config_key"] == first["base_key"]])]
    return out


def significance_family(res: Results, plan: Comparisons, resamples: int, seed: int) -> errors.Family:
    """Every paired test the report shows, Holm-corrected together: the position tests and the
    model-against-reference tests (per dataset and pooled)."""
    family = errors.Family()
    pairs = position_pairs(res)
    if pairs:
        sig = errors.compare_configs(list(pairs.items()), res.per_query, n_resamples=resamples, seed=seed)
        keys = [parts[0][1]["config_key"].iloc[0] for parts in pairs.values()]
        family.add("position", sig.assign(config_key=keys))
    if plan.parts:
        family.add("architectures", errors.compare_configs(list(plan.parts.items()), res.per_query,
                                                           n_resamples=resamples, seed=seed + 100_000))
    return family.adjust()


def family_note(family: errors.Family, resamples: int) -> str:
    return (f"p-values: two-sided paired sign-flip permutation test ({resamples} resamples; exact when "
            f"2^n is smaller) on per-query NDCG@10 averaged over each configuration's seeds; pooled rows "
            f"stratified by dataset (statistic: the mean over datasets of each dataset's mean difference; "
            f"sign flips are per query, so a permutation never mixes datasets; bootstrap CI resampled within "
            f"datasets). Holm-corrected over all **{family.size}** tests in this report (one family).")


def section_headline(res: Results, md: list[str], plan: Comparisons, family: errors.Family, resamples: int) -> None:
    md.append("## 1. Headline: each model per dataset and pooled\n")
    clean = res.runs[res.runs["kind"] == "clean"]
    if clean.empty:
        md.append("No clean runs: headline skipped.\n")
        return
    datasets = sorted(clean["dataset"].unique())
    per = seeds.summarise(clean, "ndcg@10")
    rows = {}
    for key, g in clean.groupby("config_key", sort=False):
        first = g.iloc[0]
        row = rows.setdefault(first["setup_key"], {"model": first["name"], "seeds": 0})
        row[first["dataset"]] = seeds.interval_text(*per.loc[key, ["mean", "low", "high"]])
        row["seeds"] = max(row["seeds"], int(per.loc[key, "seeds"]))
    pooled, _ = pareto.across_datasets(clean, "query_p50_ms", "ndcg@10") if len(datasets) > 1 else (pd.DataFrame(), [])
    for _, p in pooled.iterrows():
        rows[p["setup_key"]]["mean over datasets"] = seeds.interval_text(p["ndcg@10"], p["ndcg@10_low"], p["ndcg@10_high"])
    latency = pareto.aggregate_repeats(clean[clean["query_p50_ms"].notna()], "query_p50_ms", "ndcg@10")
    for setup, g in latency.groupby("setup_key"):
        spread = np.sqrt(np.nanmean(np.square(g["query_p50_ms_std"]))) if g["query_p50_ms_std"].notna().any() else np.nan
        rows[setup]["query p50 ms (± spread)"] = f"{g['query_p50_ms'].mean():.1f}" + (
            f" ± {spread:.1f}" if np.isfinite(spread) else "")
    table = pd.DataFrame(rows.values())
    cols = ["model", *datasets, *(["mean over datasets"] if len(pooled) else []), "seeds", "query p50 ms (± spread)"]
    table = table.reindex(columns=cols)
    md.append("NDCG@10: mean over seeds [95% t-interval over seeds; none for one seed]. Query latency: p50 at "
              "batch 1, mean over datasets, ± the root mean square of each dataset's spread (over repeated runs, "
              "or a single run's own timing repeats).\n\n" + md_table(table.sort_values("model")))
    if res.runs["perturbation"].nunique() > 1:
        md.append("\nNDCG@10 under every condition, per dataset (mean over seeds; the conditions as in "
                  "sections 3 and 4):\n\n" + grid_markdown(grid_tables(res.runs)))
    sig = family.get("architectures")
    if len(sig):
        md.append(f"\nAgainst {plan.reference} (ΔNDCG@10 = model − reference; per dataset, and pooled over the "
                  "datasets both ran on):\n\n" + seed_significance_table(sig) + "\n" + family_note(family, resamples) + "\n")


KIND_ORDER = {"clean": 0, "model": 1, "input": 2, "mixed": 3}


def condition_order(runs: pd.DataFrame) -> list[str]:
    """The perturbations of `runs`: clean, then model, input and mixed ones, numbers in numeric order."""
    kinds = runs.groupby("perturbation")["kind"].first()
    natural = lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p)]  # noqa: E731
    return sorted(kinds.index, key=lambda p: (KIND_ORDER.get(kinds[p], 4), natural(p)))


def grid_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """NDCG@10 of each model (rows, by name) under each condition (columns): one table per dataset
    (mean over seeds), and, over several datasets, "mean over datasets" (the mean of each dataset's
    mean, for the models and conditions that ran on every dataset)."""
    per_seed = runs.groupby(["dataset", "name", "perturbation", "seed"])["ndcg@10"].mean()
    means = per_seed.groupby(level=["dataset", "name", "perturbation"]).mean().unstack("perturbation")
    columns = condition_order(runs)
    tables = {d: means.loc[d].reindex(columns=columns).dropna(how="all", axis=1) for d in sorted(runs["dataset"].unique())}
    if len(tables) > 1:
        stacked = means.reindex(columns=columns)
        complete = stacked.notna().groupby(level="name").sum() == len(tables)
        pooled = stacked.groupby(level="name").mean().where(complete).dropna(how="all").dropna(how="all", axis=1)
        if len(pooled):
            tables["mean over datasets"] = pooled
    return tables


def grid_markdown(tables: dict[str, pd.DataFrame]) -> str:
    return "\n".join(f"{name}:\n\n" + md_table(t.map(lambda v: f"{v:.4f}" if pd.notna(v) else "").reset_index()
                                              .rename(columns={"name": "model"}))
                     for name, t in tables.items())


def seed_significance_table(sig: pd.DataFrame) -> str:
    """A comparison table with the seed spread beside the test on seed-averaged scores."""
    t = sig.assign(**{"95% CI": [f"[{lo:+.4f}, {hi:+.4f}]" for lo, hi in zip(sig["ci_low"], sig["ci_high"])],
                      "W/L/T": [f"{w}/{l}/{t}" for w, l, t in zip(sig["wins"], sig["losses"], sig["ties"])],
                      "per-seed Δ [95% t]": [seeds.interval_text(m, lo, hi) for m, lo, hi in
                                             zip(sig["seed_mean_diff"], sig["seed_ci_low"], sig["seed_ci_high"])]})
    t = t.rename(columns={"mean_diff": "mean Δ", "cohens_dz": "d_z", "p_holm": "p (Holm)"})
    return md_table(t[["comparison", "n", "mean_a", "mean_b", "mean Δ", "95% CI", "d_z", "W/L/T", "seeds",
                       "per-seed Δ [95% t]", "p", "p (Holm)"]])


def section_frontier(res: Results, out: Path, md: list[str]) -> None:
    md.append("## 2. Quality against cost: the Pareto frontier\n")
    # Input perturbations change what is measured, not the model: only clean and pruned runs compete.
    runs = res.runs[res.runs["kind"].isin(["clean", "model"])]
    if runs.empty:
        md.append("No clean or pruned runs: frontier skipped.\n")
        return
    bars = ("error bars: NDCG@10, 95% t-interval over seeds (none for one seed); latency, its standard deviation "
            "over repeated runs or a single run's own timing repeats")
    cols = ["dataset", "name", "perturbation", "params (M)", "query_p50_ms", "corpus_docs_per_s", "NDCG@10 [95% CI]",
            "seeds", "repeats", "frontier"]
    for x, what in (("query_p50_ms", "query latency"), ("corpus_docs_per_s", "corpus throughput")):
        if runs[x].isna().all():
            md.append(f"No run recorded {what} ({x}): that frontier is skipped.\n")
            continue
        name = "frontier_latency" if x == "query_p50_ms" else "frontier_throughput"
        path, front, omitted = pareto.plot_frontier(runs, x, out, name)
        caption = f"NDCG@10 against {what}, one panel per dataset; ringed points joined by the dashed step line: Pareto frontier; {bars}"
        if omitted:
            caption += f"; {omitted} point label(s) left out where they would overlap (all points are in the table)"
        figure(md, path, caption)
        if x == "query_p50_ms":
            points = pd.concat([p for _, p in pareto.frontier_points(runs, x)], ignore_index=True)
            md.append(md_table(frontier_table(points, front)[cols]))
    if runs["dataset"].nunique() > 1 and runs["query_p50_ms"].notna().any():
        path, front, omitted = pareto.plot_frontier(runs, "query_p50_ms", out, "frontier_pooled", pooled=True)
        panels = pareto.frontier_points(runs, "query_p50_ms", pooled=True)
        if panels:
            figure(md, path, "Mean NDCG@10 over the datasets (the mean of each dataset's mean) against mean query "
                             f"latency, configurations that ran on every dataset only; {bars}")
            md.append(md_table(frontier_table(panels[0][1], front)[cols]))
        else:
            md.append("No configuration ran on every dataset: the pooled frontier is skipped.\n")
    if runs["corpus_cached"].fillna(False).astype(bool).any():
        md.append("\nSome corpus encodings came from the embedding cache; their throughput is the one measured "
                  "when the cache entry was written.\n")


def frontier_table(points: pd.DataFrame, front: pd.DataFrame) -> pd.DataFrame:
    points = points.assign(frontier=np.where(points["config_key"].isin(front["config_key"]), "yes", ""),
                           **{"params (M)": points["params"] / 1e6,
                              "NDCG@10 [95% CI]": [seeds.interval_text(m, lo, hi) for m, lo, hi in
                                                   zip(points["ndcg@10"], points["ndcg@10_low"], points["ndcg@10_high"])]})
    return points.sort_values(["dataset", "ndcg@10"], ascending=[True, False])


def section_pruning(res: Results, out: Path, md: list[str], floor: float) -> None:
    md.append("## 3. Pruning sensitivity\n")
    path, data = sensitivity.plot_pruning(res.runs, out, floor=floor)
    if path is None:
        md.append(f"{data}.\n")
        return
    figure(md, path, "NDCG@10 relative to each model's unpruned run, against requested sparsity (left) and "
                     "remaining parameters (right), one row per dataset")
    if data["flagged"].any():
        md.append(sensitivity.FLAG_NOTE.format(floor=floor) + "\n")
    shown = data.assign(**{"params (M)": data["params"] / 1e6}, flagged=np.where(data["flagged"], "†", ""))
    md.append(md_table(shown[["dataset", "name", "criterion", "sparsity", "realised", "params (M)", "ndcg", "relative",
                              "flagged"]]))
    pooled = sensitivity.pooled_relative(data, ["criterion", "sparsity"])
    if len(pooled):
        md.append("\nPooled: relative NDCG@10 averaged over the datasets (models pruned on every dataset):\n\n"
                  + md_table(pooled))


def section_position(res: Results, out: Path, md: list[str], floor: float, family: errors.Family,
                     resamples: int) -> None:
    md.append("## 4. Position sensitivity\n")
    sig = family.get("position")
    path, table = sensitivity.plot_position(res.runs, out, floor=floor, significance=sig if len(sig) else None)
    if path is None:
        md.append(f"{table}.\n")
    else:
        figure(md, path, "NDCG@10 under each input perturbation relative to the same model's clean run (rows: "
                         "dataset: model)")
        md.append("Each perturbed configuration against its clean configuration:\n\n")
        md.append(seed_significance_table(sig) + "\n" + family_note(family, resamples) + "\n")
        pooled = sensitivity.pooled_relative(table.rename(columns={"ndcg@10": "ndcg"}), ["perturbation"])
        if len(pooled):
            md.append("\nPooled: relative NDCG@10 averaged over the datasets (models perturbed on every dataset):\n\n"
                      + md_table(pooled))
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


def pick_reference(runs: pd.DataFrame, dataset: str, reference: str) -> pd.Series | None:
    """The clean run of `reference` (encoder name, tag or model) on `dataset`: the packaged checkpoint
    (no preset, no checkpoint) in float32 first, then the newest."""
    c = runs[(runs["dataset"] == dataset) & (runs["kind"] == "clean")
             & ((runs["encoder"] == reference) | (runs["tag"] == reference) | (runs["model"] == reference))]
    if c.empty:
        return None
    rank = c["preset"].notna().astype(int) + c["checkpoint"].notna().astype(int) + (c["dtype"] != "float32").astype(int)
    return c.assign(_rank=rank).sort_values(["_rank", "created"], ascending=[True, False]).iloc[0]


def dataset_texts(res: Results, plan: Comparisons) -> tuple[dict, list[str]]:
    """dataset -> its loaded test split (for query texts and categories), and why any is missing."""
    texts, notes = {}, []
    for dataset, ref in plan.references.items():
        found, why = find_dataset_texts(res.summaries[ref["path"]], res.root)
        if found is None:
            notes.append(f"{dataset}: {why}; query texts, lexical overlap and categories skipped")
        else:
            texts[dataset] = found
    return texts, notes


def section_errors(res: Results, out: Path, md: list[str], plan: Comparisons, texts: dict, notes: list[str]) -> list[str]:
    md.append(f"## 5. Per-query error analysis against {plan.reference}\n")
    for note in plan.notes + notes:
        md.append(f"- {note}.\n")
    if plan.diffs.empty:
        md.append("\nNo comparisons: error analysis skipped.\n")
        return plan.notes + notes
    md.append("\nThe paired tests are in section 1. Per-query scores here are averaged over each configuration's seeds.\n")
    diffs = plan.diffs.assign(query=[texts[d].queries.get(q, "") if d in texts else ""
                                     for d, q in zip(plan.diffs["dataset"], plan.diffs["qid"])])
    by_dataset = diffs.pivot_table(index="model", columns="dataset", values="diff", aggfunc="mean")
    md.append("\nMean ΔNDCG@10 against the reference by dataset (domain):\n\n" + md_table(by_dataset.reset_index()))
    features = {}
    for dataset, ref in plan.references.items():
        ref_pq = res.per_query[res.per_query["path"] == ref["path"]]
        features[dataset] = errors.query_features(ref_pq, texts.get(dataset))
    feats = pd.concat(features, names=["dataset", "qid"])
    table = errors.breakdown(diffs, feats)
    if len(table):
        path = errors.plot_breakdown(table, plots.model_styles(res.runs), out, plan.reference)
        figure(md, path, f"mean per-query ΔNDCG@10 against {plan.reference} by bucket of each complexity proxy "
                         "(n = queries per bucket)")
        wide = table.pivot_table(index=["proxy", "rank", "bucket"], columns="model", values="mean", observed=True)
        wide.insert(0, "queries", table.groupby(["proxy", "rank", "bucket"], observed=True)["size"].max())
        md.append("Mean ΔNDCG@10 against the reference per bucket:\n\n" +
                  md_table(wide.reset_index().drop(columns="rank")))
    ext = errors.extremes(diffs)
    md.append("\nQueries each model wins and loses most against the reference:\n\n")
    md.append(md_table(ext[["model", "outcome", "dataset", "qid", "score", "reference_score", "diff", "query"]]
                       .assign(query=ext["query"].str.slice(0, 120))))
    return plan.notes + notes


def section_categories(md: list[str], plan: Comparisons, texts: dict) -> None:
    md.append(f"## 6. Failure modes by query category against {plan.reference}\n")
    diffs = plan.diffs[plan.diffs["dataset"].isin(texts)] if len(plan.diffs) else plan.diffs
    if diffs.empty:
        md.append("No comparison on a dataset whose texts were found: categories skipped.\n")
        return
    feats = pd.concat({d: categories.features(texts[d]) for d in sorted(texts)}, names=["dataset", "qid"])
    diffs = diffs.drop(columns=[c for c in ("query",) if c in diffs])
    table = categories.by_category(diffs, feats)
    if table.empty:
        md.append("No compared query is among the dataset's judged test queries: categories skipped.\n")
        return
    md.append("Categories (analysis/categories.py; the query type by the rules of `categories.query_type`), and how "
              "many test queries fall in each:\n\n")
    counts = pd.concat({f: feats[f"{f}_bucket"].groupby(level="dataset").value_counts().unstack(fill_value=0)
                        .T.reindex(categories.ORDER[f]).dropna(how="all") for f in categories.ORDER},
                       names=["feature", "bucket"])
    md.append(md_table(counts.fillna(0).astype(int).reset_index()))
    md.append("\nPer bucket: mean ΔNDCG@10 (model − reference, per-query scores averaged over seeds), W/L/T = "
              "queries won / lost / tied, and the model's biggest win and loss in the bucket. `pooled` takes every "
              "dataset's queries together (its `datasets` column says which datasets fill a bucket: a bucket "
              "filled by one dataset shows that dataset, not a category effect).\n")
    for feature in categories.ORDER:
        t = table[table["feature"] == feature]
        t = t.assign(_pooled=t["scope"] == "pooled").sort_values(["_pooled", "scope", "model", "rank"])  # pooled last
        if t.empty:
            continue
        shown = t.assign(**{"mean Δ": t["mean_diff"], "W/L/T": [f"{w}/{l}/{x}" for w, l, x in
                                                                  zip(t["wins"], t["losses"], t["ties"])]})
        md.append(f"\n### {categories.TITLES[feature]}\n\n" + md_table(
            shown[["scope", "model", "bucket", "queries", "mean Δ", "W/L/T", "datasets", "best_win", "worst_loss"]]
            .rename(columns={"best_win": "biggest win", "worst_loss": "biggest loss"})))


def section_environment(res: Results, md: list[str]) -> None:
    md.append("## 7. Environment and configuration\n")
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
    plan = plan_comparisons(res, reference)
    family = significance_family(res, plan, resamples, seed)
    texts, notes = dataset_texts(res, plan)
    section_headline(res, md, plan, family, resamples)
    section_frontier(res, out, md)
    section_pruning(res, out, md, floor)
    section_position(res, out, md, floor, family, resamples)
    long_docs.section(res, out, md)
    section_errors(res, out, md, plan, texts, notes)
    section_categories(md, plan, texts)
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
