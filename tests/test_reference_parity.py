"""Forward correctness: every backend against the float64 reference, and the backends against
each other.

Property-based: hypothesis draws leading shapes (1-D x, zero-size batches, 1-3 leading dims), D and
U up to 96, 2-D or 3-D weights, bias (2U,), (2, U) or None; every activation and every dtype each
backend supports. 16-bit inputs are compared with the reference evaluated on the 16-bit-rounded
inputs (strategies.cases rounds before anything sees the data). Tolerances: tests/tolerances.py.
"""

from __future__ import annotations

import backend_arrays as ba
import pytest
from hypothesis import given, settings
from strategies import ACTIVATIONS, cases, examples
from tolerances import assert_close, output_scale

from glu_kernels.reference import glu_reference

ALL_DTYPES = ("bfloat16", "float16", "float32", "float64")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend, dtype", ba.backend_dtype_params())
def test_forward_matches_reference(backend, dtype, activation):
    @settings(max_examples=examples(5))
    @given(case=cases(dtype, activation))
    def check(case):
        out = ba.forward(backend, case.x, case.w, case.b, dtype, activation=activation)
        assert isinstance(out, ba.array_type(backend)), type(out)
        assert ba._dtype_name(out) == dtype
        expected = glu_reference(case.x, case.w, case.b, activation)
        assert tuple(out.shape) == expected.shape
        scale = output_scale(case.x, case.w, case.b, activation)
        assert_close(ba.to_numpy64(out), expected, scale, dtype, what=f"{backend} glu {activation}")

    check()


@pytest.mark.parametrize("save", ["activations", "input"])
@pytest.mark.parametrize("backend", ba.backend_params())
def test_forward_does_not_depend_on_save_mode(backend, save):
    """``save`` changes only what backward keeps: the forward value is the same bits."""

    @settings(max_examples=examples(3))
    @given(case=cases("float32"))
    def check(case):
        ref = ba.forward(backend, case.x, case.w, case.b, "float32", activation=case.activation)
        out = ba.forward(
            backend, case.x, case.w, case.b, "float32", activation=case.activation, save=save
        )
        assert (ba.to_numpy64(out) == ba.to_numpy64(ref)).all()

    check()


def _available(dtype):
    return [b for b in ba.BACKENDS if ba.installed(b) and dtype in ba.DTYPES[b]]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_backends_agree_with_each_other(dtype):
    """The same inputs through every installed backend.

    Pairwise within twice one backend's bound.
    """
    backends = _available(dtype)
    if len(backends) < 2:
        pytest.skip(f"fewer than two backends support {dtype}: {backends}")

    @settings(max_examples=examples(6))
    @given(case=cases(dtype))
    def check(case):
        scale = 2 * output_scale(case.x, case.w, case.b, case.activation)
        outs = {
            b: ba.to_numpy64(
                ba.forward(b, case.x, case.w, case.b, dtype, activation=case.activation)
            )
            for b in backends
        }
        for i, first in enumerate(backends):
            for second in backends[i + 1 :]:
                assert_close(
                    outs[first],
                    outs[second],
                    scale,
                    dtype,
                    what=f"{first} vs {second} ({case.activation})",
                )

    check()
