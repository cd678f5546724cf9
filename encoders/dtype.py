"""`--dtype auto`: the compute dtype chosen by measurement, per device.

Whether bf16 beats fp32 depends on the machine, not the model: on a CPU with native bf16 matrix
units it can be twice as fast; on one without, torch emulates it and it is slower (issue 15: 162 vs
325 GFLOP/s on a 2-core Xeon). So `auto` times a short matmul probe in every dtype the device
supports and takes the fastest. The result is cached per (machine, torch version, thread count) in a
small JSON file, so a sweep probes once; the probe's figures travel with every run's summary.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CACHE_ENV = "ENCODER_BENCH_DTYPE_PROBE"  # path of the probe cache file (tests point it at tmp_path)
# (tokens, in, out): a 4096-token batch through the `small` preset's MLP (384 -> 1536), as an
# encoder sees it at the default CPU token budget, and a square product for a second opinion.
PROBE_SHAPES = ((4096, 384, 1536), (1024, 1024, 1024))
PROBE_REPEATS = 5


def candidates(device: torch.device) -> list[str]:
    """The dtypes a device can compute in: the CPU has no useful fp16 matmul (the Encoder refuses it)."""
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return ["float32"] + (["bfloat16"] if bf16 else []) + ["float16"]
    return ["float32", "bfloat16"]


def time_matmul(dtype: str, shape: tuple[int, int, int], device: torch.device, repeats: int = PROBE_REPEATS) -> float:
    """Best of `repeats` wall times (seconds) of one (m x k) @ (k x n) product, after one warm-up."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(device, DTYPES[dtype])
    b = torch.randn(k, n, generator=gen).to(device, DTYPES[dtype])
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    best = float("inf")
    for i in range(repeats + 1):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        if i:  # the first is warm-up (allocations, kernel selection)
            best = min(best, time.perf_counter() - start)
    return best


def machine_key(device: torch.device) -> str:
    """What the probe's answer depends on: the processor (on a CPU with its matrix instruction sets),
    torch's version and its thread count."""
    if device.type == "cuda":
        proc = torch.cuda.get_device_name(device)
    else:
        proc = "+".join([cpu_model(), *cpu_matrix_flags()])
    return f"{device.type}|{proc}|torch {torch.__version__}|{torch.get_num_threads()} threads"


# The instruction sets that decide whether bf16 beats fp32 on a CPU. A virtual machine often names
# its processor only "Intel(R) Xeon(R) Processor", whether it has AMX tiles (bf16 ~4-8x fp32 here)
# or no bf16 units at all (bf16 a quarter of fp32): with a home directory shared by unlike nodes,
# the model name alone would hand one kind the other's answer.
MATRIX_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_matrix_flags() -> list[str]:
    present = set(_cpuinfo("flags").split())
    return [f for f in MATRIX_FLAGS if f in present]


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _cpuinfo(field: str) -> str:
    """The first `field` line of /proc/cpuinfo (Linux), or "" where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cache_path() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "encoder-bench" / "dtype_probe.json"


def probe(device: torch.device) -> dict:
    """Time every candidate dtype; {'chosen', 'gflops': {dtype: {shape: GFLOP/s}}, 'seconds': {dtype: total}}."""
    gflops, seconds = {}, {}
    for dtype in candidates(device):
        times = {shape: time_matmul(dtype, shape, device) for shape in PROBE_SHAPES}
        seconds[dtype] = sum(times.values())
        gflops[dtype] = {"x".join(map(str, s)): round(2 * s[0] * s[1] * s[2] / t / 1e9, 1) for s, t in times.items()}
    chosen = min(seconds, key=seconds.get)
    return dict(chosen=chosen, gflops=gflops, seconds=seconds, shapes=["x".join(map(str, s)) for s in PROBE_SHAPES])


def resolve_dtype(dtype: str, device: torch.device | str) -> tuple[str, dict | None]:
    """`auto` -> (the fastest dtype by the probe, the probe's record); any other name -> (it, None)."""
    if dtype != "auto":
        return dtype, None
    device = torch.device(device)
    key = machine_key(device)
    path = cache_path()
    cached = _read(path)
    if key in cached:
        return cached[key]["chosen"], dict(cached[key], machine=key, cached=True)
    record = probe(device)
    cached = _read(path)  # another process may have written meanwhile; keep its entries
    cached[key] = record
    _write(path, cached)
    return record["chosen"], dict(record, machine=key, cached=False)


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # absent or damaged: probe again and rewrite it
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict) -> None:
    """Atomically (write, then rename), so a concurrent reader never sees half a file. A cache that
    cannot be written only costs a probe next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass
