"""The results layout: `<output-dir>/<dataset>/<encoder-tag>/<perturbation>/<run-id>/{summary.json, per_query.csv,
run.trec}`, where <perturbation> is "clean" for an unperturbed run.

A run directory appears whole or not at all: files are written into a hidden temporary directory
beside it (locked by its writer while it lives), which is renamed into place at the end, or swapped
atomically with the run it replaces. An existing run is never overwritten unless asked for explicitly.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
import weakref
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path


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


LOCK = ".writing.lock"  # inside a temporary run directory, flock-ed by its writer for the whole write


class Staging:
    """A temporary directory beside `target` (`.<name>.XXXX`) that becomes `target` on commit().

    Its writer holds an flock on `LOCK` inside it until then, so another process can tell a live
    temporary directory (lock held) from one a killed writer left behind (lock free, or no lock file):
    see `remove_stale`. If the staging object is dropped uncommitted (an exception, interpreter exit)
    the directory is removed; a SIGKILL leaves it for `remove_stale`.
    """

    def __init__(self, target: Path):
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        while True:
            path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
            try:
                fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # remove_stale took it in the instant before it was locked
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(path / LOCK).st_ino == os.fstat(fd).st_ino:
                    break  # locked, and still ours
            except FileNotFoundError:
                pass
            os.close(fd)  # removed under us before the lock was taken: start again
        self.path = path
        self._fd = fd
        self._discard = weakref.finalize(self, _discard, path, fd)

    def commit(self) -> Path:
        """Put the directory in place of `target` (an existing one is swapped out atomically, then deleted)."""
        self._discard.detach()
        try:
            self._swap_in()
        except BaseException:
            _discard(self.path, self._fd)
            raise
        os.unlink(self.target / LOCK)
        os.close(self._fd)
        return self.target

    def _swap_in(self) -> None:
        if not self.target.exists():
            os.rename(self.path, self.target)  # fails rather than replace a directory that appeared meanwhile
        elif exchange(self.path, self.target):
            shutil.rmtree(self.path, ignore_errors=True)  # the old run, now under the temporary name
        else:  # no atomic exchange here: a moment without `target`; `.<name>.old` holds it meanwhile
            old = self.target.with_name(f".{self.target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.target, old)
            os.replace(self.path, self.target)
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        self._discard()


def _discard(path: Path, fd: int) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.close(fd)


@contextmanager
def atomic_dir(target: Path):
    """Yield a temporary directory beside `target`; when the block completes it replaces `target` as a
    whole, when it fails it is removed. So readers see the old directory or the new one, never a
    half-written one, and never none (where the filesystem can exchange two names atomically)."""
    stage = Staging(target)
    try:
        yield stage.path
    except BaseException:
        stage.discard()
        raise
    stage.commit()


@contextmanager
def locked(path: Path):
    """Hold an exclusive flock on the file `path` (created if missing) for the block: one process at a
    time updates what it guards (e.g. the runs table, which sweeps writing into one results directory
    share)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_stale(paths) -> list[Path]:
    """Remove the temporary directories among `paths` whose writer is gone (its lock can be taken, or
    it has no lock file); a live writer's are kept. -> the directories removed."""
    removed = []
    for path in map(Path, paths):
        try:
            fd = os.open(path / LOCK, os.O_RDONLY)
        except FileNotFoundError:  # killed before locking, or an old run swapped out: nobody writes it
            fd = None
        except OSError:
            continue
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            if fd is not None:
                os.close(fd)
    return removed


RENAME_EXCHANGE, AT_FDCWD = 2, -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE, via libc). False where the libc or
    the filesystem cannot (macOS, glibc < 2.28, some network filesystems): the caller falls back."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def stage_run(target: Path, overwrite: bool) -> Staging:
    """Check the target (see check_target) and open its locked temporary directory (record.write fills it)."""
    check_target(target, overwrite)
    return Staging(target)


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


def environment(device) -> dict:
    import torch

    from encoders.dtype import cpu_matrix_flags, cpu_model

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    env = dict(python=platform.python_version(), platform=platform.platform(), cpu=cpu_model(),
               cpu_flags=cpu_matrix_flags(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), device=str(device),
               packages=versions, git=git_commit(), hostname=platform.node())
    if getattr(device, "type", None) == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
