"""The results store: a live writer's temporary directory survives another process's cleanup, and an
overwrite never leaves a moment without the run directory."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd

from benchmarks.pipeline import results
from benchmarks.sweep import Sweep, remove_partial

REPO = Path(__file__).resolve().parent.parent

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from benchmarks.pipeline.results import atomic_dir
    with atomic_dir(Path(sys.argv[1])) as tmp:
        (tmp / "part").write_text("half written")
        Path(sys.argv[2]).write_text(str(tmp))
        time.sleep(600)
""")


def start_writer(target: Path, marker: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(marker)], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.time() + 60
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert marker.exists(), "the writer never reached its write"
    return proc


def test_a_live_writers_temp_dir_survives_cleanup_a_dead_ones_does_not(tmp_path):
    out = tmp_path / "results"
    live_target = out / "ds" / "enc" / "clean" / "sweep1"
    dead_target = out / "ds" / "enc" / "noise" / "sweep1"
    live = start_writer(live_target, tmp_path / "live")
    dead = start_writer(dead_target, tmp_path / "dead")
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    try:
        live_tmp, dead_tmp = Path((tmp_path / "live").read_text()), Path((tmp_path / "dead").read_text())
        assert live_tmp.name.startswith(".sweep1.") and dead_tmp.exists()
        assert remove_partial(Sweep("sweep1", out, [])) == 1  # what a second sweep process does at its start
        assert (live_tmp / "part").read_text() == "half written"  # the live one is untouched
        assert not dead_tmp.exists()
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    assert remove_partial(Sweep("sweep1", out, [])) == 1 and not live_tmp.exists()  # its writer is gone now


def test_overwrite_never_leaves_a_moment_without_the_run(tmp_path):
    target = tmp_path / "ds" / "enc" / "clean" / "run"
    per_query = pd.DataFrame({"ndcg@10": [0.5]}, index=pd.Index(["q"], name="qid"))
    results.write_run(target, {"n": -1}, per_query, {"q": {"d": 1.0}}, "tag")
    missing, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            if not (target / "summary.json").exists():
                missing.append(time.perf_counter())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(300):
            results.write_run(target, {"n": i}, per_query, {"q": {"d": 1.0}}, "tag", overwrite=True)
    finally:
        stop.set()
        thread.join()
    assert not missing, f"the run directory was missing {len(missing)} times"
    assert (target / "summary.json").read_text().count('"n": 299') == 1
    assert sorted(p.name for p in target.iterdir()) == ["per_query.csv", "run.trec", "summary.json"]
    assert [p.name for p in target.parent.iterdir()] == ["run"]  # no temporary or old directory left


def test_a_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "run"
    try:
        with results.atomic_dir(target) as tmp:
            (tmp / "x").write_text("x")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []
