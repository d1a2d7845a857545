"""The docstrings' examples run, and give what they show (doctest), for glu_kernels' modules.

The Keras layer's examples run in tests/keras/test_keras_docstring_examples.py, per backend.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["glu_kernels", "glu_kernels.reference"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, f"{result.failed} of {name}'s examples failed (doctest output above)"
