"""Sweeps: the grid, resume after a kill, the runs table, and one-line errors for bad sweep files."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.pipeline import record
from benchmarks.pipeline.record import RunConfig
from benchmarks.pipeline.results import locked
from benchmarks.pipeline.runner import run_benchmark
from benchmarks.sweep import SweepError, load_sweep, main, run_sweep, select_perturbations

from conftest import start_blocked_sweep

REPO = Path(__file__).resolve().parent.parent


def write_config(tmp_path, data_dir, body=None):
    body = body or f"""
name: mini
datasets: [tiny]
defaults: {{data_dir: {data_dir}, preset: tiny, latency_queries: 3, max_length: 64}}
perturbations: [clean, token-shuffle, truncate:head:8]
encoders:
  - {{encoder: bert}}
  - {{encoder: bm25, preset: null, perturbations: [clean, token-shuffle]}}
"""
    path = tmp_path / "mini.yaml"
    path.write_text(body)
    return path


def run_dirs(out):
    # Not the hidden temp directory a run writes before its atomic rename (pathlib's * matches it).
    return sorted(p.parent for p in out.glob("*/*/*/*/summary.json") if not p.parent.name.startswith("."))


def test_grid_runs_and_resumes_without_redoing_finished_runs(tiny_dataset, tmp_path):
    out = tmp_path / "results"
    cfg = write_config(tmp_path, tiny_dataset.parent)
    sweep = load_sweep(cfg, str(out))
    assert len(sweep.points) == 5
    first = run_sweep(select_perturbations(sweep, ["clean"], cfg), show_progress=False)  # part of the grid
    assert first["ran"] == 2 and not first["failed"]
    stamps = {d: (d / "summary.json").stat().st_mtime_ns for d in run_dirs(out)}
    assert len(stamps) == 2

    outcome = run_sweep(load_sweep(cfg, str(out)), show_progress=False)
    assert outcome["skipped"] == 2 and outcome["ran"] == 3 and not outcome["failed"]
    assert all((d / "summary.json").stat().st_mtime_ns == t for d, t in stamps.items())  # not redone
    table = pd.read_parquet(out / "runs.parquet")
    assert len(table) == 5 and table["path"].is_unique and table["identity"].is_unique
    assert set(table["perturbation"]) == {"clean", "token-shuffle", "truncate:head:8"}
    assert set(table.loc[table.encoder == "bm25", "perturbation"]) == {"clean", "token-shuffle"}
    assert table.loc[table.perturbation == "truncate:head:8", "truncate_tokens"].tolist() == [8]
    assert table["ndcg@10"].between(0, 1).all() and (table["query_p50_ms"] > 0).all()
    # Each point runs in its own process, so each records its own peak memory, not the sweep's so far:
    # the BM25 points (run after the model's) peak lower than any point that loaded the model.
    peaks = table.groupby("encoder")["peak_rss_mb"]
    assert peaks.max()["bm25"] < peaks.min()["bert"]

    again = run_sweep(load_sweep(cfg, str(out)), show_progress=False)  # a third time: nothing left to do
    assert again["ran"] == 0 and again["skipped"] == 5

    # The table the sweeps added to, run by run, is the one a rebuild from every run directory gives.
    added, added_csv = pd.read_parquet(out / "runs.parquet"), (out / "runs.csv").read_text()
    record.write_table(out)
    pd.testing.assert_frame_equal(added, pd.read_parquet(out / "runs.parquet"), check_exact=True)
    assert added_csv == (out / "runs.csv").read_text()


def test_sweep_killed_inside_a_run_resumes_that_run_only(tiny_dataset, tmp_path):
    """SIGKILL while a run is encoding (held there by tests/blocking_encoder.py): its temporary run
    directory is left behind; the next sweep removes it, redoes that run once and nothing else."""
    out = tmp_path / "results"
    cfg = write_config(tmp_path, tiny_dataset.parent, f"""
name: mini
datasets: [tiny]
defaults: {{data_dir: {tiny_dataset.parent}, preset: tiny, latency_queries: 3, max_length: 64}}
encoders:
  - {{encoder: bert, perturbations: [clean, token-shuffle]}}
  - {{encoder: blocking, encoder_module: blocking_encoder, perturbations: [clean]}}
  - {{encoder: bm25, preset: null, perturbations: [clean]}}
""")
    proc, cmd, env, log, flag, marker = start_blocked_sweep(cfg, out, tmp_path)
    try:
        assert marker.exists(), "the sweep never reached the blocking run"
        partial = list(out.glob("*/blocking-*/clean/.mini-*"))
        assert len(partial) == 1 and partial[0].is_dir()  # the run in progress, in its temporary directory
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = {d: (d / "summary.json").stat().st_mtime_ns for d in run_dirs(out)}
    assert sorted(d.parts[-3] for d in before) == ["bert-tiny", "bert-tiny"]  # the two before it
    assert log.read_text() == "corpus\n" and partial[0].exists()

    flag.unlink()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "removed 1 partial run directory" in done.stdout and "2 already complete, 2 to do" in done.stdout
    assert not partial[0].exists() and not list(out.rglob(".mini-*"))
    assert log.read_text() == "corpus\n" * 2  # the killed run ran exactly once more
    after = run_dirs(out)
    assert sorted(d.parts[-3] for d in after) == ["bert-tiny", "bert-tiny", "blocking-tiny", "bm25-bm25s-lucene-k0.9-b0.4"]
    assert all((d / "summary.json").stat().st_mtime_ns == t for d, t in before.items())  # the others not redone
    assert len(pd.read_parquet(out / "runs.parquet")) == 4


@pytest.mark.parametrize("body, words", [
    ("name: x\ndatasets: [tiny\n", "malformed YAML"),
    ("name: x\ndatasets: [tiny]\nencoders: [{encoder: bert}]\ncolour: red\n", "unknown key(s) colour"),
    ("datasets: [tiny]\nencoders: [{encoder: bert}]\n", "'name'"),
    ("name: x\ndatasets: [tiny]\nencoders: [{encoder: nope}]\n", "unknown encoder 'nope'"),
    ("name: x\ndatasets: [tiny]\nencoders: [{encoder: bert, perturbations: [shuffle]}]\n", "unknown perturbation"),
    ("name: x\ndatasets: [tiny]\nencoders: [{encoder: bert, perturbations: ['prune:1.5']}]\n", "sparsity must be in (0, 1)"),
    ("name: x\ndatasets: [tiny]\nencoders: [{encoder: bm25, perturbations: ['prune:0.5']}]\n", "bm25 has none"),
    ("name: x\ndatasets: [tiny]\nencoders: [{encoder: bert, colour: red}]\n", "unknown field(s) colour"),
    ("name: x\ndatasets: [no-such-dataset]\nencoders: [{encoder: bert}]\n", "no-such-dataset"),
])
def test_bad_sweep_file_one_line_and_nothing_written(tiny_dataset, tmp_path, capsys, body, words):
    body = body.replace("datasets: [tiny]", f"datasets: [tiny]\ndefaults: {{data_dir: {tiny_dataset.parent}}}")
    cfg = write_config(tmp_path, tiny_dataset.parent, body)
    out = tmp_path / "results"
    assert main([str(cfg), "--output-dir", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.count("\n") == 0 and words in err, err
    assert not out.exists()


def test_missing_sweep_file(tmp_path, capsys):
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read the sweep file" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["archaeology.yaml", "position.yaml", "trained.yaml", "fair.yaml"])
def test_shipped_sweep_files_parse(name):
    if not os.environ.get("BEIR_DATA_DIR"):
        pytest.skip("the shipped sweeps run on SciFact, NFCorpus and Cranfield: set BEIR_DATA_DIR")
    sweep = load_sweep(REPO / "benchmarks" / "configs" / name)
    assert sweep.points and all(p.run_id == sweep.name for p in sweep.points)
    assert {p.dataset for p in sweep.points} == {"scifact", "nfcorpus", "cranfield"}
    if name == "archaeology.yaml":  # six architectures x 8 conditions + BM25 x 5 (no pruning of BM25), x 3 datasets
        assert len(sweep.points) == (6 * 8 + 5) * 3
        assert {p.encoder for p in sweep.points} == {"bert", "mamba", "rwkv", "hyena", "retnet", "gla", "bm25"}
    if name == "fair.yaml":  # six students x 3 seeds, the teacher and BM25 once, x 3 datasets
        assert len(sweep.points) == (6 * 3 + 2) * 3
        students = [p for p in sweep.points if p.encoder.startswith("shared-")]
        assert {p.checkpoint_path() for p in students if p.encoder == "shared-gla" and p.dataset == "cranfield"} == {
            f"results/checkpoints/shared-gla-small-scifact-nfcorpus-fair400-seed{s}" for s in (0, 1, 2)}
        assert all(p.max_length == 128 for p in sweep.points)
        for enc in {p.encoder for p in sweep.points}:  # seeds are repeats of one configuration per dataset
            groups = {record.group(p) for p in sweep.points if p.encoder == enc and p.dataset == "scifact"}
            assert len(groups) == 1, enc


def test_entry_seeds_and_seed_in_checkpoint(tiny_dataset, tmp_path):
    """`seeds` of an entry replaces the sweep's; `{seed}` in a checkpoint names each seed's own."""
    cfg = write_config(tmp_path, tiny_dataset.parent, body=f"""
name: seeds
datasets: [tiny]
defaults: {{data_dir: {tiny_dataset.parent}, max_length: 64}}
seeds: [0, 1, 2]
encoders:
  - {{encoder: mamba, checkpoint: "ckpt/student-seed{{seed}}"}}
  - {{encoder: bm25, seeds: [0]}}
""")
    points = load_sweep(cfg, str(tmp_path / "out")).points
    assert [(p.encoder, p.seed) for p in points] == [("mamba", 0), ("mamba", 1), ("mamba", 2), ("bm25", 0)]
    assert [p.checkpoint_path() for p in points[:3]] == [f"ckpt/student-seed{s}" for s in (0, 1, 2)]
    assert len({record.identity(p) for p in points[:3]}) == 3 and len({record.group(p) for p in points[:3]}) == 1
    bad = write_config(tmp_path, tiny_dataset.parent, body=f"""
name: seeds
datasets: [tiny]
defaults: {{data_dir: {tiny_dataset.parent}}}
encoders:
  - {{encoder: bm25, seeds: []}}
""")
    with pytest.raises(SweepError, match="encoders entry 1: 'seeds' must be a non-empty list"):
        load_sweep(bad)


def test_a_run_from_a_checkpoint_retrained_since_is_refused_not_skipped(tiny_dataset, tmp_path):
    """Same path, same configuration, so the same identity: without the recorded checkpoint digest the
    sweep would skip the point and report the old student's result as the retrained one's."""
    import shutil

    import torch

    import encoders

    def save_student(seed):
        torch.manual_seed(seed)
        encoders.load("shared-retnet", preset="tiny", max_length=64, show_progress=False).save_pretrained(tmp_path / "student")

    save_student(0)
    cfg = write_config(tmp_path, tiny_dataset.parent, body=f"""
name: retrained
datasets: [tiny]
defaults: {{data_dir: {tiny_dataset.parent}, latency_queries: 3, max_length: 64}}
encoders:
  - {{encoder: shared-retnet, checkpoint: {tmp_path / "student"}}}
""")
    out = tmp_path / "results"
    assert run_sweep(load_sweep(cfg, str(out)), show_progress=False)["ran"] == 1
    assert run_sweep(load_sweep(cfg, str(out)), show_progress=False)["skipped"] == 1  # unchanged: complete
    save_student(1)  # retrained in place
    with pytest.raises(SweepError, match=r"1 completed run\(s\) were made from a checkpoint that has changed since"):
        run_sweep(load_sweep(cfg, str(out)), show_progress=False)
    shutil.move(str(run_dirs(out)[0]), str(tmp_path / "old-run"))
    assert run_sweep(load_sweep(cfg, str(out)), show_progress=False)["ran"] == 1


def test_perturbations_option_runs_part_of_the_grid(tiny_dataset, tmp_path, capsys):
    cfg = write_config(tmp_path, tiny_dataset.parent)
    out = tmp_path / "results"
    assert main([str(cfg), "--output-dir", str(out), "--dry-run", "--perturbations", "clean,token-shuffle"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 5 and all(line.startswith("todo ") and "truncate" not in line for line in listed[:4])
    assert listed[4] == "0 of 4 runs complete; their recorded run times (summary.json timings.total_s) add up to 0.00 h"
    assert main([str(cfg), "--output-dir", str(out), "--perturbations", "truncate:head:8", "--quiet"]) == 0
    assert [d.parent.name for d in run_dirs(out)] == ["truncate-head-8"]
    # The part done counts as done for the whole grid.
    assert run_sweep(load_sweep(cfg, str(out)), show_progress=False, dry_run=True)["skipped"] == 1
    assert main([str(cfg), "--output-dir", str(out), "--perturbations", "prune:0.5"]) == 2
    assert "prune:0.5 not in the grid" in capsys.readouterr().err


def bm25_runs(tiny_dataset, out, perturbations):
    return [run_benchmark(RunConfig(encoder="bm25", dataset=str(tiny_dataset), perturbation=p, output_dir=str(out),
                                    run_id="t", latency_queries=2, show_progress=False)).path for p in perturbations]


def test_runs_table_is_added_to_not_rebuilt(tiny_dataset, tmp_path, capsys):
    """Adding runs one by one gives the table a rebuild gives (rows in run-directory order, the same
    column types, the same CSV), reading the table and the new runs only, not every run's summary. The
    table is rebuilt whole when asked (--rebuild-table), or when it is missing, damaged or has other columns."""
    out = tmp_path / "results"
    (first,) = bm25_runs(tiny_dataset, out, ["clean"])
    record.write_table(out)
    third, second = bm25_runs(tiny_dataset, out, ["truncate:head:8", "token-shuffle"])
    record.add_to_table(out, [third])  # out of order, and the first value in a column that was empty
    record.add_to_table(out, [second])
    added, added_csv = pd.read_parquet(out / "runs.parquet"), (out / "runs.csv").read_text()
    record.write_table(out)
    pd.testing.assert_frame_equal(added, pd.read_parquet(out / "runs.parquet"), check_exact=True)
    assert added_csv == (out / "runs.csv").read_text()
    assert added["path"].tolist() == list(map(str, [first, second, third]))

    (first / "summary.json").write_text("{")  # now unreadable: a rebuild would leave its row out
    record.add_to_table(out, [third])
    table = pd.read_parquet(out / "runs.parquet")
    assert table["path"].tolist() == list(map(str, [first, second, third]))  # first's row kept: not re-read
    assert table.loc[table.path == str(third), "truncate_tokens"].tolist() == [8]

    pd.read_parquet(out / "runs.parquet").drop(columns=["ndcg@10"]).to_parquet(out / "runs.parquet")
    record.add_to_table(out, [third])  # columns of another version: rebuilt from every readable run
    table = pd.read_parquet(out / "runs.parquet")
    assert "ndcg@10" in table and table["path"].tolist() == sorted(map(str, [second, third]))

    for damage in (b"not parquet", None):
        (out / "runs.parquet").write_bytes(damage) if damage else (out / "runs.parquet").unlink()
        record.add_to_table(out, [])
        assert pd.read_parquet(out / "runs.parquet")["path"].tolist() == sorted(map(str, [second, third]))

    (first / "summary.json").unlink()
    (out / "runs.parquet").unlink()
    (out / "runs.csv").write_text("stale")
    cfg = write_config(tmp_path, tiny_dataset.parent, f"name: t\noutput_dir: {out}\ndatasets: [tiny]\n"
                                                      "encoders: [{encoder: bm25}]\n")
    assert main([str(cfg), "--rebuild-table"]) == 0
    assert capsys.readouterr().out.strip() == f"runs table: {out / 'runs.parquet'}"
    assert len(pd.read_parquet(out / "runs.parquet")) == 2 and (out / "runs.csv").read_text().count("\n") == 3


def test_runs_table_has_one_writer_at_a_time(tiny_dataset, tmp_path):
    """Sweeps writing into one results directory take turns at the table (a flock), so neither loses
    the other's row."""
    out = tmp_path / "results"
    first, second = bm25_runs(tiny_dataset, out, ["clean", "token-shuffle"])
    record.write_table(out)
    (out / "runs.parquet").unlink()  # the waiting writer must rebuild, seeing both runs
    with locked(out / record.TABLE_LOCK):
        writer = threading.Thread(target=record.add_to_table, args=(out, [second]))
        writer.start()
        writer.join(0.5)
        assert writer.is_alive() and not (out / "runs.parquet").exists()  # waiting for the lock
    writer.join(10)
    assert len(pd.read_parquet(out / "runs.parquet")) == 2


def test_datasets_option_runs_part_of_the_grid(tiny_dataset, tmp_path, capsys):
    data = tiny_dataset.parent
    shutil.copytree(tiny_dataset, data / "tiny2")
    cfg = write_config(tmp_path, data, f"""
name: mini
datasets: [tiny, tiny2]
defaults: {{data_dir: {data}, latency_queries: 3, max_length: 64}}
perturbations: [clean, token-shuffle]
encoders:
  - {{encoder: bm25}}
""")
    out = tmp_path / "results"
    assert main([str(cfg), "--output-dir", str(out), "--dry-run", "--datasets", "tiny2"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 3 and all(" tiny2 " in line for line in listed[:2]), listed
    assert main([str(cfg), "--output-dir", str(out), "--datasets", "scifact"]) == 2
    assert "--datasets: scifact not in the grid" in capsys.readouterr().err
