"""Float64 NumPy ground truth for glu and gated: forward and vector-Jacobian product.

Written for clarity, not speed, and deliberately independent of ``glu_kernels._activations`` (the
math is restated here term by term), so that the tests hold the shared activation table to an oracle
that does not share its code. Inputs of any float dtype (or anything ``numpy.asarray`` takes) are
promoted to float64.

Example:
    >>> import numpy as np
    >>> from glu_kernels.reference import glu_reference
    >>> x, w = np.ones((2, 3)), np.ones((3, 4))
    >>> glu_reference(x, w, activation="linear")      # a * g = 3 * 3
    array([[9., 9.],
           [9., 9.]])
"""

from __future__ import annotations

import math

import numpy as np

from glu_kernels._validate import resolve_activation

_erf = np.frompyfunc(math.erf, 1, 1)


def _sigmoid(g):
    return 0.5 * (1.0 + np.tanh(0.5 * g))


def _phi_cdf(g):
    return 0.5 * (1.0 + _erf(g / math.sqrt(2.0)).astype(np.float64))


def _act_and_slope(name: str, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(f(g), f'(g)) in float64, one formula per activation, straight from its definition."""
    if name == "sigmoid":
        s = _sigmoid(g)
        return s, s * (1.0 - s)
    if name == "silu":
        s = _sigmoid(g)
        return g * s, s + g * s * (1.0 - s)
    if name == "gelu":
        pdf = np.exp(-0.5 * g * g) / math.sqrt(2.0 * math.pi)
        cdf = _phi_cdf(g)
        return g * cdf, cdf + g * pdf
    if name == "gelu_tanh":
        k, c = math.sqrt(2.0 / math.pi), 0.044715
        t = np.tanh(k * (g + c * g**3))
        return 0.5 * g * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t**2) * k * (
            1.0 + 3 * c * g**2
        )
    if name == "relu":
        return np.maximum(g, 0.0), (g > 0).astype(np.float64)
    if name == "linear":
        return g, np.ones_like(g)
    raise AssertionError(name)


def _packed(w, b) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(w, dtype=np.float64)
    w2 = w.reshape(w.shape[0], math.prod(w.shape[1:]))  # not -1: D may be 0
    b2 = np.zeros(w2.shape[1]) if b is None else np.asarray(b, dtype=np.float64).reshape(-1)
    return w2, b2


def preactivation(x, w, b=None) -> np.ndarray:
    """``h = x @ [W | V] + b`` in float64, shape (..., 2U)."""
    w2, b2 = _packed(w, b)
    return np.asarray(x, dtype=np.float64) @ w2 + b2


def gated_reference(h, activation: str = "sigmoid") -> np.ndarray:
    """``a * f(g)`` in float64, where ``[a | g] = h``."""
    name = resolve_activation(activation).name
    a, g = np.split(np.asarray(h, dtype=np.float64), 2, axis=-1)
    return a * _act_and_slope(name, g)[0]


def gated_reference_vjp(h, dy, activation: str = "sigmoid") -> np.ndarray:
    """``dh = [dy * f(g), dy * a * f'(g)]`` in float64: the gradient of ``sum(gated(h) * dy)``."""
    name = resolve_activation(activation).name
    a, g = np.split(np.asarray(h, dtype=np.float64), 2, axis=-1)
    f, slope = _act_and_slope(name, g)
    dy = np.asarray(dy, dtype=np.float64)
    return np.concatenate([dy * f, dy * a * slope], axis=-1)


def glu_reference(x, w, b=None, activation: str = "sigmoid") -> np.ndarray:
    """``a * f(g)`` in float64, where ``[a | g] = x @ [W | V] + b``."""
    return gated_reference(preactivation(x, w, b), activation)


def glu_reference_vjp(x, w, b, dy, activation: str = "sigmoid"):
    """Gradients ``(dx, dw, db)`` of ``sum(glu(x, w, b) * dy)`` in float64.

    ``dw`` has w's shape, ``db`` has b's shape (``None`` when b is None).
    """
    x = np.asarray(x, dtype=np.float64)
    w2, _ = _packed(w, b)
    dh = gated_reference_vjp(preactivation(x, w, b), dy, activation)
    rows = math.prod(x.shape[:-1])
    x2, dh2 = x.reshape(rows, x.shape[-1]), dh.reshape(rows, dh.shape[-1])
    dx = dh @ w2.T
    dw = (x2.T @ dh2).reshape(np.shape(w))
    db = None if b is None else dh2.sum(axis=0).reshape(np.shape(b))
    return dx, dw, db
