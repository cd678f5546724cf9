"""Per-query error analysis against a reference run, and paired significance tests.

Every comparison pairs two runs on the same dataset query by query (NDCG@10 per query), tests the
mean difference with a paired sign-flip permutation test (`scipy.stats.permutation_test`,
permutation_type="samples": under H0 each query's two scores are exchangeable), reports a bootstrap
CI of the mean difference and Cohen's d_z, and Holm-corrects the p-values across the comparisons of
one family. Everything random is seeded.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from scipy import stats

from . import plots
from .sensitivity import quantile_buckets

METRIC = "ndcg@10"
STOPWORDS = frozenset("a an and are as at be by do does for from how in is it of on or that the this to was what "
                      "when where which who why with".split())


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down; controls the family-wise error rate)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def paired_test(a, b, n_resamples: int = 9999, seed: int = 0, confidence: float = 0.95) -> dict:
    """Paired comparison of per-query scores a and b (same queries, same order): the mean of a - b,
    its bootstrap CI, Cohen's d_z and a two-sided sign-flip permutation p-value (exact, over all 2^n
    sign patterns, when 2^n <= n_resamples)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired_test needs two equally long 1-d score arrays of 2+ queries, got {a.shape}, {b.shape}")
    d = a - b
    rng = np.random.default_rng(seed)
    # One sample with permutation_type="samples" is scipy's sign-flip test. The differences are taken
    # in whole units of 1e-9 (per-query scores are stored to 1e-6) so that sums are exact: otherwise
    # rounding noise in a zero mean difference (0.1 up, 0.1 down) makes flipped means differ from it.
    units = np.rint(d * 1e9)
    perm = stats.permutation_test((units,), lambda x, axis: np.mean(x, axis=axis), vectorized=True,
                                  permutation_type="samples", n_resamples=n_resamples, alternative="two-sided",
                                  random_state=rng)
    sd = d.std(ddof=1)
    if sd > 0:
        ci = stats.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                             random_state=rng).confidence_interval
        ci_low, ci_high = float(ci.low), float(ci.high)
        dz = d.mean() / sd
    else:  # every query moved by the same amount: no spread to resample, and d_z is undefined
        ci_low = ci_high = float(d.mean())
        dz = 0.0 if d.mean() == 0 else np.copysign(np.inf, d.mean())
    return dict(n=len(d), mean_a=float(a.mean()), mean_b=float(b.mean()), mean_diff=float(d.mean()), ci_low=ci_low,
                ci_high=ci_high, cohens_dz=float(dz), wins=int((d > 0).sum()), losses=int((d < 0).sum()), ties=int((d == 0).sum()),
                p=float(min(perm.pvalue, 1.0)))


def compare(pairs: list[tuple[str, str, str]], per_query: pd.DataFrame, n_resamples: int = 9999,
            seed: int = 0) -> pd.DataFrame:
    """One row per (name, path_a, path_b): paired_test of run a against run b on their common queries,
    with p-values Holm-corrected across all the pairs given (one family)."""
    scores = per_query.pivot(index="qid", columns="path", values=METRIC) if len(per_query) else pd.DataFrame()
    rows = []
    for i, (name, a, b) in enumerate(pairs):
        both = scores[[a, b]].dropna()
        rows.append(dict(comparison=name, path=a, reference=b,
                         **paired_test(both[a], both[b], n_resamples=n_resamples, seed=seed + i)))
    out = pd.DataFrame(rows)
    if len(out):
        out["p_holm"] = holm(out["p"])
    return out


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS}


def query_features(per_query_ref: pd.DataFrame, dataset) -> pd.DataFrame:
    """Complexity proxies per query (index qid): query length, number of relevant documents, and, when
    the dataset's texts are at hand, lexical overlap of query and relevant documents and their length."""
    f = pd.DataFrame(index=per_query_ref["qid"])
    f["num_relevant"] = per_query_ref.set_index("qid")["num_relevant"] if "num_relevant" in per_query_ref else np.nan
    if "relevant_doc_words" in per_query_ref:
        f["relevant_doc_words"] = per_query_ref.set_index("qid")["relevant_doc_words"]
    if dataset is None:
        f["query_length"] = per_query_ref.set_index("qid")["query_tokens"] if "query_tokens" in per_query_ref else np.nan
        return f
    from encoders.base import title_text  # the title + text rule (a function; no model is loaded)

    f["query_length"] = [len(dataset.queries[q].split()) if q in dataset.queries else np.nan for q in f.index]
    overlap, length = [], []
    for q in f.index:
        rel = [dataset.corpus[d] for d, s in dataset.qrels.get(q, {}).items() if s > 0 and d in dataset.corpus]
        texts = [title_text(d) for d in rel]
        qw = words(dataset.queries.get(q, ""))
        dw = set().union(*(words(t) for t in texts)) if texts else set()
        overlap.append(len(qw & dw) / len(qw) if qw and texts else np.nan)
        length.append(np.mean([len(t.split()) for t in texts]) if texts else np.nan)
    f["lexical_overlap"] = overlap
    if "relevant_doc_words" not in f or f["relevant_doc_words"].isna().all():
        f["relevant_doc_words"] = length
    return f


PROXIES = {  # feature -> axis title
    "query_length": "query length (words; tokens without the dataset text)",
    "num_relevant": "relevant documents per query",
    "lexical_overlap": "share of query words found in its relevant documents",
    "relevant_doc_words": "mean length of relevant documents (words)",
}


def breakdown(diffs: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """Mean per-query difference by bucket of each complexity proxy, per model.
    diffs: columns dataset, model, qid, diff; features: index (dataset, qid)."""
    rows = []
    for proxy in PROXIES:
        if proxy not in features or features[proxy].notna().sum() == 0:
            continue
        values = features[proxy]
        if proxy == "num_relevant":  # small integers: fixed buckets read better than quantiles
            bucket = pd.cut(values, [0, 1, 2, 4, np.inf], labels=["1", "2", "3–4", "5+"], ordered=True)
        else:
            bucket = quantile_buckets(values, 3)
        d = diffs.join(bucket.cat.codes.rename("rank"), on=["dataset", "qid"])
        d = d[d["rank"] >= 0]  # -1: no value for this query
        g = d.groupby(["model", "rank"])["diff"].agg(["mean", "size"]).reset_index()
        rows.append(g.assign(proxy=proxy, bucket=bucket.cat.categories[g["rank"]]))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def plot_breakdown(table: pd.DataFrame, styles: dict, out_dir, reference: str, name: str = "errors_breakdown"):
    """One panel per complexity proxy: mean ΔNDCG@10 per bucket, one line per model (styles: name ->
    colour, marker, line style)."""
    proxies = [p for p in PROXIES if p in set(table["proxy"])]
    fig, axes = plots.subplots(len(proxies), width=5.5, height=3.8, ncols=2)
    for ax, proxy in zip(axes, proxies):
        t = table[table["proxy"] == proxy]
        buckets = list(t.sort_values("rank")["bucket"].unique())
        for model, g in t.groupby("model", sort=True):
            color, marker, ls = styles[model]
            g = g.set_index("bucket").reindex(buckets)
            ax.plot(range(len(buckets)), g["mean"].to_numpy(), marker=marker, color=color, ls=ls, label=model,
                    mec="black", mew=0.4)
        sizes = t.groupby("bucket", observed=True)["size"].max()
        ax.set_xticks(range(len(buckets)), [f"{b}\n(n={int(sizes.get(b, 0))})" for b in buckets], fontsize=8)
        ax.axhline(0, color="0.4", lw=0.8, ls=":")
        ax.set_xlabel(PROXIES[proxy], fontsize=9)
        ax.set_ylabel(f"mean ΔNDCG@10 vs {reference}", fontsize=9)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(proxies):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=8)
    return plots.save(fig, out_dir, name)


def extremes(diffs: pd.DataFrame, k: int = 3) -> pd.DataFrame:
    """The k queries each model wins and the k it loses most against the reference (ties by qid)."""
    rows = []
    for model, g in diffs.groupby("model", sort=True):
        g = g.sort_values(["diff", "qid"])
        rows.append(g[g["diff"] > 0].tail(k).iloc[::-1].assign(outcome="win"))
        rows.append(g[g["diff"] < 0].head(k).assign(outcome="loss"))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
