"""torch computes the weight gradient ``x.mT @ dh`` through a contiguous copy of ``x.mT`` where
oneDNN's AMX bfloat16 GEMM is faster that way (bfloat16, D >= 1024). The property tests' D is far
smaller, so only here does that branch run: both branches, forced on and off, against the float64
reference, on any machine.
"""

from __future__ import annotations

import backend_arrays as ba
import numpy as np
import pytest
from tolerances import assert_close, gradient_scales

from glu_kernels.reference import glu_reference_vjp

pytest.importorskip("torch")


@pytest.mark.parametrize("amx", [True, False], ids=["contiguous-xT", "transposed-x"])
@pytest.mark.parametrize("dtype", ba.DTYPES["torch"])
def test_torch_weight_gradient_at_wide_features(monkeypatch, dtype, amx):
    from glu_kernels.backends import torch as torch_backend

    monkeypatch.setattr(torch_backend, "_HAS_AMX", amx)
    rows, d, u = 24, torch_backend._CONTIGUOUS_XT_MIN_FEATURES, 3
    # Positive data, so dw's sums over rows cannot cancel: an error of a percent in them then
    # exceeds the bfloat16 tolerance (with random signs it could hide within the cancellation).
    rng = np.random.default_rng(11)
    x = ba.round_to(rng.uniform(0.5, 1.0, (rows, d)), dtype)
    w = ba.round_to(rng.uniform(0.0, 1.0, (d, 2 * u)) * np.sqrt(3.0 / d), dtype)
    b = ba.round_to(rng.uniform(0.0, 1.0, 2 * u), dtype)
    dy = ba.round_to(rng.uniform(0.5, 1.0, (rows, u)), dtype)

    _, dx, dw, db = ba.gradients("torch", x, w, b, dy, dtype, activation="silu")
    refs = glu_reference_vjp(x, w, b, dy, "silu")
    scales = gradient_scales(x, w, b, dy, "silu", dtype)
    for name, got, ref, s in zip(("dx", "dw", "db"), (dx, dw, db), refs, scales, strict=True):
        assert_close(got, ref, s, dtype, f"torch {name}")


def test_torch_weight_gradient_equals_the_plain_product():
    import torch

    from glu_kernels.backends import torch as torch_backend

    x = torch.randn(40, 1024).to(torch.bfloat16)
    dh = torch.randn(40, 6).to(torch.bfloat16)
    got = torch_backend.weight_gradient(x, dh)
    assert got.shape == (1024, 6) and got.dtype == torch.bfloat16
    expected = (x.double().mT @ dh.double()).to(torch.bfloat16)
    # float32 accumulation, one rounding: within one bfloat16 ulp of the rounded exact product
    torch.testing.assert_close(got, expected, rtol=2**-7, atol=1e-6)
