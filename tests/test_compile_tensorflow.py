"""TensorFlow: tf.function with unknown batch size, XLA (jit_compile=True), SavedModel round trip.

glu's TensorFlow backend is a ``tf.custom_gradient``; these tests check it survives graph tracing
with ``None`` dimensions (one trace serves every batch size), XLA compilation (forward and
gradient), and export: a SavedModel written with ``SaveOptions(experimental_custom_gradients=True)``
(TensorFlow's default) keeps the custom gradient, so the reloaded function is differentiable too.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import glu_kernels as gk  # noqa: E402
from glu_kernels.reference import glu_reference, glu_reference_vjp  # noqa: E402

D, U = 8, 6
F32 = dict(rtol=2e-5, atol=2e-6)


def _weights(seed=0, w3=True):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((D, 2, U)) / np.sqrt(D)).astype(np.float32)
    b = (rng.standard_normal((2, U)) * 0.1).astype(np.float32)
    return (w, b) if w3 else (w.reshape(D, 2 * U), b.reshape(2 * U))


def _x(*lead, seed=1):
    return np.random.default_rng(seed).standard_normal((*lead, D)).astype(np.float32)


@pytest.mark.parametrize("rank", [2, 3])
def test_tensorflow_function_unknown_batch_size(rank):
    w, b = _weights()
    wt, bt = tf.constant(w), tf.constant(b)
    spec = tf.TensorSpec([None] * (rank - 1) + [D], tf.float32)

    @tf.function(input_signature=[spec], autograph=False)
    def fn(x):
        out = gk.glu(x, wt, bt, activation="silu")
        assert out.shape.as_list() == [None] * (rank - 1) + [U]  # static shape at trace time
        return out

    for n in (1, 4, 7):
        x = _x(*((n,) if rank == 2 else (n, 3)))
        np.testing.assert_allclose(fn(x).numpy(), glu_reference(x, w, b, "silu"), **F32)
    assert fn.experimental_get_tracing_count() == 1


def test_tensorflow_function_unknown_batch_size_gradient():
    w, b = _weights()
    wv, bv = tf.Variable(w), tf.Variable(b)

    @tf.function(input_signature=[tf.TensorSpec([None, D], tf.float32)], autograph=False)
    def grads(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = gk.glu(x, wv, bv, activation="gelu")
            loss = tf.reduce_sum(out * tf.cos(out))
        return tape.gradient(loss, [x, wv, bv]), out

    for n in (2, 5):
        x = _x(n)
        (dx, dw, db), out = grads(x)
        out = out.numpy().astype(np.float64)
        dy = np.cos(out) - out * np.sin(out)
        for got, want in zip((dx, dw, db), glu_reference_vjp(x, w, b, dy, "gelu"), strict=True):
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    assert grads.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("w3", [True, False], ids=["w_D2U", "w_D_2U"])
@pytest.mark.parametrize("activation", ["sigmoid", "silu", "gelu", "relu"])
def test_tensorflow_jit_compile_forward_and_gradient(activation, w3):
    w, b = _weights(w3=w3)
    wv, bv = tf.Variable(w), tf.Variable(b)
    x = _x(4, 3)
    dy = np.random.default_rng(2).standard_normal((4, 3, U)).astype(np.float32)

    @tf.function(jit_compile=True, autograph=False)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = gk.glu(x, wv, bv, activation=activation)
            loss = tf.reduce_sum(out * dy)
        return out, tape.gradient(loss, [x, wv, bv])

    out, grads = step(tf.constant(x))
    np.testing.assert_allclose(out.numpy(), glu_reference(x, w, b, activation), **F32)
    for got, want in zip(grads, glu_reference_vjp(x, w, b, dy, activation), strict=True):
        assert tuple(got.shape) == want.shape
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    # really compiled by XLA (the HLO of the traced function exists)
    assert "dot" in step.experimental_get_compiler_ir(tf.constant(x))(stage="hlo")


def test_tensorflow_jit_compile_unknown_batch_size():
    w, b = _weights()
    wt, bt = tf.constant(w), tf.constant(b)
    fn = tf.function(
        lambda x: gk.glu(x, wt, bt, activation="gelu_tanh"),
        input_signature=[tf.TensorSpec([None, D], tf.float32)],
        jit_compile=True,
        autograph=False,
    )
    for n in (3, 9):
        x = _x(n)
        np.testing.assert_allclose(fn(x).numpy(), glu_reference(x, w, b, "gelu_tanh"), **F32)


class _GluModule(tf.Module):
    def __init__(self):
        super().__init__()
        w, b = _weights()
        self.w = tf.Variable(w, name="kernel")
        self.b = tf.Variable(b, name="bias")

    @tf.function(input_signature=[tf.TensorSpec([None, D], tf.float32)], autograph=False)
    def __call__(self, x):
        return gk.glu(x, self.w, self.b, activation="silu")


def _gradients(fn, module_vars, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.sin(fn(x)))
    return [g.numpy() for g in tape.gradient(loss, [x, *module_vars])]


def test_tensorflow_saved_model_round_trip(tmp_path):
    module = _GluModule()
    path = str(tmp_path / "glu_module")
    tf.saved_model.save(
        module, path, options=tf.saved_model.SaveOptions(experimental_custom_gradients=True)
    )
    del module  # the reloaded function must not need this Python object, nor glu_kernels' code path
    reloaded = tf.saved_model.load(path)
    original = _GluModule()  # same weights (seeded)

    for n in (1, 6):
        x = _x(n, seed=n)
        np.testing.assert_array_equal(reloaded(x).numpy(), original(x).numpy())
        np.testing.assert_allclose(
            reloaded(x).numpy(),
            glu_reference(x, original.w.numpy(), original.b.numpy(), "silu"),
            **F32,
        )
    # gradients through the reloaded function (its custom gradient was saved with it)
    x = _x(5)
    got = _gradients(reloaded, [reloaded.w, reloaded.b], x)
    want = _gradients(original, [original.w, original.b], x)
    for g_, w_ in zip(got, want, strict=True):
        np.testing.assert_allclose(g_, w_, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize(
    "signature", [[None, None], [None, None, None], [None], [2, None], [2, 3, None]], ids=str
)
def test_tf_function_with_unknown_features_checks_them_at_run_time(signature, jit_compile):
    """x's last dimension unknown at trace time: checked when the graph runs, with glu's words
    (was MatMul's or Reshape's internal error); XLA drops the assert, and the shape check behind it
    (EnsureShape) reports it there. The right size still computes the right values. Signatures
    whose other sizes are fixed ([2, None]) once had the check folded away by Grappler."""
    w = tf.constant(np.random.default_rng(0).normal(size=(D, 2 * U)), tf.float32)
    f = tf.function(
        lambda x: gk.glu(x, w),
        input_signature=[tf.TensorSpec(signature, tf.float32)],
        jit_compile=jit_compile,
    )
    leading = tuple(2 if size is None else size for size in signature[:-1])
    good = np.random.default_rng(1).normal(size=(*leading, D)).astype("float32")
    np.testing.assert_allclose(
        f(good).numpy(), glu_reference(good, w.numpy()), rtol=1e-5, atol=1e-6
    )
    bad = np.ones((*leading, D + 1), "float32")
    traced = re.escape(str(tuple(signature)))
    words = (
        r"x\\?'s last dimension must equal w\\?'s first dimension \(D, the input features\)\. "
        rf"Received: x\.shape={traced} \(traced\), w\.shape=\(8, 12\)"
    )
    sizes = re.escape(",".join(map(str, bad.shape)))
    ensure_shape = rf"Shape of tensor \S+ \[{sizes}\] is not compatible with expected shape"
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=ensure_shape if jit_compile else words
    ):
        f(bad)


def test_sharded_variable_weight_trains_each_shard():
    """A tf.Variable made under ParameterServerStrategy with a variable_partitioner is a
    ShardedVariable (no tf.Variable subclass): glu takes it as the dense weight it stands for."""
    from tensorflow.python.distribute.sharded_variable import ShardedVariable

    rng = np.random.default_rng(4)
    w, b = rng.normal(size=(D, 2 * U)), rng.normal(size=2 * U)
    x = rng.normal(size=(3, D))
    sharded = ShardedVariable([tf.Variable(w[: D // 2]), tf.Variable(w[D // 2 :])])
    with tf.GradientTape() as tape:
        y = gk.glu(tf.constant(x), sharded, tf.constant(b))
    np.testing.assert_allclose(y.numpy(), glu_reference(x, w, b), rtol=1e-12, atol=1e-12)
    dw = np.concatenate([g.numpy() for g in tape.gradient(y, sharded.variables)])
    _, want, _ = glu_reference_vjp(x, w, b, np.ones((3, U)))
    np.testing.assert_allclose(dw, want, rtol=1e-12, atol=1e-12)
