"""Efficiency parity: each architecture's achieved FLOP/s as a fraction of this machine's matmul peak.

    python -m benchmarks.studies.efficiency
    python -m benchmarks.studies.efficiency --encoders mamba,mamba:scan=loop,rwkv:wkv=recurrent --lengths 256,2048

All in one process: for each encoder at --preset, each dtype and each length a batch of
--tokens // length random texts without padding, forward only (no_grad, under the encoder's own
autocast for bf16), best of --repeats after one warm-up. Achieved FLOP/s =
encoder.flops_per_token(length) x tokens / seconds, as a fraction of the matmul peak in the same
dtype, measured in slices (1024^3 products) between those same forwards and best-of too: on a
shared machine a load that comes and goes slows both alike and the fraction holds. The header
gives the best matmul rate seen and the memory bandwidth (a large array copy).

For Mamba (fp32, chunked CPU scan) it also times the selective scan alone at the same shapes and
prints the bytes per second it moves against the measured copy bandwidth: the bound of a scan whose
work is elementwise passes over memory, not GEMMs. For RWKV (fp32, CPU) it times the WKV alone, in
the form the encoder picks at that shape, as a share of the forward.

An encoder spec `name:key=value:...` passes options to `encoders.load`, so one run can put a fast
path next to its reference form (values are parsed as int, float, or left as text).

`--dtypes auto` resolves to the dtype the encoders would choose on this machine (`--dtype auto`).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks.pipeline.measure import matmul_peak, memory_bandwidth
from encoders import ARCHITECTURES
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
    """The dtype names to measure; `auto` becomes the one encoders would choose here (encoders.dtype's
    probe, cached per machine), so a row says which dtype really ran."""
    from encoders.dtype import DTYPES, resolve_dtype

    out = []
    for name in names:
        if name != "auto" and name not in DTYPES:
            raise ValueError(f"--dtypes: unknown dtype {name!r}; choose from auto, {', '.join(DTYPES)}")
        out.append(resolve_dtype(name, "cpu")[0])
    return list(dict.fromkeys(out))


class PeakGemm:
    """The matmul peak in one dtype, measured a slice at a time: a few n x n x n products (~0.1-0.5 s)
    per call, best FLOP/s kept. Called between forwards, so that both see the same machine load."""

    def __init__(self, dtype: torch.dtype, n: int = 1024, products: int = 4):
        self.a, self.b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        self.flops, self.products = 2 * n**3 * products, products
        self.a @ self.b  # warm-up

    def __call__(self) -> float:
        start = time.perf_counter()
        for _ in range(self.products):
            self.a @ self.b
        return self.flops / (time.perf_counter() - start)


def time_forward(encoder, length: int, tokens: int, repeats: int, peak: PeakGemm) -> tuple[int, float, float]:
    """(tokens run, best seconds of `repeats` forwards after one warm-up, best matmul FLOP/s over
    slices interleaved with those forwards) at batch tokens // length. A load that comes and goes on
    a shared machine then slows both alike, and their ratio holds."""
    batch = max(1, tokens // length)
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(1000, len(encoder.tokenizer), (batch, length), generator=g)
    mask = torch.ones_like(ids)
    best, best_peak = float("inf"), 0.0
    with torch.no_grad(), encoder.autocast():
        encoder(ids, mask)
        for _ in range(repeats):
            best_peak = max(best_peak, peak())
            start = time.perf_counter()
            encoder(ids, mask)
            best = min(best, time.perf_counter() - start)
        best_peak = max(best_peak, peak())
    return batch * length, best, best_peak


def mamba_scan_bound(encoder, length: int, tokens: int, repeats: int) -> tuple[float, float]:
    """Mamba's selective scan alone at the encoder's shapes (random inputs, one layer): seconds per
    token over all layers, the bytes per second it moves (SCAN_BYTES_PER_STATE per state element
    and step), its working set in bytes, and the copy bandwidth at that working set's size."""
    from encoders.mamba import SCAN_BYTES_PER_STATE, scan_chunk, selective_scan_chunked

    cfg = encoder.model.config
    E, N, layers = cfg.intermediate_size, cfg.state_size, cfg.num_hidden_layers
    batch = max(1, tokens // length)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(length, batch, E, generator=g)
    dt = torch.nn.functional.softplus(torch.randn(length, batch, E, generator=g) - 4)
    A = -torch.exp(encoder.model.layers[0].mixer.A_log.detach().float())
    B, C = torch.randn(2, length, batch, N, generator=g)
    chunk = encoder.model.layers[0].mixer.scan_chunk_size
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        selective_scan_chunked(x, dt, A, B, C, chunk)
        best = min(best, time.perf_counter() - start)
    per_token = best * layers / (batch * length)
    # The scan's working set: its two chunk buffers. A copy of that size says what that cache level delivers.
    working_set = 2 * scan_chunk(length, batch, E, N, chunk) * batch * N * E * 4
    return per_token, SCAN_BYTES_PER_STATE * N * E * batch * length / best, working_set, memory_bandwidth(working_set / 2**21)


def rwkv_wkv_share(encoder, length: int, tokens: int, repeats: int) -> tuple[float, str]:
    """RWKV's WKV alone at the encoder's shapes (random keys and values, one layer's decays, the
    encoder's own choice of form): seconds per token over all layers, and the form that ran. Against
    the forward's time it says how much of RWKV's shortfall is the WKV and how much the rest."""
    from encoders.rwkv import wkv, wkv_form

    cfg = encoder.model.config
    batch, channels = max(1, tokens // length), cfg.attention_hidden_size
    g = torch.Generator().manual_seed(0)
    key, value = torch.randn(2, batch, length, channels, generator=g)
    att = encoder.model.blocks[0].attention
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            wkv(att, key, value, encoder.wkv_mode)
            best = min(best, time.perf_counter() - start)
    return best * cfg.num_hidden_layers / (batch * length), wkv_form(key, encoder.wkv_mode)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.efficiency", description=__doc__.split("\n")[0])
    p.add_argument("--encoders", default=",".join(ARCHITECTURES),
                   help="comma-separated specs name[:key=value...] (default: all six)")
    p.add_argument("--dtypes", default="float32,auto", help="comma-separated: float32, bfloat16, auto (the dtype --dtype auto picks here)")
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    p.add_argument("--tokens", type=int, default=4096, help="tokens per forward (batch = tokens // length)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--preset", default="small")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = p.parse_args(argv)

    import encoders
    from encoders import EncoderError
    from encoders.dtype import DTYPES

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
    peaks = {d: PeakGemm(DTYPES[d]) for d in dtypes}
    best_peak = {d: matmul_peak(DTYPES[d]) for d in dtypes}  # the full-size GEMM, for the header
    bandwidth = memory_bandwidth()
    rows, bounds, wkv_rows = [], [], []
    for spec, (name, opts) in zip(args.encoders.split(","), specs):
        for dtype in dtypes:
            torch.manual_seed(0)
            try:
                enc = encoders.load(name, preset=args.preset, dtype=dtype, max_length=max(max(lengths), 512),
                                    show_progress=False, **opts).eval()
            except EncoderError as e:
                print(f"error: --encoders {spec!r}: {e}", file=sys.stderr)
                return 2
            cells, seconds_per_token = [], []
            for length in lengths:
                tokens, seconds, peak = time_forward(enc, length, args.tokens, args.repeats, peaks[dtype])
                cells.append((enc.flops_per_token(length) * tokens / seconds, peak))
                seconds_per_token.append(seconds / tokens)
                best_peak[dtype] = max(best_peak[dtype], peak)
            rows.append((spec, dtype, enc.kernel_path, cells))
            if name == "mamba" and dtype == "float32" and enc.kernel_path.startswith("chunked-scan"):
                bounds.append((spec, [(L, *mamba_scan_bound(enc, L, args.tokens, args.repeats), s)
                                      for L, s in zip(lengths, seconds_per_token)]))
            if name == "rwkv" and dtype == "float32" and enc.device.type == "cpu":
                wkv_rows.append((spec, [(L, *rwkv_wkv_share(enc, L, args.tokens, args.repeats), s)
                                        for L, s in zip(lengths, seconds_per_token)]))
            print(f"measured {spec} {dtype}", file=sys.stderr, flush=True)
    bandwidth = max(bandwidth, memory_bandwidth())

    print(f"{torch.get_num_threads()} threads; best matmul seen "
          + ", ".join(f"{d} {best_peak[d] / 1e9:.0f} GFLOP/s" for d in dtypes)
          + f"; memory bandwidth (copy) {bandwidth / 1e9:.1f} GB/s; best of {args.repeats}, "
          f"{args.tokens} tokens per forward, preset {args.preset}")
    print("\nachieved GFLOP/s and fraction of the matmul peak measured between the same forwards, at length:")
    print(f"{'encoder':<24}{'dtype':<10}{'kernel path':<40}" + "".join(f"{L:>16}" for L in lengths))
    for spec, dtype, path, cells in rows:
        text = "".join(f"{rate / 1e9:>9.1f} {rate / peak:>5.0%}" for rate, peak in cells)
        print(f"{spec:<24}{dtype:<10}{path[:39]:<40}{text}")
    for spec, cells in bounds:
        print(f"\n{spec}: the selective scan alone (fp32, all layers) against the memory bandwidth:")
        for L, scan, moved, working_set, cached, forward in cells:
            print(f"  length {L}: {scan * 1e6:.1f} us/token = {scan / forward:.0%} of the forward; moves "
                  f"{moved / 1e9:.1f} GB/s = {moved / bandwidth:.0%} of main memory's copy bandwidth, "
                  f"{moved / cached:.0%} of a copy at its working set ({working_set / 2**20:.1f} MiB: {cached / 1e9:.1f} GB/s)")
    for spec, cells in wkv_rows:
        print(f"\n{spec}: the WKV alone (fp32, all layers) against the forward:")
        for L, seconds, form, forward in cells:
            print(f"  length {L}: {seconds * 1e6:.1f} us/token ({form}) = {seconds / forward:.0%} of the forward")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
