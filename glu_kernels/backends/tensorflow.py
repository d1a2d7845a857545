"""TensorFlow backend: one ``tf.linalg.matmul`` on the packed weight under ``tf.custom_gradient``.

Works eagerly, in ``tf.function`` (also with an unknown batch size), under ``jit_compile=True`` and
in SavedModels. ``tf.Variable`` arguments are read once outside the custom gradient, so TensorFlow's
own variable tracking delivers their gradients.
"""

from __future__ import annotations

import tensorflow as tf

from glu_kernels._activations import epilogue_backward
from glu_kernels._validate import GluSpec

NAME = "tensorflow"


def shape(t) -> tuple[int | None, ...]:
    if t.shape.rank is None:
        raise ValueError(f"glu needs tensors of known rank. Received: a tensor of shape {t.shape}")
    return tuple(t.shape)


def dtype_name(t) -> str:
    return t.dtype.name


class _Primitives:
    sigmoid = staticmethod(tf.math.sigmoid)
    tanh = staticmethod(tf.math.tanh)
    erf = staticmethod(tf.math.erf)
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


def _preactivation(x2, w2, b2):
    h = tf.linalg.matmul(x2, w2)
    return h if b2 is None else tf.nn.bias_add(h, b2)


def _halves(h, units: int, compute_dtype):
    a, g = tf.split(h, 2, axis=-1)  # one op for both halves
    return tf.cast(a, compute_dtype), tf.cast(g, compute_dtype)


def _glu2(x2, w2, b2, spec: GluSpec):
    """glu on 2-D x (B, D) and w (D, 2U) with the memory-lean custom gradient."""
    act, units, dtype = spec.activation, spec.units, spec.dtype
    compute_dtype = tf.as_dtype(spec.compute_dtype)
    forward = _FORWARD.get(act.name) or (lambda g: act.forward(g, PRIMITIVES))

    def epilogue(h):
        a, g = _halves(h, units, compute_dtype)
        return tf.cast(a * forward(g), dtype)

    @tf.custom_gradient
    def glu2(*args):
        x2, w2, *b2 = args
        b2 = b2[0] if b2 else None
        h = _preactivation(x2, w2, b2)
        kept = h if spec.save == "activations" else None

        def grad(dy):
            h_ = kept if kept is not None else _preactivation(x2, w2, b2)
            a, g = _halves(h_, units, compute_dtype)
            dy = tf.cast(dy, compute_dtype)
            gate_grad = _GATE_GRAD.get(act.name)
            if gate_grad is None:
                da, dg = epilogue_backward(dy, a, g, act, PRIMITIVES)
            else:
                f = forward(g)
                da, dg = dy * f, gate_grad(dy * a, g, f)
            dh = tf.cast(tf.concat([da, dg], axis=-1), dtype)
            grads = [
                tf.linalg.matmul(dh, w2, transpose_b=True),
                tf.linalg.matmul(x2, dh, transpose_a=True),
            ]
            return grads + ([tf.reduce_sum(dh, axis=0)] if b2 is not None else [])

        return epilogue(h), grad

    if tf.executing_eagerly() and not _could_record():  # eager inference: no gradient to record
        return epilogue(_preactivation(x2, w2, b2))
    return glu2(x2, w2) if b2 is None else glu2(x2, w2, b2)


def glu(x, w, b, spec: GluSpec):
    d, u = spec.features, spec.units
    x = tf.convert_to_tensor(x)
    x2 = tf.reshape(x, [-1, d])
    w2 = tf.reshape(tf.convert_to_tensor(w), [d, 2 * u])
    b2 = None if b is None else tf.reshape(tf.convert_to_tensor(b), [2 * u])
    out = _glu2(x2, w2, b2, spec)
    leading = x.shape[:-1]
    if leading.is_fully_defined():
        return tf.reshape(out, [*leading.as_list(), u])
    out = tf.reshape(out, tf.concat([tf.shape(x)[:-1], [u]], axis=0))
    out.set_shape(leading.concatenate([u]))
    return out


def implementation(spec: GluSpec) -> str:
    return (
        "tf.linalg.matmul on the packed (D, 2U) weight and bias_add, epilogue in TensorFlow ops "
        "(fused by XLA under jit_compile=True), tf.custom_gradient backward"
    )
