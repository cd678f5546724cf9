"""Latency and memory measurements recorded in every run."""

from __future__ import annotations

import os
import resource
import time

import numpy as np
import torch


def query_latency(encoder, queries: list[str], n: int = 100, warmup: int = 10) -> dict:
    """Per-query encoding latency at batch size 1 (tokenization included, as at serving time):
    p50/p95/mean in milliseconds over `n` timed queries after `warmup` untimed ones. Cycles through
    the queries when there are fewer than n + warmup."""
    if not queries:
        return {}
    texts = [encoder.query_prefix + queries[i % len(queries)] for i in range(n + warmup)]
    sync = torch.cuda.synchronize if encoder.device.type == "cuda" else (lambda: None)
    times = []
    for i, text in enumerate(texts):
        sync()
        start = time.perf_counter()
        encoder.encode([text], show_progress=False)
        sync()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    t = np.asarray(times)
    return dict(p50_ms=float(np.percentile(t, 50)), p95_ms=float(np.percentile(t, 95)), mean_ms=float(t.mean()),
                n=len(times), warmup=warmup, batch_size=1)


def reset_peak_memory() -> None:
    """Start a run's CUDA peak from here. (The process's RSS peak cannot be reset: the sweep runs each
    point in a fresh process, so `peak_rss_mb` is that run's own.)"""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def rss_mb() -> float:
    """The process's resident memory now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def peak_memory(device: torch.device) -> dict:
    out = dict(peak_rss_mb=peak_rss_mb())
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
