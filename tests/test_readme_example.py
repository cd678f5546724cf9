"""The README's "add your own encoder" example, run exactly as written, end to end through the CLI."""

import json
import os
import re
import subprocess
import sys

from conftest import REPO


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- example: my_encoder.py -->\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its example block"
    return match.group(1)


def test_readme_subclass_example_runs_end_to_end(tiny_dataset, tmp_path):
    code = readme_example()
    assert 15 <= len(code.strip().splitlines()) <= 30
    (tmp_path / "my_encoder.py").write_text(code)
    out = tmp_path / "results"
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--encoder-module", "my_encoder", "--encoder", "gru",
                           "--dataset", "tiny", "--data-dir", str(tiny_dataset.parent), "--output-dir", str(out),
                           "--quiet", "--latency-queries", "3",
                           "--dtype", "float32"],  # not this machine's probe (a subprocess): no dtype in the path
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(next(out.glob("tiny/gru-gru128/clean/*/summary.json")).read_text())
    assert summary["encoder"]["name"] == "gru" and summary["encoder"]["embedding_dim"] == 128
    assert summary["dataset"]["queries"] == 3 and 0 <= summary["metrics"]["ndcg@10"] <= 1
    assert "NDCG@10" in proc.stdout
