"""JAX transforms on glu: jit, vmap (also over per-example weights), grad, reverse-over-reverse.

The references: the float64 NumPy reference for values and first derivatives, and, for second
derivatives, JAX's own autodiff of the unfused formula ``a * act(g)`` (every first derivative of glu
goes through its custom VJP; the second derivatives differentiate that VJP's code).
Sharding lives in tests/test_sharding.py (it needs 8 simulated devices, its own process).
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

import glu_kernels as gk  # noqa: E402
from glu_kernels.reference import glu_reference, glu_reference_vjp  # noqa: E402

ACTIVATIONS = ("sigmoid", "silu", "gelu", "gelu_tanh", "relu", "linear")
_UNFUSED_ACT = {
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "gelu": lambda g: jax.nn.gelu(g, approximate=False),
    "gelu_tanh": lambda g: jax.nn.gelu(g, approximate=True),
    "relu": jax.nn.relu,
    "linear": lambda g: g,
}
F64 = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(autouse=True)
def _x64():
    # tests/conftest.py switches x64 on for the whole process; these tests rely on it.
    if not jax.config.jax_enable_x64:
        pytest.skip("needs jax_enable_x64 (set in tests/conftest.py)")


def _inputs(lead=(3, 5), d=8, u=6, seed=0, w3=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*lead, d))
    w = rng.standard_normal((d, 2, u)) / np.sqrt(d)
    b = rng.standard_normal((2, u)) * 0.1
    if not w3:
        w, b = w.reshape(d, 2 * u), b.reshape(2 * u)
    return jnp.asarray(x), jnp.asarray(w), jnp.asarray(b)


def _unfused(x, w, b, activation):
    h = x @ w.reshape(w.shape[0], -1) + b.reshape(-1)
    a, g = jnp.split(h, 2, axis=-1)
    return a * _UNFUSED_ACT[activation](g)


@pytest.mark.parametrize("w3", [True, False], ids=["w_D2U", "w_D_2U"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_jax_jit(activation, w3):
    x, w, b = _inputs(w3=w3)
    fn = jax.jit(lambda x, w, b: gk.glu(x, w, b, activation=activation))
    out = fn(x, w, b)
    np.testing.assert_allclose(out, glu_reference(x, w, b, activation), **F64)
    # float32 through the same jitted function (a retrace for the new dtype)
    out32 = fn(x.astype(jnp.float32), w.astype(jnp.float32), b.astype(jnp.float32))
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(out32, glu_reference(x, w, b, activation), rtol=1e-4, atol=1e-5)


def test_jax_jit_static_activation_argument():
    x, w, b = _inputs()
    fn = jax.jit(lambda x, w, b, act: gk.glu(x, w, b, activation=act), static_argnums=3)
    for act in ("silu", "relu"):
        np.testing.assert_allclose(fn(x, w, b, act), glu_reference(x, w, b, act), **F64)


def test_jax_vmap_over_x():
    x, w, b = _inputs(lead=(4, 3, 5))
    out = jax.vmap(lambda xi: gk.glu(xi, w, b, activation="gelu"))(x)
    np.testing.assert_allclose(out, glu_reference(x, w, b, "gelu"), **F64)


@pytest.mark.parametrize("x_batched", [True, False])
def test_jax_vmap_over_per_example_weights(x_batched):
    n = 3
    x, _, _ = _inputs(lead=(n, 5))
    rng = np.random.default_rng(1)
    ws = jnp.asarray(rng.standard_normal((n, 8, 2, 6)) / np.sqrt(8))
    bs = jnp.asarray(rng.standard_normal((n, 2, 6)) * 0.1)
    xs = x if x_batched else x[0]
    fn = jax.jit(
        jax.vmap(
            lambda xi, wi, bi: gk.glu(xi, wi, bi, activation="silu"),
            in_axes=(0 if x_batched else None, 0, 0),
        )
    )
    out = fn(xs, ws, bs)
    for i in range(n):
        expected = glu_reference(x[i] if x_batched else x[0], ws[i], bs[i], "silu")
        np.testing.assert_allclose(out[i], expected, **F64)


@pytest.mark.parametrize("save", ["activations", "input"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_jax_grad(activation, save):
    x, w, b = _inputs()
    dy = jnp.asarray(np.random.default_rng(2).standard_normal((3, 5, 6)))

    def loss(x, w, b):
        return jnp.sum(gk.glu(x, w, b, activation=activation, save=save) * dy)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, w, b)
    for got, want in zip(grads, glu_reference_vjp(x, w, b, dy, activation), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, **F64)


def test_jax_per_example_gradients_vmap_of_grad():
    x, w, b = _inputs(lead=(4, 5))

    def loss(w, xi):
        return jnp.sum(gk.glu(xi, w, b, activation="gelu_tanh") ** 2)

    per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(w, x)
    assert per_example.shape == (4, *w.shape)
    for i in range(4):
        np.testing.assert_allclose(per_example[i], jax.grad(loss)(w, x[i]), **F64)


@pytest.mark.parametrize(
    "activation,save",
    [(a, "activations") for a in ACTIVATIONS] + [("silu", "input"), ("gelu", "input")],
)
def test_jax_reverse_over_reverse(activation, save):
    """Second derivatives: grad of a function of the first derivatives (e.g. a gradient penalty)."""
    x, w, b = _inputs(lead=(4,), d=5, u=3)

    def make(fn):
        def first(x, w, b):
            return jax.grad(lambda x, w, b: jnp.sum(jnp.sin(fn(x, w, b))), argnums=(0, 1, 2))(
                x, w, b
            )

        def penalty(x, w, b):
            dx, dw, db = first(x, w, b)
            return jnp.sum(dx**2) + jnp.sum(dw**2) + jnp.sum(jnp.cos(db))

        return jax.jit(jax.grad(penalty, argnums=(0, 1, 2)))

    got = make(lambda x, w, b: gk.glu(x, w, b, activation=activation, save=save))(x, w, b)
    want = make(lambda x, w, b: _unfused(x, w, b, activation))(x, w, b)
    for g_, w_ in zip(got, want, strict=True):
        np.testing.assert_allclose(g_, w_, rtol=1e-9, atol=1e-11)


def test_jax_hessian_vector_product_reverse_over_reverse():
    x, w, b = _inputs(lead=(6,), d=4, u=3)
    v = jnp.ones_like(w)

    def hvp(fn):
        loss = lambda w: jnp.sum(fn(x, w, b) ** 2)  # noqa: E731
        return jax.jit(jax.grad(lambda w: jnp.vdot(jax.grad(loss)(w), v)))(w)

    np.testing.assert_allclose(
        hvp(lambda x, w, b: gk.glu(x, w, b, activation="silu")),
        hvp(lambda x, w, b: _unfused(x, w, b, "silu")),
        rtol=1e-9,
        atol=1e-11,
    )


def test_jax_forward_mode_is_not_supported():
    """glu is a jax.custom_vjp: jvp/jacfwd on glu itself raise JAX's own error. Hessians work:
    reverse-over-reverse, and jax.hessian (forward mode over the reverse pass, whose backward is
    plain JAX)."""
    x, w, b = _inputs(lead=(2,), d=3, u=2)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda x: gk.glu(x, w, b), (x,), (x,))
    hess = jax.jit(jax.jacrev(jax.jacrev(lambda x: jnp.sum(gk.glu(x, w, b)))))(x)
    want = jax.jit(jax.jacrev(jax.jacrev(lambda x: jnp.sum(_unfused(x, w, b, "sigmoid")))))(x)
    np.testing.assert_allclose(hess, want, rtol=1e-9, atol=1e-11)
    hess = jax.hessian(lambda x: jnp.sum(gk.glu(x, w, b)))(x)
    np.testing.assert_allclose(hess, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_jax_export_symbolic_batch_serialized_with_its_vjp(activation):
    """jax.export: one program for every leading size, serialized with its VJP and run from the
    bytes (what a model shipped to a JAX serving stack or to TF through jax2tf does)."""
    from jax import export

    _, w, b = _inputs()
    rows, seq = export.symbolic_shape("rows, seq")
    fn = jax.jit(lambda x, w, b: gk.glu(x, w, b, activation=activation))
    spec = jax.ShapeDtypeStruct((rows, seq, w.shape[0]), w.dtype)
    program = export.deserialize(export.export(fn)(spec, w, b).serialize(vjp_order=1))
    for lead in [(3, 5), (7, 2)]:
        x, _, _ = _inputs(lead=lead, seed=sum(lead))
        np.testing.assert_allclose(program.call(x, w, b), glu_reference(x, w, b, activation), **F64)
        dy = jnp.asarray(np.random.default_rng(2).standard_normal((*lead, w.shape[-1])))
        loss = lambda x, w, b, dy=dy: jnp.sum(program.call(x, w, b) * dy)  # noqa: E731
        grads = jax.grad(loss, (0, 1, 2))(x, w, b)
        for got, want in zip(grads, glu_reference_vjp(x, w, b, dy, activation), strict=True):
            np.testing.assert_allclose(got, want, **F64)


def test_jax_export_of_a_bfloat16_vjp_names_its_layout_constraint():
    """On the CPU the bfloat16 weight gradient asks XLA for a row-major x^T through JAX's layout
    constraint, a custom call without jax.export's compatibility guarantee: serializing the VJP
    then needs it allowed by name (README, the jax.export row), and the program runs as glu does.
    If JAX ever guarantees the call, the first check fails here and the README should change."""
    from jax import export

    rng = np.random.default_rng(3)
    x, w, b = (jnp.asarray(rng.normal(size=s), jnp.bfloat16) for s in ((6, 16), (16, 2, 8), (2, 8)))
    fn = jax.jit(lambda x, w, b: gk.glu(x, w, b, activation="silu"))
    rows = export.symbolic_shape("rows")
    spec = jax.ShapeDtypeStruct((*rows, 16), jnp.bfloat16)
    with pytest.raises(ValueError, match="LayoutConstraint"):
        export.export(fn, platforms=["cpu"])(spec, w, b).serialize(vjp_order=1)
    allowed = [export.DisabledSafetyCheck.custom_call("LayoutConstraint")]
    exported = export.export(fn, platforms=["cpu"], disabled_checks=allowed)(spec, w, b)
    program = export.deserialize(exported.serialize(vjp_order=1))
    dy = jnp.asarray(rng.normal(size=(6, 8)), jnp.bfloat16)
    got = jax.vjp(program.call, x, w, b)[1](dy)
    want = jax.vjp(fn, x, w, b)[1](dy)
    # two compiles of one program (symbolic rows, concrete rows) may sum in other orders: each
    # result is float32 sums rounded once, so the two lie within one bfloat16 ulp (2^-7 relative)
    for g_, w_ in zip(got, want, strict=True):
        np.testing.assert_allclose(
            np.asarray(g_, np.float64), np.asarray(w_, np.float64), rtol=2.0**-7, atol=0
        )


@pytest.mark.parametrize("save", ["activations", "input"])
@pytest.mark.parametrize("lead", [(), (3,), (2, 3)], ids=["1d", "2d", "3d"])
def test_jax_strict_rank_promotion(lead, save):
    """Codebases that set ``jax_numpy_rank_promotion="raise"`` (or "warn") call glu with a bias
    without an error or a warning from inside it: every broadcast in glu is explicit."""
    from backend_arrays import round_to
    from tolerances import assert_close, gradient_scales, output_scale

    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(*lead, 7)), rng.normal(size=(7, 10)) / 3, rng.normal(size=10)
    x, w, b, dy = (round_to(a, "float32") for a in (x, w, b, rng.normal(size=(*lead, 5))))
    with jax.numpy_rank_promotion("raise"):
        args = [jnp.asarray(a, jnp.float32) for a in (x, w, b)]
        out, vjp = jax.vjp(lambda *a: gk.glu(*a, activation="silu", save=save), *args)
        grads = vjp(jnp.asarray(dy, jnp.float32))
        hs = jnp.asarray(rng.normal(size=(*lead, 10)), jnp.float32)
        jax.grad(lambda h: gk.gated(h, activation="silu").sum())(hs)
    # the suite's float32 tolerances (tests/tolerances.py), on the rounded inputs
    scale = output_scale(x, w, b, "silu")
    assert_close(np.asarray(out), glu_reference(x, w, b, "silu"), scale, "float32", what="out")
    scales = gradient_scales(x, w, b, dy, "silu", "float32")
    wants = glu_reference_vjp(x, w, b, dy, "silu")
    for name, got, want, sc in zip("xwb", grads, wants, scales, strict=True):
        assert_close(np.asarray(got, np.float64), want, sc, "float32", what=f"d{name}")
