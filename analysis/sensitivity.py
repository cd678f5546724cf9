"""Robustness: pruning and input-position perturbations, relative to each model's clean run.

Relative scores make architectures of different absolute quality comparable, but a model whose clean
NDCG@10 is near zero (an untrained preset sits at ~0.01) has a meaningless ratio (~0/0): such models
are still shown, but flagged (grey, hatched, dagger) whenever the clean score is below `floor`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import Normalize

from . import plots
from .plots import plt
from .load import latest_per_config

FLOOR = 0.05
FLAG_NOTE = "† clean NDCG@10 below {floor:g}: the relative score is ~0/0 and not meaningful (shown in grey)."


def with_relative(runs: pd.DataFrame, metric: str = "ndcg@10", floor: float = FLOOR) -> pd.DataFrame:
    """runs + clean_<metric> (mean over the clean repeats of the same base configuration),
    relative (metric / clean) and flagged (clean below floor). Runs without a clean run get NaN."""
    clean = runs[runs["kind"] == "clean"].groupby("base_key")[metric].mean()
    out = runs.assign(clean=runs["base_key"].map(clean))
    out["relative"] = out[metric] / out["clean"].where(out["clean"] > 0)
    out["flagged"] = out["clean"] < floor
    return out


def model_name(row, flagged: bool, many_datasets: bool) -> str:
    return (f"{row['dataset']}: " if many_datasets else "") + row["name"] + (" †" if flagged else "")




def plot_pruning(runs: pd.DataFrame, out_dir, floor: float = FLOOR, name: str = "pruning"):
    """Relative NDCG@10 against requested sparsity and against remaining parameters, one line per model
    (its clean run is the point at sparsity 0), one row of two panels per dataset. Returns (figure,
    table) or (None, reason)."""
    rel = with_relative(runs, floor=floor)
    pruned = rel[(rel["kind"] == "model") & rel["prune_sparsity"].notna()]
    if pruned.empty:
        return None, "no pruning runs: pruning section skipped"
    keys = pruned["base_key"].unique()
    data = rel[rel["base_key"].isin(keys) & (rel["kind"].eq("clean") | rel.index.isin(pruned.index))].copy()
    data["sparsity"] = data["prune_sparsity"].fillna(0.0).astype(float)
    # One line per pruning criterion (magnitude, activation), each starting at the model's clean run.
    data["criterion"] = data["prune_criterion"].fillna("magnitude")
    is_prune = data["kind"] == "model"
    lines = data[is_prune][["base_key", "criterion"]].drop_duplicates()
    clean_rows = data[~is_prune].drop(columns="criterion").merge(lines, on="base_key")
    data = pd.concat([data[is_prune], clean_rows], ignore_index=True)
    data = data.groupby(["base_key", "criterion", "sparsity"], as_index=False).agg(
        dataset=("dataset", "first"), setup_key=("setup_key", "first"), model=("model", "first"), arch=("arch", "first"), dtype=("dtype", "first"),
        name=("name", "first"), ndcg=("ndcg@10", "mean"), clean=("clean", "first"), relative=("relative", "mean"),
        flagged=("flagged", "first"), realised=("prune_realised", "mean"), params=("params", "mean"))
    good = data.loc[~data["flagged"], "relative"].dropna()
    top = max(1.1, good.max() * 1.05) if len(good) else 1.5
    datasets = sorted(data["dataset"].unique())
    fig, axes = plots.subplots(2 * len(datasets), width=6.0, height=4.2, ncols=2)
    styles = plots.model_styles(data)
    for row, dataset in enumerate(datasets):
        ax_s, ax_p = axes[2 * row], axes[2 * row + 1]
        for (key, criterion), g in data[data["dataset"] == dataset].groupby(["base_key", "criterion"], sort=True):
            g = g.sort_values("sparsity")
            flagged = bool(g["flagged"].iloc[0])
            color, marker, ls = styles[g["name"].iloc[0]]
            ls = ls if criterion == "magnitude" else "--"
            color, ls = ("0.6", ":") if flagged else (color, ls)
            y = g["relative"].clip(upper=top) if flagged else g["relative"]  # keep a flagged ~0/0 ratio on the axes
            label = model_name(g.iloc[0], flagged, False) + ("" if criterion == "magnitude" else f" ({criterion})")
            z = 2 if flagged else 3  # flagged models behind the meaningful ones
            ax_s.plot(g["sparsity"], y, marker=marker, color=color, ls=ls, label=label, mec="black", mew=0.4, zorder=z)
            ax_p.plot(g["params"] / 1e6, y, marker=marker, color=color, ls=ls, label=label, mec="black", mew=0.4,
                      zorder=z)
        for ax in (ax_s, ax_p):
            ax.axhline(1.0, color="0.4", lw=0.8, ls=":")
            ax.set_ylim(0, top)
            ax.set_ylabel("NDCG@10 relative to the unpruned model")
            ax.set_title(dataset)
            ax.grid(True, alpha=0.3)
        ax_s.set_xlabel("requested sparsity (fraction of prunable weights removed)")
        ax_p.set_xlabel("parameters after pruning (millions)")
        ax_p.invert_xaxis()  # fewer parameters to the right, like higher sparsity on the left panel
        ax_p.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    if data["flagged"].any():
        fig.supxlabel(FLAG_NOTE.format(floor=floor) + " Ratios above the axis are clipped to its top.",
                      fontsize=8, color="0.3")
    return plots.save(fig, out_dir, name), data


def plot_position(runs: pd.DataFrame, out_dir, floor: float = FLOOR, significance: pd.DataFrame | None = None,
                  name: str = "position"):
    """Heat map: rows are models, columns input perturbations, cells NDCG@10 relative to clean (and the
    absolute score). A `*` marks a Holm-significant change when `significance` (columns config_key and
    p_holm) is given."""
    rel = with_relative(runs, floor=floor)
    perturbed = rel[rel["kind"].isin(["input", "mixed"]) & rel["clean"].notna()]
    if perturbed.empty:
        return None, "no input-perturbation runs with a matching clean run: position heat map skipped"
    many = perturbed["dataset"].nunique() > 1
    perturbed = perturbed.assign(row=[model_name(r, r["flagged"], many) for _, r in perturbed.iterrows()])
    if significance is not None and len(significance):
        p = perturbed["config_key"].map(significance.set_index("config_key")["p_holm"])
        perturbed = perturbed.assign(star=p < 0.05)
    else:
        perturbed = perturbed.assign(star=False)
    table = perturbed.groupby(["row", "perturbation"]).agg(relative=("relative", "mean"), ndcg=("ndcg@10", "mean"),
                                                            flagged=("flagged", "first"), star=("star", "any"))
    rel_grid = table["relative"].unstack()
    cols = sorted(rel_grid.columns, key=_perturbation_order)
    rel_grid = rel_grid[cols]
    abs_grid = table["ndcg"].unstack()[cols]
    flags = table["flagged"].groupby(level=0).first().reindex(rel_grid.index)
    stars = table["star"].unstack()[cols].fillna(False)
    values = rel_grid.to_numpy(float).copy()
    values[flags.to_numpy(bool)] = np.nan  # flagged rows: no colour, hatched instead
    finite = values[np.isfinite(values)]
    # Symmetric around 1, so that a gain and a loss of the same size get equally strong colours.
    span = max(0.05, np.abs(finite - 1).max()) if finite.size else 0.5
    norm = Normalize(1 - span, 1 + span)
    cmap = plt.get_cmap("RdBu")
    fig, (ax,) = plots.subplots(1, width=max(6.0, 1.3 * len(cols) + 4.0), height=0.55 * len(rel_grid) + 2.4)
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    for i, row in enumerate(rel_grid.index):
        for j, col in enumerate(cols):
            r, a = rel_grid.iloc[i, j], abs_grid.iloc[i, j]
            if pd.isna(a):
                continue
            if flags.iloc[i]:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", color="0.75", lw=0))
            text = f"{r:.2f}{'*' if stars.iloc[i, j] else ''}\n({a:.3f})" if pd.notna(r) else f"–\n({a:.3f})"
            dark = pd.notna(values[i, j]) and abs(norm(values[i, j]) - 0.5) > 0.3  # white on saturated cells
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="0.45" if flags.iloc[i] else ("white" if dark else "black"))
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rel_grid)), rel_grid.index)
    ax.set_xlabel("input perturbation")
    fig.colorbar(im, ax=ax, label="NDCG@10 / clean NDCG@10")
    notes = ["cell: relative NDCG@10, (absolute NDCG@10)"]
    if significance is not None and len(significance):
        notes.append("* Holm-adjusted paired sign-flip p < 0.05 against the clean run")
    if flags.any():
        notes.append(FLAG_NOTE.format(floor=floor).replace("(shown in grey)", "(hatched, grey)"))
    ax.set_title("\n".join(notes[:2]), fontsize=8)
    if len(notes) > 2:
        fig.supxlabel(notes[2], fontsize=8, color="0.3")
    out = perturbed[["dataset", "name", "setup_key", "perturbation", "ndcg@10", "clean", "relative", "flagged", "path"]]
    return plots.save(fig, out_dir, name), out.sort_values(["dataset", "name", "perturbation"])


def pooled_relative(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Relative NDCG@10 per model (`setup_key`) and `by`, averaged over the datasets, for the models
    that have that condition on every dataset of `table` (columns dataset, name, setup_key, *by,
    ndcg, relative); empty with one dataset."""
    datasets = table["dataset"].nunique()
    if datasets < 2:
        return pd.DataFrame()
    per = table.groupby(["setup_key", *by, "dataset"], as_index=False).agg(
        name=("name", "first"), ndcg=("ndcg", "mean"), relative=("relative", "mean"))
    g = per.groupby(["setup_key", *by], as_index=False).agg(name=("name", "first"), datasets=("dataset", "nunique"),
                                                           ndcg=("ndcg", "mean"), relative=("relative", "mean"))
    g = g[g["datasets"] == datasets].rename(columns={"ndcg": "mean NDCG@10", "relative": "mean relative"})
    return g[["name", *by, "mean NDCG@10", "mean relative"]].sort_values(["name", *by])


def _perturbation_order(name: str):
    kinds = ["sentence-shuffle", "token-shuffle", "truncate:head", "truncate:tail", "pad:prefix", "pad:suffix"]
    rank = next((i for i, k in enumerate(kinds) if name.startswith(k)), len(kinds))
    number = "".join(c for c in name.split(":")[-1] if c.isdigit())
    return rank, "+" in name, int(number) if number else 0, name


def quantile_buckets(values: pd.Series, n: int = 4) -> pd.Series:
    """Quantile buckets of a numeric series as an ordered categorical labelled by value ranges
    (fewer than n buckets when values repeat, e.g. most queries having one relevant document)."""
    codes, edges = pd.qcut(values, n, retbins=True, duplicates="drop", labels=False)
    for digits in (0 if edges.max() >= 10 else 2, 1, 2, 3, 6):  # the fewest digits that keep labels apart
        labels = [f"{edges[i]:.{digits}f}–{edges[i + 1]:.{digits}f}" for i in range(len(edges) - 1)]
        if len(set(labels)) == len(labels):
            break
    return pd.Series(pd.Categorical.from_codes(codes.fillna(-1).astype(int), labels, ordered=True), index=values.index)


def plot_length_buckets(runs: pd.DataFrame, per_query: pd.DataFrame, out_dir, name: str = "doc_length"):
    """Mean NDCG@10 of the clean configurations (per-query scores averaged over their runs: seeds
    and repeats) by quartile of the relevant documents' length (words)."""
    all_clean = runs[runs["kind"] == "clean"]
    pq = per_query[per_query["path"].isin(all_clean["path"])]
    if "relevant_doc_words" not in pq.columns or pq["relevant_doc_words"].notna().sum() == 0:
        return None, "per_query.csv has no relevant_doc_words (runs made before it existed): length buckets skipped"
    # One line per configuration: the newest run stands for it (its name, style), and `path` now
    # means that run, its per-query scores being the configuration's mean over runs.
    clean = latest_per_config(all_clean)
    stand_in = all_clean["config_key"].map(clean.set_index("config_key")["path"])
    pq = (pq.assign(path=pq["path"].map(dict(zip(all_clean["path"], stand_in))))
          .groupby(["path", "qid"], as_index=False).agg({"ndcg@10": "mean", "relevant_doc_words": "first"}))
    datasets = sorted(clean["dataset"].unique())
    fig, axes = plots.subplots(len(datasets), width=7.5, height=4.2)
    rows = []
    for ax, dataset in zip(axes, datasets):
        paths = clean.loc[clean["dataset"] == dataset, "path"]
        d = pq[pq["path"].isin(paths) & pq["relevant_doc_words"].notna()]
        if d.empty:
            ax.set_visible(False)
            continue
        # Bucket edges from the queries (each query once), so every model is cut at the same lengths.
        words = d.drop_duplicates("qid").set_index("qid")["relevant_doc_words"]
        bucket = quantile_buckets(words)
        order = list(bucket.cat.categories)
        d = d.assign(bucket=d["qid"].map(bucket))
        meta = clean.set_index("path")
        styles = plots.model_styles(clean)
        for path, g in d.groupby("path", sort=False):
            run = meta.loc[path]
            color, marker, ls = styles[run["name"]]
            stats = g.groupby("bucket", observed=False)["ndcg@10"].agg(["mean", "size"]).reindex(order)
            ax.plot(range(len(order)), stats["mean"].to_numpy(), marker=marker, color=color, ls=ls, mec="black",
                    mew=0.4, label=model_name(run, False, False))
            rows += [dict(dataset=dataset, model=run["name"], bucket=b, queries=int(stats.loc[b, "size"]),
                          ndcg=stats.loc[b, "mean"]) for b in order]
        ax.set_xticks(range(len(order)), [f"{b}\n(n={int((bucket == b).sum())})" for b in order])
        ax.set_xlabel("mean length of the query's relevant documents (words, quartiles of queries)")
        ax.set_ylabel("NDCG@10 (clean runs)")
        ax.set_ylim(0, None)
        ax.set_title(dataset)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return plots.save(fig, out_dir, name), pd.DataFrame(rows)


def plot_truncation(runs: pd.DataFrame, out_dir, name: str = "truncation"):
    """NDCG@10 against kept tokens, head (solid) and tail (dashed) truncation, per model; the clean
    run at its max_length is the rightmost point of both lines."""
    trunc = runs[(runs["kind"] == "input") & runs["truncate_side"].notna() & runs["shuffle"].isna()
                 & runs["pad_side"].isna()]
    if trunc.empty:
        return None, "no truncation runs: truncation curves skipped"
    clean = runs[(runs["kind"] == "clean") & runs["base_key"].isin(trunc["base_key"])]
    datasets = sorted(trunc["dataset"].unique())
    fig, axes = plots.subplots(len(datasets), width=7.5, height=4.2)
    rows, ticks = [], set()
    for ax, dataset in zip(axes, datasets):
        t = trunc[trunc["dataset"] == dataset]
        for key, g in t.groupby("base_key", sort=True):
            ref = clean[clean["base_key"] == key]
            first = g.iloc[0]
            color, marker = plots.arch_style(first["arch"])
            for side, ls in (("head", "-"), ("tail", "--")):
                s = g[g["truncate_side"] == side].groupby("truncate_tokens")["ndcg@10"].mean()
                if s.empty:
                    continue
                if len(ref) and pd.notna(ref["max_length"].iloc[0]):
                    s[int(ref["max_length"].iloc[0])] = ref["ndcg@10"].mean()
                s = s.sort_index()
                ticks.update(int(v) for v in s.index)
                ax.plot(s.index, s.to_numpy(), marker=marker, color=color, ls=ls, mec="black", mew=0.4,
                        label=f"{model_name(first, False, False)}, keep {side}")
                rows += [dict(dataset=dataset, model=first["name"], side=side, tokens=int(k), ndcg=v)
                         for k, v in s.items()]
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(ticks), [str(v) for v in sorted(ticks)])
        ax.minorticks_off()
        ax.set_xlabel("document tokens kept (log scale)\nrightmost point: the clean run at its max_length")
        ax.set_ylabel("NDCG@10")
        ax.set_ylim(0, None)
        ax.set_title(f"{dataset}: solid = keep the head, dashed = keep the tail")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return plots.save(fig, out_dir, name), pd.DataFrame(rows)
