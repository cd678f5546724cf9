"""Latency and memory measurements recorded in every run."""

from __future__ import annotations

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


def peak_memory(device: torch.device) -> dict:
    out = dict(peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
