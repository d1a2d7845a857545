"""OpInfo-style fixed samples: the cases random search rarely hits, each on purpose.

Empty batches, output type/dtype/shape, non-contiguous and transposed torch tensors, saturated gates
(|g| = 1e4) in every dtype, and NaN/Inf propagation.
"""

from __future__ import annotations

import backend_arrays as ba
import numpy as np
import pytest
from strategies import ACTIVATIONS
from tolerances import assert_close, gradient_scales, output_scale

from glu_kernels.reference import glu_reference, glu_reference_vjp

SATURATING = ("sigmoid", "silu", "gelu", "gelu_tanh", "relu")


def _inputs(lead, d=5, u=4, seed=0, weight_3d=False, bias="flat", dtype="float64"):
    rng = np.random.default_rng(seed)
    x = ba.round_to(rng.uniform(-1, 1, (*lead, d)), dtype)
    w = rng.uniform(-1, 1, (d, 2, u)) / np.sqrt(d)
    w = ba.round_to(w if weight_3d else w.reshape(d, 2 * u), dtype)
    b = (
        None
        if bias is None
        else ba.round_to(rng.uniform(-1, 1, (2 * u,) if bias == "flat" else (2, u)), dtype)
    )
    dy = ba.round_to(rng.uniform(-1, 1, (*lead, u)), dtype)
    return x, w, b, dy


# --- output type, dtype and shape; empty batches --------------------------------------------------

LEADING = [(), (1,), (6,), (2, 3), (2, 1, 3), (0,), (3, 0), (0, 2, 4)]


@pytest.mark.parametrize(
    "lead", LEADING, ids=lambda s: "lead" + "x".join(map(str, s)) if s else "1d"
)
@pytest.mark.parametrize("backend, dtype", ba.backend_dtype_params())
def test_output_type_dtype_and_leading_dims(backend, dtype, lead):
    x, w, b, _ = _inputs(lead, dtype=dtype, weight_3d=len(lead) % 2 == 1)
    out = ba.forward(backend, x, w, b, dtype, activation="silu")
    assert isinstance(out, ba.array_type(backend)), type(out)
    assert ba._dtype_name(out) == dtype
    assert tuple(out.shape) == (*lead, 4)
    assert_close(
        ba.to_numpy64(out), glu_reference(x, w, b, "silu"), output_scale(x, w, b, "silu"), dtype
    )


@pytest.mark.parametrize(
    "lead", [(0,), (3, 0), (0, 2)], ids=lambda s: "lead" + "x".join(map(str, s))
)
@pytest.mark.parametrize("save", ["activations", "input"])
@pytest.mark.parametrize("backend", ba.backend_params(ba.GRAD_BACKENDS))
def test_empty_batch_gradients(backend, save, lead):
    """A zero-size batch: dx is empty, dw and db are exact zeros of the parameters' shapes."""
    x, w, b, dy = _inputs(lead, weight_3d=True, bias="split", dtype="float32")
    out, dx, dw, db = ba.gradients(backend, x, w, b, dy, "float32", activation="gelu", save=save)
    assert out.shape == (*lead, 4) and dx.shape == x.shape
    assert dw.shape == w.shape and (dw == 0).all()
    assert db.shape == b.shape and (db == 0).all()


@pytest.mark.parametrize("lead", [(3,), (2, 3), ()], ids=lambda s: "lead" + "x".join(map(str, s)))
@pytest.mark.parametrize("backend", ba.backend_params(ba.BACKENDS))
def test_zero_features(backend, lead):
    """D = 0: h is the bias alone (and x @ w an exact zero); nothing to reshape by -1."""
    x, w, b, dy = _inputs(lead, d=0, weight_3d=len(lead) == 2, dtype="float32")
    out = ba.to_numpy64(ba.forward(backend, x, w, b, "float32", activation="silu"))
    a, g = np.split(np.broadcast_to(b.astype(np.float64), (*lead, 8)), 2, axis=-1)
    expected = a * g / (1 + np.exp(-g))
    assert_close(out, expected, output_scale(x, w, b, "silu"), "float32")
    if backend in ba.GRAD_BACKENDS:
        _, dx, dw, db = ba.gradients(backend, x, w, b, dy, "float32", activation="silu")
        assert dx.shape == x.shape and dw.shape == w.shape
        ref_db = glu_reference_vjp(x, w, b, dy, "silu")[2]
        assert_close(db, ref_db, gradient_scales(x, w, b, dy, "silu", "float32")[2], "float32")


# --- torch: non-contiguous and transposed inputs --------------------------------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float64"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", ba.backend_params(["torch"]))
def test_torch_noncontiguous_and_transposed_inputs(backend, activation, dtype):
    torch = pytest.importorskip("torch")
    import glu_kernels as gk

    tdtype = getattr(torch, dtype)
    rng = np.random.default_rng(7)
    d, u, n = 6, 5, 4
    # x: every other column of a wider array, then transposed (n, d) -> a (d, n) view's .T
    x_base = ba.round_to(rng.uniform(-1, 1, (d, 2 * n)), dtype)
    w_base = ba.round_to(rng.uniform(-1, 1, (2 * u, d)) / np.sqrt(d), dtype)  # w = w_base.T
    w3_base = ba.round_to(
        rng.uniform(-1, 1, (2, d, u)) / np.sqrt(d), dtype
    )  # w3 = permute(1, 0, 2)
    b_base = ba.round_to(rng.uniform(-1, 1, (4 * u,)), dtype)  # b = b_base[::2]
    dy = ba.round_to(rng.uniform(-1, 1, (n, u)), dtype)

    def on_device(a):
        return torch.tensor(a, device=ba.TORCH_DEVICE).to(tdtype)

    for weight_3d in (False, True):
        xt = on_device(x_base)[:, ::2].T.requires_grad_(True)
        if weight_3d:
            wt = on_device(w3_base).permute(1, 0, 2).requires_grad_(True)
        else:
            wt = on_device(w_base).T.requires_grad_(True)
        bt = on_device(b_base)[::2].requires_grad_(True)
        assert not xt.is_contiguous() and not wt.is_contiguous() and not bt.is_contiguous()
        x, w, b = (ba.to_numpy64(t) for t in (xt, wt, bt))

        out = gk.glu(xt, wt, bt, activation=activation)
        assert_close(
            ba.to_numpy64(out),
            glu_reference(x, w, b, activation),
            output_scale(x, w, b, activation),
            dtype,
            what="forward",
        )
        with torch.no_grad():  # the inference path too
            out_ng = gk.glu(xt, wt, bt, activation=activation)
        assert torch.equal(out_ng, out.detach())
        grads = torch.autograd.grad(out, (xt, wt, bt), on_device(dy))
        refs = glu_reference_vjp(x, w, b, dy, activation)
        scales = gradient_scales(x, w, b, dy, activation, dtype)
        for name, got, ref, scale in zip(("dx", "dw", "db"), grads, refs, scales, strict=True):
            assert_close(ba.to_numpy64(got), ref, scale, dtype, what=name)


# --- saturated gates ------------------------------------------------------------------------------


# TensorFlow runs h of >= 2**17 elements through XLA (tensorflow._XLA_MIN_ELEMENTS), whose float32
# erf is not exactly +-1 at +-1e4: hence a second, tall case (8192 copies of the two rows).
_SATURATED_COPIES = [1, 8192]


def _saturated(dtype, copies=1):
    """Even rows: every gate g = +1e4; odd rows: g = -1e4 (x = identity rows, so h is w's rows
    exactly)."""
    u = 4
    x = np.tile(np.array([[1.0, 0.0], [0.0, 1.0]]), (copies, 1))
    values = np.array([[0.5, -1.5, 2.0, -0.25], [1.25, -2.0, 0.75, 1.0]])
    gates = np.array([[1e4] * u, [-1e4] * u])
    w = ba.round_to(np.concatenate([values, gates], axis=1), dtype)  # (D=2, 2U)
    dy = np.zeros((2 * copies, u))
    dy[:2] = 0.1  # the gradients of the short case, so that 16-bit sums cannot overflow
    return x, w, dy


@pytest.mark.parametrize("copies", _SATURATED_COPIES)
@pytest.mark.parametrize("activation", SATURATING)
@pytest.mark.parametrize("backend, dtype", ba.backend_dtype_params())
def test_saturated_gates(backend, dtype, activation, copies):
    """|g| = 1e4: exactly 0 for g = -1e4; for g = +1e4 exactly a (sigmoid) or a * g (the others,
    which are the identity there); never NaN. Gradients (where the backend has them) are finite."""
    x, w, dy = _saturated(dtype, copies)
    out = ba.to_numpy64(ba.forward(backend, x, w, None, dtype, activation=activation))
    a, g = w[0, :4], w[0, 4:]
    expected_top = a if activation == "sigmoid" else ba.round_to(a * g, dtype)
    np.testing.assert_array_equal(out[0::2], np.broadcast_to(expected_top, out[0::2].shape))
    np.testing.assert_array_equal(out[1::2], np.zeros_like(out[1::2]))
    if backend in ba.GRAD_BACKENDS:
        for save in ("activations", "input"):
            b = np.zeros(8)
            _, dx, dw, db = ba.gradients(
                backend, x, w, b, dy, dtype, activation=activation, save=save
            )
            for name, grad in (("dx", dx), ("dw", dw), ("db", db)):
                assert np.isfinite(grad).all(), f"{name} not finite: {grad}"
            # at g = -1e4 the gate is off: no gradient reaches the value half of row 1
            assert (dw[1, :4] == 0).all()


# --- NaN and Inf ----------------------------------------------------------------------------------


def _nonfinite_inputs(dtype):
    rng = np.random.default_rng(11)
    x = ba.round_to(rng.uniform(-1, 1, (5, 3)), dtype)
    x[0, 1] = np.inf
    x[1, 0] = np.nan
    x[2, 0] = -np.inf
    w = ba.round_to(rng.uniform(-1, 1, (3, 8)), dtype)
    w[2, 1] = np.nan  # column 1 (value half) NaN: output column 1 is NaN in every row
    return x, w


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend, dtype", ba.backend_dtype_params())
def test_nan_and_inf_propagate_like_the_unfused_formula(backend, dtype, activation):
    """NaN in x or w gives NaN where the unfused formula a * f(g) gives it; +-Inf give the same
    infinities. Exception, GeGLU (erf) at an infinite gate: the mathematical value is +-inf, but
    frameworks' own erf/gelu kernels give NaN there in some dtypes and vector lanes (ATen's
    vectorised gelu; TensorFlow's float64 erf(inf)), as their unfused formula would: only
    "non-finite" is required."""
    x, w = _nonfinite_inputs(dtype)
    with np.errstate(all="ignore"):
        expected = glu_reference(x, w, None, activation)
    out = ba.to_numpy64(ba.forward(backend, x, w, None, dtype, activation=activation))
    assert np.isnan(out[1]).all() and np.isnan(out[:, 1]).all()  # the NaN row and column
    if activation == "gelu":
        np.testing.assert_array_equal(np.isfinite(out), np.isfinite(expected))
    else:
        np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
        finite = np.isfinite(expected)
        np.testing.assert_array_equal(
            out[~finite & ~np.isnan(expected)], expected[~finite & ~np.isnan(expected)]
        )
    finite = np.isfinite(expected)
    with np.errstate(all="ignore"):
        scale = output_scale(np.nan_to_num(x), np.nan_to_num(w), None, activation)
    assert_close(out[finite], expected[finite], scale[finite], dtype, what="finite elements")


# --- NumPy: GeGLU with and without SciPy ----------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_gelu_without_scipy_is_the_same(monkeypatch, dtype):
    """The NumPy backend's erfc is SciPy's where installed, math.erfc per element otherwise: the
    same values, over GeGLU's erfc(-g / sqrt 2) for |g| <= 10 (erfc >= 1.5e-23). float32: both are
    float64 math rounded once, so equal to an ulp. float64: SciPy's erfc is up to 37 ulps from
    libm's in that tail (measured on 2e5 points: 21 ulps for arguments in [0, 5), 37 in
    [5, 7.1]); the bound, 64 ulps, leaves room for other platforms' libm."""
    pytest.importorskip("scipy")
    from glu_kernels.backends import numpy as numpy_backend

    g = (-np.linspace(-10, 10, 20001) / np.sqrt(2)).astype(dtype)
    with_scipy = numpy_backend.PRIMITIVES.erfc(g)
    monkeypatch.setattr(numpy_backend, "_vectorized_erfc", lambda: None)
    without = numpy_backend.PRIMITIVES.erfc(g)
    assert with_scipy.dtype == without.dtype == np.dtype(dtype)
    ulps = 1 if dtype == "float32" else 64
    np.testing.assert_allclose(with_scipy, without, rtol=ulps * np.finfo(dtype).eps, atol=0)
