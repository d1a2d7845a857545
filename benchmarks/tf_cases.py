"""TensorFlow variants (eager unless compiled): fused glu, unfused formula, matmul +
split/sigmoid/mul, tf.function(jit_compile=True) of the unfused formula, and eager GEMM floors.
Every call ends in .numpy()."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import glu_kernels
from benchmarks.cases import Shape
from benchmarks.timing import fastest
from benchmarks.variants import COMPILED, FLOOR, FUSED, PACKED, UNFUSED, Variant

_ACT = {
    "sigmoid": tf.math.sigmoid,
    "silu": tf.nn.silu,
    "relu": tf.nn.relu,
    "gelu": lambda g: tf.nn.gelu(g, approximate=False),
    "gelu_tanh": lambda g: tf.nn.gelu(g, approximate=True),
    "linear": lambda g: g,
}


def tensors(shape: Shape, dtype: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    b_, d, u = shape.batch, shape.features, shape.units

    def r(*s, scale=1.0):
        return tf.cast(tf.constant((rng.standard_normal(s) * scale).astype(np.float32)), dtype)

    w2, b2 = r(d, 2 * u, scale=d**-0.5), r(2 * u, scale=0.1)
    return {
        "x": r(b_, d),
        "w2": w2,
        "b2": b2,
        "w": tf.identity(w2[:, :u]),
        "v": tf.identity(w2[:, u:]),
        "bw": tf.identity(b2[:u]),
        "bv": tf.identity(b2[u:]),
        "dy": r(b_, u),
        "dh": r(b_, 2 * u),
    }


def unfused(x, w, v, bw, bv, activation="sigmoid"):
    return tf.nn.bias_add(tf.linalg.matmul(x, w), bw) * _ACT[activation](
        tf.nn.bias_add(tf.linalg.matmul(x, v), bv)
    )


def unfused_accumulating(x, w, v, bw, bv, activation="sigmoid"):
    """``unfused`` with 16-bit GEMMs returning float32 (``output_type``), bias, activation and
    product in float32, rounded once: under XLA:CPU ~3x faster than 16-bit GEMM outputs at
    2048x1024->1024 bfloat16 (the JAX baselines use the same form); float32 as ``unfused``."""
    if x.dtype not in (tf.bfloat16, tf.float16):
        return unfused(x, w, v, bw, bv, activation)
    a = tf.linalg.matmul(x, w, output_type=tf.float32) + tf.cast(bw, tf.float32)
    g = tf.linalg.matmul(x, v, output_type=tf.float32) + tf.cast(bv, tf.float32)
    return tf.cast(a * _ACT[activation](g), x.dtype)


def packed(x, w2, b2, activation="sigmoid"):
    a, g = tf.split(tf.nn.bias_add(tf.linalg.matmul(x, w2), b2), 2, axis=-1)
    return a * _ACT[activation](g)


def _numpy(tree):
    return [t.numpy() for t in tree] if isinstance(tree, (list, tuple)) else tree.numpy()


def _grad(fn, args, dy):
    with tf.GradientTape() as tape:
        for a in args:
            tape.watch(a)
        out = fn(*args)
    return tape.gradient(out, list(args), output_gradients=dy)


def variants(shape: Shape, dtype: str, activation: str, compile_: bool = True) -> list[Variant]:
    t = tensors(shape, dtype)
    x, w2, b2, w, v, bw, bv, dy, dh = (
        t[k] for k in ("x", "w2", "b2", "w", "v", "bw", "bv", "dy", "dh")
    )

    def fused(x_, w_, b_):
        return glu_kernels.glu(x_, w_, b_, activation=activation)

    def unf(*a):
        return unfused(*a, activation)

    def pk(*a):
        return packed(*a, activation)

    split = (x, w, v, bw, bv)
    out = [
        Variant(
            FUSED,
            "glu_kernels.glu, eager; GradientTape",
            lambda: _numpy(fused(x, w2, b2)),
            lambda: _numpy(_grad(fused, (x, w2, b2), dy)),
        ),
        Variant(
            UNFUSED,
            "matmul x2, bias_add, act, mul, eager; GradientTape",
            lambda: _numpy(unf(*split)),
            lambda: _numpy(_grad(unf, split, dy)),
        ),
        Variant(
            PACKED,
            "matmul, bias_add, split, act, mul, eager",
            lambda: _numpy(pk(x, w2, b2)),
            lambda: _numpy(_grad(pk, (x, w2, b2), dy)),
        ),
    ]
    if compile_:

        def unf_acc(*a):
            return unfused_accumulating(*a, activation)

        unf_jit = tf.function(unf_acc, jit_compile=True)
        unf_train_jit = tf.function(lambda *a: _grad(unf_acc, a[:-1], a[-1]), jit_compile=True)
        out.append(
            Variant(
                COMPILED,
                "tf.function(unfused, jit_compile=True); 16-bit: float32 GEMM outputs",
                lambda: _numpy(unf_jit(*split)),
                lambda: _numpy(unf_train_jit(*split, dy)),
            )
        )

    # Floors: the fastest eager form of their products, timed here. Forward: with or without the
    # bias (glu adds it in its XLA epilogue; an eager bias_add is one more pass), one GEMM or two
    # of half width (eager TensorFlow has no 16-bit matmul with a float32 output on the CPU).
    # Training: x^T @ dh with transpose_a, or from a transposed copy of x.
    forward_name, floor_forward = fastest(
        {
            "matmul + bias_add": lambda: _numpy(tf.nn.bias_add(tf.linalg.matmul(x, w2), b2)),
            "matmul": lambda: _numpy(tf.linalg.matmul(x, w2)),
            "matmul + bias_add, twice half width": lambda: _numpy(
                [
                    tf.nn.bias_add(tf.linalg.matmul(x, w), bw),
                    tf.nn.bias_add(tf.linalg.matmul(x, v), bv),
                ]
            ),
        }
    )
    products = {
        "matmul(x, dh, transpose_a=True)": lambda: tf.linalg.matmul(x, dh, transpose_a=True),
        "matmul(transpose(x), dh)": lambda: tf.linalg.matmul(tf.transpose(x), dh),
    }
    product_name, _ = fastest({k: (lambda f: lambda: _numpy(f()))(f) for k, f in products.items()})
    weight_product = products[product_name]

    def floor_train():
        return (
            tf.linalg.matmul(x, w2),
            tf.linalg.matmul(dh, w2, transpose_b=True),
            weight_product(),
        )

    out.append(
        Variant(
            FLOOR,
            f"{forward_name}; train: x@W2, dh@W2^T, {product_name}, eager",
            floor_forward,
            lambda: _numpy(floor_train()),
        )
    )
    return out
