"""Dispatch and the public API around glu: lazy framework imports, available_backends, explain,
the named variants and the activation alias."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import backend_arrays as ba
import numpy as np
import pytest

import glu_kernels as gk

FRAMEWORKS = ("tensorflow", "torch", "jax", "keras")


def test_import_and_numpy_calls_import_no_framework():
    """``import glu_kernels`` (and using it on NumPy arrays, and available_backends/explain) must
    not import TensorFlow, torch or JAX: checked in a fresh interpreter."""
    code = f"""
import json, sys
import numpy as np
import glu_kernels as gk
after_import = [m for m in {FRAMEWORKS!r} if m in sys.modules]
gk.available_backends()
x, w = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
gk.glu(x, w, activation="silu"); gk.swiglu(x, w); gk.explain(x, w)
after_use = [m for m in {FRAMEWORKS!r} if m in sys.modules]
print(json.dumps([after_import, after_use]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    after_import, after_use = json.loads(out.stdout.strip().splitlines()[-1])
    assert after_import == [], f"import glu_kernels imported {after_import}"
    assert after_use == [], f"NumPy calls imported {after_use}"


def test_available_backends_lists_the_installed_frameworks():
    expected = [b for b in ba.BACKENDS if importlib.util.find_spec(b) is not None]
    assert gk.available_backends() == expected
    assert gk.available_backends()[0] == "numpy"


@pytest.mark.parametrize("backend", ba.backend_params())
def test_available_backends_can_run(backend):
    """No lying "available" flag: every listed backend computes a result."""
    assert backend in gk.available_backends()
    out = ba.forward(backend, np.ones((2, 3)), np.ones((3, 4)), None, "float32")
    assert ba.to_numpy64(out).shape == (2, 2)


@pytest.mark.parametrize(
    "activation, variant",
    [
        ("sigmoid", "GLU"),
        ("silu", "SwiGLU"),
        ("gelu", "GeGLU"),
        ("gelu_tanh", "GeGLU (tanh approximation)"),
        ("relu", "ReGLU"),
        ("linear", "bilinear"),
    ],
)
@pytest.mark.parametrize("backend", ba.backend_params())
def test_explain(backend, activation, variant):
    for dtype in ("bfloat16" if backend != "numpy" else "float16", "float32"):
        x = ba.to_backend(backend, np.ones((8, 4)), dtype)
        w = ba.to_backend(backend, np.ones((4, 2, 3)), dtype)
        b = ba.to_backend(backend, np.ones(6), dtype)
        for save in ("activations", "input"):
            text = gk.explain(x, w, b, activation=activation, save=save)
            lines = dict(line.split(": ", 1) for line in text.splitlines())
            assert lines["backend"].startswith(f"{backend} (x is ")
            assert lines["op"].startswith(f"{variant}, out = a * {activation}(g)")
            assert "D=4, U=3, weight (D, 2, U), with bias" in lines["op"]
            assert lines["implementation"]
            if dtype == "float32":
                assert lines["precision"] == "float32 throughout"
            else:
                assert dtype in lines["precision"] and "float32" in lines["precision"]
                # what each backend does with the bias and whether it has a backward at all
                rounded_first = "x @ w rounded once to" in lines["precision"]
                assert rounded_first == (backend == "tensorflow")
                assert ("backward" in lines["precision"]) == (backend != "numpy")
            if backend == "numpy":
                assert lines["saved for backward"] == "nothing (forward only)"
            elif save == "activations":
                assert "pre-activation h" in lines["saved for backward"]
            else:
                assert "recomputed" in lines["saved for backward"]
    # the (D, 2U) layout and no bias are reported too
    x = ba.to_backend(backend, np.ones((8, 4)), "float32")
    w = ba.to_backend(backend, np.ones((4, 6)), "float32")
    assert "weight (D, 2U), no bias" in gk.explain(x, w, activation=activation)


@pytest.mark.parametrize(
    "variant, activation",
    [(gk.swiglu, "silu"), (gk.geglu, "gelu"), (gk.reglu, "relu"), (gk.bilinear, "linear")],
    ids=["swiglu", "geglu", "reglu", "bilinear"],
)
@pytest.mark.parametrize("backend", ba.backend_params())
def test_variants_equal_glu_with_their_activation(backend, variant, activation):
    rng = np.random.default_rng(0)
    x = ba.to_backend(backend, rng.uniform(-1, 1, (5, 4)), "float32")
    w = ba.to_backend(backend, rng.uniform(-1, 1, (4, 6)), "float32")
    b = ba.to_backend(backend, rng.uniform(-1, 1, 6), "float32")
    expected = ba.to_numpy64(gk.glu(x, w, b, activation=activation))
    np.testing.assert_array_equal(ba.to_numpy64(variant(x, w, b)), expected)
    np.testing.assert_array_equal(ba.to_numpy64(variant(x, w, b, save="input")), expected)
    assert variant.__name__ == variant.__name__.lower()


@pytest.mark.parametrize("backend", ba.backend_params())
def test_swish_is_an_alias_of_silu(backend):
    rng = np.random.default_rng(1)
    x = ba.to_backend(backend, rng.uniform(-1, 1, (5, 4)), "float32")
    w = ba.to_backend(backend, rng.uniform(-1, 1, (4, 6)), "float32")
    np.testing.assert_array_equal(
        ba.to_numpy64(gk.glu(x, w, activation="swish")),
        ba.to_numpy64(gk.glu(x, w, activation="silu")),
    )
    assert "SwiGLU" in gk.explain(x, w, activation="swish")


def test_public_api():
    assert set(gk.__all__) >= {
        "glu",
        "swiglu",
        "geglu",
        "reglu",
        "bilinear",
        "explain",
        "available_backends",
    }
    assert gk.ACTIVATIONS == ("sigmoid", "silu", "gelu", "gelu_tanh", "relu", "linear")
