"""KMR migration: .keras files written by KMR's own code (kerasfactory 0.1.1) load into our layer.

The fixture files and KMR's outputs come from fixtures/make_kmr_fixtures.py, run in a separate
environment with kerasfactory installed; this suite never imports kerasfactory.
"""

from __future__ import annotations

import json
import warnings
import zipfile

import keras
import numpy as np
import pytest
from keras_helpers import FIXTURES, to_numpy

import glu_keras
from glu_keras import GatedLinearUnit, kmr_custom_objects

pytestmark = pytest.mark.keras

KMR_ATOL = 1e-6  # the bound: KMR's outputs, to within 1e-6, on every backend


@pytest.fixture(scope="module")
def kmr_outputs():
    return np.load(FIXTURES / "kmr_outputs.npz")


def load_kmr(name: str) -> keras.Model:
    with warnings.catch_warnings():
        # A compiled KMR model's Adam state has 4 slots per GLU where ours has 2: Keras warns and
        # starts the optimizer afresh (documented in kmr_custom_objects).
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return keras.models.load_model(FIXTURES / name, custom_objects=kmr_custom_objects())


def test_fixtures_were_written_by_kmr():
    with zipfile.ZipFile(FIXTURES / "kmr_functional.keras") as archive:
        config = json.loads(archive.read("config.json"))
    glus = [
        layer for layer in config["config"]["layers"] if layer["class_name"] == "GatedLinearUnit"
    ]
    assert len(glus) == 2
    assert {layer["registered_name"] for layer in glus} == {"kerasfactory.layers>GatedLinearUnit"}
    assert set(glu_keras._kmr.KMR_REGISTERED_NAMES) == set(kmr_custom_objects())


def test_kmr_file_needs_the_custom_objects():
    with pytest.raises(TypeError, match="kerasfactory"):
        keras.models.load_model(FIXTURES / "kmr_functional.keras")


def test_sequential_kmr_file_gives_kmr_outputs(kmr_outputs):
    model = load_kmr("kmr_sequential.keras")
    glus = [layer for layer in model.layers if isinstance(layer, GatedLinearUnit)]
    assert [(g.name, g.units, len(g.trainable_weights)) for g in glus] == [
        ("gated_linear_unit", 16, 2),
        ("gated_linear_unit_1", 4, 2),
    ]
    assert np.abs(to_numpy(glus[0].bias)).max() > 1e-3  # KMR's trained, non-zero biases arrived
    y = to_numpy(model(kmr_outputs["sequential_x"]))
    np.testing.assert_allclose(y, kmr_outputs["sequential_y"], atol=KMR_ATOL, rtol=0)


class _KMRLayout(keras.layers.Layer):
    """KMR's GatedLinearUnit as DESIGN.md describes it (two Dense sublayers, ``linear`` and
    ``sigmoid``): what writes KMR's weights in a layout of our choosing (sharded, below)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.linear = keras.layers.Dense(units)
        self.sigmoid = keras.layers.Dense(units, activation="sigmoid")

    def call(self, inputs):
        return self.linear(inputs) * self.sigmoid(inputs)


# Keras finds a layer's weights in a file under its class name, snake-cased: KMR's is this one.
_KMRLayout.__name__ = _KMRLayout.__qualname__ = "GatedLinearUnit"


def _kmr_layout_model(rng) -> keras.Model:
    model = keras.Sequential([keras.Input((12,)), _KMRLayout(8)])
    model.set_weights([rng.normal(scale=0.5, size=tuple(w.shape)) for w in model.weights])
    return model


def test_quantized_kmr_weights_load_into_a_quantized_model(tmp_path, rng):
    """A KMR model quantized by Keras (its Dense sublayers in int8) saved as weights: a model
    built in code with the fused layer, quantized, takes its int8 kernels, biases and scales."""
    kmr = _kmr_layout_model(rng)
    kmr.quantize("int8")
    kmr.save_weights(tmp_path / "kmr_int8.weights.h5")
    model = keras.Sequential([keras.Input((12,)), GatedLinearUnit(8)])
    model.quantize("int8")
    model.load_weights(tmp_path / "kmr_int8.weights.h5")
    layer, kmr_layer = model.layers[0], kmr.layers[0]
    for half, dense in enumerate((kmr_layer.linear, kmr_layer.sigmoid)):
        np.testing.assert_array_equal(to_numpy(layer.kernel)[:, half], to_numpy(dense._kernel))
        np.testing.assert_array_equal(to_numpy(layer.bias)[half], to_numpy(dense.bias))
        np.testing.assert_array_equal(
            to_numpy(layer.kernel_scale)[half], to_numpy(dense.kernel_scale)
        )
    x = rng.normal(size=(6, 12)).astype("float32")
    np.testing.assert_allclose(to_numpy(model(x)), to_numpy(kmr(x)), atol=1e-5, rtol=1e-5)


def test_kmr_weights_and_quantization_must_agree(tmp_path, rng):
    """Float KMR weights into a quantized layer, int8 KMR weights into a float one: refused by name
    (the view would otherwise truncate floats into int8, or take integers as float weights)."""
    kmr = _kmr_layout_model(rng)
    kmr.save_weights(tmp_path / "kmr_float.weights.h5")
    quantized = keras.Sequential([keras.Input((12,)), GatedLinearUnit(8)])
    quantized.quantize("int8")
    with pytest.raises(ValueError, match="floating-point weights, but this layer is quantized"):
        quantized.load_weights(tmp_path / "kmr_float.weights.h5")
    kmr.quantize("int8")
    kmr.save_weights(tmp_path / "kmr_int8.weights.h5")
    floating = keras.Sequential([keras.Input((12,)), GatedLinearUnit(8)])
    with pytest.raises(ValueError, match=r"holds int8 weights, but this layer is not.*quantize"):
        floating.load_weights(tmp_path / "kmr_int8.weights.h5")


def _sequential_model(glu) -> keras.Model:
    """fixtures/make_kmr_fixtures.py's sequential_model, with ``glu`` as the GLU layer (that
    script imports KMR's layer, hence not shared)."""
    return keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Dense(32, activation="relu"),
            glu(units=16),
            keras.layers.Dense(8, activation="relu"),
            glu(units=4),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )


def test_model_built_in_code_loads_kmr_weights(kmr_outputs):
    """The migration that changes only the import: the same architecture built with our layer,
    then ``load_weights`` of KMR's file (whose GLU stores keep KMR's two Dense sublayers)."""
    model = _sequential_model(GatedLinearUnit)
    model.load_weights(FIXTURES / "kmr_sequential.keras")
    y = to_numpy(model(kmr_outputs["sequential_x"]))
    np.testing.assert_allclose(y, kmr_outputs["sequential_y"], atol=KMR_ATOL, rtol=0)


def test_lora_enabled_model_loads_kmr_weights_with_a_zero_update(kmr_outputs):
    """As any load (and Dense's): the loaded kernel is the whole function, the update restarts."""
    model = _sequential_model(lambda units: GatedLinearUnit(units=units, lora_rank=2))
    layers = [layer for layer in model.layers if isinstance(layer, GatedLinearUnit)]
    for layer in layers:
        layer.lora_kernel_b.assign(np.ones(tuple(layer.lora_kernel_b.shape), "float32"))
    model.load_weights(FIXTURES / "kmr_sequential.keras")
    for layer in layers:
        assert not np.any(to_numpy(layer.lora_kernel_a)) and not np.any(
            to_numpy(layer.lora_kernel_b)
        )
    y = to_numpy(model(kmr_outputs["sequential_x"]))
    np.testing.assert_allclose(y, kmr_outputs["sequential_y"], atol=KMR_ATOL, rtol=0)


def test_model_built_in_code_loads_sharded_kmr_weights(tmp_path, kmr_outputs):
    """KMR's weights saved in shards (``save_weights(..., max_shard_size=...)``): a GLU's two Dense
    halves sit in other shards than its own empty entry, yet load."""
    kmr = _sequential_model(_KMRLayout)
    kmr.load_weights(FIXTURES / "kmr_sequential.keras")
    kmr.save_weights(tmp_path / "kmr.weights.json", max_shard_size=2e-6)  # ~2 KB per shard
    assert len(list(tmp_path.glob("*.h5"))) > 2
    model = _sequential_model(GatedLinearUnit)
    model.load_weights(tmp_path / "kmr.weights.json")
    y = to_numpy(model(kmr_outputs["sequential_x"]))
    np.testing.assert_allclose(y, kmr_outputs["sequential_y"], atol=KMR_ATOL, rtol=0)


@pytest.mark.parametrize("half, name", [(0, "linear"), (1, "sigmoid")])
def test_kmr_sublayer_attributes_point_to_the_fused_weights(half, name):
    """KMR code reading ``layer.linear.kernel`` learns where that half lives now."""
    layer = GatedLinearUnit(units=3)
    layer.build((None, 5))
    for attribute in ("kernel", "bias", "get_weights"):
        with pytest.raises(AttributeError, match=rf"layer\.kernel\[:, {half}\].*\.{name}\."):
            getattr(getattr(layer, name), attribute)


def test_own_weights_file_missing_the_layer_still_fails(tmp_path):
    """An empty store that is not KMR's keeps Keras' error (nothing loads silently)."""
    plain = keras.Sequential([keras.Input((12,)), keras.layers.Dense(4)])
    plain.save_weights(tmp_path / "plain.weights.h5")
    model = keras.Sequential([keras.Input((12,)), GatedLinearUnit(units=2)])
    with pytest.raises(ValueError, match="could not be loaded"):
        model.load_weights(tmp_path / "plain.weights.h5")


def test_functional_rank3_multi_output_kmr_file_gives_kmr_outputs(kmr_outputs):
    model = load_kmr("kmr_functional.keras")
    assert sum(isinstance(layer, GatedLinearUnit) for layer in model.layers) == 2
    classification, regression = model(kmr_outputs["functional_x"])
    np.testing.assert_allclose(
        to_numpy(classification), kmr_outputs["functional_classification"], atol=KMR_ATOL, rtol=0
    )
    np.testing.assert_allclose(
        to_numpy(regression), kmr_outputs["functional_regression"], atol=KMR_ATOL, rtol=0
    )


def test_migrated_model_saves_as_plain_glu_keras(tmp_path, kmr_outputs):
    model = load_kmr("kmr_functional.keras")
    model.save(tmp_path / "migrated.keras")
    with zipfile.ZipFile(tmp_path / "migrated.keras") as archive:
        text = archive.read("config.json").decode()
    assert "kerasfactory" not in text and "kmr." not in text
    reloaded = keras.models.load_model(tmp_path / "migrated.keras")  # `import glu_keras` only
    classification, _ = reloaded(kmr_outputs["functional_x"])
    np.testing.assert_allclose(
        to_numpy(classification), kmr_outputs["functional_classification"], atol=KMR_ATOL, rtol=0
    )


def test_migrated_compiled_model_keeps_training(kmr_outputs):
    model = load_kmr("kmr_sequential.keras")
    x = kmr_outputs["sequential_x"]
    y = (x[:, :1] > 0).astype("float32")
    before = to_numpy(model.layers[1].kernel)
    history = model.fit(x, y, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert not np.allclose(before, to_numpy(model.layers[1].kernel))


def test_kmr_weights_with_wrong_shape_are_refused():
    view = GatedLinearUnit(4)
    view.build((None, 3))
    with pytest.raises(ValueError, match=r"kernel of shape \(5, 4\).*\(3, 4\)"):
        view.linear.load_own_variables({"0": np.zeros((5, 4)), "1": np.zeros(4)})


def test_copied_layer_loads_kmr_weights_into_itself():
    import copy

    layer = GatedLinearUnit(2)
    layer.build((None, 3))
    assert layer.linear is layer.linear and layer.linear.owner() is layer  # stable, for Keras
    clone = copy.deepcopy(layer)
    clone.sigmoid.load_own_variables({"0": np.ones((3, 2)), "1": np.full(2, 5.0)})
    np.testing.assert_array_equal(to_numpy(clone.kernel)[:, 1], 1.0)
    np.testing.assert_array_equal(to_numpy(clone.bias)[1], 5.0)
    assert not np.any(to_numpy(layer.bias) == 5.0)
