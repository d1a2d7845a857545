"""Shared fixtures of the Keras layer's tests; run once per Keras backend, one process each.

    KERAS_BACKEND=jax pytest -m keras      (and torch, tensorflow)

Every module here sets ``pytestmark = pytest.mark.keras``. Runs whose ``-m`` expression deselects
``keras`` (the core suite: ``-m "not keras and not sharding"``) do not even import these modules, so
the core suite never imports Keras (nor, through it, TensorFlow).
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest


def _keras_deselected(config: pytest.Config) -> bool:
    expr = config.getoption("markexpr", default="") or ""
    if not expr:
        return False
    try:
        from _pytest.mark.expression import Expression

        return not Expression.compile(expr).evaluate(lambda name, **kwargs: name == "keras")
    except Exception:  # pytest internals moved: collect, and let -m deselect as usual
        return False


def pytest_ignore_collect(collection_path: pathlib.Path, config: pytest.Config) -> bool | None:
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return True if _keras_deselected(config) else None
    return None


@pytest.fixture(autouse=True)
def _float32_policy_and_seed():
    """Every test starts from the float32 global policy and a fixed seed, and leaves them so."""
    import keras

    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(params=["integer", "dequantized"])
def int8_path(request, monkeypatch) -> str:
    """The way an int8 layer multiplies (glu_keras/_int8.py), forced: each backend chooses by
    measurement and shape, and the tests' shapes are small."""
    from glu_keras import _int8

    monkeypatch.setattr(_int8, "multiplies_in_int8", lambda *args: request.param == "integer")
    return request.param
