"""LoRA (``enable_lora``, ``lora_rank=``): Keras' ``Dense`` protocol on the packed kernel (this
backend).

Oracles: the float64 reference with the merged kernel ``W + (alpha / rank) * A @ B``, and a Keras
``Dense(2 * units)`` with ``enable_lora`` holding the same packed weights (the same
parametrization: one adapter on [W | V]) followed by the GLU formula, for a training step.

Tolerance: the layer computes ``x @ W + b + s * (x @ A) @ B``, two products added, not one GEMM on
the merged kernel. Its error scale is the suite's ``output_scale`` of the augmented product
``[x, s * x @ A] @ [W; B]`` (the same sum), doubled for the rounding of ``x @ A`` itself, whose
error is bounded by the same terms.
"""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
from keras_helpers import behind_a_dense, to_numpy
from tolerances import assert_close, output_scale

from glu_keras import GatedLinearUnit
from glu_kernels.reference import glu_reference

pytestmark = pytest.mark.keras


def lora_layer(units=8, input_dim=12, rank=3, alpha=6.0, rng=None, **kwargs) -> GatedLinearUnit:
    """A built layer with random weights and a random (non-zero) LoRA update."""
    rng = rng or np.random.default_rng(0)
    layer = GatedLinearUnit(units, **kwargs)
    layer.build((None, input_dim))
    layer.set_weights([rng.normal(scale=0.5, size=tuple(w.shape)) for w in layer.weights])
    layer.enable_lora(rank, lora_alpha=alpha)
    layer.lora_kernel_a.assign(rng.normal(scale=0.5, size=(input_dim, rank)))
    layer.lora_kernel_b.assign(rng.normal(scale=0.5, size=(rank, 2, units)))
    return layer


def float64(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


def weights_of(layer):
    """float64 kernel (D, 2U), bias (2U,) or None, A (D, r), B (r, 2U), and alpha / rank."""
    kernel = float64(layer.kernel)
    if layer.quantization_mode == "int8":
        kernel = kernel / float64(layer.kernel_scale)
    kernel = kernel.reshape(kernel.shape[0], -1)
    bias = float64(layer.bias).reshape(-1) if layer.use_bias else None
    a = float64(layer.lora_kernel_a)
    b = float64(layer.lora_kernel_b).reshape(layer.lora_rank, -1)
    return kernel, bias, a, b, layer.lora_alpha / layer.lora_rank


def assert_matches_reference(layer, x, y, activation="sigmoid", dtype="float32", x_product=None):
    """``y`` against the float64 reference; ``x_product``: what multiplies the kernel (x rounded
    to int8 and scaled back, for an int8 layer), the LoRA branch taking x itself."""
    kernel, bias, a, b, s = weights_of(layer)
    x = np.asarray(x, np.float64)
    x_product = x if x_product is None else x_product
    lora = s * (x @ a)
    augmented_x = np.concatenate([x_product, lora], axis=-1)
    augmented_w = np.concatenate([kernel, b], axis=0)
    expected = glu_reference(augmented_x, augmented_w, bias, activation)
    scale = 2 * output_scale(augmented_x, augmented_w, bias, activation)
    assert_close(to_numpy(y), expected, scale, dtype, what=f"LoRA GatedLinearUnit {activation}")


def test_enable_lora_freezes_the_kernel_and_keeps_the_output():
    layer = GatedLinearUnit(8, activation="silu")
    layer.build((None, 12))
    x = np.random.default_rng(1).normal(size=(5, 12)).astype("float32")
    before = to_numpy(layer(x))
    layer.enable_lora(4)
    assert [w.name for w in layer.trainable_weights] == ["bias", "lora_kernel_a", "lora_kernel_b"]
    assert not layer.kernel.trainable
    assert tuple(layer.lora_kernel_a.shape) == (12, 4)
    assert tuple(layer.lora_kernel_b.shape) == (4, 2, 8)
    assert layer.lora_alpha == 4 and layer.lora_rank == 4
    # B starts at zero: the same function, computed as a matmul plus a zero update, then gated
    # (another GEMM call than glu's fused one: float32 rounding apart)
    np.testing.assert_allclose(to_numpy(layer(x)), before, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("activation", ["sigmoid", "silu", "gelu", "relu"])
def test_values_match_the_merged_kernel_reference(activation, rng):
    layer = lora_layer(rng=rng, activation=activation)
    x = rng.normal(size=(4, 3, 12)).astype("float32")
    y = layer(x)
    assert tuple(y.shape) == (4, 3, 8)
    assert_matches_reference(layer, x, y, activation)


def test_without_bias(rng):
    layer = lora_layer(rng=rng, use_bias=False)
    x = rng.normal(size=(6, 12)).astype("float32")
    assert_matches_reference(layer, x, layer(x))


class _PackedDenseGLU(keras.layers.Layer):
    """``a * sigmoid(g)`` after a ``Dense(2 * units)``: the oracle's parametrization of LoRA."""

    def __init__(self, units):
        super().__init__()
        self.units = units
        self.dense = keras.layers.Dense(2 * units)

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, x):
        h = self.dense(x)
        return h[..., : self.units] * keras.ops.sigmoid(h[..., self.units :])


def _twin_of(layer) -> _PackedDenseGLU:
    """``Dense(2U)`` + GLU holding ``layer``'s packed weights and update (int8: quantized too)."""
    kernel, bias, a, b, _ = weights_of(layer)
    twin = _PackedDenseGLU(layer.units)
    twin.build((None, kernel.shape[0]))
    twin.dense.set_weights([kernel.astype("float32"), bias.astype("float32")])
    if layer.quantization_mode == "int8":
        twin.dense.quantize("int8")
    twin.dense.enable_lora(layer.lora_rank, lora_alpha=layer.lora_alpha)
    twin.dense.lora_kernel_a.assign(a.astype("float32"))
    twin.dense.lora_kernel_b.assign(b.astype("float32"))
    return twin


def _assert_a_training_step_updates_what_the_twin_updates(layer, rng, atol=2e-5):
    """One SGD step through Dense -> ``layer`` and Dense -> its ``Dense(2U)`` twin: the same new
    A, B and bias, the same update of the first Dense (the input gradient), the kernel kept."""
    twin = _twin_of(layer)
    assert len(twin.trainable_weights) == len(layer.trainable_weights) == 3
    kernel, _, a, b, _ = weights_of(layer)
    first = rng.normal(scale=0.5, size=(6, 12)).astype("float32")
    x = rng.normal(size=(16, 6)).astype("float32")
    target = rng.normal(size=(16, 8)).astype("float32")
    models = [behind_a_dense(glu_layer, first, 0.5) for glu_layer in (layer, twin)]
    np.testing.assert_allclose(to_numpy(models[0](x)), to_numpy(models[1](x)), rtol=1e-5, atol=1e-5)
    for model in models:
        model.train_on_batch(x, target)
    new_kernel, new_bias, new_a, new_b, _ = weights_of(layer)
    np.testing.assert_array_equal(new_kernel, kernel)
    assert np.abs(new_a - a).max() > 1e-3 and np.abs(new_b - b).max() > 1e-3  # they trained
    np.testing.assert_allclose(new_a, to_numpy(twin.dense.lora_kernel_a), atol=atol)
    np.testing.assert_allclose(new_b, to_numpy(twin.dense.lora_kernel_b), atol=atol)
    np.testing.assert_allclose(new_bias, to_numpy(twin.dense.bias), atol=atol)
    fused_first, twin_first = (to_numpy(m.layers[0].kernel) for m in models)
    assert np.abs(fused_first - first).max() > 1e-3  # the gradient reached the first layer
    np.testing.assert_allclose(fused_first, twin_first, atol=atol)


def test_a_training_step_updates_what_dense_with_lora_updates(rng):
    _assert_a_training_step_updates_what_the_twin_updates(lora_layer(rng=rng, rank=2, alpha=3), rng)


def test_qlora_training_step_updates_what_int8_dense_with_lora_updates(rng, int8_path):
    """int8, then LoRA, on both ways of multiplying: the twin is Keras' int8 ``Dense(2U)`` (the
    same per-column int8 values) with the same update."""
    layer = GatedLinearUnit(8)
    layer.build((None, 12))
    layer.set_weights([rng.normal(scale=0.5, size=tuple(w.shape)) for w in layer.weights])
    layer.quantize("int8")
    layer.enable_lora(2, lora_alpha=3.0)
    layer.lora_kernel_a.assign(rng.normal(scale=0.5, size=(12, 2)))
    layer.lora_kernel_b.assign(rng.normal(scale=0.5, size=(2, 2, 8)))
    _assert_a_training_step_updates_what_the_twin_updates(layer, rng)


def test_the_update_has_the_kernel_regularizer_as_in_dense(rng):
    """Keras penalizes trainable weights only: the update's, no longer the frozen kernel's."""
    layer = lora_layer(rng=rng, kernel_regularizer=keras.regularizers.L2(0.1))
    a, b = float64(layer.lora_kernel_a), float64(layer.lora_kernel_b)
    expected = 0.1 * sum(float(np.sum(np.square(w))) for w in (a, b))
    np.testing.assert_allclose(float(sum(to_numpy(loss) for loss in layer.losses)), expected, 1e-5)


def test_a_rank_2_kernel_regularizer_penalizes_each_half_of_the_update(rng):
    """As on the kernel: a regularizer of Dense weights (OrthogonalRegularizer takes rank 2 only)
    sees each (r, U) half of the (r, 2, U) update, the penalties summed; fit runs."""
    orthogonal = keras.regularizers.OrthogonalRegularizer(0.1)
    layer = lora_layer(rng=rng, kernel_regularizer=orthogonal)
    a, b = layer.lora_kernel_a, layer.lora_kernel_b
    expected = sum(float(to_numpy(orthogonal(w))) for w in (a, b[:, 0, :], b[:, 1, :]))
    np.testing.assert_allclose(float(sum(to_numpy(loss) for loss in layer.losses)), expected, 1e-5)
    model = keras.Sequential([keras.Input((12,)), layer])
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(rng.normal(size=(8, 12)), np.zeros((8, 8)), epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_float64_stays_float64(rng):
    """Values and the saved merge in float64 (Keras' torch matmul would compute float32)."""
    layer = lora_layer(rng=rng, dtype="float64")
    x = rng.normal(size=(5, 12))
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float64"
    kernel, bias, a, b, s = weights_of(layer)
    expected = glu_reference(x, kernel + s * a @ b, bias, "sigmoid")
    assert_close(
        float64(y),
        expected,
        2 * output_scale(x, kernel + s * a @ b, bias, "sigmoid"),
        "float64",
        what="float64 LoRA",
    )
    store = {}
    layer.save_own_variables(store)
    merged = float64(store["0"]).reshape(12, -1)
    np.testing.assert_allclose(merged, kernel + s * a @ b, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("shape", [(0, 12), (2, 0, 12), (1, 0, 12)], ids=str)
def test_an_empty_batch_gives_an_empty_output(shape, rng):
    for quantize in (False, True):
        layer = lora_layer(rng=rng)
        if quantize:
            layer.quantize("int8")
        y = layer(np.zeros(shape, "float32"))
        assert tuple(y.shape) == (*shape[:-1], 8), quantize


def test_saving_merges_the_update_and_loading_restarts_from_zero(tmp_path, rng):
    layer = lora_layer(rng=rng, activation="silu")
    model = keras.Sequential([keras.Input((12,)), layer])
    x = rng.normal(size=(5, 12)).astype("float32")
    y = to_numpy(model(x))
    kernel, bias, a, b, s = weights_of(layer)
    model.save(tmp_path / "lora.keras")
    loaded = keras.models.load_model(tmp_path / "lora.keras")
    fresh = loaded.layers[0]
    assert fresh.lora_enabled and fresh.lora_rank == 3 and fresh.lora_alpha == 6.0
    assert fresh.get_config()["lora_rank"] == 3 and fresh.get_config()["lora_alpha"] == 6.0
    merged = (kernel + s * a @ b).reshape(12, 2, 8)
    np.testing.assert_allclose(to_numpy(fresh.kernel), merged, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(to_numpy(fresh.lora_kernel_a), 0)
    np.testing.assert_array_equal(to_numpy(fresh.lora_kernel_b), 0)
    assert_matches_reference(layer, x, loaded(x), "silu")
    np.testing.assert_allclose(to_numpy(loaded(x)), y, rtol=1e-5, atol=1e-5)
    model.save_weights(tmp_path / "lora.weights.h5")
    with h5py.File(tmp_path / "lora.weights.h5") as f:  # the float layout: kernel, bias
        stored = f["layers/gated_linear_unit/vars"]
        assert sorted(stored) == ["0", "1"]
        np.testing.assert_allclose(stored["0"][()], merged, rtol=1e-6, atol=1e-6)
    plain = keras.Sequential([keras.Input((12,)), GatedLinearUnit(8, activation="silu")])
    plain.load_weights(tmp_path / "lora.weights.h5")  # a merged file needs no LoRA to load
    np.testing.assert_allclose(to_numpy(plain(x)), y, rtol=1e-5, atol=1e-5)


def test_lora_rank_in_the_constructor_enables_it_at_build():
    layer = GatedLinearUnit(8, lora_rank=2, lora_alpha=4.0)
    layer.build((None, 12))
    assert layer.lora_enabled and layer.lora_alpha == 4.0
    assert [w.name for w in layer.trainable_weights] == ["bias", "lora_kernel_a", "lora_kernel_b"]


def test_mixed_bfloat16(rng):
    layer = lora_layer(rng=rng, dtype="mixed_bfloat16")
    x = rng.normal(size=(6, 12)).astype("float32")
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(layer.lora_kernel_a.dtype) == "float32"
    x16 = to_numpy(keras.ops.cast(x, "bfloat16"))
    assert_matches_reference(layer, x16, y, dtype="bfloat16")


def _rounded_to_int8(x):
    x_int8, x_scale = keras.quantizers.AbsMaxQuantizer()(keras.ops.convert_to_tensor(x), axis=-1)
    return to_numpy(x_int8).astype(np.float64) / to_numpy(x_scale).astype(np.float64)


def test_int8_then_lora_adds_the_update_on_the_unrounded_input(rng, int8_path):
    """QLoRA, as ``Dense``: the frozen int8 kernel multiplies x rounded to int8; the float32 update
    multiplies x itself. Saving merges the update and re-quantizes the kernel."""
    layer = GatedLinearUnit(8, activation="silu")
    layer.build((None, 12))
    layer.set_weights([rng.normal(scale=0.5, size=tuple(w.shape)) for w in layer.weights])
    layer.quantize("int8")
    layer.enable_lora(3, lora_alpha=6.0)
    assert [w.name for w in layer.trainable_weights] == ["bias", "lora_kernel_a", "lora_kernel_b"]
    layer.lora_kernel_a.assign(rng.normal(scale=0.5, size=(12, 3)))
    layer.lora_kernel_b.assign(rng.normal(scale=0.5, size=(3, 2, 8)))
    x = rng.normal(size=(5, 12)).astype("float32")
    y = layer(x)
    assert_matches_reference(layer, x, y, "silu", x_product=_rounded_to_int8(x))

    kernel, bias, a, b, s = weights_of(layer)
    store = {}
    layer.save_own_variables(store)
    assert sorted(store) == ["0", "1", "2"]  # Dense's int8 layout
    merged = kernel + s * a @ b
    saved_int8, saved_scale = (
        to_numpy(store[key]).reshape(12 if key == "0" else 1, -1) for key in "02"
    )
    assert keras.backend.standardize_dtype(store["0"].dtype) == "int8"
    # requantized: within half a step of the merged column's int8 grid (abs-max / 127)
    step = np.abs(merged).max(axis=0) / 127
    error = np.abs(saved_int8 / saved_scale - merged)
    np.testing.assert_array_less(error, np.broadcast_to(step / 2 + 1e-6, error.shape))


def test_quantizing_keeps_the_update_as_dense_does(rng):
    layer = lora_layer(rng=rng)
    a, b = to_numpy(layer.lora_kernel_a), to_numpy(layer.lora_kernel_b)
    layer.quantize("int8")
    assert layer.quantization_mode == "int8" and layer.lora_enabled
    np.testing.assert_array_equal(to_numpy(layer.lora_kernel_a), a)
    np.testing.assert_array_equal(to_numpy(layer.lora_kernel_b), b)
    x = rng.normal(size=(5, 12)).astype("float32")
    assert_matches_reference(layer, x, layer(x), x_product=_rounded_to_int8(x))


def test_refusals_are_dense_s():
    layer = GatedLinearUnit(8)
    with pytest.raises(ValueError, match="^Cannot enable lora on a layer that isn't yet built"):
        layer.enable_lora(2)
    layer.build((None, 12))
    layer.enable_lora(2)
    with pytest.raises(ValueError, match="^lora is already enabled"):
        layer.enable_lora(2)
    constrained = GatedLinearUnit(8, kernel_constraint="max_norm")
    constrained.build((None, 12))
    with pytest.raises(ValueError, match="^Lora is incompatible with kernel constraints"):
        constrained.enable_lora(2)
