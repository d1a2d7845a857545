"""Every example of KMR's documentation of GatedLinearUnit (docs/layers/gated-linear-unit.md),
unchanged but for the import, plus a subclassed model: the drop-in promise.

Small data and a single epoch where the docs compile a model, to keep the suite fast.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from glu_keras import GatedLinearUnit

pytestmark = pytest.mark.keras


def fit_once(model, x, y):
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert all(np.isfinite(v[-1]) for v in history.history.values())


def test_basic_usage():
    batch_size, input_dim = 32, 16
    x = keras.random.normal((batch_size, input_dim))
    glu = GatedLinearUnit(units=8)
    output = glu(x)
    assert tuple(x.shape) == (32, 16) and tuple(output.shape) == (32, 8)


def test_sequential_model_compile_fit(rng):
    model = keras.Sequential(
        [
            keras.layers.Dense(32, activation="relu"),
            GatedLinearUnit(units=16),
            keras.layers.Dense(8, activation="relu"),
            GatedLinearUnit(units=4),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    x = rng.normal(size=(32, 12)).astype("float32")
    fit_once(model, x, (x[:, :1] > 0).astype("float32"))
    assert tuple(model.predict(x[:5], verbose=0).shape) == (5, 1)


def test_functional_model(rng):
    inputs = keras.Input(shape=(20,))
    x = GatedLinearUnit(units=16)(inputs)
    x = keras.layers.Dense(32, activation="relu")(x)
    x = GatedLinearUnit(units=16)(x)
    x = keras.layers.Dense(8, activation="relu")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    assert model.output_shape == (None, 1)
    assert tuple(model(rng.normal(size=(3, 20)).astype("float32")).shape) == (3, 1)


def test_advanced_configuration_multi_output(rng):
    def create_gated_network():
        inputs = keras.Input(shape=(30,))
        x = GatedLinearUnit(units=32)(inputs)
        x = keras.layers.Dense(64, activation="relu")(x)
        x = GatedLinearUnit(units=32)(x)
        x = keras.layers.Dense(32, activation="relu")(x)
        x = GatedLinearUnit(units=16)(x)
        x = keras.layers.Dense(8, activation="relu")(x)
        classification = keras.layers.Dense(3, activation="softmax", name="classification")(x)
        regression = keras.layers.Dense(1, name="regression")(x)
        return keras.Model(inputs, [classification, regression])

    model = create_gated_network()
    model.compile(
        optimizer="adam",
        loss={"classification": "categorical_crossentropy", "regression": "mse"},
        loss_weights={"classification": 1.0, "regression": 0.5},
    )
    x = rng.normal(size=(32, 30)).astype("float32")
    labels = np.eye(3, dtype="float32")[rng.integers(0, 3, size=32)]
    targets = {"classification": labels, "regression": x[:, :1]}
    fit_once(model, x, targets)


def test_example1_information_flow_control_with_batchnorm():
    def create_controlled_flow_network():
        inputs = keras.Input(shape=(25,))
        x = keras.layers.Dense(64, activation="relu")(inputs)
        x = keras.layers.BatchNormalization()(x)
        x = GatedLinearUnit(units=32)(x)
        x = keras.layers.Dense(32, activation="relu")(x)
        x = GatedLinearUnit(units=16)(x)
        x = keras.layers.Dense(16, activation="relu")(x)
        x = GatedLinearUnit(units=8)(x)
        outputs = keras.layers.Dense(1, activation="sigmoid")(x)
        return keras.Model(inputs, outputs)

    model = create_controlled_flow_network()
    model.compile(optimizer="adam", loss="binary_crossentropy")
    sample_data = keras.random.normal((100, 25))
    predictions = model(sample_data)
    assert tuple(predictions.shape) == (100, 1)
    fit_once(model, sample_data, keras.ops.ones((100, 1)))


def test_example2_feature_filtering_analysis():
    inputs = keras.Input(shape=(10,))
    x = GatedLinearUnit(units=5)(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    test_inputs = [
        keras.ops.convert_to_tensor([[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]]),
        keras.ops.convert_to_tensor([[0, 1, 0, 0, 0, 0, 0, 0, 0, 0]]),
        keras.ops.convert_to_tensor([[1, 1, 1, 1, 1, 0, 0, 0, 0, 0]]),
        keras.ops.convert_to_tensor([[0, 0, 0, 0, 0, 1, 1, 1, 1, 1]]),
    ]
    for test_input in test_inputs:  # integer inputs, as in the docs
        prediction = model(test_input)
        # The docs print prediction.numpy()[0][0], which only TensorFlow tensors have (KMR's layer
        # fails there the same way on jax and torch); convert_to_numpy is the portable spelling.
        value = keras.ops.convert_to_numpy(prediction)[0][0]
        assert 0.0 < value < 1.0


def test_example3_attention_like_feature_gate():
    def create_attention_like_network():
        inputs = keras.Input(shape=(20,))
        attention_gate = GatedLinearUnit(units=20)(inputs)
        attended_features = inputs * attention_gate
        x = keras.layers.Dense(32, activation="relu")(attended_features)
        x = keras.layers.Dropout(0.2)(x)
        x = keras.layers.Dense(16, activation="relu")(x)
        outputs = keras.layers.Dense(1, activation="sigmoid")(x)
        return keras.Model(inputs, outputs)

    model = create_attention_like_network()
    model.compile(optimizer="adam", loss="binary_crossentropy")
    sample_data = keras.random.normal((50, 20))
    predictions = model(sample_data)
    assert tuple(predictions.shape) == (50, 1)


def test_subclassed_model_trains_and_saves(tmp_path, rng):
    class Tower(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.glu1 = GatedLinearUnit(16)
            self.norm = keras.layers.BatchNormalization()
            self.glu2 = GatedLinearUnit(8, activation="silu")
            self.head = keras.layers.Dense(1)

        def call(self, x, training=False):
            return self.head(self.glu2(self.norm(self.glu1(x), training=training)))

    model = Tower()
    model.compile(optimizer="adam", loss="mse")
    x = rng.normal(size=(32, 5, 12)).astype("float32")  # rank 3
    fit_once(model, x, rng.normal(size=(32, 5, 1)).astype("float32"))
    assert len(model.glu1.trainable_weights) == 2
    model.save_weights(tmp_path / "tower.weights.h5")
    clone = Tower()
    clone(x[:1])
    clone.load_weights(tmp_path / "tower.weights.h5")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(clone(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6
    )
