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
    """Start this run's peaks here: the resident-set high-water mark (Linux: writing 5 to
    /proc/self/clear_refs resets VmHWM) and the CUDA peak. Without this, a run would report the largest
    peak of anything the process did before it (ru_maxrss even carries a forking parent's size across exec)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux: peak_rss_mb falls back to the process's lifetime peak
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def rss_mb() -> float:
    """The process's resident memory now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Resident-set high-water mark since the last reset_peak_memory() (VmHWM), else since the process began."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def peak_memory(device: torch.device) -> dict:
    out = dict(peak_rss_mb=peak_rss_mb())
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
