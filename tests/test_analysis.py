"""analysis/: Pareto frontier, significance tests, and the report on fabricated results directories."""

import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import pareto, plots, report
from analysis.errors import holm, paired_test
from analysis.load import AnalysisError, load_results
from analysis.pareto import pareto_frontier
from benchmarks.perturbations import Perturbation, parse
from benchmarks.pipeline import record
from benchmarks.pipeline.record import RunConfig

QUERIES = [f"q{i}" for i in range(40)]


def steps(spec: str) -> list[dict]:
    """The perturbation steps a run of `spec` records, with made-up statistics (pruning: a report)."""
    p = parse(spec)
    fake = lambda s: dict(requested_sparsity=s.sparsity, realised_sparsity=s.sparsity * 0.97,  # noqa: E731
                          params_before=22_700_000, params_after=int(22_700_000 * (1 - 0.5 * s.sparsity)))
    return [Perturbation._record(s, fake(s) if s.kind == "prune" else {}) for s in p.steps]


def fabricate_run(root: Path, dataset: str, encoder: str, label: str, spec: str, ndcg: float, p50: float,
                  dtype: str = "float32", run_id: str = "r1", seed: int = 0, data_path: str = "nowhere",
                  checkpoint: str | None = None) -> Path:
    """A run record with made-up numbers (per-query NDCG@10 with mean ~`ndcg`), built and written by the
    run-record module as the runner does."""
    tag = f"{encoder}-{label}" + ("" if dtype == "float32" else f"-{dtype}")
    rng = np.random.default_rng(zlib.crc32(f"{encoder}{label}{spec}{dtype}{run_id}".encode()))
    scores = np.clip(ndcg + rng.normal(0, min(0.15, ndcg / 3), len(QUERIES)), 0, 1)
    scores = np.clip(scores - scores.mean() + ndcg, 0, 1)
    pq = pd.DataFrame({"query_tokens": [5 + i % 7 for i in range(len(QUERIES))],
                       "num_relevant": [1 + i % 3 for i in range(len(QUERIES))], "num_retrieved": 100,
                       "relevant_doc_words": [80 + 7 * i for i in range(len(QUERIES))], "ndcg@10": scores,
                       "recall@100": np.clip(scores + 0.2, 0, 1)}, index=pd.Index(QUERIES, name="qid"))
    preset = None if encoder in ("bert", "bm25") or checkpoint else label
    config = RunConfig(encoder=encoder, dataset=dataset, preset=preset, checkpoint=checkpoint, dtype=dtype, seed=seed,
                       perturbation=spec, device="cpu", run_id=run_id)
    rec = record.new_record(
        run_id=run_id, config=config,
        dataset=dict(name=dataset, path=data_path, split="test", documents=6, queries=len(QUERIES), judgments=60,
                     warnings={}),
        retriever=dict(name=encoder, tag=tag, config=dict(encoder=encoder, label=label, dtype=dtype, max_length=256),
                       num_parameters=0 if encoder == "bm25" else 22_700_000, flops_per_token=1e7, embedding_dim=384,
                       kernel_path="test"),
        perturbation=dict(name=parse(spec).name, slug=parse(spec).slug, steps=steps(spec)), retrieval={},
        metrics={"ndcg@10": float(scores.mean()), "recall@100": float(pq["recall@100"].mean())},
        timings=dict(corpus_encode=dict(texts_per_s=1000.0 / p50, tokens_per_s=1e5 / p50, cached=False),
                     query_latency=dict(p50_ms=p50, p95_ms=p50 * 1.3), total_s=10.0),
        environment=dict(python="3.11", cpu="test cpu", device="cpu", git=dict(commit="abc123", dirty=False)),
        per_query=pq, run={q: {} for q in QUERIES})
    rec.summary["created"] = f"2026-11-23T10:00:{len(run_id):02d}+0000"
    d = root / dataset / tag / parse(spec).slug / record.run_dir_name(run_id, config)
    return record.write(rec, d)


def fabricate(root: Path, data_path: str = "nowhere") -> Path:
    """A few encoders x perturbations; untrained models near NDCG 0, BERT ~0.65, BM25 ~0.67."""
    quality = {("bert", "all-MiniLM-L6-v2"): (0.65, 10.0), ("bm25", "bm25"): (0.67, 1.0),
               ("mamba", "small"): (0.012, 8.0), ("gla", "small"): (0.009, 6.0)}
    for (enc, label), (ndcg, p50) in quality.items():
        specs = ["clean"] if enc == "bm25" else ["clean", "prune:0.3", "prune:0.5", "sentence-shuffle",
                                                 "truncate:head:64", "truncate:tail:64"]
        for spec in specs:
            drop = {"prune:0.3": 0.9, "prune:0.5": 0.7, "sentence-shuffle": 0.95, "truncate:head:64": 0.85,
                    "truncate:tail:64": 0.6}.get(spec, 1.0)
            speedup = {"prune:0.3": 0.8, "prune:0.5": 0.6}.get(spec, 1.0)
            fabricate_run(root, "scifact", enc, label, spec, ndcg * drop, p50 * speedup, data_path=data_path)
    fabricate_run(root, "scifact", "bert", "all-MiniLM-L6-v2", "clean", 0.65, 12.0, run_id="r2-repeat")
    fabricate_run(root, "scifact", "bert", "all-MiniLM-L6-v2", "clean", 0.648, 6.0, dtype="bfloat16")
    (root / ".cache" / "embeddings").mkdir(parents=True)  # hidden: never read as a run
    return root


# --- Pareto frontier --------------------------------------------------------------------------------

def frontier_ids(points, x_better="lower", y_better="higher"):
    frame = pd.DataFrame(points, columns=["id", "x", "y"])
    return list(pareto_frontier(frame, "x", "y", x_better=x_better, y_better=y_better)["id"])


def test_frontier_hand_made():
    points = [("a", 1, 0.2), ("b", 2, 0.5), ("c", 3, 0.4), ("d", 4, 0.9), ("e", 5, 0.9)]
    assert frontier_ids(points) == ["a", "b", "d"]  # c dominated by b; e tied on y with d but slower
    # Higher x is better (throughput): the same points read the other way.
    assert frontier_ids(points, x_better="higher") == ["e"]
    assert frontier_ids([("a", 1, 0.2), ("b", 2, 0.5)], x_better="higher") == ["b"]
    assert frontier_ids([("a", 1, 0.2), ("b", 2, 0.5)], x_better="higher", y_better="lower") == ["a", "b"]


def test_frontier_ties_duplicates_one_point_and_missing():
    assert frontier_ids([("only", 3.0, 0.1)]) == ["only"]
    # Same x, different y: only the better y stays; exact duplicates both stay (neither dominates).
    assert frontier_ids([("lo", 1, 0.3), ("hi", 1, 0.6)]) == ["hi"]
    assert sorted(frontier_ids([("a", 1, 0.5), ("a2", 1, 0.5), ("b", 2, 0.4)])) == ["a", "a2"]
    assert frontier_ids([("a", 1, np.nan), ("b", np.nan, 0.9), ("c", 2, 0.1)]) == ["c"]
    assert frontier_ids([]) == []
    with pytest.raises(ValueError):
        frontier_ids([("a", 1, 1)], x_better="smaller")


# --- significance -----------------------------------------------------------------------------------

def test_paired_test_known_answers():
    rng = np.random.default_rng(1)
    a = rng.random(60)
    same = paired_test(a, a.copy())
    assert same["p"] == 1.0 and same["mean_diff"] == 0 and same["ties"] == 60 and same["cohens_dz"] == 0
    shifted = paired_test(a + 0.2 + rng.normal(0, 0.05, 60), a, seed=3)
    assert shifted["p"] < 0.01 and shifted["mean_diff"] == pytest.approx(0.2, abs=0.03)
    assert shifted["ci_low"] < shifted["mean_diff"] < shifted["ci_high"] and shifted["ci_low"] > 0.15
    assert shifted["cohens_dz"] > 2
    # Half the queries up, half down by the same amount: mean difference 0, so p = 1.
    balanced = paired_test(a + np.repeat([0.1, -0.1], 30), a)
    assert balanced["p"] == pytest.approx(1.0) and balanced["mean_diff"] == pytest.approx(0, abs=1e-12)
    # Tiny n: scipy enumerates all 2^4 sign flips; one query up, three tied: p = 1 (half the flips tie it).
    exact = paired_test(np.array([0.5, 0.2, 0.3, 0.4]), np.array([0.5, 0.2, 0.3, 0.1]))
    assert exact["p"] == pytest.approx(1.0) and exact["wins"] == 1 and exact["ties"] == 3


def test_paired_test_seeded_and_exact():
    rng = np.random.default_rng(2)
    a, b = rng.random(50), rng.random(50)
    assert paired_test(a, b, seed=7) == paired_test(a, b, seed=7)
    # 6 queries all improved by 0.1: of the 2^6 sign patterns only all-plus and all-minus are as extreme.
    exact = paired_test(np.full(6, 0.6), np.full(6, 0.5))
    assert exact["p"] == pytest.approx(2 / 64)
    with pytest.raises(ValueError):
        paired_test([0.1, 0.2], [0.1])


def test_holm_known_values():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == pytest.approx([0.5])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1, order kept


def test_frontier_labels_leave_out_a_dtype_every_point_shares(tmp_path, monkeypatch):
    runs = load_results(fabricate(tmp_path / "results")).runs
    figures = []
    monkeypatch.setattr(pareto.plots, "save", lambda fig, out, name: figures.append(fig) or name)

    def titles_and_labels(frame):
        figures.clear()
        pareto.plot_frontier(frame, "query_p50_ms", tmp_path, "f")
        ax = figures[0].axes[0]
        return ax.get_title(), [t.get_text() for t in ax.texts]

    title, labels = titles_and_labels(runs)  # fp32 and bf16 runs mixed: the label says which
    assert title == "scifact" and "bert all-MiniLM-L6-v2 bf16" in labels
    title, labels = titles_and_labels(runs[runs["dtype"] == "bfloat16"])
    assert title == "scifact (all runs bf16)" and "bert all-MiniLM-L6-v2" in labels
    assert not any(label.endswith("bf16") for label in labels)


def test_a_student_and_its_teacher_never_look_alike():
    """The shared-block attention student (shared-bert) takes BERT's colour; the frontier draws it
    hollow, and line styles count per mixer, so neither figure shows it as the teacher."""
    runs = pd.DataFrame({"arch": ["bert", "shared-bert", "bert"], "name": ["teacher", "student", "teacher bf16"]})
    styles = plots.model_styles(runs)
    assert len({styles[n] for n in runs["name"]}) == 3 and styles["teacher"][0] == styles["student"][0]
    assert plots.marker_face("shared-bert", "tab:blue") != plots.marker_face("bert", "tab:blue")


def test_label_connectors_leave_from_the_corner_nearest_the_point():
    fig, (ax,) = plots.subplots(1)
    xs, ys = [1, 2, 3, 4], [1, 3, 2, 4]
    ax.plot(xs, ys, "o")
    ax.set_xlim(0, 5), ax.set_ylim(0, 5)
    assert plots.place_labels(ax, xs, ys, ["a long label for one point", "two", "three", "four"]) == 0
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ann in ax.texts:
        start = ann.arrow_patch.get_path().vertices[0]  # display coordinates, once drawn
        box = plots.Text.get_window_extent(ann, renderer)
        point = ax.transData.transform(ann.xy)
        corners = [(x, y) for x in (box.x0, box.x1) for y in (box.y0, box.y1)]
        nearest = min(corners, key=lambda c: np.hypot(c[0] - point[0], c[1] - point[1]))
        # Within a few pixels of that corner (the text box has a little padding), not at the centre.
        assert np.hypot(start[0] - nearest[0], start[1] - nearest[1]) < 6 < box.width / 2, ann.get_text()
    plots.plt.close("all")


# --- loading and the report -------------------------------------------------------------------------

def test_load_tidy_frames(tmp_path):
    res = load_results(fabricate(tmp_path / "results"))
    assert res.problems == []
    assert len(res.runs) == 3 * 6 + 1 + 2 and len(res.per_query) == len(res.runs) * len(QUERIES)
    bert = res.runs[res.runs["encoder"] == "bert"]
    assert set(bert["kind"]) == {"clean", "model", "input"}
    # The fp32 repeat shares a configuration; the bf16 run does not.
    clean = bert[bert["kind"] == "clean"]
    assert clean["config_key"].nunique() == 2 and set(clean["name"]) == {"bert all-MiniLM-L6-v2",
                                                                          "bert all-MiniLM-L6-v2 bf16"}
    pruned = res.runs[res.runs["perturbation"] == "prune:0.5"].iloc[0]
    assert pruned["params"] == int(22_700_000 * 0.75) and pruned["prune_realised"] == pytest.approx(0.485)


def test_load_selects_run_ids_and_names_checkpoints(tmp_path):
    results = fabricate(tmp_path / "results")
    # A trained student, evaluated by a sweep named "trained": its checkpoint directory names the model.
    fabricate_run(results, "scifact", "mamba", "mamba-small-scifact-distill20", "clean", 0.4, 8.0, run_id="trained",
                  checkpoint="results/checkpoints/mamba-small-scifact-distill20")
    res = load_results(results, run_ids=["trained"])
    assert list(res.runs["model"]) == ["mamba small-scifact-distill20"] and len(res.per_query) == len(QUERIES)
    assert len(load_results(results, run_ids=["r1", "trained"]).runs) == len(load_results(results).runs) - 1
    with pytest.raises(AnalysisError, match="no runs under .* with run id nope"):
        load_results(results, run_ids=["nope"])


def test_load_selects_perturbations(tmp_path):
    results = fabricate(tmp_path / "results")
    everything = load_results(results)
    clean = load_results(results, perturbations=["clean"])
    assert set(clean.runs["perturbation"]) == {"clean"} and len(clean.runs) == (everything.runs["kind"] == "clean").sum()
    assert set(clean.per_query["path"]) == set(clean.runs["path"]) == set(clean.summaries)
    two = load_results(results, perturbations=["clean", "prune:0.5"])
    assert set(two.runs["perturbation"]) == {"clean", "prune:0.5"}
    with pytest.raises(AnalysisError, match="no runs with perturbation prune:0.55 .*found: .*prune:0.5"):
        load_results(results, perturbations=["clean", "prune:0.55"])


def test_report_on_fabricated_results(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BEIR_DATA_DIR", raising=False)  # the fabricated runs' texts must not be found by name
    monkeypatch.chdir(tmp_path)  # (nor as ./data/scifact)
    results = fabricate(tmp_path / "results")
    out = tmp_path / "report"
    assert report.main(["--results", str(results), "--out", str(out), "--resamples", "199"]) == 0
    md = (out / "report.md").read_text()
    for name in ("frontier_latency", "frontier_throughput", "pruning", "position", "doc_length", "truncation",
                 "errors_breakdown"):
        assert (out / f"{name}.png").stat().st_size > 1000 and (out / f"{name}.svg").is_file(), name
        assert f"({name}.png)" in md
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert [h.split()[1] for h in headings] == ["1.", "2.", "3.", "4.", "5.", "6.", "7."]
    assert "†" in md  # untrained models flagged: clean NDCG@10 below the floor
    assert "mamba small − bert all-MiniLM-L6-v2" in md
    assert "the texts of dataset 'scifact' (test) were not found" in md  # data path "nowhere"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dir left behind
    # Never overwrite silently.
    assert report.main(["--results", str(results), "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert report.main(["--results", str(results), "--out", str(out), "--overwrite", "--resamples", "99"]) == 0


def test_report_with_dataset_texts_and_single_run(tmp_path, tiny_dataset):
    # The tiny dataset's three judged queries, one run only: a one-point frontier, sections skipped.
    results = tmp_path / "results"
    d = fabricate_run(results, "tiny", "bert", "all-MiniLM-L6-v2", "clean", 0.6, 10.0, data_path=str(tiny_dataset))
    pq = pd.read_csv(d / "per_query.csv").head(3).assign(qid=["q1", "q2", "q3"])
    pq.to_csv(d / "per_query.csv", index=False)
    out = tmp_path / "report"
    assert report.main(["--results", str(results), "--out", str(out), "--resamples", "99"]) == 0
    md = (out / "report.md").read_text()
    assert "no pruning runs: pruning section skipped" in md
    assert "no truncation runs" in md and "only the reference configuration is clean" in md
    # Add a second model: the error analysis now finds the texts and names the queries.
    d2 = fabricate_run(results, "tiny", "mamba", "small", "clean", 0.1, 5.0, data_path=str(tiny_dataset))
    pd.read_csv(d2 / "per_query.csv").head(3).assign(qid=["q1", "q2", "q3"]).to_csv(d2 / "per_query.csv", index=False)
    assert report.main(["--results", str(results), "--out", str(out), "--overwrite", "--resamples", "99"]) == 0
    md = (out / "report.md").read_text()
    assert "how do plants make sugar from light" in md and "lexical_overlap" in md


def test_empty_and_missing_results_dir(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report.main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no runs under") and "\n" not in err
    with pytest.raises(AnalysisError, match="does not exist"):
        load_results(tmp_path / "absent")
    assert not (tmp_path / "r").exists()


def test_partly_corrupt_results(tmp_path, capsys):
    results = tmp_path / "results"
    fabricate_run(results, "scifact", "bert", "all-MiniLM-L6-v2", "clean", 0.65, 10.0)
    fabricate_run(results, "scifact", "mamba", "small", "clean", 0.01, 8.0)
    broken = fabricate_run(results, "scifact", "gla", "small", "clean", 0.01, 6.0)
    (broken / "summary.json").write_text('{"run_id": "x", "metrics": ')
    no_pq = fabricate_run(results, "scifact", "rwkv", "small", "clean", 0.01, 7.0)
    (no_pq / "per_query.csv").unlink()
    out = tmp_path / "report"
    assert report.main(["--results", str(results), "--out", str(out), "--resamples", "99"]) == 0
    err = capsys.readouterr().err
    md = (out / "report.md").read_text()
    for text in (err, md):
        assert f"{broken}" in text and "summary.json is not valid JSON" in text
        assert f"{no_pq}" in text and "per_query.csv is missing" in text
    assert "2 run(s) skipped" in md and "mamba small" in md and "gla small" not in md
    # Only broken runs: a one-line error, no report.
    only_bad = tmp_path / "bad"
    d = fabricate_run(only_bad, "scifact", "gla", "small", "clean", 0.01, 6.0)
    (d / "per_query.csv").write_text("qid,other\nq1,1\n")
    assert report.main(["--results", str(only_bad), "--out", str(tmp_path / "r2")]) == 2
    assert "per_query.csv has no column ndcg@10" in capsys.readouterr().err


def test_latency_error_bars_come_from_a_runs_own_repeats():
    """A configuration run once still has a latency spread: its timing repeats' p50s."""
    runs = pd.DataFrame([dict(config_key="a", dataset="d", seed=0, query_p50_ms=11.0, query_p50_ms_spread=2.0, **{"ndcg@10": 0.5}),
                         dict(config_key="b", dataset="d", seed=0, query_p50_ms=9.0, query_p50_ms_spread=1.0, **{"ndcg@10": 0.4}),
                         dict(config_key="b", dataset="d", seed=1, query_p50_ms=13.0, query_p50_ms_spread=1.0, **{"ndcg@10": 0.4})])
    agg = pareto.aggregate_repeats(runs, "query_p50_ms", "ndcg@10").set_index("config_key")
    assert agg.loc["a", "query_p50_ms_std"] == 2.0  # one run: the spread of its own repeats
    assert agg.loc["b", "query_p50_ms_std"] == pytest.approx(np.std([9.0, 13.0], ddof=1))  # repeats: across runs
    latency = {"p50_ms": 11.0, "p50_ms_repeats": [9.0, 11.0, 13.0]}
    assert record.flatten({**_any_record_summary(), "timings": {"query_latency": latency}}, "x")["query_p50_ms_spread"] == 2.0


def _any_record_summary() -> dict:
    config = RunConfig(encoder="bm25", dataset="d", device="cpu", dtype=None)
    rec = record.new_record(run_id="r", config=config, dataset=dict(name="d", split="test"),
                            retriever=dict(name="bm25", tag="bm25", config={}), perturbation=dict(name="clean", steps=[]),
                            retrieval={}, metrics={}, timings={}, environment={}, per_query=pd.DataFrame(), run={})
    return rec.summary
