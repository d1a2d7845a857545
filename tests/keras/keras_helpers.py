"""Helpers shared by the Keras layer's tests (imported as ``keras_helpers``; no Keras at import)."""

from __future__ import annotations

import pathlib

import numpy as np

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


def to_numpy(x) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(x, "float32")))


def numpy_glu(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, act=None) -> np.ndarray:
    """float64 reference: ``a * act(g)``, ``[a | g] = x @ kernel + bias``, kernel (D, 2, U)."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    h = np.einsum("...d,dku->...ku", x, kernel)
    if bias is not None:
        h = h + np.asarray(bias, np.float64)
    a, g = h[..., 0, :], h[..., 1, :]
    return a * (act(g) if act is not None else 1.0 / (1.0 + np.exp(-g)))


def kmr_style_twin(layer):
    """KMR's two-Dense layer holding the same (float) weights as the GatedLinearUnit ``layer``."""
    from glu_keras._kmr import KMRStyleGatedLinearUnit

    kernel, bias = (to_numpy(w) for w in layer.weights)
    twin = KMRStyleGatedLinearUnit(layer.units)
    twin.build((None, kernel.shape[0]))
    twin.set_weights([kernel[:, 0], bias[0], kernel[:, 1], bias[1]])
    return twin


def behind_a_dense(glu_layer, first: np.ndarray, learning_rate: float):
    """``Input -> Dense(first, zero bias) -> glu_layer``, compiled with SGD and MSE: a training
    step then also checks the input gradient, through the first layer's update."""
    import keras

    dense = keras.layers.Dense(first.shape[1])
    model = keras.Sequential([keras.Input((first.shape[0],)), dense, glu_layer])
    dense.set_weights([first, np.zeros(first.shape[1], "float32")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    return model
