"""torch computes the weight gradient ``x.mT @ dh`` through a contiguous copy of ``x.mT`` where
oneDNN's AMX bfloat16 GEMM is faster that way (bfloat16 on the CPU, D >= 512, 2U >= 2048). The
property tests' shapes are far smaller, so only here does that branch run: the rule itself, and
both branches, forced on and off, against the float64 reference on any machine.
"""

from __future__ import annotations

import backend_arrays as ba
import numpy as np
import pytest
from tolerances import assert_close, gradient_scales

from glu_kernels.reference import glu_reference_vjp

torch = pytest.importorskip("torch")
from glu_kernels.backends import torch as torch_backend  # noqa: E402

D_MIN = torch_backend._CONTIGUOUS_XT_MIN_FEATURES
N_MIN = torch_backend._CONTIGUOUS_XT_MIN_COLUMNS  # 2U


@pytest.mark.parametrize(
    "d, n, dtype, device, taken",
    [
        (D_MIN, N_MIN, torch.bfloat16, "cpu", True),
        (4 * D_MIN, 2 * N_MIN, torch.bfloat16, "cpu", True),
        (D_MIN - 1, N_MIN, torch.bfloat16, "cpu", False),
        (D_MIN, N_MIN - 2, torch.bfloat16, "cpu", False),
        (D_MIN, N_MIN, torch.float16, "cpu", False),
        (D_MIN, N_MIN, torch.float32, "cpu", False),
        (D_MIN, N_MIN, torch.bfloat16, "meta", False),  # not a CPU tensor
    ],
)
def test_contiguous_xt_rule(monkeypatch, d, n, dtype, device, taken):
    x = torch.empty(4, d, dtype=dtype, device=device)
    dh = torch.empty(4, n, dtype=dtype, device=device)
    monkeypatch.setattr(torch_backend, "_HAS_AMX", True)
    assert torch_backend._contiguous_xt(x, dh) is taken
    monkeypatch.setattr(torch_backend, "_HAS_AMX", False)
    assert torch_backend._contiguous_xt(x, dh) is False


@pytest.mark.parametrize("amx", [True, False], ids=["contiguous-xT", "transposed-x"])
def test_torch_bfloat16_gradients_through_either_weight_gradient(monkeypatch, amx):
    monkeypatch.setattr(torch_backend, "_HAS_AMX", amx)
    rows, d, u = 2 * torch_backend._TRANSPOSE_ROWS + 3, D_MIN, N_MIN // 2  # three copy blocks
    # Positive data, so dw's sums over rows cannot cancel (with random signs an error could hide
    # within the cancellation). CPU tensors: the branch is for the CPU.
    rng = np.random.default_rng(11)
    x = ba.round_to(rng.uniform(0.5, 1.0, (rows, d)), "bfloat16")
    w = ba.round_to(rng.uniform(0.0, 1.0, (d, 2 * u)) * np.sqrt(3.0 / d), "bfloat16")
    b = ba.round_to(rng.uniform(0.0, 1.0, 2 * u), "bfloat16")
    dy = ba.round_to(rng.uniform(0.5, 1.0, (rows, u)), "bfloat16")
    xt, wt, bt = (torch.tensor(a).to(torch.bfloat16).requires_grad_() for a in (x, w, b))
    assert torch_backend._contiguous_xt(xt, torch.empty(rows, 2 * u, dtype=torch.bfloat16)) is amx

    import glu_kernels as gk

    out = gk.glu(xt, wt, bt, activation="silu")
    grads = torch.autograd.grad(out, (xt, wt, bt), torch.tensor(dy).to(torch.bfloat16))
    refs = glu_reference_vjp(x, w, b, dy, "silu")
    scales = gradient_scales(x, w, b, dy, "silu", "bfloat16")
    for name, got, ref, s in zip(("dx", "dw", "db"), grads, refs, scales, strict=True):
        assert_close(ba.to_numpy64(got), ref, s, "bfloat16", f"torch {name}")


def test_torch_weight_gradient_equals_the_plain_product(monkeypatch):
    monkeypatch.setattr(torch_backend, "_HAS_AMX", True)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, D_MIN, generator=gen).to(torch.bfloat16)
    dh = torch.randn(40, N_MIN, generator=gen).to(torch.bfloat16)
    assert torch_backend._contiguous_xt(x, dh)
    got = torch_backend._weight_gradient(x, dh)
    assert got.shape == (D_MIN, N_MIN) and got.dtype == torch.bfloat16
    expected = (x.double().mT @ dh.double()).to(torch.bfloat16)
    # float32 accumulation, one rounding: within one bfloat16 ulp of the rounded exact product
    torch.testing.assert_close(got, expected, rtol=2**-7, atol=1e-6)


@pytest.mark.parametrize("rows", [1, 63, 64, 65, 200])
def test_transposed_copy_is_x_transposed(rows):
    # rows around the copy's block of 64; a non-contiguous x (every other column); distinct values
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 18, generator=gen).to(torch.bfloat16)[:, ::2]
    xt = torch_backend._transposed_copy(x)
    assert xt.is_contiguous() and xt.shape == (9, rows)
    assert torch.equal(xt, x.mT)


def test_transposed_copy_of_a_transposed_x_copies_nothing():
    x = torch.randn(12, 5).to(torch.bfloat16).mT  # x.mT is contiguous already
    assert torch_backend._transposed_copy(x).data_ptr() == x.data_ptr()
