"""TensorFlow's XLA-fused elementwise path against the float64 reference.

Eager TensorFlow calls whose pre-activation h has at least ``_XLA_MIN_ELEMENTS`` elements run the
bias, the epilogue and the backward elementwise pass as XLA-compiled functions; the property-based
suite's shapes stay below that size. Here the threshold is lowered to 0, so forward and gradients of
every activation, dtype and save mode go through that path, and the test checks that they did.
"""

from __future__ import annotations

import backend_arrays as ba
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import ACTIVATIONS, cases, examples
from tolerances import assert_close, gradient_scales, output_scale

from glu_kernels.reference import glu_reference, glu_reference_vjp

pytestmark = pytest.mark.skipif(not ba.installed("tensorflow"), reason="tensorflow not installed")


@pytest.fixture
def xla_path(monkeypatch):
    from glu_kernels.backends import tensorflow as tf_backend

    monkeypatch.setattr(tf_backend, "_XLA_MIN_ELEMENTS", 0)
    return tf_backend


def _xla_calls(tf_backend) -> int:
    return sum(
        info.hits + info.misses
        for info in (
            tf_backend._xla_epilogue.cache_info(),
            tf_backend._xla_grad_preactivation.cache_info(),
        )
    )


@pytest.mark.parametrize("save", ["activations", "input"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_xla_path_matches_reference(xla_path, activation, save):
    calls = _xla_calls(xla_path)

    @settings(max_examples=examples(2))
    @given(data=st.data())
    def check(data):
        dtype = data.draw(st.sampled_from(ba.DTYPES["tensorflow"]), label="dtype")
        c = data.draw(cases(dtype, activation, max_leading=2), label="case")
        what = f"tensorflow XLA path ({activation}, save={save}, {dtype})"
        out = ba.forward("tensorflow", c.x, c.w, c.b, dtype, activation=activation, save=save)
        expected = glu_reference(c.x, c.w, c.b, activation)
        scale = output_scale(c.x, c.w, c.b, activation)
        assert_close(ba.to_numpy64(out), expected, scale, dtype, what=f"{what} out")

        _, dx, dw, db = ba.gradients(
            "tensorflow", c.x, c.w, c.b, c.dy, dtype, activation=activation, save=save
        )
        refs = glu_reference_vjp(c.x, c.w, c.b, c.dy, activation)
        scales = gradient_scales(c.x, c.w, c.b, c.dy, activation, dtype)
        for name, got, ref, s in zip(("dx", "dw", "db"), (dx, dw, db), refs, scales, strict=True):
            if ref is None:
                assert got is None
            else:
                assert_close(got, ref, s, dtype, what=f"{what} {name}")

    check()
    assert _xla_calls(xla_path) > calls, "the XLA path was not taken"


def test_eager_xla_calls_reuse_one_concrete_function_per_shape(xla_path):
    """Eager calls go through the XLA function's concrete function for their shapes (the
    polymorphic call's argument matching costs ~0.15 ms): one per shape and bias or not, reused,
    and each computes for its own shape."""
    import numpy as np
    import tensorflow as tf

    import glu_kernels as gk

    xla_path._CONCRETE.clear()
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(6, 8)), rng.normal(size=8)
    for rows, bias in [(3, b), (5, b), (3, b), (3, None), (5, b)]:
        x = rng.normal(size=(rows, 6))
        got = gk.glu(tf.constant(x), tf.constant(w), None if bias is None else tf.constant(bias))
        np.testing.assert_allclose(got.numpy(), glu_reference(x, w, bias), rtol=1e-12, atol=1e-12)
    assert len(xla_path._CONCRETE) == 3  # (3, bias), (5, bias), (3, no bias)


def test_run_functions_eagerly_runs_the_passes_as_eager_ops(xla_path):
    """TensorFlow's debugging switch makes the XLA-compiled passes run their bodies eagerly: glu
    then gives the eager ops' bits (a cached concrete function once ran XLA anyway)."""
    import numpy as np
    import tensorflow as tf

    import glu_kernels as gk

    h = tf.constant(np.random.default_rng(0).normal(size=(64, 32)), tf.float32)
    a, g = tf.split(h, 2, axis=-1)
    tf.config.run_functions_eagerly(True)
    try:
        got = gk.gated(h, activation="silu")
    finally:
        tf.config.run_functions_eagerly(False)
    np.testing.assert_array_equal(got.numpy(), (a * tf.nn.silu(g)).numpy())
