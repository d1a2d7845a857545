"""Exporting a model for serving, ``model.export``, with the formats Keras offers on this backend.

torch: ONNX, run by onnxruntime (Keras exports a signature with a dynamic batch size through the
TorchScript exporter, one with static shapes through the dynamo exporter; both are covered). JAX
and TensorFlow: a TF SavedModel, reloaded with ``tf.saved_model.load``. TensorFlow: LiteRT, run by
the TFLite interpreter. (Keras itself fails on a model of plain ``Dense`` layers with
tf_saved_model under torch on this machine; ONNX under JAX and TensorFlow needs jax2onnx and
tf2onnx, not installed here: see the README for what was found with them.)

Exported and Keras outputs come from different kernels (onnxruntime's, XLA's or TensorFlow's
against the backend's), so they agree to float32 rounding, not bit for bit: for these few layers of
width <= 10, some 10 unit roundoffs (~6e-7) of the output's magnitude per layer. The bound, 1e-5 of
the largest output, leaves a margin of ~10 and is still ~1e5 below what a wrong export gives (a
missing epilogue, an uninitialised buffer: errors of the output's own size).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras_helpers import to_numpy

from glu_keras import GatedLinearUnit, _int8

pytestmark = pytest.mark.keras

BACKEND = keras.backend.backend()


def _model(rng, gelu: str = "gelu", int8: bool = False) -> keras.Model:
    inputs = keras.Input((3, 10))
    x = GatedLinearUnit(8, activation="silu")(inputs)
    x = x * GatedLinearUnit(8, activation=gelu, use_bias=False)(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(GatedLinearUnit(4)(x)))
    for w in model.weights:
        w.assign(rng.uniform(-1.0, 1.0, size=tuple(w.shape)))
    if int8:  # the GLU layers only: Keras' int8 Dense does not convert to LiteRT here
        model.quantize("int8", filters=lambda layer: isinstance(layer, GatedLinearUnit))
        assert [layer.quantization_mode for layer in model.layers[1:]] == ["int8"] * 3 + [None]
    model(np.zeros((2, 3, 10), "float32"))  # Keras exports called models only
    return model


QUANTIZATION = pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])


def _assert_export_matches(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.skipif(BACKEND != "torch", reason="Keras exports ONNX from torch here (see doc)")
@QUANTIZATION
@pytest.mark.parametrize("dynamo", [False, True], ids=["dynamic_batch", "static_batch"])
def test_keras_onnx_export_runs_in_onnxruntime(tmp_path, rng, monkeypatch, dynamo, int8):
    """Keras picks the exporter by the signature: TorchScript's for a dynamic batch size,
    dynamo's for static shapes (and falls back to TorchScript's, silently, if dynamo's fails:
    hence the spy)."""
    import torch

    ort = pytest.importorskip("onnxruntime")
    if int8 and not dynamo:
        pytest.skip("Keras' int8 quantizer does not export with a dynamic batch (int8 Dense alike)")
    exporters = []
    export = torch.onnx.export

    def spy(*args, **kwargs):
        exporters.append(kwargs.get("dynamo"))
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", spy)
    # eager int8 layers of any size multiply with torch._int_mm, which ONNX lacks: the export
    # records the dequantized way (glu_keras/_int8.py), the same values to a float32 GEMM's rounding
    monkeypatch.setattr(_int8, "TORCH_INTEGER_MIN_FEATURES", 1)
    model = _model(rng, int8=int8)
    batches = [4] if dynamo else [4, 7]
    signature = [keras.InputSpec(shape=(4, 3, 10), dtype="float32")] if dynamo else None
    path = str(tmp_path / "model.onnx")
    model.export(path, format="onnx", verbose=False, input_signature=signature)
    assert exporters == [dynamo], f"Keras ran the exporters {exporters}"
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in batches:
        x = rng.normal(size=(batch, 3, 10)).astype("float32")
        (got,) = session.run(None, {session.get_inputs()[0].name: x})
        _assert_export_matches(got, to_numpy(model(x)))


@pytest.mark.skipif(BACKEND == "torch", reason="Keras' tf_saved_model export fails under torch")
@QUANTIZATION
def test_keras_tf_saved_model_export_serves(tmp_path, rng, int8):
    import tensorflow as tf

    model = _model(rng, int8=int8)
    path = str(tmp_path / "saved")
    model.export(path, format="tf_saved_model", verbose=False)
    served = tf.saved_model.load(path)
    for batch in [4, 7]:
        x = rng.normal(size=(batch, 3, 10)).astype("float32")
        _assert_export_matches(served.serve(x).numpy(), to_numpy(model(x)))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="LiteRT export of this model: TensorFlow")
@QUANTIZATION
def test_keras_litert_export_runs_in_the_tflite_interpreter(tmp_path, rng, int8):
    import tensorflow as tf

    # GeGLU's exact form computes erfc, which LiteRT has no builtin op for (converting it needs
    # SELECT_TF_OPS); the tanh form converts
    model = _model(rng, gelu="gelu_tanh", int8=int8)
    path = str(tmp_path / "model.tflite")
    model.export(path, format="litert", verbose=False)
    interpreter = tf.lite.Interpreter(model_path=path)
    # builtin elementwise ops only: no control flow (an IF would keep two copies of the epilogue
    # and break integer-only quantization), no Flex or custom ops (TensorFlow kernels at run time)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not {op for op in ops if op in ("IF", "WHILE", "CUSTOM") or op.startswith("Flex")}, ops
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    for batch in [4, 7]:
        x = rng.normal(size=(batch, 3, 10)).astype("float32")
        interpreter.resize_tensor_input(inp["index"], x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        _assert_export_matches(interpreter.get_tensor(out["index"]), to_numpy(model(x)))
