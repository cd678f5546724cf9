"""The results store: a live writer's temporary directory survives another process's cleanup, and an
overwrite never leaves a moment without the run directory."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd

from benchmarks.pipeline import record, results
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
    live_target = out / "ds" / "enc" / "clean" / "sweep1-0123abcd"  # <run id>-<identity>
    dead_target = out / "ds" / "enc" / "noise" / "sweep1-4567abcd"
    live = start_writer(live_target, tmp_path / "live")
    dead = start_writer(dead_target, tmp_path / "dead")
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    try:
        live_tmp, dead_tmp = Path((tmp_path / "live").read_text()), Path((tmp_path / "dead").read_text())
        assert live_tmp.name.startswith(".sweep1-") and dead_tmp.exists()
        assert remove_partial(Sweep("sweep1", out, [])) == 1  # what a second sweep process does at its start
        assert (live_tmp / "part").read_text() == "half written"  # the live one is untouched
        assert not dead_tmp.exists()
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    assert remove_partial(Sweep("sweep1", out, [])) == 1 and not live_tmp.exists()  # its writer is gone now


READER = textwrap.dedent("""
    import os, sys
    target, stop = sys.argv[1], sys.argv[2]
    open(stop + ".ready", "w").close()
    looks = missing = 0
    while not os.path.exists(stop):
        looks += 1
        missing += not os.path.exists(target)
    print(looks, missing)
""")


def write(target: Path, n: int, overwrite: bool = False) -> None:
    per_query = pd.DataFrame({"ndcg@10": [0.5]}, index=pd.Index(["q"], name="qid"))
    record.write(record.RunRecord({"n": n, "encoder": {"tag": "tag"}}, per_query, {"q": {"d": 1.0}}), target, overwrite)


def test_overwrite_never_leaves_a_moment_without_the_run(tmp_path):
    """A reader in another process polls the run directory while it is overwritten 300 times."""
    target = tmp_path / "ds" / "enc" / "clean" / "run"
    write(target, -1)
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(target / "summary.json"), str(stop)],
                              stdout=subprocess.PIPE, text=True)
    while not Path(f"{stop}.ready").exists():
        time.sleep(0.01)
    try:
        for i in range(300):
            write(target, i, overwrite=True)
    finally:
        stop.touch()
    looks, missing = map(int, reader.communicate(timeout=60)[0].split())
    assert looks > 1000 and missing == 0, f"the run directory was missing {missing} of {looks} times"
    assert '"n": 299' in (target / "summary.json").read_text()
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


def test_overwrite_without_an_atomic_exchange_falls_back(tmp_path, monkeypatch):
    """Where renameat2 is missing (macOS, old glibc) the old run is moved aside, then replaced."""
    monkeypatch.setattr(results, "exchange", lambda a, b: False)
    target = tmp_path / "run"
    for i in range(2):
        write(target, i, overwrite=True)
    assert '"n": 1' in (target / "summary.json").read_text() and [p.name for p in tmp_path.iterdir()] == ["run"]
