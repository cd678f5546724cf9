"""A sweep's points as Ray tasks (`python -m benchmarks.sweep CONFIG --ray [ADDRESS]`): each point is
one task asking for one GPU (a point on CUDA) or `cpus_per_point` CPUs, run in a fresh worker process
that writes its run directory into the sweep's output_dir (shared storage on a cluster). Nothing else
changes: completion is still the committed run directory, so resume, kill safety and never redoing a
finished run mean what they mean locally; only this driver writes the runs table.

Ray is an optional extra: `pip install -e ".[ray]"`.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import encoders
from encoders.dtype import CACHE_ENV

from .pipeline import retrievers
from .pipeline.record import RunConfig
from .pipeline.runner import USER_ERRORS
from .pipeline.workers import join_ray

REPO = Path(__file__).resolve().parent.parent
# What a worker must see as this driver does: the data, the offline switch, the dtype probe's cache.
FORWARDED_ENV = ("BEIR_DATA_DIR", "HF_HUB_OFFLINE", "HF_HOME", CACHE_ENV)


class ClusterError(Exception):
    """Ray missing, a cluster that that cannot be joined, or a point it can never run: one line."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError('--ray needs Ray: pip install -e ".[ray]"') from None
    return ray


@contextmanager
def connected(address: str | None):
    """Join the cluster at `address` ("auto": the one `ray start` runs here), or start a local Ray when
    None; a connection this process already has is used as it is (and left open)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        join_ray(address)
    except ConnectionError as e:
        raise ClusterError(f"--ray {address}: {str(e).splitlines()[0]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()  # a local Ray stops with it; on a cluster this driver's unfinished tasks are cancelled


def worker_env() -> dict:
    """The runtime environment of every task: this checkout first on the path (so workers run the
    driver's code: on a cluster, the same path on shared storage, or else the package installed on each
    node) and the driver's FORWARDED_ENV."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    return {"env_vars": {"PYTHONPATH": path, **env}}


def resolve_points(points: list[RunConfig]) -> list[RunConfig]:
    for module in {c.encoder_module for c in points if c.encoder_module}:
        encoders.import_encoder_module(module)
    return [retrievers.resolve(c) for c in points]


def resolve_on_cluster(ray, points: list[RunConfig]) -> list[RunConfig]:
    """Settle device and dtype "auto" on a worker (a GPU one when the cluster has GPUs), not here: the
    identities this driver checks for completion must be the ones the workers will record, and a CPU
    head node would settle "auto" differently. So the cluster's GPU nodes are assumed alike (name
    device and dtype in the sweep file otherwise)."""
    gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    task = ray.remote(num_gpus=gpus, max_calls=1, runtime_env=worker_env())(resolve_points)
    return ray.get(task.remote(points))


def resources(cfg: RunConfig, cpus_per_point: float) -> dict:
    return dict(num_cpus=cpus_per_point, num_gpus=1 if str(cfg.device).startswith("cuda") else 0)


def check_feasible(ray, points: list[RunConfig], cpus_per_point: float) -> None:
    """Refuse a point the cluster can never run (Ray would leave it pending forever)."""
    have = ray.cluster_resources()
    for cfg in points:
        need = resources(cfg, cpus_per_point)
        if need["num_gpus"] > have.get("GPU", 0) or need["num_cpus"] > have.get("CPU", 0):
            raise ClusterError(f"{cfg.encoder} {cfg.dataset} {cfg.perturbation} needs {need['num_gpus']} GPU and {need['num_cpus']} CPUs; the Ray "
                             f"cluster has {have.get('GPU', 0):g} GPUs and {have.get('CPU', 0):g} CPUs")


def on_ray(ray, run_point, cpus_per_point: float = 1):
    """An executor for `benchmarks.sweep.run_sweep`: every point submitted at once as a task of
    `run_point` (config -> (path, NDCG@10, seconds)), yielded as it ends."""
    def execute(points: list[RunConfig], show_progress: bool, started):
        check_feasible(ray, points, cpus_per_point)
        # max_calls=1: a fresh worker process per point, as locally (its own peak memory, no leftovers).
        task = ray.remote(max_calls=1, runtime_env=worker_env())(run_point)
        pending = {task.options(**resources(cfg, cpus_per_point)).remote(replace(cfg, show_progress=False)): cfg
                   for cfg in points}  # no progress bars from many workers at once
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            cfg = pending.pop(ref)
            yield cfg, outcome(ray, ref)
    return execute


def outcome(ray, ref):
    """A finished task's result, or the line saying why it failed (a bug's traceback printed in full)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:  # the point raised
        if isinstance(e.cause, USER_ERRORS):
            return str(e.cause)
        print(e, file=sys.stderr)  # not a user error: keep the remote traceback
        return f"{type(e.cause).__name__}: {e.cause}"
    except ray.exceptions.RayError as e:  # the worker or its node died (OOM, a crash, a lost node)
        return f"the worker process died ({type(e).__name__})"
