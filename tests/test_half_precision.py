"""The 16-bit numerics contract, checked to the half-ulp (DESIGN.md, "Numerics contract").

For float16/bfloat16 inputs, the epilogue ``a * f(g)`` (and the backward elementwise pass) is
computed in float32 and rounded *once* to the 16-bit dtype. The tolerance-based parity tests cannot
tell that from an epilogue computed in 16 bits (which is only ~1-2 ulp worse), so this test removes
every other source of error and checks the rounding itself:

* inputs with few significant bits (x in multiples of 1/4, w in multiples of 1/8, D <= 8), so that
  the matmul, in float32 or even in float16 accumulation, is exact, and h = round16(x @ W2 + b) is
  known exactly;
* then ``a * f(g)`` from those 16-bit halves is evaluated in float64 and the backend's result must
  be within half an ulp of it (plus 1% of an ulp for float32's own error in f). An epilogue rounded
  in 16 bits (act, then the product) misses by up to ~1.5 ulp.
* backward: with a single row (1-D x), ``db = dh`` exactly, and ``dh = [dy f(g), dy a f'(g)]`` must
  also be the float64 value rounded once.
"""

from __future__ import annotations

import backend_arrays as ba
import numpy as np
import pytest
from strategies import ACTIVATIONS

from glu_kernels.reference import _act_and_slope

# (precision p in bits incl. the implicit one, minimum normal exponent)
_FORMAT = {"float16": (11, -14), "bfloat16": (8, -126)}


def _ulp(v, dtype):
    p, emin = _FORMAT[dtype]
    e = np.floor(np.log2(np.maximum(np.abs(v), 2.0**emin)))
    return 2.0 ** (e - (p - 1))


def _slack(a, g):
    """Float32's absolute error in ``a * f(g)``: a few float32 ulps of |a| (1 + |g|). It matters
    only in GeGLU's negative tail, where f(g) = g * (1 + erf(g / sqrt 2)) / 2 cancels to ~1e-7 in
    float32 (as in every float32 gelu); elsewhere it is < 1% of a 16-bit ulp."""
    return 8 * 2.0**-24 * np.abs(a) * (1 + np.abs(g))


def _exact_inputs(seed, lead, d=8, u=16, bias=True):
    rng = np.random.default_rng(seed)
    x = rng.integers(-4, 5, (*lead, d)) / 4.0
    w = rng.integers(-8, 9, (d, 2 * u)) / 8.0
    b = rng.integers(-8, 9, (2 * u,)) / 8.0 if bias else None
    dy = rng.integers(-16, 17, (*lead, u)) / 16.0
    return x, w, b, dy


def _h16(x, w, b, dtype):
    h = x @ w + (0.0 if b is None else b)  # exact in float64 (and in float32)
    return ba.round_to(h, dtype)


def _assert_half_ulp(actual, exact, dtype, what, slack):
    """|actual - exact| <= 0.5 ulp(exact) + slack, reported in ulps; ``slack`` is float32's own
    absolute error in evaluating the expression (relevant only where it cancels to a tiny value)."""
    err = np.maximum(np.abs(actual - exact) - slack, 0.0) / _ulp(exact, dtype)
    if err.size and err.max() > 0.51:
        worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(err)), err.shape))
        raise AssertionError(
            f"{what} ({dtype}) not rounded once from float32: {err.max():.3f} ulp off at {worst} "
            f"(actual {actual[worst]!r}, exact {exact[worst]!r}); "
            f"{int((err > 0.51).sum())} of {err.size} elements > 0.5 ulp"
        )


HALF_PARAMS = [p for p in ba.backend_dtype_params() if p.values[1] in ("float16", "bfloat16")]


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend, dtype", HALF_PARAMS)
def test_16bit_epilogue_rounded_once(backend, dtype, activation, bias):
    x, w, b, _ = _exact_inputs(0, (64,), bias=bias)
    h = _h16(x, w, b, dtype)
    u = h.shape[-1] // 2
    a, g = h[..., :u], h[..., u:]
    exact = a * _act_and_slope(activation, g)[0]
    out = ba.to_numpy64(ba.forward(backend, x, w, b, dtype, activation=activation))
    _assert_half_ulp(out, exact, dtype, f"{backend} glu {activation} forward", _slack(a, g))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend, dtype", [p for p in HALF_PARAMS if p.values[0] != "numpy"])
def test_16bit_backward_elementwise_rounded_once(backend, dtype, activation):
    x, w, b, dy = _exact_inputs(0, (), u=256, bias=True)  # one row: db == dh
    h = _h16(x, w, b, dtype)
    u = h.shape[-1] // 2
    a, g = h[:u], h[u:]
    f, df = _act_and_slope(activation, g)
    dh = np.concatenate([dy * f, dy * a * df])
    slack = np.concatenate([_slack(dy, g), _slack(dy * a, g) * (1 + np.abs(g))])
    for save in ("activations", "input"):
        _, _, _, db = ba.gradients(backend, x, w, b, dy, dtype, activation=activation, save=save)
        _assert_half_ulp(db, dh, dtype, f"{backend} db = dh ({activation}, save={save})", slack)


TORCH_HALF = [d for d in ("float16", "bfloat16") if ba.installed("torch")]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", TORCH_HALF)
@pytest.mark.parametrize("transform", ["torch.func.vjp", "forward_ad", "torch.jit.trace"])
def test_torch_recorded_paths_round_16bit_derivatives_once(transform, dtype, activation):
    """torch.func, forward-mode AD and jit.trace differentiate glu's plain ATen calls, not its
    autograd.Function: there too the 16-bit derivatives are float32 values rounded once (16-bit
    GLU once went through F.glu, whose CPU backward rounds twice and whose forward-mode rule has
    no 16-bit kernel)."""
    import torch
    import torch.autograd.forward_ad as fwad

    import glu_kernels as gk

    x, w, b, dy = _exact_inputs(0, (), u=256, bias=True)  # one row: db == dh
    h = _h16(x, w, b, dtype)
    u = h.shape[-1] // 2
    a, g = h[:u], h[u:]
    f, df = _act_and_slope(activation, g)
    xt, wt, bt, dyt = (torch.tensor(v).to(getattr(torch, dtype)) for v in (x, w, b, dy))
    if transform == "forward_ad":  # the tangent of gated along t = [dy | dy]
        t = np.concatenate([dy, dy])
        exact = dy * f + dy * a * df
        with fwad.dual_level():
            dual = fwad.make_dual(torch.tensor(h).to(xt.dtype), torch.tensor(t).to(xt.dtype))
            got = fwad.unpack_dual(gk.gated(dual, activation=activation)).tangent
        slack = _slack(dy, g) + _slack(dy * a, g) * (1 + np.abs(g))
    else:
        exact = np.concatenate([dy * f, dy * a * df])
        if transform == "torch.func.vjp":
            _, vjp = torch.func.vjp(lambda b_: gk.glu(xt, wt, b_, activation=activation), bt)
            (got,) = vjp(dyt)
        else:
            with torch.jit.optimized_execution(False):
                traced = torch.jit.trace(
                    lambda x_, w_, b_: gk.glu(x_, w_, b_, activation=activation), (xt, wt, bt)
                )
                bg = bt.clone().requires_grad_()
                (got,) = torch.autograd.grad(traced(xt, wt, bg), bg, dyt)
        slack = np.concatenate([_slack(dy, g), _slack(dy * a, g) * (1 + np.abs(g))])
    _assert_half_ulp(ba.to_numpy64(got), exact, dtype, f"torch {transform} ({activation})", slack)
