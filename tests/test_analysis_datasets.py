"""The analysis over several datasets and seeds, on real runs: slices of SciFact and NFCorpus, tiny
random students saved as one checkpoint per seed (as trained students are), evaluated by a sweep
with `{seed}` in the checkpoint path, then the report's per-dataset and pooled tables, the seed
intervals, the stratified test and the query categories. Also the statistics on hand-made numbers."""

import itertools
import re

import numpy as np
import pandas as pd
import pytest

import encoders
from analysis import categories, report, seeds
from analysis.errors import paired_test
from analysis.load import load_results
from benchmarks.pipeline.data import load_dataset
from benchmarks.pipeline.runner import run_benchmark
from benchmarks.sweep import load_sweep
from conftest import shared_dataset, write_slice

SEEDS = (0, 1)
T_975 = {1: 12.706204736, 2: 4.302652730}  # Student's t 0.975 quantiles (1 and 2 degrees of freedom), from tables


# --- statistics on hand-made numbers --------------------------------------------------------------

def test_seed_interval_by_hand():
    mean, low, high, k = seeds.t_interval([0.5, 0.6, 0.7])
    half = T_975[2] * 0.1 / np.sqrt(3)  # sd of 0.5, 0.6, 0.7 is 0.1
    assert k == 3 and mean == pytest.approx(0.6) and (low, high) == pytest.approx((0.6 - half, 0.6 + half))
    mean, low, high, k = seeds.t_interval([0.42])
    assert (mean, k) == (0.42, 1) and np.isnan(low) and np.isnan(high)  # one seed: no interval, never zero width
    assert seeds.interval_text(0.6, low, high) == "0.6000"
    # Two runs of one seed count once: the seed's mean.
    runs = pd.DataFrame(dict(config_key="c", seed=[0, 0, 1], value=[0.4, 0.6, 0.8]))
    row = seeds.summarise(runs, "value").loc["c"]
    assert row["seeds"] == 2 and row["runs"] == 3 and row["mean"] == pytest.approx(0.65)
    assert row["high"] - row["mean"] == pytest.approx(T_975[1] * np.std([0.5, 0.8], ddof=1) / np.sqrt(2))


def test_seed_deltas_pair_seeds_when_the_reference_has_them():
    model = pd.DataFrame({0: [0.5, 0.7], 1: [0.6, 0.6]}, index=["q1", "q2"])
    ref = pd.DataFrame({0: [0.4, 0.4], 1: [0.6, 0.8]}, index=["q1", "q2"])
    assert seeds.seed_deltas(model, ref).to_dict() == pytest.approx({0: 0.2, 1: -0.1})
    teacher = pd.DataFrame({0: [0.5, 0.5]}, index=["q1", "q2"])  # one run: every seed against it
    assert seeds.seed_deltas(model, teacher).to_dict() == pytest.approx({0: 0.1, 1: 0.1})
    once = model[[0]]  # a model run once (BM25) against seeded students: their seed average, no pairing
    assert seeds.seed_deltas(once, ref).to_dict() == pytest.approx({0: 0.6 - 0.55})


def test_stratified_test_with_one_stratum_is_the_plain_test():
    rng = np.random.default_rng(4)
    a, b = rng.random(40), rng.random(40)
    assert paired_test(a, b, seed=5, strata=["scifact"] * 40) == paired_test(a, b, seed=5)


def test_stratified_test_by_exhaustive_sign_flips():
    """2 + 3 queries: the statistic is the mean of the two datasets' mean differences (each dataset
    weighs the same), and the exact p-value is the share of the 2^5 per-query sign patterns at least
    as extreme; a flip changes a query's sign inside its own dataset, never its dataset."""
    d = np.array([0.30, 0.10, -0.05, 0.02, 0.04])
    strata = ["x", "x", "y", "y", "y"]
    stat = lambda v: (v[:2].mean() + v[2:].mean()) / 2  # noqa: E731
    observed = stat(d)
    flips = [stat(d * np.array(s)) for s in itertools.product([1, -1], repeat=5)]
    expected = np.mean([abs(f) >= abs(observed) - 1e-12 for f in flips])
    result = paired_test(d + 0.5, np.full(5, 0.5), strata=strata)
    assert result["mean_diff"] == pytest.approx(observed)  # not the pooled mean of the five (0.082)
    assert result["p"] == pytest.approx(expected)
    assert result["n"] == 5 and (result["wins"], result["losses"]) == (4, 1)


def test_stratified_bootstrap_resamples_within_datasets():
    """Dataset x always +1, dataset y always -1: resampling within datasets keeps the mean of the two
    at 0 exactly, while a pooled resample would not."""
    a = np.concatenate([np.full(5, 1.0), np.full(20, 0.0)]) + np.linspace(0, 1e-3, 25)
    b = np.concatenate([np.full(5, 0.0), np.full(20, 1.0)]) + np.linspace(0, 1e-3, 25)
    r = paired_test(a, b, strata=["x"] * 5 + ["y"] * 20, n_resamples=999)
    assert r["mean_diff"] == pytest.approx(0.0) and r["ci_low"] == pytest.approx(0.0) and r["ci_high"] == pytest.approx(0.0)


# --- query categories -----------------------------------------------------------------------------

HAND_LABELLED = {  # dataset -> qid -> (the query text's start, our label for it)
    "scifact": {"13": ("5% of perinatal mortality", "claim"), "660": ("Ivermectin is used", "claim"),
                "513": ("High cardiopulmonary fitness causes", "claim"),
                "248": ("Chenodeosycholic acid treatment increases", "claim")},
    "nfcorpus": {"PLAIN-1568": ("maple syrup", "keyword phrase"), "PLAIN-3442": ("The Healthiest Vegetables", "keyword phrase"),
                 "PLAIN-3074": ("How to Help Prevent", "keyword phrase"),
                 "PLAIN-2430": ("Preventing Brain Loss with B Vitamins?", "question")},
    "cranfield": {"95": ("what is the theoretical heat", "question"), "61": ("does there exist", "question"),
                  "71": ("experimental results on hypersonic", "keyword phrase"),
                  "223": ("papers on shear buckling", "keyword phrase")},
}


@pytest.mark.parametrize("name", sorted(HAND_LABELLED))
def test_query_type_rules_on_real_queries(name):
    queries = load_dataset(str(shared_dataset(name)), "test").queries
    for qid, (start, label) in HAND_LABELLED[name].items():
        assert queries[qid].startswith(start), qid
        assert categories.query_type(queries[qid]) == label, (qid, queries[qid])


def test_grid_tables_by_hand():
    """Per dataset: mean over seeds (two runs of one seed count once); pooled: models and conditions
    that ran on every dataset; columns clean, model, then input perturbations, numbers numerically."""
    rows = [("scifact", "m", "clean", "clean", 0, 0.50), ("scifact", "m", "clean", "clean", 1, 0.70),
            ("scifact", "m", "truncate:head:128", "input", 0, 0.40), ("scifact", "m", "truncate:head:64", "input", 0, 0.30),
            ("scifact", "m", "prune:0.5", "model", 0, 0.20), ("scifact", "m", "prune:0.5", "model", 0, 0.40),
            ("scifact", "bm25", "clean", "clean", 0, 0.60),
            ("nfcorpus", "m", "clean", "clean", 0, 0.30), ("nfcorpus", "m", "truncate:head:64", "input", 0, 0.10)]
    runs = pd.DataFrame(rows, columns=["dataset", "name", "perturbation", "kind", "seed", "ndcg@10"])
    tables = report.grid_tables(runs)
    assert list(tables) == ["nfcorpus", "scifact", "mean over datasets"]
    assert list(tables["scifact"].columns) == ["clean", "prune:0.5", "truncate:head:64", "truncate:head:128"]
    assert tables["scifact"].loc["m", "clean"] == pytest.approx(0.6)
    assert tables["scifact"].loc["m", "prune:0.5"] == pytest.approx(0.3)
    assert np.isnan(tables["scifact"].loc["bm25", "prune:0.5"])
    assert list(tables["nfcorpus"].columns) == ["clean", "truncate:head:64"] and list(tables["nfcorpus"].index) == ["m"]
    pooled = tables["mean over datasets"]
    assert list(pooled.index) == ["m"] and list(pooled.columns) == ["clean", "truncate:head:64"]
    assert pooled.loc["m"].tolist() == pytest.approx([(0.6 + 0.3) / 2, (0.3 + 0.1) / 2])
    md = report.grid_markdown(tables)
    assert "| m | 0.6000 | 0.3000 | 0.3000 | 0.4000 |" in md and "| bm25 | 0.6000 |  |  |  |" in md


def test_query_type_rules_on_made_up_texts():
    assert categories.query_type("has anyone investigated the wake .") == "question"
    assert categories.query_type("given a vehicle, is it possible to predict its motion .") == "question"
    assert categories.query_type("to what extent can data be used .") == "question"
    assert categories.query_type("Statin use reduces mortality.") == "claim"
    assert categories.query_type("Food Dyes and ADHD") == "keyword phrase"  # a headline
    assert categories.query_type("the effects of stresses in a shell") == "keyword phrase"  # no verb cue


def test_category_features_by_hand(tiny_dataset):
    f = categories.features(load_dataset(str(tiny_dataset)))
    # q1 "how do plants make sugar from light": content terms plant, make, sugar, light; its document
    # "Photosynthesis / Plants convert sunlight, water and carbon dioxide into sugar" has plant, sugar.
    assert f.loc["q1", "lexical_overlap"] == pytest.approx(2 / 4) and f.loc["q1", "lexical_overlap_bucket"] == "0.5 to <0.75"
    # q2 "what produces energy in a cell": produc, energi, cell; d2 has produc(es) and cell('s).
    assert f.loc["q2", "lexical_overlap"] == pytest.approx(2 / 3)
    assert (f.loc["q2", "num_relevant"], f.loc["q2", "top_grade"], f.loc["q2", "num_relevant_bucket"]) == (2, 2, "2-3")
    assert f.loc["q1", "query_words"] == 7 and f.loc["q1", "query_words_bucket"] == "4-7"
    assert f.loc["q2", "query_type"] == "question"


# --- real runs on two datasets ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """SciFact and NFCorpus slices; tiny shared-bert and shared-mamba students saved once per seed;
    a sweep over both datasets with `{seed}` in the checkpoint, plus BM25 once; all run in-process."""
    root = tmp_path_factory.mktemp("multi")
    data = root / "data"
    write_slice("scifact", data / "scifact", 12, 30)
    write_slice("nfcorpus", data / "nfcorpus", 8, 30)
    for mixer, seed in itertools.product(("bert", "mamba"), SEEDS):
        import torch

        torch.manual_seed(seed)  # a different random student per seed, as training seeds give
        encoders.load(f"shared-{mixer}", preset="tiny", max_length=64).save_pretrained(
            root / "checkpoints" / f"shared-{mixer}-tiny-seed{seed}")
    sweep_file = root / "students.yaml"
    sweep_file.write_text(f"""
name: students
output_dir: {root / 'results'}
datasets: [scifact, nfcorpus]
defaults: {{data_dir: {data}, max_length: 64, latency_queries: 3, dtype: float32, cache: false}}
seeds: {list(SEEDS)}
encoders:
  - {{encoder: shared-bert, checkpoint: "{root}/checkpoints/shared-bert-tiny-seed{{seed}}"}}
  - {{encoder: shared-mamba, checkpoint: "{root}/checkpoints/shared-mamba-tiny-seed{{seed}}"}}
  - {{encoder: bm25, seeds: [0]}}
""")
    sweep = load_sweep(sweep_file)
    for cfg in sweep.points:
        cfg.show_progress = False
        run_benchmark(cfg)
    return root, sweep


def test_seed_checkpoints_run_as_repeats_of_one_configuration(multi):
    root, sweep = multi
    assert len(sweep.points) == 2 * 2 * 2 + 2  # two students x two datasets x two seeds, BM25 once per dataset
    res = load_results(root / "results")
    students = res.runs[res.runs["encoder"] == "shared-mamba"]
    assert len(students) == 4 and students["identity"].nunique() == 4
    assert students.groupby("dataset")["config_key"].nunique().tolist() == [1, 1]  # seeds pool
    assert students["setup_key"].nunique() == 1  # and the two datasets are one setup
    assert set(students["model"]) == {"shared-mamba tiny"}  # named by the configuration, not one seed's folder
    for _, run in students.iterrows():  # each seed evaluated its own checkpoint
        assert res.summaries[run["path"]]["encoder"]["config"]["label"] == f"shared-mamba-tiny-seed{run['seed']}"
    seed_scores = students[students["dataset"] == "scifact"].set_index("seed")["ndcg@10"]
    assert seed_scores[0] != seed_scores[1]


def seed_mean(runs, encoder, dataset):
    s = runs[(runs["encoder"] == encoder) & (runs["dataset"] == dataset)].set_index("seed")["ndcg@10"]
    return [s[k] for k in SEEDS]


def test_report_per_dataset_pooled_with_seed_intervals(multi, tmp_path):
    root, _ = multi
    out = tmp_path / "report"
    assert report.main(["--results", str(root / "results"), "--out", str(out), "--reference", "shared-bert",
                        "--resamples", "999"]) == 0
    md = (out / "report.md").read_text()
    runs = load_results(root / "results").runs
    headline = table_after(md, "## 1. Headline")
    assert list(headline.columns) == ["model", "nfcorpus", "scifact", "mean over datasets", "seeds",
                                      "query p50 ms (± spread)"]
    mamba = headline.set_index("model").loc["shared-mamba tiny"]
    for dataset in ("scifact", "nfcorpus"):
        values = seed_mean(runs, "shared-mamba", dataset)
        m, half = np.mean(values), T_975[1] * np.std(values, ddof=1) / np.sqrt(2)
        assert mamba[dataset] == f"{m:.4f} [{m - half:.4f}, {m + half:.4f}]"
    per_seed = [(a + b) / 2 for a, b in zip(seed_mean(runs, "shared-mamba", "scifact"), seed_mean(runs, "shared-mamba", "nfcorpus"))]
    m, half = np.mean(per_seed), T_975[1] * np.std(per_seed, ddof=1) / np.sqrt(2)
    assert mamba["mean over datasets"] == f"{m:.4f} [{m - half:.4f}, {m + half:.4f}]"
    bm25 = headline[headline["model"].str.startswith("bm25")].iloc[0]
    assert bm25["seeds"] == "1" and "[" not in bm25["scifact"]  # one seed: no interval
    # Tests: per dataset, and pooled over both, against the shared-bert student; one Holm family.
    sig = table_after(md, "Against shared-bert")
    assert set(sig["comparison"]) == {f"{d}: {m} − shared-bert tiny" for d in ("nfcorpus", "scifact")
                                      for m in ("shared-mamba tiny", bm25["model"])} | {
        f"pooled (nfcorpus, scifact): {m} − shared-bert tiny" for m in ("shared-mamba tiny", bm25["model"])}
    assert f"Holm-corrected over all **{len(sig)}** tests in this report" in md
    pooled = sig.set_index("comparison").loc["pooled (nfcorpus, scifact): shared-mamba tiny − shared-bert tiny"]
    a, b = seed_averaged(root, "shared-mamba"), seed_averaged(root, "shared-bert")
    pairs = pd.concat({d: pd.DataFrame({"a": a[d], "b": b[d]}).sort_index() for d in ("nfcorpus", "scifact")})
    direct = paired_test(pairs["a"], pairs["b"], n_resamples=999, seed=100_000 + list(sig["comparison"]).index(pooled.name),
                         strata=pairs.index.get_level_values(0))
    assert float(pooled["mean Δ"]) == pytest.approx(direct["mean_diff"], abs=5e-4)  # the table's 4 digits
    assert float(pooled["p"]) == pytest.approx(direct["p"], abs=5e-4) and int(pooled["n"]) == 12 + 8
    assert float(pooled["seeds"]) == 2
    # Natural document lengths: a table per dataset over its own quartiles, every cell filled.
    for dataset, queries in (("nfcorpus", 8), ("scifact", 12)):
        lengths = table_after(md, f"\n{dataset}:\n\n| label")
        assert len(lengths.columns) == 5 and not (lengths == "").any().any()
        assert sum(int(re.search(r"n=(\d+)", c)[1]) for c in lengths.columns[1:]) == queries
    # Figures: the frontier per dataset and pooled; categories with the queries' real texts.
    for name in ("frontier_latency", "frontier_pooled"):
        assert (out / f"{name}.png").stat().st_size > 1000
    assert "## 6. Failure modes by query category" in md and "### query type (rule-based)" in md
    scifact_query = load_dataset(str(root / "data" / "scifact")).queries
    assert any(text[:40] in md for text in scifact_query.values())


def seed_averaged(root, encoder):
    """dataset -> per-query NDCG@10 of `encoder`, averaged over its seeds, read from its run files."""
    out = {}
    for d in ("nfcorpus", "scifact"):
        frames = [pd.read_csv(p, dtype={"qid": str}).set_index("qid")["ndcg@10"]
                  for p in (root / "results" / d).glob(f"{encoder}*/clean/*/per_query.csv")]
        out[d] = pd.concat(frames, axis=1).mean(axis=1)
    return out


def table_after(md: str, marker: str) -> pd.DataFrame:
    """The first markdown table after `marker`, as strings."""
    lines = md[md.index(marker):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", r)[1:-1]] for r in rows]
    return pd.DataFrame(cells[2:], columns=cells[0])
