import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the network

REPO = Path(__file__).resolve().parent.parent


def write_beir(root: Path, corpus: list[dict], queries: list[dict], qrels: list[tuple], split: str = "test") -> Path:
    """Write a BEIR-format dataset folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)."""
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in qrels]
    (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


TINY_CORPUS = [
    {"_id": "d1", "title": "Photosynthesis", "text": "Plants convert sunlight, water and carbon dioxide into sugar."},
    {"_id": "d2", "title": "Mitochondria", "text": "The mitochondrion produces most of the cell's ATP."},
    {"_id": "d3", "title": "Jet engines", "text": "A turbofan engine mixes bypass air with hot core exhaust."},
    {"_id": "d4", "title": "Supersonic flow", "text": "Shock waves form when an aircraft exceeds the speed of sound."},
    {"_id": "d5", "title": "", "text": ""},  # an empty document, as real corpora have
    {"_id": "d6", "title": "Vaccines", "text": "Vaccines train the immune system to recognise a pathogen."},
]
TINY_QUERIES = [
    {"_id": "q1", "text": "how do plants make sugar from light"},
    {"_id": "q2", "text": "what produces energy in a cell"},
    {"_id": "q3", "text": "shock waves at supersonic speed"},
    {"_id": "q4", "text": "an unjudged query"},
]
TINY_QRELS = [("q1", "d1", 1), ("q2", "d2", 2), ("q2", "d1", 1), ("q3", "d4", 1), ("q3", "d3", 1),
              ("q3", "missing-doc", 1)]  # a judged document absent from the corpus


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return write_beir(tmp_path / "data" / "tiny", TINY_CORPUS, TINY_QUERIES, TINY_QRELS)


def shared_dataset(name: str) -> Path:
    root = os.environ.get("BEIR_DATA_DIR")
    path = Path(root).resolve() / name if root else None  # absolute: a test may chdir
    if path is None or not (path / "corpus.jsonl").is_file():
        pytest.skip(f"{name} not found: set BEIR_DATA_DIR (e.g. ../shared/datasets)")
    return path


def fake_matmul_times(seconds: dict[str, float], calls: list | None = None):
    """A stand-in for encoders.dtype.time_matmul: `seconds[dtype]` for every shape (calls recorded)."""
    def time_matmul(dtype, shape, device, repeats=None):
        if calls is not None:
            calls.append((dtype, shape))
        return seconds[dtype]
    return time_matmul


@pytest.fixture(autouse=True, scope="session")
def dtype_auto_is_float32(tmp_path_factory):
    """`--dtype auto` (the runner's default) follows a matmul probe of the machine. The suite's
    expectations (result paths, tolerances, identical reruns) are fp32's whatever CPU runs it, so
    here the probe sees fp32 as the faster, and its cache is a temporary file, never the user's.
    Session-wide, so that module-scoped fixtures (a whole run) see it too; test_dtype.py replaces
    the timings to test the choice itself."""
    import encoders.dtype

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(encoders.dtype.CACHE_ENV, str(tmp_path_factory.mktemp("dtype_probe") / "probe.json"))
        mp.setattr(encoders.dtype, "time_matmul", fake_matmul_times({"float32": 1.0, "bfloat16": 2.0, "float16": 2.0}))
        yield


def write_slice(name: str, root: Path, n_queries: int, n_distractors: int) -> Path:
    """A BEIR folder with a shared dataset's first `n_queries` judged test queries, their judged
    documents and the corpus's first `n_distractors` documents (skips without BEIR_DATA_DIR)."""
    from benchmarks.pipeline.data import load_dataset

    full = load_dataset(str(shared_dataset(name)))
    qids = list(full.qrels)[:n_queries]
    keep = {d for q in qids for d in full.qrels[q] if d in full.corpus} | set(list(full.corpus)[:n_distractors])
    corpus = [{"_id": d, **full.corpus[d]} for d in full.corpus if d in keep]
    queries = [{"_id": q, "text": full.queries[q]} for q in qids]
    qrels = [(q, d, s) for q in qids for d, s in full.qrels[q].items()]
    return write_beir(root, corpus, queries, qrels)


def write_scifact_slice(root: Path, n_queries: int, n_distractors: int) -> Path:
    return write_slice("scifact", root, n_queries, n_distractors)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test run (2 CPUs, quiet, a small object store), shut down at the end;
    the sweep's tasks put this checkout on their workers' path themselves (benchmarks/sweep_ray.py)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=80 * 1024 * 1024)
    yield ray
    ray.shutdown()


def start_blocked_sweep(cfg: Path, out: Path, tmp_path: Path, *extra: str):
    """`python -m benchmarks.sweep CFG` in a subprocess, waited on until it is inside the run of the
    blocking encoder (tests/blocking_encoder.py) -> (process, command, environment, log, flag, marker)."""
    import subprocess
    import sys
    import time

    from encoders.dtype import resolve_dtype

    resolve_dtype("auto", "cpu")  # writes the session's (fp32) probe cache, which the subprocess reads
    repo = Path(__file__).resolve().parent.parent
    log, flag, marker = tmp_path / "encoded.log", tmp_path / "block", tmp_path / "blocked"
    flag.touch()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=f"{repo}{os.pathsep}{repo / 'tests'}",
               BLOCKING_LOG=str(log), BLOCKING_FLAG=str(flag), BLOCKING_MARKER=str(marker))
    cmd = [sys.executable, "-m", "benchmarks.sweep", str(cfg), "--output-dir", str(out), "--quiet", *extra]
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    return proc, cmd, env, log, flag, marker
