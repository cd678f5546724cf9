"""Length scaling: forward time and peak memory per token against sequence length, per architecture.

    python -m benchmarks.studies.scaling                      # all six at the small preset, 128 .. 4096
    python -m benchmarks.studies.scaling --encoders bert,mamba --lengths 128,1024 --tokens 4096

Each (architecture, length) runs in a fresh subprocess with a batch sized to a fixed token count
(--tokens / length sequences), so peak memory is the process's peak RSS above what it held after
building the model. Time is the median of --repeats forwards after one warm-up. BERT's small preset
gets position embeddings for the longest length (this is a timing study, not a quality one).
Writes results/scaling/<timestamp>/scaling.csv and scaling.png (log-log), and prints where each
linear-time mixer overtakes attention.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from encoders import ARCHITECTURES
from benchmarks.pipeline.measure import peak_rss_mb, rss_mb

LENGTHS = (128, 256, 512, 1024, 2048, 4096)


def worker(name: str, length: int, tokens: int, repeats: int, preset: str, max_length: int, dtype: str) -> dict:
    import torch

    import encoders

    torch.manual_seed(0)
    enc = encoders.load(name, preset=preset, max_length=max_length, dtype=dtype, show_progress=False).eval()
    batch = max(1, tokens // length)
    ids = torch.randint(1000, len(enc.tokenizer), (batch, length))
    mask = torch.ones_like(ids)
    autocast = dict(device_type="cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    with torch.inference_mode(), torch.autocast(**autocast):
        before = rss_mb()
        enc(ids, mask)  # warm-up; also the first touch of every buffer the forward allocates
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            enc(ids, mask)
            times.append(time.perf_counter() - start)
    peak = peak_rss_mb()
    times.sort()
    seconds = times[len(times) // 2]
    n = batch * length
    return dict(encoder=name, preset=preset, dtype=dtype, length=length, batch=batch, tokens=n, seconds=seconds,
                us_per_token=seconds / n * 1e6, tokens_per_s=n / seconds,
                peak_mb=max(peak - before, 0.0), kb_per_token=max(peak - before, 0.0) * 1024 / n,
                kernel_path=enc.kernel_path, flops_per_token=enc.flops_per_token(length),
                num_parameters=enc.num_parameters, threads=torch.get_num_threads())


def crossovers(frame) -> dict[str, int | None]:
    """For each non-attention architecture: the shortest length from which it is faster per token
    than BERT at every longer length measured (None if never)."""
    bert = frame[frame.encoder == "bert"].set_index("length")["us_per_token"]
    out = {}
    for name, group in frame[frame.encoder != "bert"].groupby("encoder"):
        other = group.set_index("length")["us_per_token"]
        lengths = sorted(set(bert.index) & set(other.index))
        faster = [L for L in lengths if other[L] < bert[L]]
        out[name] = next((L for L in lengths if all(x in faster for x in lengths if x >= L)), None)
    return out


def plot(frame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, group in frame.groupby("encoder"):
        group = group.sort_values("length")
        style = dict(marker="o", linewidth=2 if name == "bert" else 1.5, linestyle="--" if name == "bert" else "-")
        axes[0].plot(group.length, group.us_per_token, label=name, **style)
        axes[1].plot(group.length, group.kb_per_token, label=name, **style)
    for ax, ylabel in zip(axes, ("forward time per token (µs)", "peak memory per token (KiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        lengths = sorted(frame.length.unique())
        ax.set_xticks(lengths, [str(L) for L in lengths])
        # Label 1-2-5 steps: these ranges often span less than a decade.
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(title="architecture")
    first = frame.iloc[0]
    fig.suptitle(f"Length scaling, {first['preset']} preset, {first['dtype']}, batch = {int(first['tokens'])} tokens / "
                 f"length, {int(first['threads'])} CPU threads")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.scaling", description=__doc__.split("\n")[0])
    p.add_argument("--encoders", default=",".join(ARCHITECTURES))
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    p.add_argument("--tokens", type=int, default=8192, help="tokens per forward (batch = tokens / length)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--preset", default="small")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--output-dir", default="results")
    p.add_argument("--replot", metavar="CSV", help="redraw scaling.png/svg next to an existing scaling.csv")
    p.add_argument("--worker", nargs=2, metavar=("ENCODER", "LENGTH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    max_length = max(lengths)
    if args.worker:
        name, length = args.worker[0], int(args.worker[1])
        print(json.dumps(worker(name, length, args.tokens, args.repeats, args.preset, max_length, args.dtype)))
        return 0

    import pandas as pd
    from tqdm.auto import tqdm

    if args.replot:
        plot(pd.read_csv(args.replot), Path(args.replot).with_name("scaling.png"))
        return 0

    from benchmarks.pipeline.results import slug

    names = args.encoders.split(",")
    rows, failures = [], []
    jobs = [(n, L) for n in names for L in lengths]
    for name, length in tqdm(jobs, desc="scaling", unit="run"):
        cmd = [sys.executable, "-m", "benchmarks.studies.scaling", "--worker", name, str(length), "--lengths", args.lengths,
               "--tokens", str(args.tokens), "--repeats", str(args.repeats), "--preset", args.preset,
               "--dtype", args.dtype]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            failures.append(f"{name} @ {length}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if not rows:
        print("no measurement succeeded:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    frame = pd.DataFrame(rows)
    out = Path(args.output_dir) / "scaling" / slug(time.strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=False)
    frame.to_csv(out / "scaling.csv", index=False)
    plot(frame, out / "scaling.png")
    table = frame.pivot(index="length", columns="encoder", values="us_per_token")
    print("\nforward time per token (µs):")
    print(table.round(1).to_string())
    print("\npeak memory per token (KiB):")
    print(frame.pivot(index="length", columns="encoder", values="kb_per_token").round(1).to_string())
    if "bert" in names:
        print("\nfaster than BERT per token from this length on:")
        for name, length in crossovers(frame).items():
            print(f"  {name:<8} {length if length else 'never, up to ' + str(max_length)}")
    for f in failures:
        print(f"failed: {f}", file=sys.stderr)
    print(f"\nwrote {out / 'scaling.csv'} and {out / 'scaling.png'}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
