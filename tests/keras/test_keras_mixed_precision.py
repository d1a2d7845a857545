"""Mixed precision: per-layer and global policies, float32 variables, compute-dtype outputs."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras_helpers import numpy_glu, to_numpy

from glu_keras import GatedLinearUnit

pytestmark = pytest.mark.keras

POLICIES = ["mixed_bfloat16", "mixed_float16"]
# One rounding of x, w (to 8 or 11 bits), then an fp32-accumulated matmul of length 16 and an fp32
# epilogue rounded once: relative to the pre-activation's magnitude sum|x||w| (~3 here).
TOL = {"mixed_bfloat16": 4e-2, "mixed_float16": 5e-3}


def check_outputs(layer, x, policy):
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == policy.removeprefix("mixed_")
    assert [keras.backend.standardize_dtype(w.dtype) for w in layer.weights] == ["float32"] * 2
    kernel, bias = (to_numpy(w) for w in layer.weights)
    np.testing.assert_allclose(to_numpy(y), numpy_glu(x, kernel, bias), atol=TOL[policy])


@pytest.mark.parametrize("policy", POLICIES)
def test_per_layer_policy(policy, rng):
    layer = GatedLinearUnit(8, dtype=policy)
    assert (
        layer.compute_dtype == policy.removeprefix("mixed_") and layer.variable_dtype == "float32"
    )
    check_outputs(layer, rng.normal(size=(5, 3, 16)).astype("float32"), policy)
    assert layer.get_config()["dtype"]["config"]["name"] == policy
    assert GatedLinearUnit.from_config(layer.get_config()).dtype_policy.name == policy


@pytest.mark.parametrize("policy", POLICIES)
def test_global_policy_model_trains(policy, rng):
    keras.config.set_dtype_policy(policy)  # the autouse fixture restores float32
    x = rng.normal(size=(32, 16)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((16,)),
            GatedLinearUnit(8),
            GatedLinearUnit(4),
            keras.layers.Dense(1, activation="sigmoid", dtype="float32"),
        ]
    )
    glu = model.layers[0]
    assert glu.compute_dtype == policy.removeprefix("mixed_")
    check_outputs(glu, x, policy)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    before = to_numpy(glu.kernel)
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert keras.backend.standardize_dtype(glu.kernel.dtype) == "float32"
    assert not np.allclose(before, to_numpy(glu.kernel))


def test_float64_policy(rng):
    layer = GatedLinearUnit(4, dtype="float64")
    x = rng.normal(size=(3, 5))
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float64"
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in layer.weights)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(y), numpy_glu(x, kernel, bias), rtol=1e-12
    )
