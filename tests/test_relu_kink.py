"""ReLU's derivative at exactly 0 is 0 in every backend: the reference's convention, and ATen's
(threshold_backward), XLA's (jax.nn.relu) and TensorFlow's (ReluGrad).

A gate pre-activation that is *exactly* 0 is common: gate weights that are zero (zero-initialised
or pruned) with no or a zero bias. Then a correct ReGLU passes no gradient at all, not even to the
gate weights. The property tests cannot see a backend that takes f'(0) = 1 instead: random inputs
never give g == 0, and ``gradient_scales`` deliberately forgives a flipped step where |g| is within
rounding of the kink (which includes g == 0). Here g == 0 exactly in every precision (S_g = 0), so
there is no rounding to forgive: every gradient must be exactly 0.
"""

from __future__ import annotations

import backend_arrays as ba
import numpy as np
import pytest

from glu_kernels.reference import glu_reference_vjp

SAVES = ("activations", "input")


@pytest.mark.parametrize("bias", ["none", "zero"])
@pytest.mark.parametrize("save", SAVES)
@pytest.mark.parametrize(("backend", "dtype"), ba.backend_dtype_params(ba.GRAD_BACKENDS))
def test_relu_gate_exactly_zero_passes_no_gradient(backend, dtype, save, bias):
    rng = np.random.default_rng(0)
    d, u = 4, 3
    x = ba.round_to(rng.uniform(-1.0, 1.0, (5, d)), dtype)
    w = np.zeros((d, 2 * u))
    w[:, :u] = ba.round_to(rng.uniform(-1.0, 1.0, (d, u)), dtype)  # value half only; gate half 0
    b = None if bias == "none" else np.zeros(2 * u)
    dy = ba.round_to(rng.uniform(-1.0, 1.0, (5, u)), dtype)

    out, dx, dw, db = ba.gradients(backend, x, w, b, dy, dtype, activation="relu", save=save)

    ref_dx, ref_dw, ref_db = glu_reference_vjp(x, w, b, dy, "relu")
    assert not ref_dx.any() and not ref_dw.any()  # the oracle's convention: f'(0) = 0
    np.testing.assert_array_equal(out, 0.0, err_msg=f"{backend} relu forward at g == 0")
    np.testing.assert_array_equal(dx, 0.0, err_msg=f"{backend} relu dx at g == 0: f'(0) must be 0")
    np.testing.assert_array_equal(dw, 0.0, err_msg=f"{backend} relu dw at g == 0: f'(0) must be 0")
    if b is not None:
        np.testing.assert_array_equal(
            db, 0.0, err_msg=f"{backend} relu db at g == 0: f'(0) must be 0"
        )
