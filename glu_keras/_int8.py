"""The arithmetic of an int8-quantized ``GatedLinearUnit``, Keras' ``Dense`` int8 scheme.

Values: ``kernel ~= kernel_int8 / kernel_scale`` (one scale per output column) and, on each call,
``x ~= x_int8 / x_scale`` (one scale per row, ``keras.quantizers.AbsMaxQuantizer``). Gradients: the
kernel is frozen; the input gradient passes straight through the rounding, as in ``Dense``.

Two ways to multiply, chosen from measurements on a 2-core AVX-512 CPU (SwiGLU, float32 unless
said). ``integer_preactivation``: the product in int8 with int32 accumulation, exact, then the
scales and the bias in float32, and the caller's fused epilogue (:func:`glu_kernels.gated`) in
float32. The other way: the operands scaled back (``rounded_to_int8``, ``dequantized``: the
kernel on every call) and multiplied by one fused :func:`glu_kernels.glu` in the compute dtype.

- JAX: ``integer_preactivation`` (XLA's int8 GEMM is 2-4x faster than its float32 GEMM at
  1024x256->256 and 2048x1024->1024). ``gated``'s lean gradient: a jitted input-and-bias
  gradient 0.6-0.85x the time of autodiff through Keras ops' epilogue (same forward bits).
- torch: ``integer_preactivation`` (``torch._int_mm``) on the CPU, in float32, for inputs of
  ``TORCH_INTEGER_MIN_FEATURES`` features (D) and more, where the int8 GEMM's saving outgrows the
  passes it adds: inference 3.5 against 5.6 ms at 1024x512->512, 21 / 38 ms at 2048x1024->1024,
  107 / 151 ms at 4096x1024->2048, 1.2 / 2.2 ms at 32x512->512, 3.6 / 5.0 ms at 1024x512->256
  (a ``predict_on_batch``: 29 / 47 ms at 2048x1024->1024; 2.1 / 2.1 at 1024x512->8, a narrow
  output gains nothing and loses nothing); a training step 51 / 65 ms at 2048x1024->1024.
  Narrower inputs dequantize: at D = 256-384 the two ways were within noise (1024x256->256 2.5 /
  2.6 ms, a training step 3.2 / 3.3; 4096x384->384 18.4 / 18.9), below that dequantizing was
  faster (1024x128->128: 1.03 against 0.89 ms; 32x16->8: 0.43 / 0.36). bfloat16 compute
  dequantizes too: AMX's bfloat16 GEMM is as fast as ``_int_mm`` (2048x1024->1024: 22 against
  16 ms). Keras' own torch int8 matmul is an int32 einsum, 7-21x slower than float32.
- TensorFlow: dequantize (its int8 matmul is 3.5-5.5x slower than float32 on the CPU).
- Inputs quantized to another type than int8 (an ``activation_quantizer`` with
  ``output_dtype="int16"``, which Keras accepts): dequantize, on every backend.

The int8 values are the same either way; the results differ by a float32 GEMM's rounding.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

# torch, float32: for inputs of fewer features (D), dequantizing was as fast or faster
TORCH_INTEGER_MIN_FEATURES = 512


def multiplies_in_int8(
    x: Any, quantizer: Any, kernel_shape: tuple[int, ...], compute_dtype: str
) -> bool:
    """Whether ``integer_preactivation`` is the faster way for this backend, input, input
    quantizer, kernel (D, 2, U) and compute dtype (see the module's docstring)."""
    if getattr(quantizer, "output_dtype", None) != "int8":
        return False  # e.g. int16 inputs: an int16 x int8 product is no int8 GEMM (XLA: int16 sums)
    backend = keras.backend.backend()
    if backend == "torch":
        return (
            x.device.type == "cpu"  # measured there; CUDA's _int_mm wants > 16 rows, sizes % 8
            and compute_dtype == "float32"
            and kernel_shape[0] >= TORCH_INTEGER_MIN_FEATURES
            and not _torch_records()
        )
    return backend == "jax"


def _torch_records() -> bool:
    """Whether torch is recording a program to export (ONNX has no ``_int_mm``)."""
    import torch

    exporting = getattr(torch.compiler, "is_exporting", lambda: False)  # torch >= 2.7
    return torch.jit.is_tracing() or exporting()


def has_no_rows(x: Any) -> bool:
    """Whether x's shape is known to have a zero dimension."""
    return any(d == 0 for d in x.shape)  # an unknown (None) dimension is not 0


def _int8_matmul(x_int8: Any, kernel_int8: Any) -> Any:
    """``x_int8 @ kernel_int8`` in int32, exact: (..., D) int8 times (D, N) int8."""
    if keras.backend.backend() != "torch":
        return ops.matmul(x_int8, kernel_int8)
    import torch  # Keras' torch matmul of int8 is an int32 einsum (7-21x slower than float32)

    *leading, d = x_int8.shape
    h = torch._int_mm(x_int8.reshape(-1, d), kernel_int8)
    return h.reshape(*leading, kernel_int8.shape[1])


def _scaled_back(h_int32: Any, scale: Any) -> Any:
    """``h_int32 / scale`` in float32."""
    if keras.backend.backend() != "torch":
        return ops.divide(ops.cast(h_int32, "float32"), scale)
    return h_int32.float().div_(scale)  # in place: one (..., N) buffer, not one per Keras op


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


def integer_preactivation(
    x: Any,
    kernel_int8: Any,
    kernel_scale: Any,
    bias: Any,
    quantizer: Any,
) -> Any:
    """``h = (x_int8 @ kernel_int8) / (x_scale * kernel_scale) + bias`` in float32, (..., 2U).

    The GEMM in int8 with int32 accumulation (exact), the scales and the bias in float32. Kernel
    (D, 2, U) int8, scale (2, U), bias (2, U) or None. The caller applies
    :func:`glu_kernels.gated` and rounds once to its dtype.
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
        h = _int8_matmul(x_int8, kernel_int8)  # int32, exact
        return _scaled_back(h, ops.multiply(ops.cast(x_scale, "float32"), kernel_scale)), grad

    h = preactivation(x, kernel_int8, kernel_scale)
    if bias is not None:
        h = ops.add(h, ops.reshape(ops.cast(bias, "float32"), (2 * units,)))
    return h


def requantized(kernel: Any, weight_quantizer: Any) -> tuple[Any, Any]:
    """``kernel`` (D, 2, U), float, as int8 with one scale per output column: ``(int8, (2, U))``."""
    kernel_int8, kernel_scale = weight_quantizer(kernel, to_numpy=True)
    kernel_scale = ops.squeeze(kernel_scale, axis=0)
    if tuple(kernel_scale.shape) != tuple(kernel.shape)[1:]:
        raise ValueError(
            "The weight quantizer must reduce over the input axis (axis=0) and give one scale "
            f"per output column, shape {tuple(kernel.shape)[1:]}. "
            f"Received: kernel_scale.shape={tuple(kernel_scale.shape)}"
        )
    return kernel_int8, kernel_scale
