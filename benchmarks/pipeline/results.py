"""The results layout: `<output-dir>/<dataset>/<encoder-tag>/<perturbation>/<run-id>/{summary.json, per_query.csv,
run.trec}`, where <perturbation> is "clean" for an unperturbed run.

A run directory appears whole or not at all: files are written into a hidden temporary directory
beside it, which is renamed into place at the end. An existing run is never overwritten unless
asked for explicitly.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pandas as pd

PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "faiss-cpu", "pytrec-eval-terrier", "pandas",
            "mamba-ssm", "causal-conv1d", "flash-linear-attention", "rwkv", "encoder-bench")


class ResultsError(Exception):
    """An output location that cannot be used (e.g. an existing run); printed as one line."""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid() % 100000:05d}"


def run_dir(output_dir: str | Path, dataset: str, encoder_tag: str, perturbation: str, run_id: str) -> Path:
    return Path(output_dir) / slug(dataset) / slug(encoder_tag) / slug(perturbation) / slug(run_id)


def check_target(target: Path, overwrite: bool) -> None:
    """Fail before any work is done if the run directory exists and may not be replaced."""
    if target.exists() and not overwrite:
        raise ResultsError(f"results already exist at {target}; choose another --run-id or pass --overwrite")


@contextmanager
def atomic_dir(target: Path):
    """Yield a temporary directory beside `target`; when the block completes it replaces `target` as a
    whole (an existing one is moved aside to `.<name>.old`, then deleted), when it fails it is removed.
    So readers see the old directory or the new one, never a half-written one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_run(target: Path, summary: dict, per_query: pd.DataFrame, run: dict[str, dict[str, float]],
              run_tag: str, overwrite: bool = False) -> Path:
    check_target(target, overwrite)
    with atomic_dir(target) as tmp:
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        per_query.to_csv(tmp / "per_query.csv", float_format="%.6f")
        with open(tmp / "run.trec", "w") as f:
            for qid, docs in run.items():
                for rank, (did, score) in enumerate(docs.items(), 1):
                    f.write(f"{qid} Q0 {did} {rank} {score:.6f} {run_tag}\n")
    return target


def git_commit() -> dict:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(commit=commit or None, dirty=bool(dirty)) if commit else {}


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def environment(device) -> dict:
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    env = dict(python=platform.python_version(), platform=platform.platform(), cpu=cpu_model(),
               cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), device=str(device),
               packages=versions, git=git_commit(), hostname=platform.node())
    if getattr(device, "type", None) == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
