"""JAX computes the bfloat16 weight gradient ``x^T @ dh`` on the CPU from a row-major copy of x^T
(XLA:CPU reads a transposed bfloat16 operand slowly). The property tests' tolerances for bfloat16
gradients are sized for the whole chain (h rounded, then the activation's slope), wide enough to
hide a percent in dw; here dw alone is checked against the plain product of x^T and the backward's
own dh, to within the one rounding of a float32-accumulated GEMM.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

import glu_kernels as gk  # noqa: E402
from glu_kernels.backends import jax as jax_backend  # noqa: E402


@pytest.mark.parametrize("weight_rank", [2, 3])
@pytest.mark.parametrize("lead", [(37,), (5, 7), (0,)], ids=["2-D x", "3-D x", "no rows"])
def test_jax_bfloat16_weight_gradient_is_the_product_of_x_and_dh(lead, weight_rank):
    d, u = 48, 40
    rng = np.random.default_rng(5)
    # Positive data: dw's sums over rows cannot cancel, so an error cannot hide in cancellation.
    x = jnp.asarray(rng.uniform(0.5, 1.0, (*lead, d)), jnp.bfloat16)
    w3 = jnp.asarray(rng.uniform(0.0, 1.0, (d, 2, u)) / np.sqrt(d), jnp.bfloat16)
    b3 = jnp.asarray(rng.uniform(0.0, 1.0, (2, u)), jnp.bfloat16)
    dy = jnp.asarray(rng.uniform(0.5, 1.0, (*lead, u)), jnp.bfloat16)
    w, b = (w3, b3) if weight_rank == 3 else (w3.reshape(d, 2 * u), b3.reshape(2 * u))

    _, vjp = jax.vjp(lambda w: gk.glu(x, w, b, activation="silu"), w)
    (dw,) = jax.jit(vjp)(dy)
    # the backward's dh: gated's, on the h glu computes (float32 sums, rounded once)
    h = jax_backend._preactivation(x, w3, b3, "float32").reshape(*lead, 2 * u)
    _, gated_vjp = jax.vjp(lambda h: gk.gated(h, activation="silu"), h)
    (dh,) = gated_vjp(dy)

    x2 = np.asarray(x, np.float64).reshape(-1, d)
    exact = (x2.T @ np.asarray(dh, np.float64).reshape(-1, 2 * u)).reshape(w.shape)
    got = np.asarray(dw, np.float64)
    assert dw.dtype == jnp.bfloat16 and dw.shape == w.shape
    # float32 accumulation and one rounding: within half a bfloat16 ulp (at most 2^-8 relative)
    # of the exact product, plus float32's own error (~rows * 2^-24 relative, positive data)
    np.testing.assert_allclose(got, exact, rtol=2.0**-8 + 64 * 2.0**-24, atol=0)
