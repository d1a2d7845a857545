"""NumPy, the reference point: forward only, float32 only (NumPy has no bfloat16 GEMM)."""

from __future__ import annotations

import numpy as np

import glu_kernels
from benchmarks.cases import Shape
from benchmarks.variants import FLOOR, FUSED, UNFUSED, Variant


def _sigmoid(g):
    return 0.5 * (1.0 + np.tanh(0.5 * g))


def variants(shape: Shape, dtype: str, activation: str, compile_: bool = True) -> list[Variant]:
    if dtype != "float32" or activation != "sigmoid":
        return []
    rng = np.random.default_rng(0)
    b_, d, u = shape.batch, shape.features, shape.units
    x = rng.standard_normal((b_, d), dtype=np.float32)
    w2 = (rng.standard_normal((d, 2 * u)) / np.sqrt(d)).astype(np.float32)
    b2 = (rng.standard_normal(2 * u) * 0.1).astype(np.float32)
    w, v, bw, bv = w2[:, :u].copy(), w2[:, u:].copy(), b2[:u].copy(), b2[u:].copy()
    return [
        Variant(FUSED, "glu_kernels.glu", lambda: glu_kernels.glu(x, w2, b2), None),
        Variant(
            UNFUSED, "x@W+b, x@V+b, sigmoid, mul", lambda: (x @ w + bw) * _sigmoid(x @ v + bv), None
        ),
        Variant(FLOOR, "x@W2+b", lambda: x @ w2 + b2, None),
    ]
