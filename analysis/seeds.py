"""Seeds: a configuration's runs over several seeds (its `config_key` group), their mean with a 95%
t-interval, and per-query scores averaged over seeds for paired tests.

A seed is one draw of everything random in making the model (a trained student's initialisation and
data order, through its per-seed checkpoint; an untrained preset's weights). Several runs of one seed
(a configuration repeated with the same seed) are averaged first, so that each seed counts once.
The interval over seeds is Student's t: mean ± t(0.975, k-1) · sd / √k for k seeds; one seed has no
interval (shown empty, never as zero width).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95


def t_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """(mean, low, high, k) of the values (one per seed); low = high = NaN for fewer than 2."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    k = len(v)
    if k == 0:
        return np.nan, np.nan, np.nan, 0
    mean = float(v.mean())
    if k < 2:
        return mean, np.nan, np.nan, k
    half = float(stats.t.ppf(0.5 + confidence / 2, k - 1) * v.std(ddof=1) / np.sqrt(k))
    return mean, mean - half, mean + half, k


def per_seed(runs: pd.DataFrame, value: str, by: str = "config_key") -> pd.DataFrame:
    """One row per (by, seed): the mean of `value` over that seed's runs."""
    seed = runs["seed"].fillna(0)
    return runs.assign(seed=seed).groupby([by, "seed"], sort=False)[value].mean().reset_index()


def summarise(runs: pd.DataFrame, value: str = "ndcg@10", by: str = "config_key") -> pd.DataFrame:
    """Index `by`: mean over seeds of `value` with its 95% t-interval (`low`, `high`), `seeds`, `runs`."""
    seeds = per_seed(runs, value, by)
    rows = {key: t_interval(g[value]) for key, g in seeds.groupby(by, sort=False)}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=["mean", "low", "high", "seeds"])
    out["runs"] = runs.groupby(by, sort=False).size()
    out.index.name = by
    return out


def interval_text(mean: float, low: float, high: float, digits: int = 4) -> str:
    """'0.5123 [0.49, 0.53]', or the mean alone when there is no interval (one seed)."""
    if not np.isfinite(mean):
        return ""
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def seed_scores(per_query: pd.DataFrame, runs: pd.DataFrame, metric: str = "ndcg@10") -> pd.DataFrame:
    """Per-query scores of one configuration's runs: columns = seeds (runs of one seed averaged),
    index = qid."""
    seed_of = runs.set_index("path")["seed"].fillna(0)
    pq = per_query[per_query["path"].isin(seed_of.index)]
    return pq.assign(seed=pq["path"].map(seed_of)).pivot_table(index="qid", columns="seed", values=metric,
                                                               aggfunc="mean")


def seed_deltas(model: pd.DataFrame, reference: pd.DataFrame) -> pd.Series:
    """seed -> the model's mean per-query difference from the reference on their common queries, for
    each seed of the model: against the reference's run of the same seed when both have several seeds
    (a student of seed s shares its training data order with the reference student of seed s),
    otherwise against the reference's seed average (a model run once, like BM25, has no seed to
    pair). model, reference: `seed_scores` frames."""
    common = model.index.intersection(reference.index)
    ref_avg = reference.loc[common].mean(axis=1)
    out = {}
    for seed in model.columns:
        paired = seed in reference.columns and reference.shape[1] > 1 and model.shape[1] > 1
        ref = reference.loc[common, seed] if paired else ref_avg
        out[seed] = float((model.loc[common, seed] - ref).mean())
    return pd.Series(out, dtype=float)
