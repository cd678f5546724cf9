"""Tolerances from the error a computation can have, not from what one CPU gave.

Two computations of the same quantity (a chunked kernel and a loop, a batch and a single text, fp32 and a
float64 reference) differ by rounding. A sum or dot product of n terms, in any order, is off by at most
about n * u * sum|terms| (u: the unit roundoff, 2^-24 for fp32); a network chains a few such reductions
per layer, and the errors add. So the tests compare NORM-WISE,

    max |got - want|  <=  chains * terms * u * max |want|,

with `terms` the longest reduction in the computation (a hidden size, a sequence length times a state
size) and `chains` how many such reductions are stacked (about 4 per layer: mixer in, mixer, mixer out,
MLP). An element-wise rtol/atol is fragile: an element that is small by cancellation carries the
absolute error of its large summands, and which element that is depends on the CPU's summation order
(AVX-512 on Sapphire Rapids vs AVX2 on EPYC). The worst-case bound is loose by design: a real bug (a
wrong mask, a missing term, a swapped weight) moves results by a sizeable fraction of max |want|,
orders of magnitude above it.
"""

from __future__ import annotations

import os

import numpy as np

U32 = 2.0 ** -24  # fp32 unit roundoff (eps / 2)
U64 = 2.0 ** -53
UBF16 = 2.0 ** -8  # bfloat16: 8 significant bits

# A whole tiny-preset encoder (hidden 64, intermediate <= 256, 2 layers, texts < 256 tokens): the widest
# sum has 256 terms, and about 4 reductions are chained per layer. Its backward pass chains as many again.
TINY = dict(terms=256, chains=4 * 2)
TINY_BACKWARD = dict(terms=256, chains=2 * 4 * 2)
# The packaged all-MiniLM-L6-v2: intermediate 1536, 6 layers.
MINILM = dict(terms=1536, chains=4 * 6)


def as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def bound(want, terms: int, chains: int = 1, unit: float = U32) -> float:
    return chains * terms * unit * float(np.abs(as_array(want)).max(initial=0.0))


def assert_close(got, want, *, terms: int, chains: int = 1, unit: float = U32, what: str = "") -> None:
    """max|got - want| <= chains * terms * unit * max|want| (see the module's docstring)."""
    got, want = as_array(got), as_array(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err, limit = float(np.abs(got - want).max(initial=0.0)), bound(want, terms, chains, unit)
    if os.environ.get("NUMERICS_REPORT"):  # e.g. NUMERICS_REPORT=1 pytest -s: how much of each bound is used
        print(f"numerics: {what or 'comparison'}: error {err:.3g} = {err / limit if limit else 0:.2%} of the bound")
    assert err <= limit, (f"{what}: max error {err:.3g} > {limit:.3g} = {chains} x {terms} terms x "
                          f"unit {unit:.3g} x max|want| {np.abs(want).max():.3g}")


def assert_unit_norm(emb, what: str = "") -> None:
    """Rows normalised in fp32: the sum of d squares is off by <= d * u, sqrt and division add ~2u, so
    the float64 norm of each row is within (d + 4) * u of 1 (u = 2^-24)."""
    emb = as_array(emb)
    err, limit = float(np.abs(np.linalg.norm(emb, axis=1) - 1).max()), (emb.shape[1] + 4) * U32
    assert err <= limit, f"{what}: a norm is off 1 by {err:.3g} > {limit:.3g} = (d + 4) x 2^-24"
