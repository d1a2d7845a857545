"""The arithmetic of an int8-quantized ``GatedLinearUnit``, Keras' ``Dense`` int8 scheme.

Values: ``kernel ~= kernel_int8 / kernel_scale`` (one scale per output column) and, on each call,
``x ~= x_int8 / x_scale`` (one scale per row, ``keras.quantizers.AbsMaxQuantizer``). Gradients: the
kernel is frozen; the input gradient passes straight through the rounding, as in ``Dense``.

Two ways to multiply, chosen by backend from measurements on a 2-core AVX-512 CPU (README, "int8
quantization" under "Migrating from KMR"). Under JAX, ``integer_glu``: the product in int8 with
int32 accumulation (XLA's int8 GEMM: 2-4x faster than its float32 GEMM at 1024x256->256 and
2048x1024->1024), the epilogue in float32, fused by XLA. Elsewhere the operands are scaled back
(``rounded_to_int8``, ``dequantized``) and multiplied by one fused :func:`glu_kernels.glu`:
TensorFlow's int8 matmul is 3.5-5.5x slower than float32 on the CPU, and Keras' torch int8 matmul an
int32 einsum there (7-21x slower). torch's own ``torch._int_mm`` is fast on the CPU (exact; 2.5-7.5x
a float32 GEMM's speed), but the float32 epilogue after it, as separate eager torch ops (about seven
passes over (B, 2U)), cost more than it saved at 1024x256->256 (2.6 against 2.0 ms; bfloat16 2.3
against 1.4 ms, where AMX's bfloat16 GEMM is as fast) and won only where D is large (2048x1024->1024
float32: 19 against 39 ms). The int8 values are the same either way; the results differ by a float32
GEMM's rounding.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import keras
from keras import ops

# The gate activations as Keras' own ops (the forward kernels glu_kernels' JAX backend calls too):
# the integer path's epilogue, computed by Keras ops and differentiated by JAX.
_ACTIVATIONS = {
    "sigmoid": ops.sigmoid,
    "silu": ops.silu,
    "gelu": partial(ops.gelu, approximate=False),
    "gelu_tanh": partial(ops.gelu, approximate=True),
    "relu": ops.relu,
    "linear": lambda g: g,
}


def multiplies_in_int8() -> bool:
    """Whether ``integer_glu`` is the faster way on this backend (see the module's docstring)."""
    return keras.backend.backend() == "jax"


def _straight_through(*args: Any, upstream: Any = None) -> Any:
    return args[0] if upstream is None else upstream


def rounded_to_int8(x: Any, quantizer: Any) -> Any:
    """``x`` rounded to ``quantizer``'s int8 grid per row and scaled back, ``x_int8 / x_scale``,
    with the identity's gradient."""

    @ops.custom_gradient
    def rounded(x):
        x_int8, scale = quantizer(x, axis=-1)
        return ops.divide(ops.cast(x_int8, x.dtype), ops.cast(scale, x.dtype)), _straight_through

    return rounded(x)


def dequantized(kernel_int8: Any, kernel_scale: Any, dtype: str) -> Any:
    """``kernel_int8 / kernel_scale`` in float32, rounded once to ``dtype``."""
    return ops.cast(ops.divide(ops.cast(kernel_int8, "float32"), kernel_scale), dtype)


def integer_glu(
    x: Any,
    kernel_int8: Any,
    kernel_scale: Any,
    bias: Any,
    quantizer: Any,
    activation: str,
) -> Any:
    """``a * act(g)``, ``[a | g] = (x_int8 @ kernel_int8) / (x_scale * kernel_scale) + bias``.

    The GEMM in int8 with int32 accumulation (exact), everything after it in float32, rounded
    once to x's dtype. Kernel (D, 2, U) int8, scale (2, U), bias (2, U) or None.
    """
    dtype = x.dtype
    d, _, units = kernel_int8.shape
    kernel_int8 = ops.reshape(kernel_int8, (d, 2 * units))
    kernel_scale = ops.reshape(ops.cast(kernel_scale, "float32"), (2 * units,))

    # The kernel and its scale are arguments, not closed over: JAX refuses to differentiate a
    # custom gradient with respect to closed-over values (a SavedModel export traces gradients
    # with respect to every variable).
    @ops.custom_gradient
    def preactivation(x, kernel_int8, kernel_scale):
        def grad(*args, upstream=None):
            dh = _straight_through(*args, upstream=upstream)
            kernel = ops.divide(ops.cast(kernel_int8, "float32"), kernel_scale)
            dx = ops.cast(ops.matmul(ops.cast(dh, "float32"), ops.transpose(kernel)), dtype)
            return dx, None, None  # the kernel is frozen

        x_int8, x_scale = quantizer(x, axis=-1)
        h = ops.cast(ops.matmul(x_int8, kernel_int8), "float32")  # int32, exact
        return ops.divide(h, ops.multiply(ops.cast(x_scale, "float32"), kernel_scale)), grad

    h = preactivation(x, kernel_int8, kernel_scale)
    if bias is not None:
        h = ops.add(h, ops.reshape(ops.cast(bias, "float32"), (2 * units,)))
    a, g = h[..., :units], h[..., units:]
    return ops.cast(ops.multiply(a, _ACTIVATIONS[activation](g)), dtype)
