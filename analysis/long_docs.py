"""Long documents: quality and encoding cost against document length, per model and long-document rule.

Reads the needle runs (`needle:POSITION:TOKENS`, benchmarks/perturbations) and the clean runs of the
same models; a model is named with its `--long-doc` rule (first / maxp / mean) where it ran under more
than one. Per dataset, one figure of three panels:

    NDCG@10 against the needle documents' total length (needle in the middle; the clean run at the
        corpus's own lengths is drawn as a dotted line)
    NDCG@10 against the needle's position (start, middle, end) at each length that has all three
    encoding seconds per document against total length (windows per document / windows per second,
        as each run measured its throughput; on a shared machine a ratio within one run set, not a speed)

and tables of the same numbers, plus NDCG@10 of the clean runs by quartile of the relevant documents'
natural length (words). `section(res, out, md)` is the report's hook.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from . import plots
from .load import Results, latest_per_config
from .sensitivity import quantile_buckets

POSITIONS = ("start", "middle", "end")


def long_doc_runs(res: Results) -> pd.DataFrame:
    """The clean and needle runs (newest of repeats), with `label` (the model and, where it ran under
    several, its long-document rule), `tokens`, `position` and `s_per_doc`."""
    runs = latest_per_config(res.runs)
    needle = runs["needle_tokens"].notna() if "needle_tokens" in runs else pd.Series(False, index=runs.index)
    runs = runs[needle | (runs["kind"] == "clean")].copy()
    if runs.empty:
        return runs
    runs["long_doc"] = runs["long_doc"].fillna("first") if "long_doc" in runs else "first"
    rules = runs.groupby("name")["long_doc"].nunique()
    runs["label"] = [f"{n} {r}" if rules[n] > 1 else n for n, r in zip(runs["name"], runs["long_doc"])]
    runs["tokens"] = runs["needle_tokens"] if "needle_tokens" in runs else np.nan
    runs["position"] = runs["needle_position"] if "needle_position" in runs else None
    runs["s_per_doc"] = [seconds_per_document(res.summaries[p], rate) for p, rate in
                         zip(runs["path"], runs["corpus_docs_per_s"])]
    return runs


def seconds_per_document(summary: dict, texts_per_s) -> float:
    """Encoding seconds per document: the texts (windows, or whole documents) one document became,
    over the texts per second the run measured (on a cache hit: on its timing sample)."""
    if texts_per_s is None or not np.isfinite(texts_per_s) or texts_per_s <= 0:
        return float("nan")
    windows = (summary.get("timings", {}).get("corpus_encode", {}).get("long_doc") or {})
    return float(windows.get("windows_per_document_mean", 1.0)) / float(texts_per_s)


def section(res: Results, out: Path, md: list[str]) -> None:
    md.append("### Long documents\n")  # a part of the position section, which it follows
    runs = long_doc_runs(res)
    needles = runs[runs["tokens"].notna()] if len(runs) else runs
    if needles.empty:
        md.append("No needle runs (`--perturbation needle:POSITION:TOKENS`): long-document analysis skipped.\n")
    for dataset in sorted(needles["dataset"].unique()) if len(needles) else []:
        d = runs[runs["dataset"] == dataset]
        path = plot_dataset(d, out, f"long_docs_{safe(dataset)}", dataset)
        md.append(f"#### {dataset}\n")
        md.append(f"![Long documents on {dataset}]({path})\n\n*NDCG@10 against the total length of needle "
                  "documents (needle in the middle; dotted: the clean run), against the needle's position, and "
                  f"encoding seconds per document* ([SVG]({Path(path).with_suffix('.svg')}))\n")
        md.append("NDCG@10 by needle position and total length (tokens):\n\n" + md_table(ndcg_table(d)))
        md.append("\nEncoding seconds per document (needle in the middle):\n\n" + md_table(cost_table(d)))
    tables = natural_lengths(runs, res.per_query)
    if tables:
        md.append("\nNDCG@10 of the clean runs by the natural length of the relevant documents (mean words of a "
                  "query's relevant documents, quartiles of queries), per dataset:\n")
    for dataset, table in tables.items():
        md.append(f"\n{dataset}:\n\n" + md_table(table))


def ndcg_table(runs: pd.DataFrame) -> pd.DataFrame:
    n = runs[runs["tokens"].notna()]
    wide = n.pivot_table(index="label", columns=["position", "tokens"], values="ndcg@10", aggfunc="mean")
    wide.columns = [f"{p} {int(t)}" for p, t in wide.columns]
    clean = runs[runs["tokens"].isna()].groupby("label")["ndcg@10"].mean().rename("clean")
    return wide.join(clean, how="left")[["clean", *wide.columns]].reset_index()


def cost_table(runs: pd.DataFrame) -> pd.DataFrame:
    n = runs[(runs["position"] == "middle") | runs["tokens"].isna()]
    wide = n.assign(tokens=n["tokens"].map(lambda t: "clean" if pd.isna(t) else str(int(t)))).pivot_table(
        index="label", columns="tokens", values="s_per_doc", aggfunc="mean")
    order = (["clean"] if "clean" in wide.columns else []) + sorted((c for c in wide.columns if c != "clean"), key=int)
    return wide[order].reset_index()


def natural_lengths(runs: pd.DataFrame, per_query: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """dataset -> NDCG@10 of each clean model by quartile of its queries' relevant-document length
    (a table per dataset: the quartiles are the dataset's own)."""
    clean = runs[runs["tokens"].isna()] if len(runs) else runs
    pq = per_query[per_query["path"].isin(clean["path"])] if len(clean) else per_query.iloc[:0]
    if pq.empty or "relevant_doc_words" not in pq or pq["relevant_doc_words"].notna().sum() == 0:
        return {}
    tables = {}
    for dataset, runs_d in clean.groupby("dataset"):
        d = pq[pq["path"].isin(runs_d["path"]) & pq["relevant_doc_words"].notna()]
        bucket = quantile_buckets(d.drop_duplicates("qid").set_index("qid")["relevant_doc_words"])
        labels = runs_d.set_index("path")["label"]
        g = d.assign(bucket=d["qid"].map(bucket), label=d["path"].map(labels))
        means = g.pivot_table(index="label", columns="bucket", values="ndcg@10", aggfunc="mean", observed=False)
        means.columns = [f"{b} (n={int((bucket == b).sum())})" for b in means.columns]
        tables[dataset] = means.reset_index()
    return tables


def plot_dataset(runs: pd.DataFrame, out: Path, name: str, dataset: str) -> str:
    fig, axes = plots.subplots(3, width=5.2, height=4.0, ncols=3)
    styles = label_styles(runs)
    needle = runs[runs["tokens"].notna()]
    middle = needle[needle["position"] == "middle"]
    for label, g in middle.groupby("label"):
        g = g.sort_values("tokens")
        color, marker, ls = styles[label]
        axes[0].plot(g["tokens"], g["ndcg@10"], color=color, marker=marker, ls=ls, mec="black", mew=0.4, label=label)
        axes[2].plot(g["tokens"], g["s_per_doc"], color=color, marker=marker, ls=ls, mec="black", mew=0.4, label=label)
        clean = runs[(runs["label"] == label) & runs["tokens"].isna()]
        if len(clean):
            axes[0].axhline(clean["ndcg@10"].mean(), color=color, ls=":", lw=1)
    full = needle.groupby("tokens")["position"].nunique()
    lengths = sorted(full[full == len(POSITIONS)].index)
    for label, g in needle[needle["tokens"].isin(lengths)].groupby("label"):
        color, marker, ls = styles[label]
        for i, tokens in enumerate(lengths):  # one length: the model's own line; several: a style each
            s = g[g["tokens"] == tokens].set_index("position")["ndcg@10"].reindex(list(POSITIONS))
            axes[1].plot(range(len(POSITIONS)), s.to_numpy(), color=color, marker=marker, mec="black", mew=0.4,
                         ls=ls if len(lengths) == 1 else plots.LINESTYLES[i % len(plots.LINESTYLES)])
    for ax in (axes[0], axes[2]):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("needle document length (tokens)")
        plots.plain_log_ticks(ax.xaxis)
    axes[0].set_ylabel("NDCG@10 (needle in the middle)")
    axes[1].set_xticks(range(len(POSITIONS)), POSITIONS)
    axes[1].set_xlabel("needle position" + (f" ({int(lengths[0])} tokens)" if len(lengths) == 1 else
                                            "" if lengths else " (no length has all three)"))
    axes[1].set_ylabel("NDCG@10")
    if len(lengths) > 1:
        axes[1].legend([Line2D([], [], color="black", ls=plots.LINESTYLES[i % len(plots.LINESTYLES)])
                        for i in range(len(lengths))], [f"{int(t)} tokens" for t in lengths], fontsize=7)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("encoding seconds per document")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.set_title(dataset, fontsize=9)
    # One legend for the three panels, below them, so that no curve hides behind it.
    fig.legend([Line2D([], [], color=c, marker=m, ls=ls, mec="black", mew=0.4) for c, m, ls in styles.values()],
               list(styles), loc="outside lower center", ncols=min(3, len(styles)), fontsize=7, handlelength=3.5)
    return plots.save(fig, out, name)


def label_styles(runs: pd.DataFrame) -> dict:
    """label -> (colour, marker, line style): the architecture's colour and marker, a line style per
    label within it (the rules of one model)."""
    styles, seen = {}, {}
    for arch, label in sorted(set(zip(runs["arch"], runs["label"]))):
        color, marker = plots.arch_style(arch)
        styles[label] = (color, marker, plots.LINESTYLES[seen.setdefault(plots.mixer(arch), 0) % len(plots.LINESTYLES)])
        seen[plots.mixer(arch)] += 1
    return styles


def safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def md_table(frame: pd.DataFrame) -> str:
    from .report import md_table as table  # one table format for the whole report

    return table(frame)
