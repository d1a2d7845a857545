"""The Keras layer's docstring examples run, and give what they show (doctest), on this backend."""

from __future__ import annotations

import doctest
import importlib

import pytest

pytestmark = pytest.mark.keras

MODULES = ["glu_keras", "glu_keras._kmr", "glu_keras.initializers", "glu_keras.layer"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, f"{result.failed} of {name}'s examples failed (doctest output above)"
