"""One run's corpus encoded by several Ray actors (`--workers N`, `--ray-address`).

Each actor loads the encoder itself from the run's configuration (seeded as the runner seeds it) on
its own device (one GPU per actor where the cluster has GPUs, else one CPU) and refuses to encode if
its fingerprint differs from the driver's encoder. The driver hands each free actor the texts of the
next shard still missing from the embedding store (pipeline/cache.py) and writes each shard the moment
it comes back: the store is resumed after a kill as a single process's is, the workers need no shared
disk, and the driver then searches the store as always. Results do not depend on the number of workers
(a shard's texts are batched the same way wherever they are encoded).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from encoders import EncoderError

from .cache import merge_stats

PROJECT = str(Path(__file__).resolve().parents[2])  # on the actors' import path: this checkout's code


class EncoderWorker:
    """A Ray actor: the run's encoder, encoding one shard's texts per call."""

    def __init__(self, cfg, fingerprint: str):
        import ray
        import torch

        from . import retrievers, runner

        if cfg.encoder_module:
            import encoders

            encoders.import_encoder_module(cfg.encoder_module)
        device = "cuda" if ray.get_gpu_ids() else "cpu"
        runner.set_seed(cfg.seed)
        torch.set_num_threads(1 if device == "cpu" else torch.get_num_threads())
        self.encoder = retrievers.load_encoder(replace(cfg, device=device, show_progress=False))
        if self.encoder.fingerprint != fingerprint:
            raise EncoderError(f"--workers: a worker's encoder differs from the run's (fingerprint "
                               f"{self.encoder.fingerprint[:12]} against {fingerprint[:12]})")

    def encode(self, shard: int, texts: list[str]):
        emb = self.encoder.encode(texts, show_progress=False)
        return shard, emb, self.encoder.last_stats


def shard_encoder(cfg):
    """The `encode_shards` of embed.embed for this run: its missing shards over `cfg.workers` actors."""
    def encode_shards(encoder, texts, store, todo, what):
        from .embed import require_finite

        # The dtype the driver's encoder computes in (an `auto` probe could choose otherwise on a worker).
        actors = start_actors(replace(cfg, dtype=encoder.dtype_name), encoder.fingerprint, min(cfg.workers, len(todo)))
        start, parts = time.perf_counter(), []
        try:
            for i, emb, stats in over_actors(actors, store, texts, todo):
                require_finite(emb, encoder, what, store.bounds(i)[0])
                store.write(i, emb, stats)
                parts.append(stats)
        except ray_errors() as e:  # e.g. a worker's encoder refused: its last line says why
            raise EncoderError(f"--workers: a worker failed: {str(e).strip().splitlines()[-1]}") from None
        finally:
            stop_actors(actors)
        total = merge_stats(parts)
        return [dict(total, seconds=time.perf_counter() - start, worker_seconds=total["seconds"], workers=len(actors))]
    return encode_shards


def over_actors(actors, store, texts, todo):
    """(shard, embeddings, stats) as the actors finish them; a shard's texts are read when an actor is free."""
    from ray.util import ActorPool

    def submit(actor, i):
        return actor.encode.remote(i, texts.read(*store.bounds(i)))
    return ActorPool(actors).map_unordered(submit, todo)


def join_ray(address: str | None, **opts) -> None:
    """ray.init at `address` (None: start a local Ray; "auto": the one `ray start` runs here). An
    explicit host:port where nothing answers fails in seconds with one line: Ray itself retries for
    minutes before giving up."""
    import socket

    import ray

    if address and address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError) as e:
            raise ConnectionError(f"nothing answers at {address} ({e}); is the cluster's head node "
                                  f"running (`ray start --head`) and is that its address?") from None
    ray.init(address=address, include_dashboard=False, **opts)


def start_actors(cfg, fingerprint: str, n: int) -> list:
    import ray

    if not ray.is_initialized():
        try:
            join_ray(cfg.ray_address, log_to_driver=False)
        except ConnectionError as e:
            raise EncoderError(f"--ray-address {cfg.ray_address}: {str(e).splitlines()[0]}") from None
    gpu = ray.cluster_resources().get("GPU", 0) >= 1
    remote = ray.remote(num_gpus=1 if gpu else 0, num_cpus=0 if gpu else 1)(EncoderWorker)
    env = {"env_vars": {"PYTHONPATH": PROJECT}}
    actors = [remote.options(runtime_env=env).remote(cfg, fingerprint) for _ in range(n)]
    return actors


def ray_errors():
    import ray.exceptions

    return ray.exceptions.RayError


def stop_actors(actors: list) -> None:
    import ray

    for actor in actors:
        ray.kill(actor)
