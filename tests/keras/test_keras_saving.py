"""Saving: .keras round trips, file layout, weights files, files saved under other backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile

import h5py
import keras
import numpy as np
import pytest
from keras_helpers import FIXTURES, to_numpy

from glu_keras import GatedLinearUnit

pytestmark = pytest.mark.keras


def small_model(rng) -> keras.Model:
    inputs = keras.Input((3, 10))
    x = GatedLinearUnit(8, activation="silu", kernel_regularizer="l2")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = x * GatedLinearUnit(8, use_bias=False)(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    for w in model.weights:
        value = rng.uniform(0.5, 1.5, size=tuple(w.shape))
        w.assign(value if "variance" in w.path else value - 1.0)
    return model


def test_keras_file_round_trip_is_exact(tmp_path, rng):
    model = small_model(rng)
    x = rng.normal(size=(4, 3, 10)).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: registered as glu_keras>...
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert loaded.layers[1].get_config() == model.layers[1].get_config()


def test_file_layout_one_kernel_one_bias(tmp_path, rng):
    path = tmp_path / "m.keras"
    small_model(rng).save(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        archive.extract("model.weights.h5", tmp_path)
    names = []
    with h5py.File(tmp_path / "model.weights.h5") as f:
        f.visititems(lambda name, obj: names.append((name, getattr(obj, "shape", None))))
    glu_vars = {n: s for n, s in names if n.startswith("layers/gated_linear_unit") and s}
    assert glu_vars == {
        "layers/gated_linear_unit/vars/0": (10, 2, 8),
        "layers/gated_linear_unit/vars/1": (2, 8),
        "layers/gated_linear_unit_1/vars/0": (8, 2, 8),
    }
    registered = {layer["registered_name"] for layer in config["config"]["layers"]}
    assert "glu_keras>GatedLinearUnit" in registered


def test_trained_model_round_trip_keeps_optimizer_state(tmp_path, rng):
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    model = keras.Sequential([keras.Input((6,)), GatedLinearUnit(4), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=2, verbose=0)
    model.save(tmp_path / "t.keras")
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        loaded = keras.models.load_model(tmp_path / "t.keras")
    assert not [r for r in records if "Skipping variable loading" in str(r.message)]
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    loaded.fit(x, y, epochs=1, verbose=0)


def test_weights_file_round_trip(tmp_path, rng):
    model = small_model(rng)
    model.save_weights(tmp_path / "w.weights.h5")
    other = small_model(np.random.default_rng(99))
    other.load_weights(tmp_path / "w.weights.h5")
    for a, b in zip(model.weights, other.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_file_saved_under_torch_loads(rng):
    """The committed file saved under torch (make_glu_fixture.py): same outputs on this backend."""
    ref = np.load(FIXTURES / "glu_keras_torch_outputs.npz")
    model = keras.models.load_model(FIXTURES / "glu_keras_torch.keras")
    glus = [layer for layer in model.layers if isinstance(layer, GatedLinearUnit)]
    assert [(g.name, g.activation, g.use_bias) for g in glus] == [
        ("glu_sigmoid", "sigmoid", True),
        ("glu_gelu_nobias", "gelu", False),
        ("glu_gate", "silu", True),
    ]
    np.testing.assert_allclose(to_numpy(model(ref["x"])), ref["y"], atol=1e-5, rtol=1e-5)


def test_int8_file_saved_under_torch_loads(rng):
    """The same model quantized to int8 under torch (make_glu_fixture.py --int8): int8 kernels,
    and the same outputs on this backend (JAX multiplies in int8, torch and TensorFlow in float32:
    the same int8 values, float32 rounding apart)."""
    ref = np.load(FIXTURES / "glu_keras_torch_int8_outputs.npz")
    model = keras.models.load_model(FIXTURES / "glu_keras_torch_int8.keras")
    glus = [layer for layer in model.layers if isinstance(layer, GatedLinearUnit)]
    assert [g.dtype_policy.name for g in glus] == ["int8_from_float32"] * 3
    assert all(keras.backend.standardize_dtype(g.kernel.dtype) == "int8" for g in glus)
    np.testing.assert_allclose(to_numpy(model(ref["x"])), ref["y"], atol=1e-5, rtol=1e-5)


NEXT_BACKEND = {"jax": "torch", "torch": "tensorflow", "tensorflow": "jax"}

LOAD_ELSEWHERE = textwrap.dedent(
    """
    import sys, numpy as np, keras
    import glu_keras  # registers GatedLinearUnit; nothing else is needed to load
    model = keras.models.load_model(sys.argv[1])
    x = np.load(sys.argv[2])["x"]
    np.save(sys.argv[3], keras.ops.convert_to_numpy(model(x)))
    print(keras.backend.backend())
    """
)


def test_file_saved_here_loads_under_the_next_backend(tmp_path, rng):
    """Saved under this backend, loaded in a fresh process under the next one (jax -> torch ->
    tensorflow -> jax): over the three per-backend runs every backend's files load elsewhere."""
    model = small_model(rng)
    x = rng.normal(size=(4, 3, 10)).astype("float32")
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "x.npz", x=x)
    other = NEXT_BACKEND[keras.backend.backend()]
    env = {**os.environ, "KERAS_BACKEND": other, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", LOAD_ELSEWHERE, tmp_path / "m.keras", tmp_path / "x.npz",
         tmp_path / "y.npy"],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == other
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npy"), to_numpy(model(x)), atol=1e-5, rtol=1e-5
    )
