"""int8 quantization (``model.quantize("int8")``): the values of Keras' ``Dense`` int8 scheme, as
for KMR's two sublayers, saved and loaded, trainable where ``Dense`` is (this backend).

Oracles: Keras' own quantized ``Dense`` pair (KMR's layer, quantized by the same call), and the
float64 reference evaluated on the int8 operands scaled back exactly. The tolerance is the float32
one of tests/tolerances.py: both ways of multiplying (an int8 GEMM, exact, then float32 scales and
epilogue; or a float32 GEMM on the scaled-back operands) round like one float32 GEMM of the same
operands or better. The tests of values run both ways on every backend (``int8_path``), whichever
the layer would choose for their small shapes.
"""

from __future__ import annotations

import warnings

import h5py
import keras
import numpy as np
import pytest
from keras_helpers import behind_a_dense, kmr_style_twin, numpy_glu, to_numpy
from tolerances import assert_close, output_scale

import glu_kernels
from glu_keras import GatedLinearUnit, _int8
from glu_kernels.reference import glu_reference

pytestmark = pytest.mark.keras

ACTIVATIONS = ("sigmoid", "silu", "gelu", "gelu_tanh", "relu", "linear")


def quantized(units=8, input_dim=12, rng=None, *, config=None, **kwargs) -> GatedLinearUnit:
    layer = GatedLinearUnit(units, **kwargs)
    layer.build((None, input_dim))
    rng = rng or np.random.default_rng(0)
    layer.set_weights([rng.normal(scale=0.5, size=tuple(w.shape)) for w in layer.weights])
    layer.quantize("int8", config=config)
    return layer


def scaled_back_operands(layer, x):
    """float64 ``(x_int8 / x_scale, kernel_int8 / kernel_scale)``: the exact values the quantized
    layer multiplies (x rounded per row by Keras' own quantizer on this backend, as the layer
    does)."""
    x_int8, x_scale = keras.quantizers.AbsMaxQuantizer()(keras.ops.convert_to_tensor(x), axis=-1)
    x_q = to_numpy(x_int8).astype(np.float64) / to_numpy(x_scale).astype(np.float64)
    kernel = to_numpy(layer.kernel).astype(np.float64) / to_numpy(layer.kernel_scale)
    return x_q, kernel


def assert_matches_reference(layer, x, y, activation="sigmoid", dtype="float32"):
    x_q, kernel = scaled_back_operands(layer, x)
    bias = to_numpy(layer.bias) if layer.use_bias else None
    expected = glu_reference(x_q, kernel, bias, activation)
    scale = output_scale(x_q, kernel, bias, activation)
    assert_close(to_numpy(y), expected, scale, dtype, what=f"int8 GatedLinearUnit {activation}")


def test_model_quantize_gives_keras_int8_values_of_kmr_sublayers(rng, int8_path):
    """``model.quantize("int8")`` on the fused layer and on KMR's two ``Dense`` sublayers holding
    the same weights: the same int8 kernels and scales, bit for bit, and the same outputs."""
    layer = GatedLinearUnit(8)
    layer.build((None, 12))
    layer.set_weights([rng.normal(scale=0.5, size=tuple(w.shape)) for w in layer.weights])
    twin = kmr_style_twin(layer)
    fused = keras.Sequential([keras.Input((12,)), layer])
    unfused = keras.Sequential([keras.Input((12,)), twin])
    x = rng.normal(size=(16, 12)).astype("float32")
    float_y = to_numpy(fused(x))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fused.quantize("int8")
    assert not [w for w in caught if "GatedLinearUnit" in str(w.message)]
    unfused.quantize("int8")

    assert layer.quantization_mode == "int8" and layer.dtype_policy.name == "int8_from_float32"
    assert keras.backend.standardize_dtype(layer.kernel.dtype) == "int8"
    assert layer.trainable_weights == [layer.bias]
    for half, dense in enumerate((twin.linear, twin.sigmoid)):
        assert dense.quantization_mode == "int8"
        np.testing.assert_array_equal(to_numpy(layer.kernel)[:, half], to_numpy(dense._kernel))
        np.testing.assert_array_equal(
            to_numpy(layer.kernel_scale)[half], to_numpy(dense.kernel_scale)
        )
    y = fused(x)
    x_q, kernel = scaled_back_operands(layer, x)
    scale = output_scale(x_q, kernel, to_numpy(layer.bias), "sigmoid")
    # Keras' Dense pair rounds like the fused layer (one float32 GEMM's worth): twice the bound.
    assert_close(to_numpy(y), to_numpy(unfused(x)), 2 * scale, "float32", what="int8 vs KMR int8")
    assert_matches_reference(layer, x, y)
    assert np.abs(to_numpy(y) - float_y).max() > 1e-3  # it did quantize


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_quantized_layer_matches_reference_on_its_int8_operands(activation, rng, int8_path):
    layer = quantized(16, 24, rng, activation=activation)
    x = rng.normal(size=(4, 3, 24)).astype("float32")
    y = layer(x)
    assert tuple(y.shape) == (4, 3, 16)
    assert_matches_reference(layer, x, y, activation)


def test_without_bias(rng, int8_path):
    layer = quantized(8, 12, rng, use_bias=False)
    x = rng.normal(size=(5, 12)).astype("float32")
    assert_matches_reference(layer, x, layer(x))


# (backend, compute dtype, input_dim, units) -> the way glu_keras/_int8.py's measurements chose
_INTEGER_WHERE = {
    ("jax", "float32", 12, 8): True,
    ("jax", "float32", 256, 256): True,
    ("jax", "float32", 511, 8): True,
    ("jax", "float32", 512, 8): True,
    ("jax", "mixed_bfloat16", 512, 8): True,
    ("torch", "float32", 12, 8): False,
    ("torch", "float32", 256, 256): False,  # input_dim below the bound (512)
    ("torch", "float32", 511, 8): False,
    ("torch", "float32", 512, 8): True,
    ("torch", "mixed_bfloat16", 512, 8): False,
    ("tensorflow", "float32", 12, 8): False,
    ("tensorflow", "float32", 256, 256): False,
    ("tensorflow", "float32", 511, 8): False,
    ("tensorflow", "float32", 512, 8): False,
    ("tensorflow", "mixed_bfloat16", 512, 8): False,
}


@pytest.mark.parametrize(
    "dtype, input_dim, units",
    sorted({key[1:] for key in _INTEGER_WHERE}),
    ids=lambda v: str(v),
)
def test_the_way_of_multiplying_is_the_measured_choice(dtype, input_dim, units, monkeypatch, rng):
    """int8 GEMM (``integer_preactivation``) or one fused glu on the scaled-back operands, as
    measured per backend, compute dtype and kernel size (glu_keras/_int8.py)."""
    key = (keras.backend.backend(), dtype, input_dim, units)
    paths = []

    def counted(name, fn):
        return lambda *args, **kwargs: paths.append(name) or fn(*args, **kwargs)

    monkeypatch.setattr(
        _int8, "integer_preactivation", counted("int8", _int8.integer_preactivation)
    )
    monkeypatch.setattr(glu_kernels, "glu", counted("glu", glu_kernels.glu))
    layer = quantized(units, input_dim, rng, dtype=dtype)
    layer(rng.normal(size=(3, input_dim)).astype("float32"))
    assert paths == (["int8"] if _INTEGER_WHERE[key] else ["glu"])


@pytest.mark.parametrize("shape", [(0, 12), (2, 0, 12)], ids=str)
def test_an_empty_batch_gives_an_empty_output(shape, int8_path):
    """No rows to round: an empty (..., units) output (Keras' int8 Dense raises here under torch
    and TensorFlow, "Cannot compute the max of an empty tensor")."""
    layer = quantized(8, 12)
    y = layer(np.zeros(shape, "float32"))
    assert tuple(y.shape) == (*shape[:-1], 8)
    assert keras.backend.standardize_dtype(y.dtype) == "float32"


def test_inputs_quantized_to_another_integer_type_are_not_multiplied_in_int8(rng):
    """An int16 input quantizer (Keras accepts it; only the kernel must be int8): the operands are
    scaled back, on every backend (an int16 x int8 product overflowed XLA's int16 sums, and
    ``torch._int_mm`` takes int8 only)."""
    quantizer = keras.quantizers.AbsMaxQuantizer(output_dtype="int16")
    config = keras.quantizers.Int8QuantizationConfig(activation_quantizer=quantizer)
    layer = quantized(8, 512, rng, config=config, activation="silu")  # integer-sized D
    x = rng.normal(size=(4, 512)).astype("float32")
    x_int16, x_scale = quantizer(keras.ops.convert_to_tensor(x), axis=-1)
    x_q = to_numpy(x_int16).astype(np.float64) / to_numpy(x_scale).astype(np.float64)
    kernel = to_numpy(layer.kernel).astype(np.float64) / to_numpy(layer.kernel_scale)
    bias = to_numpy(layer.bias)
    expected = glu_reference(x_q, kernel, bias, "silu")
    scale = output_scale(x_q, kernel, bias, "silu")
    assert_close(to_numpy(layer(x)), expected, scale, "float32", what="int16-input int8 layer")


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch's device and recording")
def test_torch_multiplies_in_int8_on_the_cpu_only_and_not_while_recording(monkeypatch, rng):
    """CUDA's ``_int_mm`` has size rules (rows > 16, sizes multiple of 8) and was not measured;
    ``torch.jit.trace`` records for TorchScript's ONNX exporter, which lacks ``_int_mm``."""
    import torch

    quantizer, shape = keras.quantizers.AbsMaxQuantizer(), (512, 2, 8)
    cpu, meta = torch.empty(4, 512), torch.empty(4, 512, device="meta")
    assert _int8.multiplies_in_int8(cpu, quantizer, shape, "float32")
    assert not _int8.multiplies_in_int8(meta, quantizer, shape, "float32")
    paths = []
    integer = _int8.integer_preactivation
    monkeypatch.setattr(
        _int8, "integer_preactivation", lambda *a, **k: paths.append("int8") or integer(*a, **k)
    )
    layer = quantized(8, 512, rng)
    x = torch.randn(4, 512)
    layer(x)
    assert paths == ["int8"]
    traced = torch.jit.trace(layer, (x,), check_trace=False)  # a Keras torch layer is a Module
    assert paths == ["int8"]  # not while tracing
    np.testing.assert_allclose(to_numpy(traced(x)), to_numpy(layer(x)), rtol=1e-5, atol=1e-5)


def test_weight_only_config_keeps_inputs_in_float_and_survives_saving(tmp_path, rng):
    config = keras.quantizers.Int8QuantizationConfig(
        weight_quantizer=keras.quantizers.AbsMaxQuantizer(axis=0), activation_quantizer=None
    )
    layer = quantized(8, 12, rng, config=config)
    assert layer.inputs_quantizer is None
    x = rng.normal(size=(6, 12)).astype("float32")
    y = layer(x)
    kernel = to_numpy(layer.kernel).astype(np.float64) / to_numpy(layer.kernel_scale)
    bias = to_numpy(layer.bias)
    assert_close(
        to_numpy(y),
        glu_reference(x, kernel, bias),
        output_scale(x, kernel, bias, "sigmoid"),
        "float32",
        what="weight-only int8",
    )
    model = keras.Sequential([keras.Input((12,)), layer])
    model.save(tmp_path / "weight_only.keras")
    loaded = keras.models.load_model(tmp_path / "weight_only.keras").layers[0]
    assert loaded.inputs_quantizer is None
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(y))


def test_quantized_model_saves_and_loads_bit_for_bit(tmp_path, rng):
    model = keras.Sequential([keras.Input((12,)), GatedLinearUnit(8, activation="silu")])
    model.layers[0].set_weights(
        [rng.normal(scale=0.5, size=tuple(w.shape)) for w in model.layers[0].weights]
    )
    model.quantize("int8")
    x = rng.normal(size=(5, 12)).astype("float32")
    path = tmp_path / "int8.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    layer, original = loaded.layers[0], model.layers[0]
    assert layer.dtype_policy.name == "int8_from_float32" and layer.activation == "silu"
    assert keras.backend.standardize_dtype(layer.kernel.dtype) == "int8"
    for a, b in zip(layer.weights, original.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))
    weights = tmp_path / "int8.weights.h5"
    model.save_weights(weights)
    with h5py.File(weights) as f:  # Dense's int8 layout, which files of this version keep
        stored = f["layers/gated_linear_unit/vars"]
        assert sorted(stored) == ["0", "1", "2"]
        variables = (original.kernel, original.bias, original.kernel_scale)
        for key, variable in zip("012", variables, strict=True):
            np.testing.assert_array_equal(stored[key][()], to_numpy(variable))
        assert [stored[key].dtype for key in "012"] == [np.int8, np.float32, np.float32]
    fresh = keras.Sequential([keras.Input((12,)), GatedLinearUnit(8, activation="silu")])
    fresh.quantize("int8")
    fresh.load_weights(weights)
    np.testing.assert_array_equal(to_numpy(fresh(x)), to_numpy(model(x)))


def test_training_after_quantization_matches_kmr_int8_sublayers(rng, int8_path):
    """One SGD step through Dense -> quantized GLU, against Dense -> KMR's layer whose two Dense
    are quantized: the kernel stays frozen, the bias trains, and the input gradient passes
    straight through the rounding of the inputs, as in Keras' int8 Dense (the first Dense's
    update)."""
    x = rng.normal(size=(16, 6)).astype("float32")
    target = rng.normal(size=(16, 8)).astype("float32")
    layer = GatedLinearUnit(8)
    layer.build((None, 12))
    layer.set_weights([rng.normal(scale=0.5, size=tuple(w.shape)) for w in layer.weights])
    twin = kmr_style_twin(layer)
    first = rng.normal(scale=0.5, size=(6, 12)).astype("float32")
    models = [behind_a_dense(glu_layer, first, 0.1) for glu_layer in (layer, twin)]
    layer.quantize("int8")
    twin.linear.quantize("int8")
    twin.sigmoid.quantize("int8")
    kernel_before = to_numpy(layer.kernel)
    for model in models:
        model.train_on_batch(x, target)
    np.testing.assert_array_equal(to_numpy(layer.kernel), kernel_before)
    bias = to_numpy(layer.bias)
    assert not np.allclose(bias, 0)
    np.testing.assert_allclose(bias[0], to_numpy(twin.linear.bias), atol=2e-5)
    np.testing.assert_allclose(bias[1], to_numpy(twin.sigmoid.bias), atol=2e-5)
    fused_first, unfused_first = (to_numpy(m.layers[0].kernel) for m in models)
    assert np.abs(fused_first - first).max() > 1e-3  # the gradient reached the first layer
    np.testing.assert_allclose(fused_first, unfused_first, atol=2e-5)


def test_mixed_bfloat16_quantized(monkeypatch, rng, int8_path):
    """bfloat16 compute: the kernel is scaled back in float32 (the scale is read unrounded inside
    the call, where Keras' autocast would round float32 variables to bfloat16), rounded once."""
    scale_dtypes = []

    def spy(fn, scale_position):
        def wrapped(*args, **kwargs):
            scale = args[scale_position]
            scale_dtypes.append(keras.backend.standardize_dtype(scale.dtype))
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(_int8, "integer_preactivation", spy(_int8.integer_preactivation, 2))
    monkeypatch.setattr(_int8, "dequantized", spy(_int8.dequantized, 1))
    layer = quantized(8, 12, rng, dtype="mixed_bfloat16")
    assert layer.dtype_policy.name == "int8_from_mixed_bfloat16"
    x = rng.normal(size=(6, 12)).astype("float32")
    y = layer(x)
    assert scale_dtypes == ["float32"]
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    x16 = to_numpy(keras.ops.cast(x, "bfloat16"))
    assert_matches_reference(layer, x16, y, dtype="bfloat16")


def test_dequantized_kernel_is_rounded_once_from_float32(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    kernel = rng.integers(-127, 128, size=(12, 2, 8)).astype("int8")
    scale = rng.uniform(1.0, 300.0, size=(2, 8)).astype("float32")
    got = _int8.dequantized(
        keras.ops.convert_to_tensor(kernel), keras.ops.convert_to_tensor(scale), "bfloat16"
    )
    want = (kernel.astype("float32") / scale).astype(ml_dtypes.bfloat16).astype("float32")
    np.testing.assert_array_equal(to_numpy(got), want)


def test_setting_an_int8_dtype_policy_quantizes(rng):
    layer = GatedLinearUnit(8)
    layer.build((None, 12))
    layer.dtype_policy = "int8_from_float32"
    assert keras.backend.standardize_dtype(layer.kernel.dtype) == "int8"
    x = rng.normal(size=(3, 12)).astype("float32")
    assert_matches_reference(layer, x, layer(x))


@pytest.mark.parametrize("mode", ["int4", "float8"])
def test_other_modes_are_refused_by_name_and_model_quantize_leaves_the_layer_as_it_was(mode, rng):
    layer = GatedLinearUnit(8)
    layer.build((None, 12))
    with pytest.raises(
        NotImplementedError,
        match=rf"^GatedLinearUnit quantizes to mode='int8' only\. Received: mode='{mode}'$",
    ):
        layer.quantize(mode)
    model = keras.Sequential([keras.Input((12,)), layer])
    with pytest.warns(UserWarning, match=f"Received: mode='{mode}'"):
        model.quantize(mode)
    assert layer.quantization_mode is None
    assert keras.backend.standardize_dtype(layer.kernel.dtype) == "float32"


@pytest.mark.parametrize("mode", ["int4", "float8"])
def test_other_modes_set_as_a_dtype_policy_leave_the_layer_working_in_floating_point(
    mode, tmp_path, rng
):
    """Keras' dtype_policy setter applies the policy before it calls quantize: the refusal undoes
    it."""
    layer = GatedLinearUnit(8)
    layer.build((None, 12))
    policy = "int4/-1_from_float32" if mode == "int4" else "float8_from_float32"
    with pytest.raises(NotImplementedError, match=f"Received: mode='{mode}'"):
        layer.dtype_policy = policy
    assert layer.dtype_policy.name == "float32" and layer.quantization_mode is None
    x = rng.normal(size=(3, 12)).astype("float32")
    kernel, bias = (to_numpy(w) for w in layer.weights)
    np.testing.assert_allclose(to_numpy(layer(x)), numpy_glu(x, kernel, bias), atol=1e-5)
    keras.Sequential([keras.Input((12,)), layer]).save_weights(tmp_path / "float.weights.h5")


@pytest.mark.parametrize("policy", ["int4_from_float32", "float8_from_float32"])
def test_other_quantized_dtype_policies_in_the_constructor_are_refused_by_name(policy):
    layer = GatedLinearUnit(4, dtype=policy)
    mode = policy.split("_from_")[0]
    with pytest.raises(
        NotImplementedError,
        match=rf"^GatedLinearUnit quantizes to mode='int8' only\. Received: mode='{mode}'$",
    ):
        layer(np.ones((2, 6), "float32"))


def test_float_config_has_no_quantization_entry():
    """Files of float layers stay loadable by versions without quantization support."""
    assert "quantization_config" not in GatedLinearUnit(4).get_config()


def test_subclasses_are_not_quantized_by_type_check():
    class Custom(GatedLinearUnit):
        pass

    layer = Custom(4)
    layer.build((None, 6))
    with pytest.raises(NotImplementedError, match="Custom does not have a `quantize` method"):
        layer.quantize("int8")


def test_keras_refusals_apply():
    layer = GatedLinearUnit(4)
    with pytest.raises(ValueError, match="isn't yet built"):
        layer.quantize("int8")
    layer.build((None, 6))
    layer.quantize("int8")
    with pytest.raises(ValueError, match="already quantized"):
        layer.quantize("int8")
