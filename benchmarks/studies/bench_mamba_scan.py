"""transformers' Mamba torch path vs our chunked scan, in one process on the same weights and input.

    python -m benchmarks.studies.bench_mamba_scan [--batch 8] [--length 256] [--preset small] [--threads 1]

Times the backbone forward, the two paths alternating forward by forward (--repeats pairs, after
the memory measurement below), so that a load that comes and goes on a shared machine slows both
alike; the speed-up is the median of the pairs' ratios, with their range. Checks that both agree to
1e-4, and reports peak memory two ways:
- measured: the peak resident set size (RSS, /proc/self/statm sampled every millisecond by a
  thread) during one forward of each path on its own (chunked first, each after a warm-up), minus
  the RSS just before it. Torch's CPU allocator returns large blocks to the OS on free, so this
  tracks the live intermediates; a spike shorter than the sampling interval can be missed.
- analytic: the largest scan intermediates per layer. The reference holds exp(dt A) and dt B x for
  the whole text, 2 x (batch, d_inner, length, d_state) floats; the chunked scan holds the same two
  per chunk, 2 x (chunk, batch, d_inner, d_state) floats.

It also times the mixers' products alone (the bound on the speed-up: the reference's time over
theirs) and counts minor page faults per timed forward. glibc serves a block above its mmap threshold
(128 KiB, raised as such blocks are freed, up to 32 MiB) with a fresh mapping and unmaps it on free,
so each such temporary is page-faulted and zeroed by the kernel anew; the reference's (batch,
d_inner, length, d_state) tensors (384 MiB per layer at the defaults) make that a large share of its time.
--raise-malloc-thresholds (glibc only) raises glibc's mmap and trim thresholds first (mallopt), so
that freed memory is reused instead: both paths then run without those faults (and the RSS growth
reads ~0, the memory being kept).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import statistics
import threading
import time

import torch


class PeakRSS:
    """Peak RSS growth (bytes) over a with-block, sampled by a background thread."""

    def __init__(self, interval: float = 1e-3):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.base = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        self.delta = self.peak - self.base


def time_forward(model, ids):
    """Seconds of one forward, its output, the peak RSS growth (bytes) and the minor page faults during it."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with PeakRSS() as mem:
        start = time.perf_counter()
        out = model(input_ids=ids, use_cache=False).last_hidden_state
        seconds = time.perf_counter() - start
    return seconds, out, mem.delta, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def time_projections(model, batch: int, length: int) -> float:
    """Seconds of the products every mixer makes on either path (in_proj, x_proj, dt_proj, out_proj) at
    these shapes, for all layers, on random inputs: a floor under both paths' forward."""
    cfg = model.config
    rows = batch * length
    inputs = [torch.randn(rows, n) for n in (cfg.hidden_size, cfg.intermediate_size, cfg.time_step_rank)]
    start = time.perf_counter()
    for layer in model.layers:
        m = layer.mixer
        for linear, x in ((m.in_proj, inputs[0]), (m.x_proj, inputs[1]), (m.dt_proj, inputs[2]), (m.out_proj, inputs[1])):
            torch.nn.functional.linear(x, linear.weight)
    return time.perf_counter() - start


def raise_malloc_thresholds() -> None:
    """glibc: serve every allocation below 1 GiB from the heap, and never give freed heap back."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except OSError:
        raise SystemExit("error: --raise-malloc-thresholds needs glibc (libc.so.6 not found)") from None
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
    if not (mallopt(M_MMAP_THRESHOLD, 2**30) and mallopt(M_TRIM_THRESHOLD, 2**31 - 1)):
        raise SystemExit("error: --raise-malloc-thresholds: glibc's mallopt refused")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--raise-malloc-thresholds", action="store_true",
                        help="reuse freed memory instead of page-faulting fresh mappings (glibc)")
    args = parser.parse_args(argv)
    if args.raise_malloc_thresholds:
        raise_malloc_thresholds()

    from transformers.utils import logging as hf_logging

    import encoders
    from encoders.mamba import CHUNK_SIZE, bind_chunked_scan, scan_chunk, unbind_chunked_scan

    hf_logging.set_verbosity_error()  # the "falling back to the reference implementation" notice
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    chunk = args.chunk_size or CHUNK_SIZE
    enc = encoders.load("mamba", preset=args.preset, chunk_size=chunk, show_progress=False)
    model, cfg = enc.model, enc.model.config
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.length))
    tokens = args.batch * args.length

    paths = {"chunked": lambda: bind_chunked_scan(model, chunk), "reference": lambda: unbind_chunked_scan(model)}
    seconds, outs, mem, faults = {p: [] for p in paths}, {}, {}, {p: [] for p in paths}
    with torch.inference_mode():
        # Memory path by path, the chunked path first, after a warm-up each: once the reference has
        # run, glibc keeps part of its freed memory mapped and the chunked path's growth would read 0.
        for path, bind in paths.items():
            bind()
            time_forward(model, ids)
            mem[path] = time_forward(model, ids)[2]
        time_projections(model, args.batch, args.length)  # warm-up
        projections = []
        for repeat in range(args.repeats):  # the timings, in alternating pairs (and the products alone)
            for path, bind in paths.items():
                bind()
                t, outs[path], _, f = time_forward(model, ids)
                seconds[path].append(t)
                faults[path].append(f)
            projections.append(time_projections(model, args.batch, args.length))
    ratios = [r / c for r, c in zip(seconds["reference"], seconds["chunked"])]
    bounds = [r / p for r, p in zip(seconds["reference"], projections)]
    t_chunk, t_ref = statistics.median(seconds["chunked"]), statistics.median(seconds["reference"])
    mem_chunk, mem_ref = mem["chunked"], mem["reference"]
    diff = (outs["chunked"] - outs["reference"]).abs().max().item()

    mib = 2**20
    per_ref = 2 * args.batch * cfg.intermediate_size * args.length * cfg.state_size * 4
    used = scan_chunk(args.length, args.batch, cfg.intermediate_size, cfg.state_size, chunk)  # chunk, at most
    per_chunk = 2 * used * args.batch * cfg.intermediate_size * cfg.state_size * 4
    print(f"mamba preset {args.preset}: d_model {cfg.hidden_size}, layers {cfg.num_hidden_layers}, "
          f"d_inner {cfg.intermediate_size}, d_state {cfg.state_size}; batch {args.batch} x length {args.length}, "
          f"{torch.get_num_threads()} thread(s), chunk {used}, median of {args.repeats} alternating pairs"
          + (", glibc malloc thresholds raised" if args.raise_malloc_thresholds else ""))
    print(f"{'path':<24}{'seconds':>9}{'tokens/s':>10}{'peak RSS growth':>17}{'scan tensors/layer':>20}"
          f"{'page faults':>13}")
    for name, path, t, m, per in (("transformers reference", "reference", t_ref, mem_ref, per_ref),
                                  ("chunked scan", "chunked", t_chunk, mem_chunk, per_chunk)):
        print(f"{name:<24}{t:>9.3f}{tokens / t:>10.0f}{m / mib:>13.1f} MiB{per / mib:>16.1f} MiB"
              f"{statistics.median(faults[path]):>13.0f}")
    print(f"{'projections alone':<24}{statistics.median(projections):>9.3f}  (in/x/dt/out_proj, shared by both paths)")
    print(f"speed-up {statistics.median(ratios):.2f}x (pairs {min(ratios):.2f}-{max(ratios):.2f}x); "
          f"max |chunked - reference| = {diff:.2e} ({'OK' if diff <= 1e-4 else 'MISMATCH'} at 1e-4)")
    print(f"bound: reference / projections alone = {statistics.median(bounds):.2f}x (the speed-up if all but "
          f"those products cost nothing)")
    return 0 if diff <= 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
