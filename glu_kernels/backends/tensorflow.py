"""TensorFlow backend: one ``tf.linalg.matmul`` on the packed weight under ``tf.custom_gradient``.

Works eagerly, in ``tf.function`` (also with an unknown batch size), under ``jit_compile=True`` and
in SavedModels. ``tf.Variable`` arguments are read once outside the custom gradient, so TensorFlow's
own variable tracking delivers their gradients.
"""

from __future__ import annotations

from functools import cache, lru_cache

import tensorflow as tf

from glu_kernels._activations import Activation, epilogue_backward
from glu_kernels._validate import FEATURES_MISMATCH, UNKNOWN_RANK, GatedSpec, GluSpec

NAME = "tensorflow"
DIFFERENTIABLE = True
# a 16-bit matmul cannot return float32 here: x @ w is rounded, then the bias added in float32
ROUNDS_MATMUL_BEFORE_BIAS = True


def shape(t) -> tuple[int | None, ...] | object:  # or UNKNOWN_RANK
    shape = t.shape  # a new TensorShape on every access
    return UNKNOWN_RANK if shape.rank is None else tuple(shape)


def dtype_name(t) -> str:
    return t.dtype.name


stored_dtype_name = dtype_name  # no autocast here: what dtype_name says


class _Primitives:
    sigmoid = staticmethod(tf.math.sigmoid)
    tanh = staticmethod(tf.math.tanh)
    erfc = staticmethod(tf.math.erfc)
    exp = staticmethod(tf.math.exp)
    relu = staticmethod(tf.nn.relu)

    @staticmethod
    def positive(g):
        return tf.cast(g > 0, g.dtype)


PRIMITIVES = _Primitives()

# tf.nn.gelu is left out: its float32 constants cost float64 inputs 1e-8 of accuracy.
_FORWARD = {"sigmoid": tf.math.sigmoid, "silu": tf.nn.silu, "relu": tf.nn.relu}
# TensorFlow's fused gradient kernels (one op instead of the formula's three; both differentiable):
# the gate gradient grad * f'(g), given g and f = f(g).
_GATE_GRAD = {
    "sigmoid": lambda grad, g, f: tf.raw_ops.SigmoidGrad(y=f, dy=grad),
    "relu": lambda grad, g, f: tf.raw_ops.ReluGrad(gradients=grad, features=g),
}

try:  # whether a GradientTape could record an op right now (TensorFlow internals, hence guarded)
    from tensorflow.python.eager.record import could_possibly_record as _could_record
except ImportError:  # pragma: no cover - older/newer TensorFlow: always take the custom gradient

    def _could_record() -> bool:
        return True


def _halves(h, b, compute_dtype):
    """``(a, g)`` of ``h + b`` in compute_dtype. The bias is added there, not to the 16-bit h:
    ``tf.linalg.matmul`` has already rounded h once, and a 16-bit ``bias_add`` would round it
    again (it is also why backward keeps h without the bias)."""
    h = tf.cast(h, compute_dtype)
    if b is not None:
        h = tf.nn.bias_add(h, tf.cast(b, compute_dtype))
    return tf.split(h, 2, axis=-1)  # one op for both halves


def _forward(activation: Activation):
    return _FORWARD.get(activation.name) or (lambda g: activation.forward(g, PRIMITIVES))


def _epilogue(h, b, activation: Activation, dtype: str, compute_dtype: str):
    """``a * f(g)`` for ``[a | g] = h + b``, computed in compute_dtype and rounded once to dtype."""
    a, g = _halves(h, b, compute_dtype)
    return tf.cast(a * _forward(activation)(g), dtype)


def _grad_preactivation(dy, h, b, activation: Activation, dtype: str, compute_dtype: str):
    """``(dh, db)``: ``dh = [dy * f(g), dy * a * f'(g)]`` for ``[a | g] = h + b`` and its column
    sums (None without bias), computed in compute_dtype and each rounded once to dtype."""
    a, g = _halves(h, b, compute_dtype)
    dy = tf.cast(dy, compute_dtype)
    gate_grad = _GATE_GRAD.get(activation.name)
    if gate_grad is None:
        da, dg = epilogue_backward(dy, a, g, activation, PRIMITIVES)
    else:
        f = _forward(activation)(g)
        da, dg = dy * f, gate_grad(dy * a, g, f)
    dh = tf.concat([da, dg], axis=-1)
    db = None if b is None else tf.cast(tf.reduce_sum(dh, axis=0), dtype)
    return tf.cast(dh, dtype), db


# Calls whose h has at least this many elements (or an unknown number, in a tf.function traced for
# any batch size) run the elementwise passes (bias and epilogue; backward pass and db) as one
# XLA-compiled function each: one pass over memory instead of ~6 ops, ~2x faster (measured on
# 2048x2048: 6.8 -> 3.5 ms in float32, 10.6 -> 4.4 ms in bfloat16), and in a Keras training step
# without jit_compile the difference between trailing and beating two Dense layers. Each new shape
# costs one XLA compile (~50 ms) and each eager call ~70 us more than eager ops: hence the
# threshold. Under an enclosing jit_compile=True the functions are simply inlined.
_XLA_MIN_ELEMENTS = 1 << 17


def _use_xla(h) -> bool:
    n = h.shape.num_elements()
    return n is None or n >= _XLA_MIN_ELEMENTS


@cache
def _xla_epilogue(activation: Activation, dtype: str, compute_dtype: str):
    """``_epilogue`` as one XLA function."""
    return tf.function(
        lambda h, b: _epilogue(h, b, activation, dtype, compute_dtype),
        jit_compile=True,
        reduce_retracing=True,
    )


@cache
def _xla_grad_preactivation(activation: Activation, dtype: str, compute_dtype: str):
    """``_grad_preactivation`` as one XLA function."""
    return tf.function(
        lambda dy, h, b: _grad_preactivation(dy, h, b, activation, dtype, compute_dtype),
        jit_compile=True,
        reduce_retracing=True,
    )


# (XLA function, the arguments' shapes and dtypes) -> its concrete function, for eager calls
_CONCRETE: dict = {}
_CONCRETE_MAX = 512


def _call_xla(function, *args):
    """``function(*args)``; an eager call goes through the concrete function for these shapes: the
    tf.function call matches its arguments to a trace on every call, ~0.15 ms (0.40 against
    0.25 ms for a float32 epilogue at 256x512, 0.65 against 0.50 at 1024x512). In a graph the
    call is traced once, so there it stays the plain call; so it does under
    ``tf.config.run_functions_eagerly(True)``, which a concrete function would not honour."""
    if not tf.executing_eagerly() or tf.config.functions_run_eagerly():
        return function(*args)
    key = (function, *(None if a is None else (tuple(a.shape), a.dtype) for a in args))
    concrete = _CONCRETE.get(key)
    if concrete is None:
        if len(_CONCRETE) >= _CONCRETE_MAX:
            _CONCRETE.clear()
        concrete = _CONCRETE[key] = function.get_concrete_function(*args)
    return concrete(*args)


def _run_epilogue(h, b, spec: GluSpec | GatedSpec):
    """``_epilogue``, as one XLA function where h is large enough (see above)."""
    act, dtype, compute_dtype = spec.activation, spec.dtype, spec.compute_dtype
    if _use_xla(h):
        return _call_xla(_xla_epilogue(act, dtype, compute_dtype), h, b)
    return _epilogue(h, b, act, dtype, compute_dtype)


def _run_grad_preactivation(dy, h, b, spec: GluSpec | GatedSpec):
    """``_grad_preactivation``, as one XLA function where h is large enough (see above)."""
    act, dtype, compute_dtype = spec.activation, spec.dtype, spec.compute_dtype
    if _use_xla(h):
        return _call_xla(_xla_grad_preactivation(act, dtype, compute_dtype), dy, h, b)
    return _grad_preactivation(dy, h, b, act, dtype, compute_dtype)


def _forward2(x2, w2, b2, spec: GluSpec):
    """``(out, h)`` for 2-D x2 (B, D) and w2 (D, 2U), h = x2 @ w2 without the bias (see _halves)."""
    h = tf.linalg.matmul(x2, w2)
    return _run_epilogue(h, b2, spec), h


@lru_cache(maxsize=1024)
def _glu2_with_gradient(spec: GluSpec):
    """glu on 2-D x (B, D) and w (D, 2U) (and b) with the memory-lean custom gradient, made once
    per spec: decorating with tf.custom_gradient costs ~35 us (it inspects the signature)."""

    @tf.custom_gradient
    def glu2(*args):
        x2, w2, *b2 = args
        b2 = b2[0] if b2 else None
        out, h = _forward2(x2, w2, b2, spec)
        kept = h if spec.save == "activations" else None

        def grad(dy):
            h = kept if kept is not None else tf.linalg.matmul(x2, w2)
            dh, db = _run_grad_preactivation(dy, h, b2, spec)
            grads = [
                tf.linalg.matmul(dh, w2, transpose_b=True),
                tf.linalg.matmul(x2, dh, transpose_a=True),
            ]
            return grads + ([db] if b2 is not None else [])

        return out, grad

    return glu2


def _glu2(x2, w2, b2, spec: GluSpec):
    """glu on 2-D x2 and w2: without the gradient machinery where no tape could record it."""
    if tf.executing_eagerly() and not _could_record():  # eager inference: no gradient to record
        return _forward2(x2, w2, b2, spec)[0]
    glu2 = _glu2_with_gradient(spec)
    return glu2(x2, w2) if b2 is None else glu2(x2, w2, b2)


@lru_cache(maxsize=256)
def _gated_with_gradient(spec: GatedSpec):
    """gated with the lean custom gradient (backward from h alone), made once per spec."""

    @tf.custom_gradient
    def gated(h):
        return _run_epilogue(h, None, spec), lambda dy: _run_grad_preactivation(dy, h, None, spec)[
            0
        ]

    return gated


def gated(h, spec: GatedSpec):
    h = tf.convert_to_tensor(h)
    if tf.executing_eagerly() and not _could_record():  # eager inference: no gradient to record
        return _run_epilogue(h, None, spec)
    return _gated_with_gradient(spec)(h)


def _checked_features(x, d: int, w_shape):
    """x, checked at run time to end in D where its last dimension was unknown at trace time (a
    ``tf.function`` signature of ``None`` dims): glu's words instead of MatMul's."""
    message = f"{FEATURES_MISMATCH} Received: x.shape={tuple(x.shape)} (traced), w.shape={w_shape}"
    return tf.ensure_shape(_features_check(d, message)(x), [*x.shape[:-1], d])


@lru_cache(maxsize=64)
def _features_check(d: int, message: str):
    """The run-time check as a function TensorFlow does not inline. Inlined, Grappler's shape
    inference takes D from the ops after it (EnsureShape, MatMul) back to x; where x's other sizes
    are fixed (a signature [B, None]) x's shape then counts as known, and constant folding turns
    the check into True: TensorFlow's EnsureShape error came instead of glu's words."""

    @tf.function(autograph=False, experimental_attributes={"_noinline": True})
    def checked(x):
        with tf.control_dependencies([tf.debugging.assert_equal(tf.shape(x)[-1], d, message)]):
            return tf.identity(x)

    return checked


def glu(x, w, b, spec: GluSpec):
    d, u = spec.features, spec.units
    x = tf.convert_to_tensor(x)
    if x.shape[-1] is None:
        x = _checked_features(x, d, tuple(w.shape))
    # Reshape only what is not 2-D already: each eager reshape is one more op dispatch.
    x2 = x if x.shape.rank == 2 else tf.reshape(x, [-1, d])
    w2 = tf.convert_to_tensor(w)
    w2 = w2 if spec.weight_rank == 2 else tf.reshape(w2, [d, 2 * u])
    b2 = None if b is None else tf.convert_to_tensor(b)
    b2 = b2 if b2 is None or b2.shape.rank == 1 else tf.reshape(b2, [2 * u])
    out = _glu2(x2, w2, b2, spec)
    if x.shape.rank == 2:
        return out
    leading = x.shape[:-1]
    if leading.is_fully_defined():
        return tf.reshape(out, [*leading.as_list(), u])
    out = tf.reshape(out, tf.concat([tf.shape(x)[:-1], [u]], axis=0))
    out.set_shape(leading.concatenate([u]))
    return out


def implementation(spec: GluSpec) -> str:
    return (
        "tf.linalg.matmul on the packed (D, 2U) weight (bias added after it, in the compute "
        "dtype); bias, epilogue and the backward "
        f"elementwise pass as one XLA-compiled function each for calls whose h has >= "
        f"{_XLA_MIN_ELEMENTS} elements or an unknown number (a tf.function traced for any batch "
        "size), else as TensorFlow ops (fused by XLA under jit_compile=True); tf.custom_gradient "
        "backward"
    )


def gated_implementation(spec: GatedSpec) -> str:
    return (
        "the epilogue and the backward elementwise pass as one XLA-compiled function each for "
        f"calls whose h has >= {_XLA_MIN_ELEMENTS} elements or an unknown number (a tf.function "
        "traced for any batch size), else as TensorFlow ops (fused by XLA under "
        "jit_compile=True); tf.custom_gradient backward"
    )
