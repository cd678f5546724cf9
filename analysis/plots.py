"""Shared plotting helpers: one colour and marker per architecture, saving, non-overlapping labels."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter
from matplotlib.text import Text
from matplotlib.transforms import Bbox

# Fixed, so that an architecture looks the same in every figure of every report.
ARCH_STYLES = {
    "bert": ("tab:blue", "o"), "bm25": ("black", "s"), "mamba": ("tab:orange", "^"), "rwkv": ("tab:green", "v"),
    "hyena": ("tab:red", "D"), "retnet": ("tab:purple", "P"), "gla": ("tab:brown", "X"),
}
EXTRA = [("tab:pink", "<"), ("tab:olive", ">"), ("tab:cyan", "h"), ("tab:gray", "*")]


def arch_style(arch: str) -> tuple[str, str]:
    arch = mixer(arch)  # the shared-block family looks like its mixer's architecture
    if arch in ARCH_STYLES:
        return ARCH_STYLES[arch]
    return EXTRA[sum(map(ord, arch)) % len(EXTRA)]  # deterministic across runs, unlike hash()


def mixer(arch: str) -> str:
    return arch.removeprefix("shared-")


def marker_face(arch: str, color: str) -> str:
    """Hollow markers for the shared-block family, so that a student (shared-bert) and the checkpoint
    family of its mixer (the teacher, bert) share a colour but not a look."""
    return "white" if arch.startswith("shared-") else color


LINESTYLES = ["-", "--", "-.", ":"]


def model_styles(runs) -> dict:
    """name -> (colour, marker, line style): the colour and marker of the architecture, and a line
    style per model within it (e.g. a bf16 run beside the float32 one)."""
    styles, seen = {}, {}
    for arch, name in sorted(set(zip(runs["arch"], runs["name"]))):
        color, marker = arch_style(arch)  # one colour per mixer, so line styles count per mixer too
        styles[name] = (color, marker, LINESTYLES[seen.setdefault(mixer(arch), [0])[0] % len(LINESTYLES)])
        seen[mixer(arch)][0] += 1
    return styles


def plain_log_ticks(axis) -> None:
    """Label a log axis at 1, 2, 5, 10, 20, 50, ... in plain numbers (ranges often span < 2 decades)."""
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))


def subplots(n: int, width: float = 7.0, height: float = 4.5, ncols: int = 1):
    """n panels stacked (or in `ncols` columns); returns (figure, flat list of axes)."""
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), layout="constrained",
                             squeeze=False)
    return fig, list(axes.flat)


def save(fig, out_dir: str | Path, name: str) -> str:
    """Write `name`.png and `name`.svg into out_dir; returns the PNG's file name."""
    for ext in ("png", "svg"):
        fig.savefig(Path(out_dir) / f"{name}.{ext}", dpi=150)
    plt.close(fig)
    return f"{name}.png"


OFFSETS = [(8, 8, "left", "bottom"), (8, -8, "left", "top"), (-8, 8, "right", "bottom"), (-8, -8, "right", "top"),
           (0, 12, "center", "bottom"), (0, -12, "center", "top"), (16, 22, "left", "bottom"),
           (16, -22, "left", "top"), (-16, 22, "right", "bottom"), (-16, -22, "right", "top")]


def place_labels(ax, xs, ys, texts, fontsize: float = 7) -> int:
    """Annotate points in order, each at the first offset where it overlaps no marker and no earlier
    label and stays inside the axes; a label with no free place is left out. Returns how many were."""
    fig = ax.figure
    fig.canvas.draw()  # fixes the layout, so that display coordinates are final
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    xs, ys = list(xs), list(ys)
    # The markers count as taken too, so that no label covers another point and misleads the eye.
    centres = ax.transData.transform(list(zip(xs, ys))) if xs else []
    placed, omitted = [Bbox.from_extents(cx - 4, cy - 4, cx + 4, cy + 4) for cx, cy in centres], 0
    for x, y, text in zip(xs, ys, texts):
        if not text:
            continue
        for dx, dy, ha, va in OFFSETS:
            # The connector leaves from the text's corner nearest the point, not its centre: with long
            # labels a centre-anchored line is long and crosses its neighbours.
            relpos = ({"left": 0, "center": 0.5, "right": 1}[ha], {"bottom": 0, "top": 1}[va])
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                              fontsize=fontsize, color="0.15",
                              arrowprops=dict(arrowstyle="-", color="0.55", lw=0.6, shrinkA=0, shrinkB=4,
                                              relpos=relpos))
            ann.update_positions(renderer)  # an annotation places its text only when drawn
            box = Text.get_window_extent(ann, renderer)  # the text only, not its connector line
            box = Bbox.from_extents(box.x0 - 3, box.y0 - 1, box.x1 + 3, box.y1 + 1)  # a gap between labels
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(b) for b in placed):
                placed.append(box)
                break
            ann.remove()
        else:
            omitted += 1
    return omitted
