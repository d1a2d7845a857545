"""Which path an eager torch training call takes, and that the paths agree bit for bit.

Float32/float64 calls with ``save="activations"`` whose h has at most
``_ATEN_TRAINING_MAX_ELEMENTS`` elements run as plain ATen calls differentiated by autograd (cheaper
there than the autograd.Function); larger calls, 16-bit calls and ``save="input"`` take the
Function with the lean backward. Both must give the same bits, forward and every gradient of a
plain backward with contiguous tensors, so that a model's numbers do not depend on its batch size
crossing the bound. (A transposed cotangent, create_graph and batched cotangents run other
ATen kernels on the two paths: a few ulp apart, checked by the tolerance tests, not here.) The
Function path is also checked at small sizes here (gradcheck, gradgradcheck), with the bound forced
down.
"""

from __future__ import annotations

import math

import pytest
from strategies import ACTIVATIONS

torch = pytest.importorskip("torch")

import glu_kernels as gk  # noqa: E402
from glu_kernels.backends import torch as torch_backend  # noqa: E402

LIMIT = torch_backend._ATEN_TRAINING_MAX_ELEMENTS


def _inputs(rows, d, u, dtype, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, d, generator=gen, dtype=dtype)
    w = torch.randn(d, 2 * u, generator=gen, dtype=dtype) / math.sqrt(d)
    b = torch.randn(2 * u, generator=gen, dtype=dtype) if bias else None
    dy = torch.randn(rows, u, generator=gen, dtype=dtype)
    return x, w, b, dy


def _glu_and_grads(x, w, b, dy, activation):
    leaves = [t.detach().requires_grad_() for t in (x, w, b) if t is not None]
    out = gk.glu(*leaves, activation=activation)
    return out, torch.autograd.grad(out, leaves, dy)


def _function_only(monkeypatch):
    monkeypatch.setattr(torch_backend, "_ATEN_TRAINING_MAX_ELEMENTS", -1)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_small_training_calls_are_the_functions_bits(activation, dtype, bias, monkeypatch):
    x, w, b, dy = _inputs(37, 24, 20, getattr(torch, dtype), bias)
    out, grads = _glu_and_grads(x, w, b, dy, activation)
    assert "GluFunction" not in type(out.grad_fn).__name__  # the ATen calls
    h = torch.addmm(b, x, w) if bias else x @ w
    h_leaf = h.detach().requires_grad_()
    gated_out = gk.gated(h_leaf, activation=activation)
    (gated_dh,) = torch.autograd.grad(gated_out, h_leaf, dy)
    assert "GatedFunction" not in type(gated_out.grad_fn).__name__

    _function_only(monkeypatch)
    ref_out, ref_grads = _glu_and_grads(x, w, b, dy, activation)
    assert "GluFunction" in type(ref_out.grad_fn).__name__
    assert torch.equal(out, ref_out)
    for name, got, want in zip("xwb", grads, ref_grads, strict=False):
        assert torch.equal(got, want), f"d{name} differs: {(got - want).abs().max()}"
    ref_gated = gk.gated(h_leaf, activation=activation)
    assert "GatedFunction" in type(ref_gated.grad_fn).__name__
    assert torch.equal(gated_out, ref_gated)
    assert torch.equal(gated_dh, torch.autograd.grad(ref_gated, h_leaf, dy)[0])


@pytest.mark.parametrize(
    "rows, dtype, save, function",
    [
        (LIMIT // 64, "float32", "activations", False),  # h of exactly LIMIT elements (2U = 64)
        (LIMIT // 64 + 1, "float32", "activations", True),
        (8, "float32", "input", True),  # its promise is memory
        (8, "bfloat16", "activations", True),  # autograd of F.glu rounds twice on the CPU
        (8, "float16", "activations", True),
    ],
)
def test_which_path_a_training_call_takes(rows, dtype, save, function):
    x, w, b, _ = _inputs(rows, 16, 32, getattr(torch, dtype))
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    out = gk.glu(x, w, b, save=save)
    assert ("GluFunction" in type(out.grad_fn).__name__) is function, type(out.grad_fn)
    h = torch.randn(rows, 64, dtype=getattr(torch, dtype), requires_grad=True)
    gated = type(gk.gated(h).grad_fn).__name__
    assert ("GatedFunction" in gated) is (function and save == "activations"), gated


@pytest.mark.parametrize("save", ["activations", "input"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_the_function_path_at_small_sizes(activation, save, monkeypatch):
    """gradcheck and gradgradcheck of the autograd.Function's backward (and its create_graph
    backward), which small float64 calls no longer reach on their own."""
    _function_only(monkeypatch)
    x, w, b, _ = _inputs(5, 4, 3, torch.float64, seed=1)
    args = tuple(t.clone().requires_grad_() for t in (x, w, b))

    def fn(*a):
        return gk.glu(*a, activation=activation, save=save)

    out = fn(*args)
    assert "GluFunction" in type(out.grad_fn).__name__
    if activation != "relu":  # finite differences across ReLU's kink: test_relu_kink.py
        assert torch.autograd.gradcheck(fn, args)
        assert torch.autograd.gradgradcheck(fn, args)
    h = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    if activation != "relu":
        assert torch.autograd.gradgradcheck(lambda t: gk.gated(t, activation=activation), (h,))
