"""``glu_kernels.gated``: the epilogue alone, ``a * f(g)`` for a pre-activation ``h = [a | g]``.

The same contract as glu's epilogue, checked the same ways: every backend and dtype against the
float64 reference (hypothesis; h is a glu case's pre-activation, rounded to the dtype), the 16-bit
result and gradient rounded once from float32 (to the half-ulp), the gradient of every
differentiating backend, the error catalogue in the same words everywhere, each framework's
transformations, and what torch keeps for backward.

Tolerances: those of tests/tolerances.py with ``w = I`` (then ``S = |h|``, the scale of an h known
exactly): a correct epilogue is well inside them, an activation or a half wrong is far outside.
"""

from __future__ import annotations

import math
import re

import backend_arrays as ba
import numpy as np
import pytest
from hypothesis import given, settings
from strategies import ACTIVATIONS, cases, examples
from test_half_precision import HALF_PARAMS, _assert_half_ulp, _slack
from tolerances import assert_close, gradient_scales, output_scale

import glu_kernels as gk
from glu_kernels.reference import (
    _act_and_slope,
    gated_reference,
    gated_reference_vjp,
    preactivation,
)


def _h(case) -> np.ndarray:
    """The case's pre-activation in float64, rounded to its dtype: h exactly as gated sees it."""
    return ba.round_to(preactivation(case.x, case.w, case.b), case.dtype)


def _identity(h: np.ndarray) -> np.ndarray:
    return np.eye(h.shape[-1])


def _gated_gradient(backend: str, h: np.ndarray, dy: np.ndarray, dtype: str, activation: str):
    """``(out, dh)`` of ``gated`` as float64 NumPy, through the framework's own autodiff."""
    if backend == "jax":
        import jax

        out, vjp = jax.vjp(
            lambda t: gk.gated(t, activation=activation), ba.to_backend(backend, h, dtype)
        )
        (dh,) = vjp(ba.to_backend(backend, dy, dtype))
    elif backend == "torch":
        import torch

        ht = ba.to_backend(backend, h, dtype, requires_grad=True)
        out = gk.gated(ht, activation=activation)
        (dh,) = torch.autograd.grad(out, ht, ba.to_backend(backend, dy, dtype))
    else:
        import tensorflow as tf

        ht = ba.to_backend(backend, h, dtype, variable=True)
        with tf.GradientTape() as tape:
            out = gk.gated(ht, activation=activation)
        dh = tape.gradient(out, ht, ba.to_backend(backend, dy, dtype))
    return ba.to_numpy64(out), ba.to_numpy64(dh)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend, dtype", ba.backend_dtype_params())
def test_gated_matches_reference(backend, dtype, activation):
    @settings(max_examples=examples(3))
    @given(case=cases(dtype, activation))
    def check(case):
        h = _h(case)
        out = gk.gated(ba.to_backend(backend, h, dtype), activation=activation)
        assert isinstance(out, ba.array_type(backend)), type(out)
        assert ba._dtype_name(out) == dtype
        expected = gated_reference(h, activation)
        scale = output_scale(h, _identity(h), None, activation)
        assert_close(
            ba.to_numpy64(out), expected, scale, dtype, what=f"{backend} gated {activation}"
        )

    check()


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend, dtype", ba.backend_dtype_params(ba.GRAD_BACKENDS))
def test_gated_gradient_matches_reference(backend, dtype, activation):
    @settings(max_examples=examples(3))
    @given(case=cases(dtype, activation))
    def check(case):
        h = _h(case)
        out, dh = _gated_gradient(backend, h, case.dy, dtype, activation)
        assert_close(
            out,
            gated_reference(h, activation),
            output_scale(h, _identity(h), None, activation),
            dtype,
            what=f"{backend} gated {activation}",
        )
        expected = gated_reference_vjp(h, case.dy, activation)
        scale = gradient_scales(h, _identity(h), None, case.dy, activation, dtype)[0]
        assert_close(dh, expected, scale, dtype, what=f"{backend} gated {activation} dh")

    check()


def _exact_h(dtype: str, rows: int = 4, units: int = 64, seed: int = 0):
    """h in multiples of 1/8 in [-4, 4] and dy in multiples of 1/16: exact in every dtype."""
    rng = np.random.default_rng(seed)
    h = rng.integers(-32, 33, (rows, 2 * units)) / 8.0
    dy = rng.integers(-16, 17, (rows, units)) / 16.0
    return h, dy


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend, dtype", HALF_PARAMS)
def test_gated_16bit_rounded_once(backend, dtype, activation):
    """16-bit h: ``a * f(g)`` (and, with a gradient, ``dh``) computed in float32, rounded once."""
    h, dy = _exact_h(dtype)
    u = h.shape[-1] // 2
    a, g = h[:, :u], h[:, u:]
    f, df = _act_and_slope(activation, g)
    if backend == "numpy":
        out = ba.to_numpy64(gk.gated(ba.to_backend(backend, h, dtype), activation=activation))
    else:
        out, dh = _gated_gradient(backend, h, dy, dtype, activation)
        exact_dh = np.concatenate([dy * f, dy * a * df], axis=-1)
        slack = np.concatenate([_slack(dy, g), _slack(dy * a, g) * (1 + np.abs(g))], axis=-1)
        _assert_half_ulp(dh, exact_dh, dtype, f"{backend} gated {activation} dh", slack)
    _assert_half_ulp(out, a * f, dtype, f"{backend} gated {activation}", _slack(a, g))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_torch_gated_of_addmm_is_glu_bit_for_bit(activation, dtype):
    """glu is addmm then this epilogue: the same bits in every dtype, in row blocks too."""
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    for rows, d, u in [(5, 8, 4), (1500, 64, 320)]:
        x = torch.randn(rows, d, generator=gen).to(dt)
        w = (torch.randn(d, 2 * u, generator=gen) / math.sqrt(d)).to(dt)
        b = torch.randn(2 * u, generator=gen).to(dt)
        expected = gk.glu(x, w, b, activation=activation)
        assert torch.equal(gk.gated(torch.addmm(b, x, w), activation=activation), expected)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("rows", [6, 3000], ids=["small", "large"])
def test_torch_gated_of_a_transposed_h(rows, requires_grad):
    """A transposed (column-major) h gives the contiguous h's bits and a contiguous result, as the
    custom op's fake kernel promises torch.compile."""
    torch = pytest.importorskip("torch")
    h = (torch.randn(2 * 40, rows) * 3).mT.requires_grad_(requires_grad)
    for activation in ACTIVATIONS:
        out = gk.gated(h, activation=activation)
        assert out.is_contiguous(), (activation, out.stride())
        assert torch.equal(out, gk.gated(h.detach().contiguous(), activation=activation))


# name, h's shape, h's dtype, kwargs, error, message
GATED_ERRORS = [
    (
        "odd_last_dimension",
        (4, 7),
        "float32",
        {},
        ValueError,
        r"h's last dimension must be even: it packs \[a \| g\].*Received: h\.shape=\(4, 7\)",
    ),
    (
        "zero_dimensional",
        (),
        "float32",
        {},
        ValueError,
        r"h must have at least one dimension, shape \(\.\.\., 2U\)\. Received: h\.shape=\(\)",
    ),
    (
        "integer_dtype",
        (4, 6),
        "int32",
        {},
        TypeError,
        r"gated needs a floating-point h \(float16, bfloat16, float32, float64\)\. "
        r"Received: h\.dtype=int32",
    ),
    (
        "unknown_activation",
        (4, 6),
        "float32",
        {"activation": "tanh"},
        ValueError,
        r"Unknown activation\. Expected one of .*Received: activation='tanh'",
    ),
]


def _gated_error(backend, shape, dtype, kwargs, op=gk.gated) -> Exception:
    h = ba.to_backend(backend, np.ones(shape), dtype)
    with pytest.raises(Exception) as info:
        op(h, **kwargs)
    return info.value


@pytest.mark.parametrize(
    "name, shape, dtype, kwargs, error, match", GATED_ERRORS, ids=[e[0] for e in GATED_ERRORS]
)
def test_gated_bad_input_same_words_on_every_backend(name, shape, dtype, kwargs, error, match):
    messages = {}
    for backend in ba.BACKENDS:
        if not ba.installed(backend):
            continue
        raised = _gated_error(backend, shape, dtype, kwargs)
        assert type(raised) is error, f"{backend}: {type(raised).__name__}: {raised}"
        assert re.search(match, str(raised)), f"{backend}: {raised}"
        messages[backend] = str(raised)
        explained = _gated_error(backend, shape, dtype, kwargs, gk.explain_gated)
        assert (type(explained), str(explained)) == (error, str(raised)), "explain_gated"
    assert len(set(messages.values())) == 1, messages


@pytest.mark.parametrize(
    "activation, variant",
    [("sigmoid", "GLU"), ("swish", "SwiGLU"), ("gelu_tanh", "GeGLU (tanh approximation)")],
)
@pytest.mark.parametrize("backend", ba.backend_params())
def test_explain_gated(backend, activation, variant):
    name = "silu" if activation == "swish" else activation
    for dtype in ("bfloat16" if backend != "numpy" else "float16", "float32"):
        text = gk.explain_gated(
            ba.to_backend(backend, np.ones((8, 6)), dtype), activation=activation
        )
        lines = dict(line.split(": ", 1) for line in text.splitlines())
        assert lines["backend"].startswith(f"{backend} (h is ")
        assert lines["op"] == f"{variant} epilogue, out = a * {name}(g), U=3"
        assert lines["implementation"]
        if dtype == "float32":
            assert lines["precision"] == "float32 throughout"
        else:
            assert lines["precision"].startswith(f"{dtype} in and out;")
            assert ("backward" in lines["precision"]) == (backend != "numpy")
        forward_only = backend == "numpy"
        assert lines["saved for backward"] == (
            "nothing (forward only)" if forward_only else "h (..., 2U) only"
        )


@pytest.mark.parametrize("bad", [[1.0, 2.0], 3.0, "h"], ids=["list", "float", "str"])
def test_gated_unsupported_types_name_h(bad):
    with pytest.raises(
        TypeError,
        match=r"gated takes dense arrays of one of these types: .*"
        r"Received: h of type builtins\.",
    ):
        gk.gated(bad)


def test_torch_gated_refuses_sparse_h_by_name():
    torch = pytest.importorskip("torch")
    with pytest.raises(
        TypeError,
        match=r"gated takes dense arrays.*Received: h of type "
        r"torch\.Tensor \(layout torch\.sparse_coo\)",
    ):
        gk.gated(torch.ones(4, 6).to_sparse())


@pytest.mark.parametrize("layout", ["sparse_coo", "sparse_csr", "mkldnn", "jagged"])
def test_torch_explain_gated_refuses_what_gated_refuses(layout):
    """explain_gated computes nothing, yet says what gated would: an h that is not dense is
    refused in gated's words (its shape and dtype alone look fine)."""
    torch = pytest.importorskip("torch")
    dense = torch.ones(4, 6)
    h = {
        "sparse_coo": dense.to_sparse,
        "sparse_csr": dense.to_sparse_csr,
        "mkldnn": dense.to_mkldnn,
        "jagged": lambda: torch.nested.nested_tensor(
            [torch.ones(2, 6), torch.ones(3, 6)], layout=torch.jagged
        ),
    }[layout]()
    with pytest.raises(TypeError, match="^gated takes dense arrays") as raised:
        gk.gated(h)
    with pytest.raises(TypeError) as explained:
        gk.explain_gated(h)
    assert str(explained.value) == str(raised.value)


def test_torch_gated_validates_the_stored_dtype_under_autocast():
    """gated is elementwise: autocast does not cast it (as F.silu), so h's own dtype is checked
    and kept (glu, a matmul, takes the autocast dtype)."""
    torch = pytest.importorskip("torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gk.gated(torch.randn(4, 10)).dtype == torch.float32
        with pytest.raises(TypeError, match=r"Received: h\.dtype=float8_e4m3fn"):
            gk.gated(torch.randn(4, 10).to(torch.float8_e4m3fn))


def test_tensorflow_unknown_rank_is_named():
    tf = pytest.importorskip("tensorflow")
    w = tf.ones((4, 6))
    for call, name in [
        (lambda t: gk.gated(t), "h"),
        (lambda t: gk.glu(t, w), "x"),
        (lambda t: gk.glu(tf.ones((2, 4)), t), "w"),
        (lambda t: gk.glu(tf.ones((2, 4)), w, t), "b"),
    ]:
        fn = tf.function(call, input_signature=[tf.TensorSpec(None, tf.float32)])
        with pytest.raises(
            ValueError,
            match=rf"{name} must have a known rank \(number of "
            rf"dimensions\)\. Received: {name}\.shape=<unknown>",
        ):
            fn.get_concrete_function()


def test_tensorflow_gated_needs_a_static_last_dimension():
    tf = pytest.importorskip("tensorflow")
    fn = tf.function(lambda h: gk.gated(h), input_signature=[tf.TensorSpec([None, None])])
    with pytest.raises(
        ValueError,
        match=r"h's last dimension \(2U\) must be static\. "
        r"Received: h\.shape=\(None, None\)",
    ):
        fn.get_concrete_function()


# -- transformations ------------------------------------------------------------------------------


def _float64_case(rows=6, units=5, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 2 * units)) * 2, rng.normal(size=(rows, units))


def _assert_forward64(out, h, activation, what):
    h = np.asarray(h, dtype=np.float64)
    scale = output_scale(h, _identity(h), None, activation)
    assert_close(ba.to_numpy64(out), gated_reference(h, activation), scale, "float64", what=what)


def _assert_dh64(dh, h, dy, activation, what):
    h, dy = np.asarray(h, dtype=np.float64), np.asarray(dy, dtype=np.float64)
    scale = gradient_scales(h, _identity(h), None, dy, activation, "float64")[0]
    expected = gated_reference_vjp(h, dy, activation)
    assert_close(ba.to_numpy64(dh), expected, scale, "float64", what=what)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_torch_gated_transforms(activation):
    """gradcheck/gradgradcheck in float64; torch.func grad, jvp, vmap (with zero rows);
    torch.compile(fullgraph, dynamic) with a gradient; jit.trace at another batch size."""
    torch = pytest.importorskip("torch")
    h_np, dy_np = _float64_case()
    h, dy = torch.tensor(h_np), torch.tensor(dy_np)

    def fn(t):
        return gk.gated(t, activation=activation)

    if activation != "relu":  # relu's kink: finite differences straddle it
        hg = h.clone().requires_grad_()
        assert torch.autograd.gradcheck(fn, (hg,))
        assert torch.autograd.gradgradcheck(fn, (hg,))
    dh = torch.func.grad(lambda t: (fn(t) * dy).sum())(h)
    _assert_dh64(dh, h_np, dy_np, activation, "torch.func.grad")
    # jvp along ones: f(g) + a f'(g), the sum of dh's halves for dy = 1
    _, tangent = torch.func.jvp(fn, (h,), (torch.ones_like(h),))
    ones = np.ones_like(dy_np)
    jvp_scale = sum(
        np.split(
            gradient_scales(h_np, _identity(h_np), None, ones, activation, "float64")[0], 2, axis=-1
        )
    )
    expected = sum(np.split(gated_reference_vjp(h_np, ones, activation), 2, axis=-1))
    assert_close(ba.to_numpy64(tangent), expected, jvp_scale, "float64", what="torch.func.jvp")
    batched = torch.func.vmap(fn)(torch.stack([h, 2 * h]))
    torch.testing.assert_close(batched, torch.stack([fn(h), fn(2 * h)]), rtol=0, atol=0)
    assert torch.func.vmap(fn)(torch.zeros(3, 0, 10)).shape == (3, 0, 5)

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for rows in (7, 12):
        hc = torch.randn(rows, 10, dtype=torch.float64, requires_grad=True)
        out = compiled(hc)
        _assert_forward64(out, hc.detach().numpy(), activation, "torch.compile")
        (dhc,) = torch.autograd.grad(out, hc, torch.ones_like(out))
        _assert_dh64(dhc, hc.detach().numpy(), np.ones((rows, 5)), activation, "compiled dh")
    traced = torch.jit.trace(fn, torch.randn(4, 10))
    other = torch.randn(9, 10)
    assert torch.equal(traced(other), fn(other))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_jax_gated_transforms(activation):
    """jit, vmap, grad and hessian against the reference formula."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    h_np, dy_np = _float64_case()
    with jax.enable_x64(True) if hasattr(jax, "enable_x64") else jax.experimental.enable_x64():
        h, dy = jnp.asarray(h_np), jnp.asarray(dy_np)

        def fn(t):
            return gk.gated(t, activation=activation)

        _assert_forward64(jax.jit(fn)(h), h_np, activation, "jax.jit")
        dh = jax.grad(lambda t: (fn(t) * dy).sum())(h)
        _assert_dh64(dh, h_np, dy_np, activation, "jax.grad")
        np.testing.assert_array_equal(jax.vmap(fn)(jnp.stack([h, 2 * h]))[1], fn(2 * h))
        # forward mode on gated itself (jvp, jacfwd) is not available for a custom_vjp, as for
        # glu (README); forward over its reverse pass is: jax.hessian, against the unfused formula
        from test_compile_jax import _UNFUSED_ACT

        act = _UNFUSED_ACT[activation]

        def unfused(t):  # one row
            a, g = jnp.split(t, 2)
            return (a * act(g) * dy[0]).sum()

        row = h[0]
        got = jax.hessian(lambda t: (fn(t) * dy[0]).sum())(row)
        # float64 on both sides, by other formulas (the table's f' and autodiff of it against
        # JAX's derivatives of its own kernels): entries O(1), measured <= 2.2e-16 apart here;
        # 1e-10 leaves room for cancellation in other tails (GeGLU's) and is far below any wrong
        # term (a missing f'' or a swapped half is O(1))
        np.testing.assert_allclose(got, jax.hessian(unfused)(row), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rows", [6, 600], ids=["ops", "xla"])  # 600 x 256: the XLA epilogue
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_tensorflow_gated_in_functions(activation, rows):
    """Eager, tf.function and jit_compile give the reference's values and gradient."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(2)
    h_np, dy_np = rng.normal(size=(rows, 256)) * 2, rng.normal(size=(rows, 128))
    h = tf.constant(h_np)

    def step(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            out = gk.gated(t, activation=activation)
        return out, tape.gradient(out, t, tf.constant(dy_np))

    for run in (step, tf.function(step), tf.function(step, jit_compile=True)):
        out, dh = run(h)
        _assert_forward64(out, h_np, activation, f"tensorflow {run}")
        _assert_dh64(dh, h_np, dy_np, activation, f"tensorflow {run} dh")


def test_torch_gated_keeps_h_only():
    """Backward keeps h (B, 2U) and nothing else; the unfused ``a * silu(g)`` keeps 3 (B, U)."""
    torch = pytest.importorskip("torch")
    h = torch.randn(1024, 2 * 64, requires_grad=True)  # above the plain-autograd size
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        gk.gated(h, activation="silu")
    assert len(saved) == 1 and saved[0].data_ptr() == h.data_ptr(), [s.shape for s in saved]
