"""The activation table: each gate activation as math, written once for every backend.

A formula here receives the gate ``g`` and a *primitives* namespace ``p`` of the backend it runs
on (``p.sigmoid``, ``p.tanh``, ``p.erfc``, ``p.exp``, ``p.relu``, ``p.positive``), so one line of
math serves NumPy, JAX, PyTorch and TensorFlow alike. Backends use their framework's own fused
kernel for the forward value where one exists (``torch.nn.functional.silu``, ``jax.nn.gelu``, ...);
the derivative always comes from here.

``glu_kernels.reference`` restates the same math in float64 independently of this table, on purpose:
it is the oracle the tests hold this table to.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

Array = Any


class Primitives(Protocol):
    """The elementwise functions a backend provides to the activation formulas."""

    def sigmoid(self, g: Array) -> Array: ...
    def tanh(self, g: Array) -> Array: ...
    def erfc(self, g: Array) -> Array: ...
    def exp(self, g: Array) -> Array: ...
    def relu(self, g: Array) -> Array: ...
    def positive(self, g: Array) -> Array:
        """``1`` where ``g > 0`` else ``0``, in ``g``'s dtype."""
        ...


SQRT_HALF = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_TANH_SCALE = math.sqrt(2.0 / math.pi)
GELU_TANH_CUBIC = 0.044715


@dataclass(frozen=True)
class Activation:
    """A gate activation ``f`` with its derivative.

    Attributes:
        name: canonical name, e.g. ``"silu"``.
        variant: the name of the GLU variant it makes, e.g. ``"SwiGLU"``.
        forward: ``f(g, p) -> f(g)``.
        value_and_derivative: ``f(g, p) -> (f(g), f'(g))``, sharing intermediate results.
    """

    name: str
    variant: str
    forward: Callable[[Array, Primitives], Array]
    value_and_derivative: Callable[[Array, Primitives], tuple[Array, Array]]


def _sigmoid(g, p):
    s = p.sigmoid(g)
    return s, s * (1.0 - s)


def _silu(g, p):
    s = p.sigmoid(g)
    return g * s, s * (1.0 + g * (1.0 - s))


def _gelu_cdf(g, p):
    # erfc, not 1 + erf: exact in the lower tail, and XLA's float32 erf stops at +-0.99999982, so
    # 1 + erf would leave GeGLU at g = -1e4 at -0.0027 instead of 0 (and TF's float64 erf(inf) is
    # NaN)
    return 0.5 * p.erfc(-g * SQRT_HALF)


def _gelu(g, p):
    cdf = _gelu_cdf(g, p)
    return g * cdf, cdf + g * INV_SQRT_2PI * p.exp(-0.5 * g * g)


def _gelu_tanh_t(g, p):
    return p.tanh(GELU_TANH_SCALE * (g + GELU_TANH_CUBIC * g * g * g))


def _gelu_tanh(g, p):
    t = _gelu_tanh_t(g, p)
    inner_slope = GELU_TANH_SCALE * (1.0 + 3.0 * GELU_TANH_CUBIC * g * g)
    return 0.5 * g * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * inner_slope


def _relu(g, p):
    return p.relu(g), p.positive(g)


def _linear(g, p):
    return g, 1.0


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("sigmoid", "GLU", lambda g, p: p.sigmoid(g), _sigmoid),
        Activation("silu", "SwiGLU", lambda g, p: g * p.sigmoid(g), _silu),
        Activation("gelu", "GeGLU", lambda g, p: g * _gelu_cdf(g, p), _gelu),
        Activation(
            "gelu_tanh",
            "GeGLU (tanh approximation)",
            lambda g, p: 0.5 * g * (1.0 + _gelu_tanh_t(g, p)),
            _gelu_tanh,
        ),
        Activation("relu", "ReGLU", lambda g, p: p.relu(g), _relu),
        Activation("linear", "bilinear", lambda g, p: g, _linear),
    )
}

ALIASES: dict[str, str] = {"swish": "silu"}


def epilogue_backward(dy: Array, a: Array, g: Array, act: Activation, p: Primitives):
    """The backward elementwise pass: ``(dL/da, dL/dg) = (dy * f(g), dy * a * f'(g))``."""
    f, df = act.value_and_derivative(g, p)
    return dy * f, dy * a * df
