"""End to end: the runner on a tiny BEIR dataset written by the test, and the CLI on bad input."""

import json

import pandas as pd
import pytest

from benchmarks.run import RunConfig, main, run_benchmark


def cli(*args):
    return main([*args, "--quiet", "--latency-queries", "5"])


def run_dirs(out):
    return sorted(p.parent for p in out.glob("*/*/*/*/summary.json"))


def test_end_to_end_on_tiny_dataset(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "results"
    assert cli("--encoder", "bert", "--dataset", "tiny", "--data-dir", str(tiny_dataset.parent),
               "--output-dir", str(out), "--run-id", "first") == 0
    printed = capsys.readouterr().out
    assert "NDCG@10" in printed and "first" in printed and "1 empty documents" in printed

    [run] = (out / "tiny" / "bert-all-MiniLM-L6-v2" / "clean").glob("first-*")
    summary = json.loads((run / "summary.json").read_text())
    per_query = pd.read_csv(run / "per_query.csv", dtype={"qid": str}).set_index("qid")
    assert list(per_query.index) == ["q1", "q2", "q3"]
    assert per_query.loc["q2", "num_relevant"] == 2 and per_query.loc["q1", "query_tokens"] > 3
    # An easy dataset: MiniLM ranks the relevant passage first for q1 and q2.
    assert per_query.loc["q1", "ndcg@1"] == 1.0 and per_query.loc["q2", "mrr@10"] == 1.0
    assert summary["metrics"]["ndcg@10"] == pytest.approx(per_query["ndcg@10"].mean())
    assert summary["dataset"]["warnings"] == {"empty_documents": 1, "judged_documents_missing_from_corpus": 1}
    assert summary["encoder"]["kernel_path"].startswith("torch")
    assert summary["config"]["seed"] == 0 and summary["environment"]["packages"]["torch"]
    # The CPU kind, beyond its name (two Intel kinds here are both "Intel(R) Xeon(R) Processor"):
    import encoders.dtype as dt
    assert summary["environment"]["cpu_flags"] == dt.cpu_matrix_flags()
    assert set(summary["environment"]["cpu_flags"]) <= set(dt.MATRIX_FLAGS)
    t = summary["timings"]
    assert t["corpus_encode"]["cached"] is False and t["corpus_encode"]["tokens_per_s"] > 0
    assert 0 < t["corpus_encode"]["peak_rss_mb"] <= t["peak_rss_mb"]  # the high-water mark through encoding
    assert t["query_latency"]["n"] == 3 * 5 and t["query_latency"]["p95_ms"] >= t["query_latency"]["p50_ms"]
    assert t["query_latency"]["repeats"] == 3 and len(t["query_latency"]["p50_ms_repeats"]) == 3
    trec = (run / "run.trec").read_text().splitlines()
    assert len(trec) == 3 * 6  # every query, every document (top-k 100 > corpus)
    qid, q0, did, rank, score, tag = trec[0].split()
    assert (qid, q0, rank, tag) == ("q1", "Q0", "1", "bert-all-MiniLM-L6-v2")

    # Second identical run: embeddings come from the cache, results are identical.
    assert cli("--dataset", "tiny", "--data-dir", str(tiny_dataset.parent), "--output-dir", str(out),
               "--run-id", "second") == 0
    [second_dir] = (out / "tiny" / "bert-all-MiniLM-L6-v2" / "clean").glob("second-*")
    second = json.loads((second_dir / "summary.json").read_text())
    assert second["timings"]["corpus_encode"]["cached"] and second["timings"]["query_encode"]["cached"]
    assert second["metrics"] == summary["metrics"]
    # Same configuration, same identity; the run id and directory differ.
    assert second["identity"] == summary["identity"] and second_dir.name.split("-")[-1] == run.name.split("-")[-1]
    # A cache hit never borrows the throughput recorded with the entry: this run timed a sample itself.
    hit = second["timings"]["corpus_encode"]
    assert hit["measured_on"] == 6 and hit["seconds"] != t["corpus_encode"]["seconds"]

    # The same run id again: refused, the first run untouched; --overwrite replaces it.
    before = (run / "summary.json").read_text()
    assert cli("--dataset", "tiny", "--data-dir", str(tiny_dataset.parent), "--output-dir", str(out),
               "--run-id", "first") == 2
    assert "already exist" in capsys.readouterr().err
    assert (run / "summary.json").read_text() == before
    assert cli("--dataset", "tiny", "--data-dir", str(tiny_dataset.parent), "--output-dir", str(out),
               "--run-id", "first", "--overwrite", "--no-cache") == 0
    assert json.loads((run / "summary.json").read_text())["run_id"] == "first"
    assert not list(run.parent.glob(".*"))  # no temporary directories left behind


def test_drop_self_hits_auto_only_where_queries_come_from_the_corpus(tmp_path):
    from conftest import write_beir

    corpus = [{"_id": "a", "title": "", "text": "the same text"}, {"_id": "b", "title": "", "text": "other words"}]
    root = write_beir(tmp_path / "selfq", corpus, [{"_id": "a", "text": "the same text"}], [("a", "b", 1)])
    res = run_benchmark(RunConfig(dataset=str(root), output_dir=str(tmp_path / "r"), cache=False,
                                  show_progress=False, latency_queries=2))
    assert res.summary["retrieval"]["drop_self_hits"] and list(res.run["a"]) == ["b"]
    # Same ids, different texts (Cranfield's case): the rule must not apply.
    root = write_beir(tmp_path / "sepq", corpus, [{"_id": "a", "text": "a question"}], [("a", "a", 1)])
    res = run_benchmark(RunConfig(dataset=str(root), output_dir=str(tmp_path / "r"), cache=False,
                                  show_progress=False, latency_queries=2))
    assert not res.summary["retrieval"]["drop_self_hits"] and "a" in res.run["a"]


@pytest.mark.parametrize("args, message", [
    (["--encoder", "nope"], "unknown encoder 'nope'"),
    (["--dataset", "does-not-exist"], "dataset 'does-not-exist' not found"),
    (["--split", "dev"], "no qrels for split 'dev'"),
    (["--checkpoint", "/nonexistent/model"], "checkpoint '/nonexistent/model' does not load"),
    (["--encoder-module", "no_such_module_xyz"], "--encoder-module 'no_such_module_xyz' does not import"),
    (["--max-length", "4096"], "exceeds the model's 512 position"),
    (["--top-k", "0"], "--top-k must be positive"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_dataset, tmp_path, capsys, args, message):
    out = tmp_path / "results"
    code = cli("--dataset", "tiny", "--data-dir", str(tiny_dataset.parent), "--output-dir", str(out), *args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and message in err and "\n" not in err and "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*.json"))


def test_malformed_corpus_via_cli(tiny_dataset, tmp_path, capsys):
    with open(tiny_dataset / "corpus.jsonl", "a") as f:
        f.write("{not json}\n")
    assert cli("--dataset", "tiny", "--data-dir", str(tiny_dataset.parent), "--output-dir", str(tmp_path / "r")) == 2
    assert "corpus.jsonl:7: malformed JSON" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
