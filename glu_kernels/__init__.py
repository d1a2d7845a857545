"""glu_kernels: one fused gated linear unit for NumPy, JAX, PyTorch and TensorFlow.

``glu(x, w, b)`` computes ``a * act(g)`` where ``[a | g] = x @ [W | V] + b``, with one matmul on the
packed weight, a fused epilogue, and a custom gradient that keeps only the pre-activation;
``gated(h)`` is that epilogue alone, for a pre-activation from the caller's own matmul. The
framework is taken from the arrays' type; ``explain`` and ``explain_gated`` say what runs and why.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, TypeVar

from glu_kernels import _activations, _dispatch, _validate
from glu_kernels._dispatch import available_backends

__all__ = [
    "glu",
    "gated",
    "swiglu",
    "geglu",
    "reglu",
    "bilinear",
    "explain",
    "explain_gated",
    "available_backends",
    "ACTIVATIONS",
]
__version__ = "0.1.0"

ACTIVATIONS: tuple[str, ...] = tuple(_activations.ACTIVATIONS)

Array = TypeVar("Array")

_check = lru_cache(maxsize=4096)(_validate.check)
_check_gated = lru_cache(maxsize=1024)(_validate.check_gated)


def _validated(cached, check, key: tuple):
    """``check(*key)``, through its lru_cache ``cached`` where the key hashes."""
    # No explicit hash(key): under torch.compile, hashing a symbolic size specializes it (one
    # recompile per batch size); Dynamo skips the lru_cache wrapper and traces check itself.
    try:
        return cached(*key)
    except TypeError:
        try:
            hash(key)
        except TypeError:  # an unhashable argument, e.g. a list as activation: validate uncached
            pass
        else:
            raise  # check's own TypeError (dtypes)
    return check(*key)


def _prepare(x: Any, w: Any, b: Any, activation: str, save: str):
    backend = _dispatch.backend_of(x, w, b)
    key = (
        backend.shape(x),
        backend.shape(w),
        None if b is None else backend.shape(b),
        backend.dtype_name(x),
        backend.dtype_name(w),
        None if b is None else backend.dtype_name(b),
        activation,
        save,
    )
    return backend, _validated(_check, _validate.check, key)


def glu(
    x: Array,
    w: Array,
    b: Array | None = None,
    *,
    activation: str = "sigmoid",
    save: str = "activations",
) -> Array:
    """Gated linear unit: ``a * act(g)`` where ``[a | g] = x @ [W | V] + b``, with one matmul.

    Runs in the framework of its arguments (NumPy, JAX, PyTorch or TensorFlow) and returns that
    framework's array, differentiable with a custom gradient that recomputes ``act(g)`` from the
    saved pre-activation instead of keeping the unfused formula's three intermediates.

    Precision: 16-bit inputs (float16, bfloat16) are multiplied with float32 accumulation; the
    pre-activation ``h`` is rounded once to the input dtype (it is the matmul's output, and what
    backward keeps); the activation and the product are then computed in float32 and rounded once.
    (TensorFlow's 16-bit matmul cannot return float32: there ``x @ w`` is rounded once and the bias
    added in float32, so its bits differ from the other backends', by no more.)
    The backward elementwise pass is computed the same way. (Libraries that round ``act(g)`` to 16
    bits before the multiply give slightly different bits.)

    Args:
        x: inputs, shape (..., D), any number of leading dimensions (zero-size too).
        w: packed weight, (D, 2U) as ``[W | V]`` (value half first, gate half second, the order of
            ``torch.nn.functional.glu`` and ``jax.nn.glu``), or (D, 2, U): the same bytes, the form
            that stays local when U is sharded.
        b: bias, (2U,) or (2, U), or None.
        activation: the gate's activation: "sigmoid" (GLU), "silu" or "swish" (SwiGLU), "gelu"
            (GeGLU, exact erf), "gelu_tanh" (GeGLU, tanh approximation), "relu" (ReGLU), "linear"
            (bilinear).
        save: what backward keeps: "activations" (x, w and h; no extra GEMM) or "input" (x, w and b
            only; backward recomputes h with one more GEMM, and nothing of size (..., U) is kept).

    Returns:
        An array of shape (..., U) and x's dtype, of x's framework.

    Raises:
        ValueError: shapes that do not fit together, an unknown activation or save mode.
        TypeError: non-float dtypes, mixed dtypes, mixed frameworks, unsupported array types.

    Example:
        >>> import numpy as np, glu_kernels as gk
        >>> x, w = np.ones((4, 3), np.float32), np.zeros((3, 2 * 5), np.float32)
        >>> gk.glu(x, w, activation="silu").shape
        (4, 5)

    NumPy equivalent::

        h = x @ w.reshape(w.shape[0], -1) + b.reshape(-1)
        a, g = np.split(h, 2, axis=-1)
        out = a * act(g)
    """
    try:
        backend, spec = _prepare(x, w, b, activation, save)
        return backend.glu(x, w, b, spec)
    except RuntimeError as error:
        # a torch tensor that is not dense (sparse, nested) fails inside torch: say so in glu's
        # words; checked here, after the failure, as on every call it would cost ~0.3 us
        _dispatch.refuse_not_dense(error, "glu", x=x, w=w, b=b)
        raise


def gated(h: Array, *, activation: str = "sigmoid") -> Array:
    """The gated epilogue alone: ``a * act(g)`` where ``[a | g] = h``, for a pre-activation h
    computed by the caller's own matmul (quantized, LoRA, tensor-parallel, fp8, ...).

    The same fused epilogue and precision as :func:`glu` (16-bit inputs: the activation and the
    product in float32, rounded once) and the same lean gradient: backward keeps h only and
    recomputes ``act(g)`` from it (the unfused ``a * act(g)`` keeps a, g and act(g)).

    Args:
        h: the pre-activation, shape (..., 2U): value half first, gate half second (the order of
            ``torch.nn.functional.glu`` and ``jax.nn.glu``).
        activation: as in :func:`glu`: "sigmoid", "silu" (or "swish"), "gelu", "gelu_tanh",
            "relu", "linear".

    Returns:
        An array of shape (..., U) and h's dtype, of h's framework.

    Raises:
        ValueError: an h whose last dimension is odd (or unknown), a 0-d h, an unknown activation.
        TypeError: a non-float dtype, an unsupported array type.

    Example:
        >>> import numpy as np, glu_kernels as gk
        >>> h = np.array([[2.0, 0.0]], np.float32)       # a = 2, g = 0: 2 * sigmoid(0)
        >>> gk.gated(h)
        array([[1.]], dtype=float32)

    NumPy equivalent::

        a, g = np.split(h, 2, axis=-1)
        out = a * act(g)
    """
    try:
        backend, spec = _prepare_gated(h, activation)
        return backend.gated(h, spec)
    except RuntimeError as error:
        _dispatch.refuse_not_dense(error, "gated", h=h)
        raise


def _prepare_gated(h: Any, activation: str):
    backend = _dispatch.backend_of_array(h, "h", "gated")
    key = (backend.shape(h), backend.stored_dtype_name(h), activation)  # autocast or not
    return backend, _validated(_check_gated, _validate.check_gated, key)


def _variant(activation: str, variant: str):
    def fn(x: Array, w: Array, b: Array | None = None, *, save: str = "activations") -> Array:
        return glu(x, w, b, activation=activation, save=save)

    fn.__name__ = fn.__qualname__ = variant.lower()
    fn.__doc__ = (
        f"{variant}: ``glu(x, w, b, activation={activation!r})``; see :func:`glu`.\n\n"
        f"NumPy equivalent: ``a, g = np.split(x @ w + b, 2, axis=-1); out = a * {activation}(g)``\n"
    )
    return fn


swiglu = _variant("silu", "SwiGLU")
geglu = _variant("gelu", "GeGLU")
reglu = _variant("relu", "ReGLU")
bilinear = _variant("linear", "Bilinear")


def explain(
    x: Any, w: Any, b: Any = None, *, activation: str = "sigmoid", save: str = "activations"
) -> str:
    """Says which backend and implementation ``glu`` would run for these arguments, and why.

    Validates exactly as ``glu`` does (so a bad call raises the same error) but computes nothing.

    Example:
        >>> import numpy as np, glu_kernels as gk
        >>> print(gk.explain(np.ones((8, 4)), np.ones((4, 6))).splitlines()[0])
        backend: numpy (x is numpy.ndarray)
    """
    try:
        backend, spec = _prepare(x, w, b, activation, save)
    except RuntimeError as error:
        _dispatch.refuse_not_dense(error, "glu", x=x, w=w, b=b)
        raise
    t = type(x)
    elementwise = "epilogue and backward elementwise pass" if backend.DIFFERENTIABLE else "epilogue"
    precision = (
        f"{spec.dtype} in and out; matmul accumulates in float32, h rounded once to {spec.dtype}, "
        f"{elementwise} in float32, rounded once"
        if spec.compute_dtype != spec.dtype
        else f"{spec.dtype} throughout"
    )
    if spec.compute_dtype != spec.dtype and spec.has_bias and backend.ROUNDS_MATMUL_BEFORE_BIAS:
        precision = precision.replace(
            f"h rounded once to {spec.dtype}",
            f"x @ w rounded once to {spec.dtype}, the bias added in float32",
        )
    saved = {
        "activations": "x, w and the pre-activation h (..., 2U)",
        "input": "x, w and b only; h is recomputed in backward (one more GEMM)",
    }[spec.save]
    if not backend.DIFFERENTIABLE:
        saved = "nothing (forward only)"
    weight = "(D, 2U)" if spec.weight_rank == 2 else "(D, 2, U)"
    return "\n".join(
        [
            f"backend: {backend.NAME} (x is {t.__module__}.{t.__qualname__})",
            f"op: {spec.activation.variant}, out = a * {spec.activation.name}(g), "
            f"D={spec.features}, U={spec.units}, weight {weight}"
            f", {'with' if spec.has_bias else 'no'} bias",
            f"implementation: {backend.implementation(spec)}",
            f"precision: {precision}",
            f"saved for backward: {saved}",
        ]
    )


def explain_gated(h: Any, *, activation: str = "sigmoid") -> str:
    """Says which backend and implementation ``gated`` would run for this h, and why.

    Validates exactly as ``gated`` does (so a bad call raises the same error) but computes nothing.

    Example:
        >>> import numpy as np, glu_kernels as gk
        >>> print(gk.explain_gated(np.ones((8, 6)), activation="silu").splitlines()[1])
        op: SwiGLU epilogue, out = a * silu(g), U=3
    """
    _dispatch.refuse_not_dense(None, "gated", h=h)  # gated fails on each of them, with these words
    backend, spec = _prepare_gated(h, activation)
    t = type(h)
    elementwise = "epilogue and backward elementwise pass" if backend.DIFFERENTIABLE else "epilogue"
    precision = (
        f"{spec.dtype} in and out; {elementwise} in float32, rounded once"
        if spec.compute_dtype != spec.dtype
        else f"{spec.dtype} throughout"
    )
    saved = "h (..., 2U) only" if backend.DIFFERENTIABLE else "nothing (forward only)"
    return "\n".join(
        [
            f"backend: {backend.NAME} (h is {t.__module__}.{t.__qualname__})",
            f"op: {spec.activation.variant} epilogue, out = a * {spec.activation.name}(g), "
            f"U={spec.units}",
            f"implementation: {backend.gated_implementation(spec)}",
            f"precision: {precision}",
            f"saved for backward: {saved}",
        ]
    )
