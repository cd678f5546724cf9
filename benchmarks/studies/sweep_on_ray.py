"""How much a sweep gains from running its points as Ray tasks: the same grid, swept one point after
another and then with `--ray` on a local Ray of `--cpus` CPUs (one per point), each into its own empty
directory (cold embedding cache), timed side by side in this process.

    python -m benchmarks.studies.sweep_on_ray benchmarks/configs/ray_small.yaml [--cpus 2] [--repeats 1]

Repeats alternate the order (sequential first, then Ray first), so that a drifting machine load
favours neither. Ray's start-up is timed separately and is not in the --ray sweep's time. Prints one
line per sweep and the ratio of the medians; writes only into a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.sweep import main as sweep


def timed_sweep(config: str, out: Path, ray: bool) -> float:
    args = [config, "--output-dir", str(out), "--quiet"] + (["--ray"] if ray else [])
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = sweep(args)
    if rc != 0:
        raise SystemExit(f"error: the sweep {' '.join(args)} failed (exit {rc})")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.sweep_on_ray", description=__doc__.split("\n")[0])
    p.add_argument("config", help="a sweep YAML file, e.g. benchmarks/configs/ray_small.yaml")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray: points run this many at a time")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args(argv)
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    print(f"Ray start-up: {time.perf_counter() - start:.1f} s ({args.cpus} CPUs)", flush=True)
    times = {"sequential": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for mode in (["sequential", "ray"] if r % 2 == 0 else ["ray", "sequential"]):
                seconds = timed_sweep(args.config, Path(tmp) / f"{mode}-{r}", ray=mode == "ray")
                times[mode].append(seconds)
                print(f"repeat {r} {mode:>10}: {seconds:.1f} s", flush=True)
    ray.shutdown()
    seq, par = statistics.median(times["sequential"]), statistics.median(times["ray"])
    print(f"median: sequential {seq:.1f} s, --ray {par:.1f} s: {seq / par:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
