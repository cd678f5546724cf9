"""Per-query error analysis against a reference run, and paired significance tests.

Every comparison pairs two configurations query by query (NDCG@10 per query, averaged over each
one's seeds), tests the mean difference with a paired sign-flip permutation test
(`scipy.stats.permutation_test`, permutation_type="samples": under H0 each query's two scores are
exchangeable), stratified by dataset when pooled over several, reports a bootstrap CI of the mean
difference, Cohen's d_z and the spread over seeds, and Holm-corrects the p-values across one family
(every test of a report: `Family`). Everything random is seeded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from . import categories, plots, seeds
from .sensitivity import quantile_buckets

METRIC = "ndcg@10"

def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down; controls the family-wise error rate)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def paired_test(a, b, n_resamples: int = 9999, seed: int = 0, confidence: float = 0.95, strata=None) -> dict:
    """Paired comparison of per-query scores a and b (same queries, same order): the mean of a - b,
    its bootstrap CI, Cohen's d_z and a two-sided sign-flip permutation p-value (exact, over all 2^n
    sign patterns, when 2^n <= n_resamples).

    With `strata` (one label per query, e.g. its dataset) the test is stratified: the statistic is the
    mean over strata of each stratum's mean difference (every dataset weighs the same, as in "mean
    NDCG@10 across datasets"), the bootstrap resamples queries within their stratum, and d_z divides
    that statistic by the sd of all differences. The sign flips are per query, so a permutation
    never moves a query's scores into another dataset. With one stratum it is the plain test."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired_test needs two equally long 1-d score arrays of 2+ queries, got {a.shape}, {b.shape}")
    labels = np.zeros(len(a), int) if strata is None else pd.factorize(np.asarray(strata))[0]
    if len(labels) != len(a):
        raise ValueError(f"paired_test: {len(labels)} strata labels for {len(a)} queries")
    groups = [np.flatnonzero(labels == k) for k in range(labels.max() + 1)]
    d = a - b
    rng = np.random.default_rng(seed)
    # One sample with permutation_type="samples" is scipy's sign-flip test. The differences are taken
    # in whole units of 1e-9 and each stratum's sum is scaled by lcm(sizes)/size, so that the statistic's
    # numerator is an exact integer: otherwise rounding noise in a zero mean difference (0.1 up, 0.1
    # down) makes flipped statistics differ from it. Dividing by one constant keeps equal values equal.
    # (Exact while lcm(sizes) * 1e9 < 2^53; SciFact, NFCorpus and Cranfield's 300, 323, 225: 290,700.)
    units = np.rint(d * 1e9)
    sizes = [len(g) for g in groups]
    scale = np.lcm.reduce(sizes) // np.array(sizes)

    def statistic(x, axis):
        x = np.moveaxis(x, axis, -1)
        return sum(s * x[..., g].sum(axis=-1) for s, g in zip(scale, groups)) / (np.lcm.reduce(sizes) * len(groups))

    perm = stats.permutation_test((units,), statistic, vectorized=True, permutation_type="samples",
                                  n_resamples=n_resamples, alternative="two-sided", random_state=rng)
    mean = float(np.mean([d[g].mean() for g in groups]))
    sd = d.std(ddof=1)
    if sd > 0:
        ci_low, ci_high = stratified_bootstrap(d, groups, n_resamples, confidence, rng)
        dz = mean / sd
    else:  # every query moved by the same amount: no spread to resample, and d_z is undefined
        ci_low = ci_high = mean
        dz = 0.0 if mean == 0 else np.copysign(np.inf, mean)
    mean_a = float(np.mean([a[g].mean() for g in groups]))
    mean_b = float(np.mean([b[g].mean() for g in groups]))
    return dict(n=len(d), mean_a=mean_a, mean_b=mean_b, mean_diff=mean, ci_low=ci_low, ci_high=ci_high,
                cohens_dz=float(dz), wins=int((d > 0).sum()), losses=int((d < 0).sum()), ties=int((d == 0).sum()),
                p=float(min(perm.pvalue, 1.0)))


def stratified_bootstrap(d: np.ndarray, groups: list, n_resamples: int, confidence: float, rng) -> tuple[float, float]:
    """Percentile CI of the mean over strata of each stratum's mean, resampling queries within strata."""
    boot = np.mean([d[g][rng.integers(0, len(g), size=(n_resamples, len(g)))].mean(axis=1) for g in groups], axis=0)
    tail = (1 - confidence) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    return float(low), float(high)


class Family:
    """Every paired test one report shows, Holm-corrected together (one family per report): sections
    add their comparisons first, `adjust` corrects them all at once, and then the sections render."""

    def __init__(self):
        self.parts: dict[str, pd.DataFrame] = {}

    def add(self, name: str, frame: pd.DataFrame) -> None:
        self.parts[name] = frame.assign(p_holm=np.nan)

    @property
    def size(self) -> int:
        return sum(len(f) for f in self.parts.values())

    def adjust(self) -> "Family":
        if self.size:
            adjusted = holm(pd.concat([f["p"] for f in self.parts.values()]).to_numpy())
            start = 0
            for name, frame in self.parts.items():
                self.parts[name] = frame.assign(p_holm=adjusted[start:start + len(frame)])
                start += len(frame)
        return self

    def get(self, name: str) -> pd.DataFrame:
        return self.parts.get(name, pd.DataFrame())


def compare_configs(comparisons: list[tuple[str, list[tuple[str, pd.DataFrame, pd.DataFrame]]]],
                    per_query: pd.DataFrame, n_resamples: int = 9999, seed: int = 0) -> pd.DataFrame:
    """Architecture comparisons that account for seeds and queries. Each comparison is (name, parts),
    a part (stratum, model runs, reference runs) on one dataset, each side all the runs of one
    configuration. Per part, each side's per-query scores are averaged over its seeds; the paired test
    (stratified by part when there are several) runs on those averages, so that query variation is
    tested with the seed noise averaged out; beside it, the seed spread: each seed's mean difference
    (mean over parts) and its t-interval over seeds. Holm correction is left to the caller's family."""
    rows = []
    for i, (name, parts) in enumerate(comparisons):
        a, b, strata, deltas = [], [], [], {}
        for stratum, model_runs, ref_runs in parts:
            m, r = seeds.seed_scores(per_query, model_runs), seeds.seed_scores(per_query, ref_runs)
            both = pd.DataFrame({"a": m.mean(axis=1), "b": r.mean(axis=1)}).dropna().sort_index()  # qid order
            a.append(both["a"].to_numpy())
            b.append(both["b"].to_numpy())
            strata += [stratum] * len(both)
            deltas[stratum] = seeds.seed_deltas(m, r)
        per_seed = pd.DataFrame(deltas).dropna().mean(axis=1)  # seeds present on every part
        mean, low, high, k = seeds.t_interval(per_seed)
        test = paired_test(np.concatenate(a), np.concatenate(b), n_resamples=n_resamples, seed=seed + i,
                           strata=strata if len(parts) > 1 else None)
        rows.append(dict(comparison=name, datasets=len(parts), **test, seeds=k, seed_mean_diff=mean,
                         seed_ci_low=low, seed_ci_high=high))
    return pd.DataFrame(rows)


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
    stem = categories.stemmer()  # lexical overlap as the category analysis defines it
    overlap, length = [], []
    for q in f.index:
        rel = [dataset.corpus[d] for d, s in dataset.qrels.get(q, {}).items() if s > 0 and d in dataset.corpus]
        texts = [title_text(d) for d in rel]
        qw = categories.terms(dataset.queries.get(q, ""), stem)
        dw = set().union(*(categories.terms(t, stem) for t in texts)) if texts else set()
        overlap.append(len(qw & dw) / len(qw) if qw and texts else np.nan)
        length.append(np.mean([len(t.split()) for t in texts]) if texts else np.nan)
    f["lexical_overlap"] = overlap
    if "relevant_doc_words" not in f or f["relevant_doc_words"].isna().all():
        f["relevant_doc_words"] = length
    return f


PROXIES = {  # feature -> axis title
    "query_length": "query length (words; tokens without the dataset text)",
    "num_relevant": "relevant documents per query",
    "lexical_overlap": "share of query terms (stemmed) found in its relevant documents",
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
