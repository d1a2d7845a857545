"""Tensor parallelism with the (D, 2, U) weight: JAX shardings on 8 simulated CPU devices, and
Keras' ModelParallel distribution with a LayoutMap.

Run in their own process (XLA fixes the device count when the backend starts)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 KERAS_BACKEND=jax pytest -m sharding

The layout: with w of shape (D, 2, U) sharded over U, every device holds the value *and* the gate
columns of its own slice of units, so ``a * act(g)`` for those units is computed from local data:
column-parallel tensor parallelism with a forward that needs no collective (checked on the compiled
HLO). Backward needs the usual ones: dx sums over the model axis, dW over the data axis; dW stays
sharded over U like W.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

pytestmark = pytest.mark.sharding

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import glu_kernels as gk  # noqa: E402
from glu_kernels.reference import (  # noqa: E402
    gated_reference,
    gated_reference_vjp,
    glu_reference,
    glu_reference_vjp,
)

DEVICES = 8
COLLECTIVES = re.compile(r"all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute")
AXIS_TYPES = ("Explicit", "Auto")  # Explicit: jax.make_mesh's default in recent JAX; Auto: classic


@pytest.fixture(scope="module", autouse=True)
def _eight_devices():
    if jax.device_count() < DEVICES:
        pytest.skip(
            f"needs {DEVICES} devices, found {jax.device_count()}: run in its own process with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={DEVICES} (nox -s tests does)"
        )


def _mesh(shape, names, axis_type):
    kind = getattr(jax.sharding, "AxisType", None)
    if kind is None:  # JAX without axis types: every axis is "Auto"
        if axis_type != "Auto":
            pytest.skip("this JAX has no jax.sharding.AxisType")
        return jax.make_mesh(shape, names)
    return jax.make_mesh(shape, names, axis_types=(getattr(kind, axis_type),) * len(shape))


def _data(lead, d=16, u=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*lead, d)).astype(np.float32)
    w = (rng.standard_normal((d, 2, u)) / np.sqrt(d)).astype(np.float32)
    b = (rng.standard_normal((2, u)) * 0.1).astype(np.float32)
    return x, w, b


def _put(mesh, a, *spec):
    return jax.device_put(a, NamedSharding(mesh, P(*spec)))


def _assert_sharded(array, mesh, *spec):
    expected = NamedSharding(mesh, P(*spec))
    assert array.sharding.is_equivalent_to(expected, array.ndim), (
        f"expected {expected.spec}, got {array.sharding}"
    )


def _collectives(fn, *args):
    return sorted(set(COLLECTIVES.findall(fn.lower(*args).compile().as_text())))


F32 = dict(rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("axis_type", AXIS_TYPES)
def test_jax_column_parallel_forward_1d_mesh(axis_type):
    mesh = _mesh((DEVICES,), ("model",), axis_type)
    x, w, b = _data((8,))
    xs, ws, bs = _put(mesh, x), _put(mesh, w, None, None, "model"), _put(mesh, b, None, "model")
    fn = jax.jit(lambda x, w, b: gk.glu(x, w, b, activation="silu"))
    out = fn(xs, ws, bs)
    np.testing.assert_allclose(out, glu_reference(x, w, b, "silu"), **F32)
    _assert_sharded(out, mesh, None, "model")
    assert _collectives(fn, xs, ws, bs) == []


@pytest.mark.parametrize("axis_type", AXIS_TYPES)
@pytest.mark.parametrize("activation", ["sigmoid", "gelu"])
def test_jax_column_parallel_forward_2d_mesh(activation, axis_type):
    """2 (data) x 4 (model): x sharded over batch, w over U; output sharded (batch, U)."""
    mesh = _mesh((2, 4), ("data", "model"), axis_type)
    x, w, b = _data((4, 3))  # (batch, time, D)
    xs = _put(mesh, x, "data", None, None)
    ws, bs = _put(mesh, w, None, None, "model"), _put(mesh, b, None, "model")
    fn = jax.jit(lambda x, w, b: gk.glu(x, w, b, activation=activation))
    out = fn(xs, ws, bs)
    np.testing.assert_allclose(out, glu_reference(x, w, b, activation), **F32)
    _assert_sharded(out, mesh, "data", None, "model")
    assert _collectives(fn, xs, ws, bs) == []


@pytest.mark.parametrize("save", ["activations", "input"])
@pytest.mark.parametrize("axis_type", AXIS_TYPES)
@pytest.mark.parametrize(
    "lead, batch_spec",
    [((8,), ("data",)), ((2, 4), (None, "data"))],
    ids=["batch-sharded", "sequence-sharded"],  # x (8, D), or (2, 4, D) sharded on its 2nd axis
)
@pytest.mark.parametrize(
    "b_spec", [(None, "model"), (None, None)], ids=["bias-sharded", "bias-replicated"]
)
def test_jax_column_parallel_gradients(axis_type, save, lead, batch_spec, b_spec):
    """dx, dw, db with U-sharded weights; a replicated bias gets a replicated db (under explicit
    sharding its contraction once kept dh's U-sharding, which the custom VJP refused)."""
    mesh = _mesh((2, 4), ("data", "model"), axis_type)
    x, w, b = _data(lead)
    dy = np.random.default_rng(1).standard_normal((*lead, 32)).astype(np.float32)
    xs = _put(mesh, x, *batch_spec, None)
    ws, bs = _put(mesh, w, None, None, "model"), _put(mesh, b, *b_spec)
    dys = _put(mesh, dy, *batch_spec, "model")

    def loss(x, w, b, dy):
        return jnp.sum(gk.glu(x, w, b, activation="silu", save=save) * dy)

    dx, dw, db = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(xs, ws, bs, dys)
    for got, want in zip((dx, dw, db), glu_reference_vjp(x, w, b, dy, "silu"), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    _assert_sharded(dw, mesh, None, None, "model")
    _assert_sharded(dx, mesh, *batch_spec, None)
    if axis_type == "Explicit" or b_spec == (None, "model"):  # Auto: XLA's pick for a replicated b
        _assert_sharded(db, mesh, *b_spec)


@pytest.mark.parametrize("axis_type", AXIS_TYPES)
def test_jax_column_parallel_training_step_keeps_weights_sharded(axis_type):
    mesh = _mesh((2, 4), ("data", "model"), axis_type)
    x, w, b = _data((8,))
    target = np.tanh(np.tile(x, 2))  # (8, 32), like the output
    xs, ts = _put(mesh, x, "data", None), _put(mesh, target, "data", "model")
    params = (_put(mesh, w, None, None, "model"), _put(mesh, b, None, "model"))

    @jax.jit
    def step(params, x, t):
        def loss(params):
            return jnp.mean((gk.glu(x, *params, activation="gelu_tanh") - t) ** 2)

        value, grads = jax.value_and_grad(loss)(params)
        return value, jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)

    losses = []
    for _ in range(5):
        value, params = step(params, xs, ts)
        losses.append(float(value))
    assert losses[-1] < losses[0]
    _assert_sharded(params[0], mesh, None, None, "model")
    _assert_sharded(params[1], mesh, None, "model")


@pytest.mark.parametrize("check_vma", [True, False])
@pytest.mark.parametrize("save", ["activations", "input"])
@pytest.mark.parametrize(
    "w_spec, b_spec",
    [(P(), P()), (P(None, None, "model"), P(None, "model"))],
    ids=["data-parallel", "data-and-tensor-parallel"],
)
def test_jax_shard_map_gradients(w_spec, b_spec, save, check_vma):
    """Inside shard_map, dw (and dx, under tensor parallelism) vary along mesh axes their primal
    does not: the custom VJP must sum them there, as JAX's own rules do (with check_vma, JAX
    rejects cotangents typed unlike their primals)."""
    shard_map = getattr(jax, "shard_map", None)
    if shard_map is None:
        pytest.skip("this JAX has no jax.shard_map")
    x, w, b = _data((16,))
    dy = np.ones((16, w.shape[-1]), np.float32)
    mesh = _mesh((4, 2), ("data", "model"), "Auto")
    out_spec = P("data", None if w_spec == P() else "model")
    f = shard_map(
        lambda x, w, b: gk.glu(x, w, b, save=save),
        mesh=mesh,
        in_specs=(P("data", None), w_spec, b_spec),
        out_specs=out_spec,
        check_vma=check_vma,
    )
    grads = jax.jit(jax.grad(lambda *a: f(*a).sum(), argnums=(0, 1, 2)))(x, w, b)
    for got, want in zip(grads, glu_reference_vjp(x, w, b, dy, "sigmoid"), strict=True):
        np.testing.assert_allclose(np.asarray(got), want, **F32)


@pytest.mark.parametrize("axis_type", AXIS_TYPES)
def test_jax_packed_weight_sharded_over_2u_is_correct_but_not_local(axis_type):
    """A (D, 2U) weight sharded over its last axis puts all value columns on the first devices and
    all gate columns on the last ones: still correct, but a*act(g) then needs data from other
    devices. The (D, 2, U) layout is the one to shard (see README, "Scaling out"). Under explicit
    sharding glu gathers the 2U axis itself (JAX refused to split the reshaped halves)."""
    mesh = _mesh((DEVICES,), ("model",), axis_type)
    x, w, b = _data((8,))
    w2, b2 = w.reshape(16, 64), b.reshape(64)
    dy = np.random.default_rng(1).standard_normal((8, 32)).astype(np.float32)
    args = (_put(mesh, x), _put(mesh, w2, None, "model"), _put(mesh, b2, "model"))
    out = jax.jit(lambda x, w, b: gk.glu(x, w, b))(*args)
    np.testing.assert_allclose(out, glu_reference(x, w2, b2), **F32)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(gk.glu(*a) * dy), argnums=(0, 1, 2)))(*args)
    for got, want in zip(grads, glu_reference_vjp(x, w2, b2, dy), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    if axis_type == "Explicit":  # Auto: XLA picks the outputs' shardings
        _assert_sharded(grads[1], mesh, None, "model")
        _assert_sharded(grads[2], mesh, "model")


@pytest.mark.parametrize("axis_type", AXIS_TYPES)
def test_jax_gated_on_h_sharded_over_its_last_axis(axis_type):
    """gated on a global h sharded over 2U: the halves are gathered (README's API row says so);
    dh comes back sharded as h is."""
    mesh = _mesh((DEVICES,), ("model",), axis_type)
    h = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    dy = np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32)
    hs = _put(mesh, h, None, "model")
    out = jax.jit(lambda h: gk.gated(h, activation="silu"))(hs)
    np.testing.assert_allclose(out, gated_reference(h, "silu"), **F32)
    dh = jax.jit(jax.grad(lambda h: jnp.sum(gk.gated(h, activation="silu") * dy)))(hs)
    np.testing.assert_allclose(dh, gated_reference_vjp(h, dy, "silu"), **F32)
    if axis_type == "Explicit":  # Auto: XLA picks the output's sharding
        _assert_sharded(dh, mesh, None, "model")


# --------------------------------------------------------------------------------------------------
# Keras 3 distribution API (JAX backend)


def test_keras_jax_model_parallel_layout_map_trains_and_keeps_kernel_sharding():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip(
            f"keras.distribution runs on the JAX backend; KERAS_BACKEND={keras.backend.backend()}"
        )
    glu_keras = pytest.importorskip("glu_keras")
    from keras import distribution as kd

    mesh = kd.DeviceMesh(shape=(2, 4), axis_names=("batch", "model"), devices=kd.list_devices())
    layout_map = kd.LayoutMap(mesh)
    layout_map[".*gated_linear_unit.*/kernel"] = (None, None, "model")  # (D, 2, U): shard U
    layout_map[".*gated_linear_unit.*/bias"] = (None, "model")  # (2, U): shard U
    previous = kd.distribution()
    kd.set_distribution(kd.ModelParallel(layout_map=layout_map, batch_dim_name="batch"))
    try:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((16,))
        layer = glu_keras.GatedLinearUnit(32, activation="silu")
        outputs = keras.layers.Dense(1)(layer(inputs))
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")

        def kernel_sharded():
            _assert_sharded(
                layer.kernel.value, layer.kernel.value.sharding.mesh, None, None, "model"
            )
            _assert_sharded(layer.bias.value, layer.bias.value.sharding.mesh, None, "model")
            assert layer.kernel.value.sharding.mesh.shape == {"batch": 2, "model": 4}

        kernel_sharded()
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, 16)).astype(np.float32)
        y = (2.0 * x[:, :1]).astype(np.float32)
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False)
        losses = history.history["loss"]
        assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
        kernel_sharded()  # the optimizer's updates kept the layout

        # the distributed model computes what the formula says with its (gathered) weights
        kernel, bias = np.asarray(layer.kernel.value), np.asarray(layer.bias.value)
        head_w, head_b = (np.asarray(v.value) for v in model.layers[-1].weights)
        expected = glu_reference(x[:16], kernel, bias, "silu") @ head_w + head_b
        np.testing.assert_allclose(model.predict(x[:16], verbose=0), expected, rtol=1e-4, atol=1e-5)
    finally:
        kd.set_distribution(previous)
