"""glu_keras: the fused gated linear unit as a Keras 3 layer (JAX, PyTorch, TensorFlow backends).

``GatedLinearUnit(units)`` is a drop-in for KMR's (``kerasfactory``) layer of the same name, with
one (input_dim, 2, units) kernel and a call into :func:`glu_kernels.glu`. ``kmr_custom_objects()``
loads ``.keras`` files saved with KMR's layer.

Example:
    >>> import keras
    >>> from glu_keras import GatedLinearUnit
    >>> model = keras.Sequential([keras.Input((16,)), GatedLinearUnit(8), keras.layers.Dense(1)])
    >>> model.output_shape
    (None, 1)
"""

from __future__ import annotations

from glu_keras._kmr import kmr_custom_objects
from glu_keras.initializers import PerHalf
from glu_keras.layer import GatedLinearUnit

__all__ = ["GatedLinearUnit", "kmr_custom_objects", "PerHalf"]
