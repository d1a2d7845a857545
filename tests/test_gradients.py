"""Backward correctness of the JAX, torch and TensorFlow backends (NumPy is forward only).

* Property-based: dx, dw, db from each framework's own autodiff against ``glu_reference_vjp``
  (float64, on the rounded inputs), every activation, both save modes, every dtype, 2-D and 3-D
  weights (the gradient has w's shape), bias (2U,), (2, U) or None.
* Finite differences in float64: torch ``gradcheck`` and ``gradgradcheck``; JAX ``check_grads`` to
  second order in reverse mode; TensorFlow gradients through tf.Variables.
"""

from __future__ import annotations

import backend_arrays as ba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import ACTIVATIONS, cases, examples
from tolerances import assert_close, gradient_scales

from glu_kernels.reference import glu_reference_vjp

SAVES = ("activations", "input")


@pytest.mark.parametrize("save", SAVES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", ba.backend_params(ba.GRAD_BACKENDS))
def test_gradients_match_reference(backend, activation, save):
    @settings(max_examples=examples(4))
    @given(data=st.data())
    def check(data):
        dtype = data.draw(st.sampled_from(ba.DTYPES[backend]), label="dtype")
        c = data.draw(cases(dtype, activation, max_leading=2), label="case")
        _, dx, dw, db = ba.gradients(
            backend, c.x, c.w, c.b, c.dy, dtype, activation=activation, save=save
        )
        refs = glu_reference_vjp(c.x, c.w, c.b, c.dy, activation)
        scales = gradient_scales(c.x, c.w, c.b, c.dy, activation, dtype)
        for name, got, ref, scale in zip(
            ("dx", "dw", "db"), (dx, dw, db), refs, scales, strict=True
        ):
            if ref is None:
                assert got is None
                continue
            assert_close(
                got, ref, scale, dtype, what=f"{backend} {name} ({activation}, save={save})"
            )

    check()


def _gates_away_from_kink(x, w, b, margin=1e-2):
    """True when no gate pre-activation is within ``margin`` of 0.

    ReLU's kink breaks finite differences.
    """
    w2 = w.reshape(w.shape[0], -1)
    h = x @ w2 + (0 if b is None else b.reshape(-1))
    return bool((np.abs(h[..., w2.shape[1] // 2 :]) > margin).all())


def _float64_inputs(seed, lead=(3,), d=4, u=3, weight_3d=False, bias="flat"):
    rng = np.random.default_rng(seed)
    for _ in range(100):
        x = rng.uniform(-1, 1, (*lead, d))
        w = rng.uniform(-1, 1, (d, 2, u) if weight_3d else (d, 2 * u))
        b = None if bias is None else rng.uniform(-1, 1, (2 * u,) if bias == "flat" else (2, u))
        if _gates_away_from_kink(x, w, b):
            return x, w, b
    raise AssertionError("no inputs away from the kink")


_GRADCHECK_CASES = [
    pytest.param(lead, w3, bias, id=f"lead{len(lead)}-w{3 if w3 else 2}d-bias_{bias}")
    for lead, w3, bias in [((3,), False, "flat"), ((2, 2), True, "split"), ((), False, None)]
]


@pytest.mark.parametrize("lead, weight_3d, bias", _GRADCHECK_CASES)
@pytest.mark.parametrize("save", SAVES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", ba.backend_params(["torch"]))
def test_torch_gradcheck_gradgradcheck(backend, activation, save, lead, weight_3d, bias):
    torch = pytest.importorskip("torch")
    import glu_kernels as gk

    x, w, b = _float64_inputs(0, lead, weight_3d=weight_3d, bias=bias)
    args = tuple(
        torch.tensor(a, device=ba.TORCH_DEVICE, requires_grad=True)
        for a in (x, w, b)
        if a is not None
    )

    def fn(*a):
        return gk.glu(*a, activation=activation, save=save)

    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("save", SAVES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", ba.backend_params(["jax"]))
def test_jax_check_grads_second_order(backend, activation, save):
    pytest.importorskip("jax")
    import jax.numpy as jnp
    from jax.test_util import check_grads

    import glu_kernels as gk

    # one layout per save mode (each check_grads costs seconds of tracing): both layouts covered
    weight_3d, bias, lead = (
        (False, "flat", (3,)) if save == "activations" else (True, "split", (2, 2))
    )
    x, w, b = (jnp.asarray(a) for a in _float64_inputs(1, lead, weight_3d=weight_3d, bias=bias))
    assert x.dtype == jnp.float64

    def fn(x, w, b):
        return gk.glu(x, w, b, activation=activation, save=save)

    check_grads(fn, (x, w, b), order=2, modes=["rev"])


@pytest.mark.parametrize("save", SAVES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", ba.backend_params(["tensorflow"]))
def test_tensorflow_variable_gradients(backend, activation, save):
    """Gradients reach tf.Variables through a GradientTape (2-D and 3-D kernels, both bias shapes),
    and match the reference; also with a tf.function around the call."""
    tf = pytest.importorskip("tensorflow")
    import glu_kernels as gk

    def make_loss(xv, wv, bv, dy):
        def loss():
            return tf.reduce_sum(gk.glu(xv, wv, bv, activation=activation, save=save) * dy)

        return loss

    for weight_3d, bias, lead in [(False, "flat", (3,)), (True, "split", (2, 2))]:
        x, w, b = _float64_inputs(2, lead, weight_3d=weight_3d, bias=bias)
        dy = np.random.default_rng(3).uniform(-1, 1, (*lead, 3))
        xv, wv, bv = (tf.Variable(a) for a in (x, w, b))
        refs = glu_reference_vjp(x, w, b, dy, activation)
        scales = gradient_scales(x, w, b, dy, activation, "float64")
        loss = make_loss(xv, wv, bv, dy)

        for run in (loss, tf.function(loss)):
            with tf.GradientTape() as tape:
                value = run()
            grads = tape.gradient(value, [xv, wv, bv])
            for name, got, ref, scale in zip(("dx", "dw", "db"), grads, refs, scales, strict=True):
                assert tuple(got.shape) == ref.shape
                assert_close(got.numpy(), ref, scale, "float64", what=f"tensorflow {name}")
