"""The tolerance table, the error scales it multiplies, and the one comparison the tests use.

How a result is judged
----------------------
Every comparison is elementwise::

    |actual - expected| <= ATOL[dtype] + RTOL[dtype] * scale

where ``expected`` is the float64 reference evaluated on exactly the (rounded) inputs the backend
saw, and ``scale`` is a bound on how much a *correct* implementation's rounding errors can move that
element, computed in float64 from the inputs, not from the output alone:

* A length-D dot product in a precision with unit roundoff u is off by up to ~ u * (|x| @ |W2|):
  its error scales with the *absolute* pre-activation ``S = |x| @ |W2| + |b|``, not with ``|h|``.
  When the terms cancel, |h| is small and its relative error large in every correct
  implementation, so the output alone cannot be the scale.
* ``out = a * f(g)``. With errors ``da <~ u*S_a`` and ``dg <~ u*S_g`` (S_a, S_g: the halves of S)::

      |d out| <~ u * (S_a * |f(g)| + |a| * L1 * S_g)          L1 = sup |f'| (a Lipschitz bound)

  (the final rounding of ``out``, u*|a*f(g)|, is below the first term). L1 rather than |f'(g)| keeps
  the bound valid across ReLU's kink. That is ``output_scale``.
* Backward: ``dh = [dy*f(g), dy*a*f'(g)]`` has error ~ u * Dh with::

      Dh_a = |dy| * (|f(g)| + L1 * S_g)
      Dh_g = |dy| * (S_a * |f'(g)| + |a| * L2 * S_g)        L2 = sup |f''|

  plus, for ReLU, |dy*a| where |g| is so close to 0 that rounding may flip the step f'(g). The
  gradients are then ``dx = dh @ W2^T``, ``dw = x^T @ dh``, ``db = sum(dh)``: their scales are the
  same products with absolute values, ``Dh @ |W2|^T``, ``|x|^T @ Dh``, ``sum(Dh)``
  (``gradient_scales``).

So RTOL is "how many unit roundoffs, in units of the worst-case error a correct implementation can
make"; it is dimensionless and the same for every shape, activation and backend.

Calibration (tests/calibrate_tolerances.py, re-run it after changing a backend's numerics): the
largest ratio ``|actual - expected| / scale`` over every backend, activation, shape, forward and
backward, was measured over several thousand hypothesis examples per dtype; RTOL is that figure
times a safety factor of ~4, rounded up, and never below the dtype's unit roundoff. The measured
figures are written beside each entry.
"""

from __future__ import annotations

import math

import numpy as np

# Unit roundoffs, for reference: f64 1.1e-16, f32 6.0e-8, f16 4.9e-4, bf16 3.9e-3.
#
# Calibrated 2026-11-28 (tests/calibrate_tolerances.py: 60 examples per backend, dtype and
# activation, all four dtypes; plus a second run of 120 for float32 and float64 only). "Measured"
# below is the largest error/scale over both runs (forward: out; backward: dx, dw, db), with where
# it occurred. RTOL = ~4x the larger of the two, rounded up (the rule of the module docstring).
#
# The float32/float64 tail is one known source: TensorFlow computes the gelu_tanh derivative with
# the shared table's formula, whose ``1 - t*t`` cancels where t = tanh(...) is near -1 (g ~ -4.8):
# f' is then off by up to ~70 u absolute, ~18 u relative to the scale (measured on a grid of g in
# float32: 18.2 u). The scale models the error of h, not of evaluating f', so this shows up as a
# larger ratio; jax (same formula, XLA's tanh) measured <= 5.7 u, torch (ATen's kernel) less. The
# calibration shapes keep h under TensorFlow's XLA-path threshold and torch's row-block size.
# 16-bit dtypes run the epilogue in float32, so their figures are ~2 u (rounding of h, of dh and of
# the result), as expected.
#
# dtype: (rtol, atol)
TOLERANCES: dict[str, tuple[float, float]] = {
    # Measured: backward 1.28e-15 (~11.5 u; tensorflow gelu_tanh dw), forward 4.24e-16 (tensorflow
    # sigmoid). Was 1e-7 (torch.testing's default, which would pass a float64 result wrong in its
    # 8th digit): ~1e8x looser than needed. 4x the 18 u worst case of the gelu_tanh derivative
    # (2.0e-15, the same formula as in float32) is 8e-15: rounded up to 1e-14.
    "float64": (1e-14, 1e-300),
    # Measured: backward 1.06e-6 (~18 u; tensorflow gelu_tanh dw, the cancellation above), forward
    # 2.38e-7 (tensorflow sigmoid). Was 1.3e-6: only 1.2x the measured figure. 4 x 1.08e-6 (the
    # 18.2 u grid maximum) = 4.3e-6: 4.4e-6.
    "float32": (4.4e-6, 1e-37),
    # Measured: backward 9.46e-4 (~1.9 u; tensorflow linear dw), forward 5.73e-4 (tensorflow
    # sigmoid). Was 1e-3: only 1.06x the measured figure. 4 x 9.46e-4 = 3.8e-3: 4e-3.
    "float16": (4e-3, 6.2e-5),
    # Measured: backward 8.39e-3 (~2.1 u; tensorflow relu dw), forward 7.27e-3 (tensorflow
    # sigmoid). Was 1.6e-2: only 1.9x the measured figure. 4 x 8.39e-3 = 3.4e-2.
    "bfloat16": (3.4e-2, 1e-37),
}
# ATOL: the dtype's smallest normal number (rounded up). Below it a result may be a subnormal or
# flushed to zero (TensorFlow runs its CPU kernels with flush-to-zero), both correct: no relative
# bound can describe that. It is far below every scale a test compares at.

RTOL = {k: v[0] for k, v in TOLERANCES.items()}
ATOL = {k: v[1] for k, v in TOLERANCES.items()}

# sup |f'| and sup |f''| per activation (L1, L2 above), rounded up:
#   sigmoid: f' = s(1-s) <= 1/4, |f''| <= 1/(6 sqrt 3) = 0.096
#   silu: f' in [-0.1, 1.1], |f''| <= 1/2 (at 0)
#   gelu, gelu_tanh: f' in [-0.13, 1.13], |f''| <= 2 phi(0) = 0.80 (at 0)
#   relu: f' in {0, 1} (the jump is handled apart), linear: f' = 1, f'' = 0
LIPSCHITZ: dict[str, tuple[float, float]] = {
    "sigmoid": (0.25, 0.1),
    "silu": (1.1, 0.5),
    "gelu": (1.13, 0.8),
    "gelu_tanh": (1.13, 0.8),
    "relu": (1.0, 0.0),
    "linear": (1.0, 0.0),
}


def _halves(x, w, b):
    """Float64 ``a, g, S_a, S_g`` for the rounded inputs (numpy arrays or None)."""
    x = np.asarray(x, dtype=np.float64)
    w2 = np.asarray(w, dtype=np.float64).reshape(np.shape(w)[0], math.prod(np.shape(w)[1:]))
    b2 = np.zeros(w2.shape[1]) if b is None else np.asarray(b, dtype=np.float64).reshape(-1)
    h = x @ w2 + b2
    s = np.abs(x) @ np.abs(w2) + np.abs(b2)
    u = w2.shape[1] // 2
    return h[..., :u], h[..., u:], s[..., :u], s[..., u:]


def _act(activation: str, g):
    from glu_kernels._validate import resolve_activation
    from glu_kernels.reference import _act_and_slope  # the reference's own f and f'

    return _act_and_slope(resolve_activation(activation).name, g)


def output_scale(x, w, b, activation: str) -> np.ndarray:
    """The error scale of ``glu(x, w, b)``: ``S_a * |f(g)| + |a| * L1 * S_g`` (shape (..., U))."""
    a, g, sa, sg = _halves(x, w, b)
    f, _ = _act(activation, g)
    l1, _ = LIPSCHITZ[_canonical(activation)]
    return sa * np.abs(f) + np.abs(a) * l1 * sg


def gradient_scales(x, w, b, dy, activation: str, dtype: str):
    """The error scales of ``(dx, dw, db)`` (db's is None when b is None); see the module doc."""
    name = _canonical(activation)
    x = np.asarray(x, dtype=np.float64)
    dy = np.abs(np.asarray(dy, dtype=np.float64))
    a, g, sa, sg = _halves(x, w, b)
    f, df = _act(name, g)
    l1, l2 = LIPSCHITZ[name]
    dh_a = dy * (np.abs(f) + l1 * sg)
    dh_g = dy * (sa * np.abs(df) + np.abs(a) * l2 * sg)
    if name == "relu":  # rounding g may flip the step f'(g) where |g| is within its error bound
        near_kink = (np.abs(g) <= 4 * RTOL[dtype] * sg) & (sg > 0)  # g exact when sg == 0
        dh_g = dh_g + np.where(near_kink, dy * np.abs(a) / RTOL[dtype], 0.0)
    dh = np.concatenate([dh_a, dh_g], axis=-1)
    w2 = np.abs(np.asarray(w, dtype=np.float64)).reshape(np.shape(w)[0], math.prod(np.shape(w)[1:]))
    rows = math.prod(x.shape[:-1])  # not -1 in these reshapes: D may be 0
    x2, dh2 = np.abs(x).reshape(rows, x.shape[-1]), dh.reshape(rows, dh.shape[-1])
    dx = dh @ w2.T
    dw = (x2.T @ dh2).reshape(np.shape(w))
    db = None if b is None else dh2.sum(axis=0).reshape(np.shape(b))
    return dx, dw, db


def _canonical(activation: str) -> str:
    from glu_kernels._validate import resolve_activation

    return resolve_activation(activation).name


def error_ratio(actual, expected, scale, dtype: str) -> float:
    """max over elements of ``(|actual - expected| - ATOL) / scale`` (0 if empty; inf if unbounded).

    What calibration measures: assert_close passes iff this is <= RTOL[dtype] (up to NaN handling).
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.size == 0:
        return 0.0
    err = np.maximum(np.abs(actual - expected) - ATOL[dtype], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, err / np.broadcast_to(scale, err.shape))
    return float(np.max(ratio))


def assert_close(actual, expected, scale, dtype: str, what: str = "result") -> None:
    """Asserts ``|actual - expected| <= ATOL[dtype] + RTOL[dtype] * scale`` everywhere.

    ``actual``: the backend's result as float64 NumPy (see ``backend_arrays.to_numpy64``);
    ``expected``: the float64 reference on the same (rounded) inputs; ``scale``: ``output_scale``
    / ``gradient_scales`` (or anything broadcastable). Shapes must match exactly; NaN must be NaN at
    the same places, infinities equal. Raises AssertionError naming the worst element and the
    tolerance.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != expected {expected.shape}")
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    if (nan_a != nan_e).any():
        where = tuple(int(i) for i in np.argwhere(nan_a != nan_e)[0])
        raise AssertionError(
            f"{what} ({dtype}): NaN mismatch at {where}: actual {actual[where]!r}, "
            f"expected {expected[where]!r} ({int((nan_a != nan_e).sum())} elements differ)"
        )
    rtol, atol = RTOL[dtype], ATOL[dtype]
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), actual.shape)
    with np.errstate(invalid="ignore"):  # inf - inf where both are the same infinity
        err = np.where(actual == expected, 0.0, np.abs(actual - expected))
    err = np.where(nan_a, 0.0, err)
    bound = atol + rtol * scale
    bad = ~(err <= bound)
    if bad.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            excess = np.where(bad, err / bound, -1.0)
        where = np.unravel_index(int(np.argmax(excess)), actual.shape)
        where = tuple(int(i) for i in where)
        raise AssertionError(
            f"{what} ({dtype}): {int(bad.sum())} of {actual.size} elements out of tolerance. "
            f"Worst at index {where}: actual {actual[where]!r}, expected {expected[where]!r}, "
            f"|error| {err[where]:.3g} > allowed {bound[where]:.3g} "
            f"(= atol {atol:g} + rtol {rtol:g} * scale {scale[where]:.3g}); "
            f"error/scale there {err[where] / max(scale[where], 1e-300):.3g}, max |error| overall "
            f"{float(np.max(np.where(np.isfinite(err), err, 0.0))):.3g}"
        )
