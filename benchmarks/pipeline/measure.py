"""Latency and memory measurements recorded in every run.

Latency is measured in one place, `time_calls`, for every retriever (a callable per query): batch
size 1, after untimed warm-up calls, in `repeats` rounds over the same queries. p50/p95 pool every
timed call; the spread of the rounds' p50s (their coefficient of variation) says how far a single
round could be trusted on this machine, and gives the frontier its error bars.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Callable

import numpy as np
import torch

REPEATS = 3
UNSTABLE_CV = 0.10  # above this, the summary says the latency is not to be trusted


def time_calls(call: Callable[[str], object], queries: list[str], n: int = 100, repeats: int = REPEATS,
               warmup: int = 10, sync: Callable[[], None] = lambda: None) -> dict:
    """Milliseconds per `call(query)`, one query at a time: `warmup` untimed calls, then `repeats`
    rounds of `n` timed calls, each round over the same queries (cycled when there are fewer than n).
    `sync` waits for an accelerator, so that its queued work is inside the timing."""
    if not queries:
        return {}
    if n < 1 or repeats < 1:
        raise ValueError(f"latency needs n >= 1 and repeats >= 1, got n={n}, repeats={repeats}")
    for i in range(warmup):
        call(queries[i % len(queries)])
    sync()
    times = np.empty((repeats, n))
    for r in range(repeats):
        for i in range(n):
            start = time.perf_counter()
            call(queries[i % len(queries)])
            sync()
            times[r, i] = (time.perf_counter() - start) * 1e3
    return dict(latency_summary(times), warmup=warmup, batch_size=1)


def latency_summary(times: np.ndarray) -> dict:
    """p50/p95/mean over all timed calls of a (repeats, n) array of milliseconds, the p50 of each
    round, and their coefficient of variation (sample std / mean; None for a single round)."""
    p50s = np.percentile(times, 50, axis=1)
    cv = float(p50s.std(ddof=1) / p50s.mean()) if len(p50s) > 1 else None
    return dict(p50_ms=float(np.percentile(times, 50)), p95_ms=float(np.percentile(times, 95)),
                mean_ms=float(times.mean()), n=int(times.size), repeats=int(times.shape[0]),
                queries_per_repeat=int(times.shape[1]), p50_ms_repeats=[float(x) for x in p50s], cv=cv,
                unstable=cv is not None and cv > UNSTABLE_CV)


def latency_warning(lat: dict) -> str | None:
    """One line for a run summary when the rounds disagree by more than UNSTABLE_CV."""
    if not lat.get("unstable"):
        return None
    p50s = ", ".join(f"{x:.1f}" for x in lat["p50_ms_repeats"])
    return (f"query latency unstable: p50 of {lat['repeats']} repeats {p50s} ms, CV {lat['cv']:.0%} "
            f"> {UNSTABLE_CV:.0%} (a busy machine?)")


def query_latency(encoder, queries: list[str], n: int = 100, repeats: int = REPEATS, warmup: int = 10) -> dict:
    """Per-query encoding latency at batch size 1, tokenization included, as at serving time."""
    texts = encoder.query_texts(queries)
    sync = (lambda: torch.cuda.synchronize(encoder.device)) if encoder.device.type == "cuda" else (lambda: None)
    return time_calls(lambda text: encoder.encode([text], show_progress=False), texts, n=n, repeats=repeats,
                      warmup=warmup, sync=sync)


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


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """Best-of-3 FLOP/s of an n x n x n matmul in `dtype`: what this CPU can do at best."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * repeats / best


def memory_bandwidth(mib: float = 256, repeats: int = 10) -> float:
    """Best-of-`repeats` bytes/s of a copy between two arrays of `mib` MiB each (each byte read once
    and written once, counted twice). The default is far larger than any cache: main memory's
    bandwidth; a smaller size measures the cache level it fits in."""
    src = torch.ones(max(1, int(mib * 2**20) // 4))
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch of dst's pages
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best
