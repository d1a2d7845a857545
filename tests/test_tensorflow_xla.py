"""TensorFlow's XLA-fused elementwise path against the float64 reference.

Eager TensorFlow calls whose pre-activation h has at least ``_XLA_MIN_ELEMENTS`` elements run the
bias, the epilogue and the backward elementwise pass as XLA-compiled functions; the property-based
suite's shapes stay below that size. Here the threshold is lowered to 0, so forward and gradients of
every activation, dtype and save mode go through that path, and the test checks that they did.
"""

from __future__ import annotations

import backend_arrays as ba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import ACTIVATIONS, cases, examples
from tolerances import assert_close, gradient_scales, output_scale

import glu_kernels
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


def test_unknown_batch_decides_by_size_when_running(monkeypatch):
    """A tf.function traced for any batch size (a serving signature) picks the XLA path per call
    by h's actual size: small batches run TensorFlow ops and compile nothing (deciding when
    tracing, XLA compiled ~45 ms for every new batch size), large ones the XLA functions; forward
    and backward, with and without bias, against the reference."""
    import tensorflow as tf

    from glu_kernels.backends import tensorflow as tf_backend

    d, u = 6, 4
    monkeypatch.setattr(tf_backend, "_XLA_MIN_ELEMENTS", 8 * 2 * u)  # h of >= 8 rows
    xla_runs = []  # appended to by a py_function in the XLA branch: it runs when the branch does

    def tick():
        xla_runs.append(1)
        return 0

    def counted(make):
        def make_counted(*key):
            fn = make(*key)

            def run(*args):
                tf.py_function(tick, [], tf.int32)
                return fn(*args)

            return run

        return make_counted

    for name in ("_xla_epilogue", "_xla_grad_preactivation"):
        monkeypatch.setattr(tf_backend, name, counted(getattr(tf_backend, name)))
    spec = [tf.TensorSpec([None, d], tf.float64), tf.TensorSpec([None, u], tf.float64)]

    def training_step(w, b):
        @tf.function(input_signature=spec, autograph=False)
        def step(x, dy):
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = glu_kernels.glu(x, w, b, activation="silu")
            return out, tape.gradient(out, [x, w] + ([] if b is None else [b]), dy)

        return step

    rng = np.random.default_rng(0)
    for bias in (True, False):
        w = tf.Variable(rng.normal(size=(d, 2, u)) / np.sqrt(d))
        b = tf.Variable(rng.normal(size=(2, u)) * 0.1) if bias else None
        step = training_step(w, b)
        for rows, xla in [(3, False), (8, True), (2, False), (20, True)]:
            x, dy = rng.normal(size=(rows, d)), rng.normal(size=(rows, u))
            before = len(xla_runs)
            out, grads = step(x, dy)
            assert len(xla_runs) - before == (2 if xla else 0), (rows, bias)
            args = (x, w.numpy(), None if b is None else b.numpy())
            assert_close(
                out.numpy(), glu_reference(*args, "silu"), output_scale(*args, "silu"), "float64"
            )
            refs = glu_reference_vjp(*args, dy, "silu")
            scales = gradient_scales(*args, dy, "silu", "float64")
            for got, ref, scale in zip(grads, refs[: len(grads)], scales, strict=False):
                assert_close(got.numpy(), ref, scale, "float64", what=f"{rows} rows, bias={bias}")
