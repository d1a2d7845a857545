"""NumPy backend: forward only, in the input's precision (float32 math for 16-bit inputs).

NumPy has no autodiff; for gradients in float64 use ``glu_kernels.reference.glu_reference_vjp``.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from glu_kernels._activations import ACTIVATIONS
from glu_kernels._validate import GatedSpec, GluSpec, numpy_dtype_name

NAME = "numpy"
DIFFERENTIABLE = False  # NumPy has no automatic differentiation: forward only
ROUNDS_MATMUL_BEFORE_BIAS = False

_erfc_per_element = np.frompyfunc(math.erfc, 1, 1)


@cache
def _vectorized_erfc():
    """SciPy's erfc (a C loop, ~50x faster than math.erfc per element), if SciPy is installed (JAX
    brings it); imported on first use of GeGLU."""
    try:
        from scipy.special import erfc
    except ImportError:
        return None
    return erfc


def shape(t: np.ndarray) -> tuple[int, ...]:
    return tuple(np.shape(t))


def dtype_name(t: np.ndarray) -> str:
    return numpy_dtype_name(np.asarray(t).dtype)


stored_dtype_name = dtype_name  # no autocast here: what dtype_name says


class _Primitives:
    @staticmethod
    def sigmoid(g):
        return 0.5 * (1.0 + np.tanh(0.5 * g))  # no overflow for large |g|, unlike 1 / (1 + exp(-g))

    tanh = staticmethod(np.tanh)
    exp = staticmethod(np.exp)

    @staticmethod
    def erfc(g):
        erfc = _vectorized_erfc()
        return (erfc(g) if erfc is not None else _erfc_per_element(g)).astype(g.dtype, copy=False)

    @staticmethod
    def relu(g):
        return np.maximum(g, 0)

    @staticmethod
    def positive(g):
        return (g > 0).astype(g.dtype)


PRIMITIVES = _Primitives()


# NaN/Inf inputs propagate as through the unfused formula, silently (inf - inf, inf * 0 -> NaN
# would otherwise warn, and the test suite turns glu_kernels' RuntimeWarnings into errors).
@np.errstate(over="ignore", invalid="ignore")
def glu(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, spec: GluSpec) -> np.ndarray:
    x, w = np.asarray(x), np.asarray(w)
    compute = np.dtype(spec.compute_dtype)
    d, u = spec.features, spec.units
    x2 = x.reshape(math.prod(x.shape[:-1]), d)  # not -1: D may be 0
    h = x2.astype(compute, copy=False) @ w.reshape(d, 2 * u).astype(compute, copy=False)
    if b is not None:
        h += np.asarray(b).reshape(2 * u).astype(compute, copy=False)
    h = h.astype(x.dtype, copy=False)  # 16-bit: h rounded once, as the other backends
    return _epilogue(h, u, spec.activation.name, compute).reshape(*x.shape[:-1], u)


def _epilogue(h: np.ndarray, units: int, activation: str, compute: np.dtype) -> np.ndarray:
    """``a * f(g)`` for ``h = [a | g]`` (..., 2U), computed in ``compute``, rounded once to h's
    dtype."""
    h32 = h.astype(compute, copy=False)
    out = h32[..., :units] * ACTIVATIONS[activation].forward(h32[..., units:], PRIMITIVES)
    return out.astype(h.dtype, copy=False)


@np.errstate(over="ignore", invalid="ignore")
def gated(h: np.ndarray, spec: GatedSpec) -> np.ndarray:
    h = np.asarray(h)
    return _epilogue(h, spec.units, spec.activation.name, np.dtype(spec.compute_dtype))


def implementation(spec: GluSpec) -> str:
    precision = "float32 for 16-bit inputs" if spec.compute_dtype != spec.dtype else spec.dtype
    return (
        f"numpy.matmul on the packed (D, 2U) weight, epilogue in NumPy ({precision}); forward only"
    )


def gated_implementation(spec: GatedSpec) -> str:
    precision = "float32 for 16-bit inputs" if spec.compute_dtype != spec.dtype else spec.dtype
    return f"the epilogue in NumPy ({precision}); forward only"
