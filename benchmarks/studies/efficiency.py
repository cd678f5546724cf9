"""Efficiency parity: each architecture's achieved FLOP/s as a fraction of this machine's matmul peak.

    python -m benchmarks.studies.efficiency
    python -m benchmarks.studies.efficiency --encoders mamba,mamba:scan=loop,rwkv:wkv=recurrent --lengths 256,2048

All in one process, so every figure is read against the same machine state: first the matmul peak
per dtype (a large square GEMM, best of several) and the memory bandwidth (a large array copy), then
for each encoder at --preset, each dtype and each length a batch of --tokens // length random
texts without padding, forward only (no_grad, under the encoder's own autocast for bf16), best of
--repeats after one warm-up. Achieved FLOP/s = encoder.flops_per_token(length) x tokens / seconds,
and its fraction of the matmul peak in the same dtype.

An encoder spec `name:key=value:...` passes options to `encoders.load`, so one run can put a fast
path next to its reference form (values are parsed as int, float, or left as text).

`--dtypes auto` resolves to what the encoder would pick by itself when encoders.base provides a
resolver (`resolve_dtype`); without one, name the dtypes (float32, bfloat16).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks.pipeline.measure import matmul_peak, memory_bandwidth

ARCHITECTURES = ("bert", "mamba", "rwkv", "hyena", "retnet", "gla")
LENGTHS = (128, 256, 512, 2048)


def parse_spec(spec: str) -> tuple[str, dict]:
    """'mamba:scan=loop:chunk_size=8' -> ('mamba', {'scan': 'loop', 'chunk_size': 8})."""
    name, *pairs = spec.split(":")
    opts = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--encoders: {spec!r}: options are key=value, got {pair!r}")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        opts[key] = value
    return name, opts


def resolve_dtypes(names: list[str]) -> list[str]:
    from encoders import base

    known = set(base.DTYPES)
    resolver = getattr(base, "resolve_dtype", None)
    out = []
    for name in names:
        if name == "auto" and resolver is not None:
            out.append(str(resolver("auto", torch.device("cpu"))).removeprefix("torch."))
        elif name in known:
            out.append(name)
        else:
            choices = ", ".join(sorted(known) + (["auto"] if resolver else []))
            raise ValueError(f"--dtypes: unknown dtype {name!r}; choose from {choices}")
    return list(dict.fromkeys(out))


def time_forward(encoder, length: int, tokens: int, repeats: int) -> tuple[int, float]:
    """(tokens run, best seconds of `repeats` forwards after one warm-up) at batch tokens // length."""
    batch = max(1, tokens // length)
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(1000, len(encoder.tokenizer), (batch, length), generator=g)
    mask = torch.ones_like(ids)
    with torch.no_grad(), encoder.autocast():
        encoder(ids, mask)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            encoder(ids, mask)
            best = min(best, time.perf_counter() - start)
    return batch * length, best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.efficiency", description=__doc__.split("\n")[0])
    p.add_argument("--encoders", default=",".join(ARCHITECTURES),
                   help="comma-separated specs name[:key=value...] (default: all six)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16 (auto if supported)")
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    p.add_argument("--tokens", type=int, default=4096, help="tokens per forward (batch = tokens // length)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--preset", default="small")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = p.parse_args(argv)

    import encoders
    from encoders import EncoderError

    try:
        specs = [parse_spec(s) for s in args.encoders.split(",") if s]
        dtypes = resolve_dtypes(args.dtypes.split(","))
        lengths = [int(x) for x in args.lengths.split(",")]
        if min(lengths) < 1 or args.tokens < 1 or args.repeats < 1:
            raise ValueError("--lengths, --tokens and --repeats must be positive")
        for name, _ in specs:
            encoders.get(name)
    except (ValueError, EncoderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # transformers' "fast path is not available" notices
    peaks = {d: matmul_peak(encoders.base.DTYPES[d]) for d in dtypes}
    bandwidth = memory_bandwidth()
    print(f"{torch.get_num_threads()} threads; matmul peak "
          + ", ".join(f"{d} {peaks[d] / 1e9:.0f} GFLOP/s" for d in dtypes)
          + f"; memory bandwidth (copy) {bandwidth / 1e9:.1f} GB/s; best of {args.repeats}, "
          f"{args.tokens} tokens per forward, preset {args.preset}", flush=True)
    head = f"{'encoder':<24}{'dtype':<10}{'kernel path':<28}" + "".join(f"{L:>16}" for L in lengths)
    print(f"\nachieved GFLOP/s and fraction of the matmul peak, at length:\n{head}", flush=True)
    for spec, (name, opts) in zip(args.encoders.split(","), specs):
        for dtype in dtypes:
            torch.manual_seed(0)
            try:
                enc = encoders.load(name, preset=args.preset, dtype=dtype, max_length=max(max(lengths), 512),
                                    show_progress=False, **opts).eval()
            except EncoderError as e:
                print(f"error: --encoders {spec!r}: {e}", file=sys.stderr)
                return 2
            cells = []
            for length in lengths:
                tokens, seconds = time_forward(enc, length, args.tokens, args.repeats)
                rate = enc.flops_per_token(length) * tokens / seconds
                cells.append(f"{rate / 1e9:>8.0f} {rate / peaks[dtype]:>6.0%}")
            print(f"{spec:<24}{dtype:<10}{enc.kernel_path[:27]:<28}" + "".join(f"{c:>16}" for c in cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
