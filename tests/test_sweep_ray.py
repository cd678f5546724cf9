"""Sweeps on Ray (`--ray`): the same runs as the sequential sweep, a failing point reported while the
others complete, and a second run that redoes nothing. One local Ray serves the whole test run
(conftest.ray_session); these tests share one pair of sweeps of a small SciFact grid."""

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.sweep import main
from conftest import start_blocked_sweep, write_scifact_slice

# Columns that time or place a run: they differ between any two executions of the same configuration.
NOT_COMPARED = ["path", "created", "query_p50_ms", "query_p95_ms", "query_p50_ms_spread", "corpus_docs_per_s",
                "corpus_tokens_per_s", "total_s", "peak_rss_mb", "cuda_peak_mb"]
REPO = Path(__file__).resolve().parent.parent
FAILING = "bm25(default) slice clean seed 0: --top-k must be positive, got 0"


def sweep(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, out.getvalue(), err.getvalue()


def run_dirs(out):
    return {p.parent for p in out.glob("*/*/*/*/summary.json") if not p.parent.name.startswith(".")}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, ray_session):
    """The same grid (3 runs and a point that fails when it runs) swept one point after another, then
    with --ray on the 2-CPU local Ray (two points at a time)."""
    root = tmp_path_factory.mktemp("ray_sweep")
    data = write_scifact_slice(root / "data" / "slice", n_queries=20, n_distractors=200)
    cfg = root / "small.yaml"
    cfg.write_text(f"""
name: small
datasets: [slice]
defaults: {{data_dir: {data.parent}, preset: tiny, latency_queries: 3, max_length: 64}}
encoders:
  - {{encoder: bert, perturbations: [clean, token-shuffle]}}
  - {{encoder: bm25, preset: null, perturbations: [clean]}}
  - {{encoder: bm25, preset: null, top_k: 0, perturbations: [clean]}}
""")
    # One thread for the sequential points too: a Ray task with 1 CPU runs torch on one thread (Ray sets
    # OMP_NUM_THREADS), and fp32 sums split over other thread counts may round differently.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        seq = sweep([str(cfg), "--output-dir", str(root / "seq"), "--quiet"])
    par = sweep([str(cfg), "--output-dir", str(root / "ray"), "--quiet", "--ray", "--ray-cpus-per-point", "1"])
    return dict(cfg=cfg, seq=(root / "seq", *seq), ray=(root / "ray", *par))


def test_ray_sweep_gives_the_sequential_sweeps_results(sweeps):
    (seq, *_), (par, *_) = sweeps["seq"], sweeps["ray"]
    assert len(run_dirs(seq)) == len(run_dirs(par)) == 3
    for d in run_dirs(seq):
        twin = par / d.relative_to(seq)  # <run-id>-<identity8>: the same configuration's directory
        a = pd.read_csv(d / "per_query.csv", dtype={"qid": str})
        b = pd.read_csv(twin / "per_query.csv", dtype={"qid": str})
        assert len(a) == 20
        pd.testing.assert_series_equal(a["ndcg@10"], b["ndcg@10"], check_exact=True)
    tables = [pd.read_parquet(out / "runs.parquet").drop(columns=NOT_COMPARED).sort_values("identity")
              .reset_index(drop=True) for out in (seq, par)]
    pd.testing.assert_frame_equal(*tables, check_exact=True)
    assert len(tables[0]) == 3


def test_failing_point_is_reported_and_the_others_complete(sweeps):
    for out, rc, stdout, stderr in (sweeps["seq"], sweeps["ray"]):
        assert rc == 1
        assert stderr.strip().splitlines()[-1] == f"failed: {FAILING}"
        assert f"FAIL  {FAILING}" in stdout and stdout.count("done  ") == 3
        assert "3 run, 0 skipped (already complete), 1 failed" in stdout


def test_second_ray_sweep_redoes_nothing(sweeps):
    out = sweeps["ray"][0]
    stamps = {d: (d / "summary.json").stat().st_mtime_ns for d in run_dirs(out)}
    table = (out / "runs.parquet").read_bytes()
    rc, stdout, stderr = sweep([str(sweeps["cfg"]), "--output-dir", str(out), "--quiet", "--ray"])
    assert rc == 1 and stderr.strip().splitlines()[-1] == f"failed: {FAILING}"  # the bad point fails again
    assert "4 runs, 3 already complete, 1 to do" in stdout and "done  " not in stdout
    assert {d: (d / "summary.json").stat().st_mtime_ns for d in run_dirs(out)} == stamps
    assert pd.read_parquet(out / "runs.parquet").equals(pd.read_parquet(io.BytesIO(table)))


def test_each_ray_point_runs_in_a_fresh_worker(sweeps):
    """max_calls=1, as a fresh process locally: BM25's peak memory is its own, below any point that
    loaded a model (a reused worker would carry the model's peak)."""
    peaks = pd.read_parquet(sweeps["ray"][0] / "runs.parquet").groupby("encoder")["peak_rss_mb"]
    assert peaks.max()["bm25"] < peaks.min()["bert"]


def test_killed_ray_sweep_takes_its_workers_along_and_resumes(tiny_dataset, tmp_path):
    """SIGKILL the driver of a --ray sweep while a point is encoding (held there by
    tests/blocking_encoder.py): the worker goes with it, leaving its temporary run directory; the next
    --ray sweep removes that, runs the point once more and redoes nothing else."""
    out = tmp_path / "results"
    cfg = tmp_path / "kill.yaml"
    cfg.write_text(f"""
name: mini
datasets: [tiny]
defaults: {{data_dir: {tiny_dataset.parent}, preset: tiny, latency_queries: 3, max_length: 64}}
encoders:
  - {{encoder: blocking, encoder_module: blocking_encoder, perturbations: [clean]}}
  - {{encoder: bm25, preset: null, perturbations: [clean]}}
""")
    proc, cmd, env, log, flag, marker = start_blocked_sweep(cfg, out, tmp_path, "--ray")
    try:
        assert marker.exists(), "the sweep never reached the blocking run"
        worker = int(marker.read_text())
        assert len(list(out.glob("*/blocking-*/clean/.mini-*"))) == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 60
    while alive(worker) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive(worker), "the point's worker outlived the killed sweep"
    before = {d: (d / "summary.json").stat().st_mtime_ns for d in run_dirs(out)}

    flag.unlink()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "removed 1 partial run directory" in done.stdout
    assert f"{len(before)} already complete, {2 - len(before)} to do" in done.stdout
    assert log.read_text() == "corpus\n" * 2  # the killed point ran exactly once more
    assert len(run_dirs(out)) == 2 and not list(out.rglob(".mini-*"))
    assert all((d / "summary.json").stat().st_mtime_ns == t for d, t in before.items())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited
        return f.read().split()[2] != "Z"


def test_an_address_where_nothing_answers_fails_in_seconds():
    """Ray retries a dead address for minutes; the check before joining says so in one line at once."""
    import socket

    from benchmarks.pipeline.workers import join_ray

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match=rf"nothing answers at 127.0.0.1:{port} .*ray start --head"):
        join_ray(f"127.0.0.1:{port}")
    assert time.perf_counter() - start < 10
