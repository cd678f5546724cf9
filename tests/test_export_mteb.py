"""`python -m benchmarks.export_mteb`: a real run directory (BM25 on the tiny dataset) as an MTEB result
file that mteb itself reads back."""

import json

import pytest

from benchmarks import export_mteb
from benchmarks.run import RunConfig, run_benchmark

mteb = pytest.importorskip("mteb")


@pytest.fixture
def bm25_run(tiny_dataset, tmp_path):
    return run_benchmark(RunConfig(encoder="bm25", dataset=str(tiny_dataset), output_dir=str(tmp_path / "results"),
                                   show_progress=False, latency_queries=5))


def test_export_is_read_back_by_mteb(bm25_run, tmp_path, capsys):
    from mteb.cache import ResultCache
    from mteb.results import TaskResult

    assert export_mteb.main([str(bm25_run.path), "--out", str(tmp_path / "mteb"), "--task", "SciFact"]) == 0
    out, err = capsys.readouterr()
    assert "not comparable with MTEB's" in err  # 6 documents are not SciFact's 5183
    path = tmp_path / "mteb" / out.strip()
    assert path.parent.parent.name == "encoder-bench__" + bm25_run.summary["encoder"]["tag"]
    assert path.parent.name == bm25_run.summary["encoder"]["fingerprint"][:12] and path.name == "SciFact.json"

    result = TaskResult.from_disk(path)  # mteb's own reader and validation
    scores = result.scores["test"][0]
    metrics = bm25_run.summary["metrics"]
    assert result.task_name == "SciFact" and result.dataset_revision == mteb.get_task("SciFact").metadata.revision
    assert scores["main_score"] == pytest.approx(metrics["ndcg@10"], abs=5e-7)  # mteb rounds to 6 places
    for name, value in metrics.items():
        assert scores[name.replace("@", "_at_")] == pytest.approx(value, abs=5e-7)
    assert result.evaluation_time == bm25_run.summary["timings"]["total_s"]
    # mteb finds it in its results cache, under the model's name and revision.
    found = ResultCache(tmp_path / "mteb").load_results(models=["encoder-bench/" + bm25_run.summary["encoder"]["tag"]],
                                                        tasks=["SciFact"])
    assert found.model_results[0].task_results[0].get_score() == pytest.approx(metrics["ndcg@10"], abs=5e-7)
    assert json.loads((path.parent / "model_meta.json").read_text())["revision"] == path.parent.name


def test_bad_run_directories_are_one_line_errors(bm25_run, tmp_path, capsys):
    assert export_mteb.main([str(tmp_path / "nowhere")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert export_mteb.main([str(bm25_run.path), "--out", str(tmp_path / "mteb")]) == 2  # dataset "tiny"
    err = capsys.readouterr().err
    assert "'tiny' has no known MTEB task: pass --task NAME" in err and err.count("\n") == 1
    assert not (tmp_path / "mteb" / "results").exists()
