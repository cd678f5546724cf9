"""Parameters and forward FLOPs per token of every architecture at every preset, computed by the code:

    python -m benchmarks.studies.model_table            # markdown table, as in the README
"""

from __future__ import annotations

import argparse

import torch

import encoders
from encoders import ARCHITECTURES, PRESETS



def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.model_table", description=__doc__.split("\n")[0])
    p.add_argument("--encoders", default=",".join(ARCHITECTURES))
    p.add_argument("--presets", default=",".join(PRESETS))
    p.add_argument("--length", type=int, default=256, help="sequence length for FLOPs per token")
    args = p.parse_args(argv)
    names, presets = args.encoders.split(","), args.presets.split(",")
    print(f"| encoder | {' | '.join(f'{p} params | {p} MFLOP/token' for p in presets)} | non-embedding params (small) | kernel path (CPU) |")
    print("|---" * (2 * len(presets) + 3) + "|")
    for name in names:
        cells, mixer, path = [], "", ""
        for preset in presets:
            torch.manual_seed(0)
            with torch.device("meta") if preset == "base" else torch.device("cpu"):
                enc = encoders.load(name, preset=preset, max_length=max(512, args.length), show_progress=False)
            cells += [f"{enc.num_parameters / 1e6:.1f}M", f"{enc.flops_per_token(args.length) / 1e6:.1f}"]
            if preset == "small":
                mixer = f"{(enc.num_parameters - enc.num_embedding_parameters) / 1e6:.1f}M"
                path = enc.kernel_path
        print(f"| {name} | {' | '.join(cells)} | {mixer} | {path} |")
    print(f"\nFLOPs per token at length {args.length}: 2 x non-embedding weights + each mixer's own "
          "sequence cost (attention grows with length; the others do not, or as log L for Hyena).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
