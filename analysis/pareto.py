"""Quality against cost: the Pareto frontier of runs and its plot.

A run is on the frontier when no other run is at least as good on both axes and strictly better on
one. Exact duplicates do not dominate each other, so both stay (they are distinct runs); of two runs
tied on one axis only the one better on the other stays.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import plots, seeds

BETTER = ("lower", "higher")


def pareto_frontier(frame: pd.DataFrame, x: str, y: str, x_better: str = "lower",
                    y_better: str = "higher") -> pd.DataFrame:
    """The non-dominated rows of `frame` (rows with a missing x or y are ignored), sorted by x."""
    if x_better not in BETTER or y_better not in BETTER:
        raise ValueError(f"x_better and y_better must be 'lower' or 'higher', got {x_better!r}, {y_better!r}")
    data = frame[frame[x].notna() & frame[y].notna()]
    # Flip signs so that "higher is better" on both axes, then an O(n^2) dominance check: n is the
    # number of runs (hundreds at most), and this reads like the definition.
    xs = data[x].to_numpy(float) * (1 if x_better == "higher" else -1)
    ys = data[y].to_numpy(float) * (1 if y_better == "higher" else -1)
    geq = (xs[None, :] >= xs[:, None]) & (ys[None, :] >= ys[:, None])  # [i, j]: j at least as good as i
    gt = (xs[None, :] > xs[:, None]) | (ys[None, :] > ys[:, None])
    dominated = (geq & gt).any(axis=1)
    return data[~dominated].sort_values([x, y], kind="stable")


def aggregate_repeats(runs: pd.DataFrame, x: str, y: str, by: str = "config_key") -> pd.DataFrame:
    """One row per configuration (`by`): y as its mean over seeds with a 95% t-interval (`{y}_low`,
    `{y}_high`; none for one seed: analysis/seeds.py), `seeds`, and x as the mean over its runs with
    their standard deviation; a configuration run once still gets a latency spread: the standard
    deviation of its own timing repeats' p50s (`query_p50_ms_spread`, recorded by every run)."""
    g = runs.groupby(by, sort=False)
    first = g.head(1).set_index(by)
    x_std = g[x].std()
    if f"{x}_spread" in runs:  # within-run repeats where there is only one run
        spread = pd.to_numeric(runs[f"{x}_spread"], errors="coerce").groupby(runs[by], sort=False).mean()
        x_std = x_std.fillna(spread)
    over_seeds = seeds.summarise(runs, y, by)
    out = first.assign(**{x: g[x].mean(), y: over_seeds["mean"], f"{x}_std": x_std, f"{y}_std": g[y].std(),
                          f"{y}_low": over_seeds["low"], f"{y}_high": over_seeds["high"],
                          "seeds": over_seeds["seeds"], "repeats": g.size()})
    return out.reset_index()


def across_datasets(runs: pd.DataFrame, x: str, y: str) -> tuple[pd.DataFrame, list[str]]:
    """One row per setup (a configuration across datasets) present on every dataset of `runs`: y as
    the mean of its per-dataset means, with a 95% t-interval over seeds (per seed, the mean over
    datasets), x as the mean of its per-dataset values, with the root mean square of their spreads
    (the datasets' latencies differ by query length: that is not noise). Returns (rows, datasets)."""
    datasets = sorted(runs["dataset"].unique())
    on = runs.groupby("setup_key")["dataset"].nunique()
    runs = runs[runs["setup_key"].isin(on[on == len(datasets)].index)]
    if runs.empty:
        return pd.DataFrame(), datasets
    per_seed = runs.assign(seed=runs["seed"].fillna(0)).groupby(["setup_key", "seed", "dataset"])[y].mean()
    complete = per_seed.groupby(["setup_key", "seed"]).size() == len(datasets)  # seeds run on every dataset
    seed_means = per_seed.groupby(["setup_key", "seed"]).mean()[complete].rename(y).reset_index()
    over_seeds = seeds.summarise(seed_means, y, "setup_key")
    per_dataset = aggregate_repeats(runs, x, y).groupby("setup_key")
    out = runs.groupby("setup_key", sort=False).head(1).set_index("setup_key")
    out = out.assign(**{x: per_dataset[x].mean(), f"{x}_std": np.sqrt((per_dataset[f"{x}_std"].apply(np.square)).mean()),
                        y: over_seeds["mean"],
                        f"{y}_low": over_seeds["low"], f"{y}_high": over_seeds["high"], "seeds": over_seeds["seeds"],
                        "repeats": runs.groupby("setup_key").size(), "dataset": "mean of " + ", ".join(datasets), "config_key": out.index})
    return out.reset_index(), datasets


DTYPE_SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def point_label(row, with_dtype: bool = True) -> str:
    """Variant / pruning level / dtype, short, for a point on the plot."""
    parts = [row["model"]]
    if pd.notna(row.get("prune_sparsity")):
        parts.append(f"p{row['prune_sparsity']:g}" + (" act" if row.get("prune_criterion") == "activation" else ""))
    if with_dtype and isinstance(row.get("dtype"), str) and row["dtype"] != "float32":  # (BM25 has none)
        parts.append(DTYPE_SHORT.get(row["dtype"], row["dtype"]))
    return " ".join(p for p in parts if p)


AXES = {  # x column -> (axis title, which direction is better)
    "query_p50_ms": ("query latency p50, batch 1 (ms, log scale)", "lower"),
    "corpus_docs_per_s": ("corpus throughput (documents/s, log scale)", "higher"),
}


def frontier_points(runs: pd.DataFrame, x: str, y: str = "ndcg@10", pooled: bool = False) -> list:
    """[(panel title, one row per configuration)]: one panel per dataset, or (pooled) one panel of
    the configurations present on every dataset, averaged over them."""
    runs = runs[runs[x].notna()]
    if pooled:
        points, datasets = across_datasets(runs, x, y)
        return [(f"mean over {', '.join(datasets)}", points)] if len(points) else []
    return [(dataset, aggregate_repeats(runs[runs["dataset"] == dataset], x, y))
            for dataset in sorted(runs["dataset"].unique())]


def plot_frontier(runs: pd.DataFrame, x: str, out_dir, name: str, y: str = "ndcg@10", pooled: bool = False):
    """One panel per dataset (small multiples; `pooled`: one panel of the mean over datasets): every
    configuration, with y error bars from its 95% t-interval over seeds and x error bars from the
    spread of its latency (over its runs, or its own timing repeats), the frontier as a step line.
    Returns (figure file name, frontier rows, labels left out to avoid overlap)."""
    title, better = AXES[x]
    panels = frontier_points(runs, x, y, pooled)
    fig, axes = plots.subplots(max(1, len(panels)), width=7.5, height=5.0)
    frontier_rows, labels, omitted = [], [], 0
    for ax, (panel, points) in zip(axes, panels):
        if points.empty:
            ax.set_visible(False)
            continue
        front = pareto_frontier(points, x, y, x_better=better)
        frontier_rows.append(front)
        for arch, group in points.groupby("arch", sort=True):
            color, marker = plots.arch_style(arch)
            yerr = [(group[y] - group[f"{y}_low"]).fillna(0), (group[f"{y}_high"] - group[y]).fillna(0)]
            ax.errorbar(group[x], group[y], xerr=group[f"{x}_std"].fillna(0), yerr=yerr, fmt=marker, color=color,
                        mfc=plots.marker_face(arch, color), ms=7, capsize=3, label=arch, ls="none", mec="black",
                        mew=0.5, zorder=3)
        # "post"/"pre": the best quality reachable within a latency budget (or above a throughput floor).
        ax.step(front[x], front[y], where="post" if better == "lower" else "pre", color="0.3", ls="--", lw=1,
                marker="o", ms=15, mfc="none", mec="0.3", zorder=2, label="Pareto frontier")  # ringed points
        ax.set_xscale("log")
        lo, hi = (points[x] - points[f"{x}_std"].fillna(0)).min(), (points[x] + points[f"{x}_std"].fillna(0)).max()
        ax.set_xlim(max(lo, points[x].min() / 3) / 1.4, hi * 1.4)  # a one-point plot gets a sensible range too
        plots.plain_log_ticks(ax.xaxis)
        ax.set_xlabel(title + (", better ←" if better == "lower" else ", better →"))
        ax.set_ylabel(f"{'mean ' if pooled else ''}{y.upper()} (higher is better)")
        ax.set_ylim(bottom=min(0, points[y].min()) - 0.02, top=max(pd.concat([points[y], points[f"{y}_high"]]).max() * 1.1, 0.1))
        # One dtype for every point that has one (BM25 has none): say it once in the title, not on each label.
        dtypes = points["dtype"].dropna().unique()
        one_dtype = len(dtypes) == 1
        ax.set_title(panel + (f" (all runs {DTYPE_SHORT.get(dtypes[0], dtypes[0])})" if one_dtype else ""))
        ax.grid(True, which="both", alpha=0.3)
        # Frontier labels first, so that those are the ones kept when labels would collide.
        order = points.assign(_front=points["config_key"].isin(front["config_key"])).sort_values("_front", ascending=False)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        labels.append((ax, order[x], order[y], [point_label(r, with_dtype=not one_dtype) for _, r in order.iterrows()]))
    for args in labels:  # after every panel is drawn: the layout (and so label positions) is final
        omitted += plots.place_labels(*args)
    path = plots.save(fig, out_dir, name)
    return path, (pd.concat(frontier_rows) if frontier_rows else pd.DataFrame()), omitted
