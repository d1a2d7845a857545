"""GatedLinearUnit: construction, weights, shapes, values, gradients and config (this backend)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras_helpers import kmr_style_twin, numpy_glu, to_numpy

import glu_keras
import glu_kernels
from glu_keras import GatedLinearUnit, PerHalf

pytestmark = pytest.mark.keras

# float32 through one matmul of length D <= 24 with |x|, |w| <~ 3: a few ulps of the pre-activation.
ATOL, RTOL = 1e-5, 1e-5


def built(units=8, input_dim=16, **kwargs) -> GatedLinearUnit:
    layer = GatedLinearUnit(units, **kwargs)
    layer.build((None, input_dim))
    return layer


def randomize(layer, rng, scale=0.5):
    layer.set_weights([rng.normal(scale=scale, size=tuple(w.shape)) for w in layer.weights])


# --- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize("units", [0, -1, 3.5, "8", None, True])
def test_units_validated_as_kmr(units):
    with pytest.raises(ValueError, match=r"^units must be a positive integer, got "):
        GatedLinearUnit(units)


def test_units_validated_before_keras_init(monkeypatch):
    calls = []
    monkeypatch.setattr(keras.layers.Layer, "__init__", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match="units must be a positive integer, got 0"):
        GatedLinearUnit(0)
    assert not calls


def test_unknown_activation_lists_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"(?s)Unknown activation.*'silu'.*Received: activation='tanh'"
    ):
        GatedLinearUnit(4, activation="tanh")


def test_kmr_signature_and_name():
    layer = GatedLinearUnit(4, "my_glu")
    assert layer.name == "my_glu" and layer.units == 4 and not layer.built
    assert GatedLinearUnit(units=4, name="n", trainable=False).trainable is False


# --- weights ----------------------------------------------------------------------------------


def test_weights_created_in_build_fused_kernel_and_bias():
    layer = GatedLinearUnit(8)
    assert layer.weights == []
    layer.build((None, 16))
    assert layer.built
    assert len(layer.trainable_weights) == 2 and layer.non_trainable_weights == []
    assert tuple(layer.kernel.shape) == (16, 2, 8) and tuple(layer.bias.shape) == (2, 8)
    assert [w.path.split("/")[-1] for w in layer.weights] == ["kernel", "bias"]


def test_no_bias():
    layer = built(use_bias=False)
    assert len(layer.trainable_weights) == 1 and layer.bias is None


def test_kernel_halves_have_kmr_glorot_statistics():
    d, u = 256, 128
    kernel = to_numpy(built(u, d).kernel)
    limit = np.sqrt(6.0 / (d + u))  # glorot_uniform of a (D, U) Dense kernel, as KMR's
    for half in (kernel[:, 0], kernel[:, 1]):
        assert np.abs(half).max() <= limit
        assert half.std() == pytest.approx(limit / np.sqrt(3.0), rel=0.03)
    assert np.corrcoef(kernel[:, 0].ravel(), kernel[:, 1].ravel())[0, 1] < 0.05
    assert np.all(to_numpy(built(u, d).bias) == 0)


def test_per_half_seeded_initializer_is_reproducible_and_halves_differ():
    init = keras.initializers.GlorotUniform(seed=7)
    a = to_numpy(PerHalf(init)((10, 2, 6)))
    b = to_numpy(PerHalf(keras.initializers.GlorotUniform(seed=7))((10, 2, 6)))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[:, 0], a[:, 1])
    np.testing.assert_array_equal(a[:, 0], to_numpy(init((10, 6))))


def test_per_half_seeded_layers_share_no_half():
    """Layers seeded 0, 1, 2, ... (a common loop) get independent halves, as Dense layers do."""
    halves = [
        to_numpy(PerHalf(keras.initializers.GlorotUniform(seed=s))((10, 2, 6)))[:, k]
        for s in range(4)
        for k in range(2)
    ]
    for i, first in enumerate(halves):
        for second in halves[i + 1 :]:
            assert not np.allclose(first, second)


def test_per_half_rejects_unpacked_shapes():
    with pytest.raises(ValueError, match=r"\(\.\.\., 2, U\)\. Received: shape=\(10, 6\)"):
        PerHalf()((10, 6))


def test_regularizers_and_constraints():
    layer = built(
        4,
        3,
        kernel_regularizer=keras.regularizers.L2(0.1),
        bias_regularizer="l1",
        kernel_constraint=keras.constraints.MaxNorm(1.0, axis=0),
        bias_constraint="non_neg",
    )
    layer.set_weights([np.full((3, 2, 4), 2.0), np.full((2, 4), 1.0)])
    layer(np.ones((2, 3), "float32"))
    assert len(layer.losses) == 2
    np.testing.assert_allclose(float(to_numpy(layer.losses[0])), 0.1 * 4.0 * 24, rtol=1e-6)
    kernel = to_numpy(layer.kernel_constraint(layer.kernel))
    np.testing.assert_allclose(
        np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-6
    )  # per column, as Dense


def test_regularizers_and_constraints_act_per_half_as_on_dense(rng):
    """Rank-2 regularizers work, and a row norm (axis=1) normalises each half's rows: what they do
    on the two Dense kernels of KMR's layer."""
    layer = built(
        4,
        6,
        kernel_regularizer=keras.regularizers.OrthogonalRegularizer(0.1),
        kernel_constraint=keras.constraints.UnitNorm(axis=1),
    )
    randomize(layer, rng)
    twin = kmr_style_twin(layer)
    layer(np.ones((2, 6), "float32"))
    dense_penalty = sum(
        float(to_numpy(keras.regularizers.OrthogonalRegularizer(0.1)(d.kernel)))
        for d in (twin.linear, twin.sigmoid)
    )
    np.testing.assert_allclose(float(to_numpy(layer.losses[0])), dense_penalty, rtol=1e-5)
    constrained = to_numpy(layer.kernel.constraint(layer.kernel))
    for half, dense in ((0, twin.linear), (1, twin.sigmoid)):
        expected = to_numpy(keras.constraints.UnitNorm(axis=1)(dense.kernel))
        np.testing.assert_allclose(constrained[:, half], expected, rtol=1e-5, atol=1e-6)


# --- shapes and values ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 16), (3, 4, 16), (2, 3, 2, 16), (0, 16)])
def test_any_rank_matches_reference(shape, rng):
    layer = built(8, 16)
    randomize(layer, rng)
    x = rng.normal(size=shape).astype("float32")
    y = layer(x)
    assert tuple(y.shape) == (*shape[:-1], 8)
    assert tuple(layer.compute_output_shape(shape)) == (*shape[:-1], 8)
    kernel, bias = (to_numpy(w) for w in layer.weights)
    np.testing.assert_allclose(to_numpy(y), numpy_glu(x, kernel, bias), atol=ATOL, rtol=RTOL)


def test_rank_one_input_rejected():
    with pytest.raises(ValueError, match="min_ndim=2"):
        GatedLinearUnit(4)(np.ones((16,), "float32"))


def test_wrong_input_dim_rejected():
    layer = built(4, 16)
    with pytest.raises(ValueError, match="incompatible with the layer"):
        layer(np.ones((2, 15), "float32"))


@pytest.mark.parametrize(
    "activation, fn",
    [
        ("silu", lambda g: g / (1 + np.exp(-g))),
        ("relu", lambda g: np.maximum(g, 0)),
        ("linear", lambda g: g),
        (
            "gelu_tanh",
            lambda g: 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3))),
        ),
    ],
)
def test_activation_variants(activation, fn, rng):
    layer = built(6, 10, activation=activation)
    randomize(layer, rng)
    x = rng.normal(size=(4, 10)).astype("float32")
    kernel, bias = (to_numpy(w) for w in layer.weights)
    np.testing.assert_allclose(
        to_numpy(layer(x)), numpy_glu(x, kernel, bias, fn), atol=ATOL, rtol=RTOL
    )


def test_integer_inputs_are_cast_like_dense():
    layer = built(3, 4)
    y = layer(np.array([[1, 0, 2, 0]], "int32"))
    assert keras.backend.standardize_dtype(y.dtype) == "float32"


def _sparse(dense):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.sparse.from_dense(dense)
    if backend == "jax":
        from jax.experimental import sparse

        return sparse.BCOO.fromdense(dense)
    import torch

    return torch.tensor(dense).to_sparse()


def test_sparse_inputs_are_densified_like_dense(rng):
    layer = built(4, 16)
    randomize(layer, rng)
    dense = np.eye(3, 16, dtype="float32")
    np.testing.assert_allclose(
        to_numpy(layer(_sparse(dense))), to_numpy(layer(dense)), atol=ATOL, rtol=RTOL
    )


def test_symbolic_call_and_output_spec():
    layer = GatedLinearUnit(7)
    out = layer(keras.KerasTensor((None, 3, 5)))
    assert out.shape == (None, 3, 7) and out.dtype == "float32"
    # The traced path too (torch traces on the meta device, falling back to eager tensors).
    spec = keras.src.backend.compute_output_spec(layer.call, keras.KerasTensor((None, 3, 5)))
    assert spec.shape == (None, 3, 7)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch's meta device")
def test_torch_meta_device_call():
    """Keras' torch backend traces on the meta device first (no FLOPs); the layer must run there."""
    import torch
    from keras.src.backend.torch.core import device_scope

    layer = GatedLinearUnit(7)
    layer.build((None, 5))
    with device_scope("meta"), torch.no_grad():
        out = layer.call(torch.ones(2, 3, 5, device="meta"))
    assert out.device.type == "meta" and tuple(out.shape) == (2, 3, 7)


# --- fused op and gradients -------------------------------------------------------------------


def test_kmr_style_reference_layer_computes_the_same(rng):
    layer = built(8, 12)
    randomize(layer, rng)
    twin = kmr_style_twin(layer)
    assert len(twin.trainable_weights) == 4
    x = rng.normal(size=(6, 12)).astype("float32")
    np.testing.assert_allclose(to_numpy(layer(x)), to_numpy(twin(x)), atol=ATOL, rtol=RTOL)


def _masked_model(glu_layer, embedding_weights):
    """Embedding(mask_zero=True) -> the GLU layer -> LSTM: the LSTM sees the mask only if the GLU
    layer passes it on."""
    tokens = keras.Input((None,), dtype="int32")
    embedding = keras.layers.Embedding(10, 12, mask_zero=True)
    lstm = keras.layers.LSTM(3, kernel_initializer="ones", recurrent_initializer="zeros")
    model = keras.Model(tokens, lstm(glu_layer(embedding(tokens))))
    embedding.set_weights([embedding_weights])
    return model


@pytest.mark.filterwarnings("ignore:.*does not support masking")
def test_mask_passes_through_or_is_dropped_as_kmr_does(rng):
    layer = built(4, 12)
    randomize(layer, rng)
    embedding = rng.normal(size=(10, 12)).astype("float32")
    tokens = np.array([[1, 2, 0, 0], [3, 4, 5, 0]])
    kmr = to_numpy(_masked_model(kmr_style_twin(layer), embedding)(tokens))

    loaded = glu_keras._kmr._KMRLoader.from_config(
        {k: v for k, v in layer.get_config().items() if k != "propagate_mask"}  # KMR's config
    )
    assert loaded.get_config()["propagate_mask"] is False
    loaded.build((None, 12))
    loaded.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        to_numpy(_masked_model(loaded, embedding)(tokens)), kmr, atol=ATOL, rtol=RTOL
    )

    ours = to_numpy(_masked_model(layer, embedding)(tokens))  # masked steps skipped: differs
    assert np.abs(ours - kmr).max() > 1e-3
    assert to_numpy(layer.compute_mask(None, np.array([True, False]))).tolist() == [True, False]


def test_training_step_goes_through_glu_kernels_and_matches_kmr(monkeypatch, rng):
    """One SGD step on the fused layer and on KMR's two-Dense layer, equal weights: equal updates.

    The fused layer's gradient is glu_kernels' custom gradient (every backend calls glu_kernels.glu,
    counted below); the twin's is Keras' autodiff of two Dense layers: an independent check.
    """
    calls = []
    real_glu = glu_kernels.glu

    def counting_glu(*args, **kwargs):
        calls.append(type(args[0]).__module__.partition(".")[0])
        return real_glu(*args, **kwargs)

    monkeypatch.setattr(glu_kernels, "glu", counting_glu)
    x = rng.normal(size=(16, 12)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")

    def model_of(glu_layer):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((12,)), glu_layer, keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        return model

    layer = built(8, 12)
    randomize(layer, rng)
    twin = kmr_style_twin(layer)
    fused, unfused = model_of(layer), model_of(twin)
    unfused.layers[-1].set_weights(fused.layers[-1].get_weights())
    fused.train_on_batch(x, y)
    unfused.train_on_batch(x, y)
    assert calls, "GatedLinearUnit.call did not go through glu_kernels.glu"
    assert set(calls) == {
        {"jax": "jax", "torch": "torch"}.get(keras.backend.backend(), "tensorflow")
    }
    kernel, bias = (to_numpy(w) for w in layer.weights)
    w, b, v, c = (to_numpy(t) for t in twin.weights)
    assert not np.allclose(kernel[:, 0], to_numpy(kmr_style_twin(built(8, 12)).weights[0]))
    np.testing.assert_allclose(kernel[:, 0], w, atol=1e-5)
    np.testing.assert_allclose(kernel[:, 1], v, atol=1e-5)
    np.testing.assert_allclose(bias[0], b, atol=1e-5)
    np.testing.assert_allclose(bias[1], c, atol=1e-5)


def test_backend_custom_gradient_is_used(rng):
    """The op that training differentiates is glu_kernels' custom-gradient op, not an unfused
    graph."""
    layer = built(4, 6)
    x = rng.normal(size=(3, 6)).astype("float32")
    backend = keras.backend.backend()
    if backend == "torch":
        from glu_kernels.backends.torch import _ATEN_TRAINING_MAX_ELEMENTS

        def names(x):
            names, node = [], layer(x).grad_fn
            while node is not None and len(names) < 4:  # the op's node sits under a reshape or two
                names.append(type(node).__name__)
                node = node.next_functions[0][0] if node.next_functions else None
            return names

        # h above the size up to which float32 training calls are plain ATen calls (same bits)
        large = rng.normal(size=(_ATEN_TRAINING_MAX_ELEMENTS // 8 + 1, 6)).astype("float32")
        assert any("glufunction" in n.lower() for n in names(large)), names(large)
        assert not any("Addmm" in n or "Sigmoid" in n for n in names(large)), names(large)
        assert "AddmmBackward0" in names(x), names(x)
    elif backend == "jax":
        import jax

        kernel, bias = (w.value for w in layer.weights)
        jaxpr = jax.make_jaxpr(lambda k, b: glu_kernels.glu(jax.numpy.asarray(x), k, b))(
            kernel, bias
        )
        assert "custom_vjp_call" in str(jaxpr)
    else:
        import tensorflow as tf

        @tf.function
        def f(x):
            return layer(x)

        graph = f.get_concrete_function(tf.TensorSpec((None, 6), tf.float32)).graph
        ops_ = {op.type for op in graph.get_operations()}
        assert "IdentityN" in ops_  # tf.custom_gradient's marker
        assert sum(op.type in ("MatMul", "BatchMatMulV2") for op in graph.get_operations()) == 1


# --- config -----------------------------------------------------------------------------------


def test_config_round_trip():
    layer = GatedLinearUnit(
        5,
        name="g",
        activation="swish",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer="l2",
        bias_constraint="non_neg",
        dtype="float64",
    )
    config = layer.get_config()
    assert config["units"] == 5 and config["activation"] == "silu" and config["use_bias"] is False
    clone = GatedLinearUnit.from_config(config)
    assert clone.get_config() == config
    assert clone.dtype_policy.name == "float64"
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == "glu_keras>GatedLinearUnit"
    assert keras.saving.deserialize_keras_object(serialized).get_config() == config


def test_get_config_has_kmr_keys():
    config = GatedLinearUnit(3).get_config()
    assert {"name", "trainable", "dtype", "units"} <= set(config)


def test_keras_variables_given_to_glu_are_refused_alike_on_every_backend():
    """A Keras variable is no array of JAX or torch, and a tf.Variable's subclass under Keras'
    TensorFlow backend (where it crashed inside the TensorFlow backend): refused with the same
    words everywhere, with what to pass instead."""
    x = keras.ops.ones((4, 6))
    kernel = keras.Variable(np.ones((6, 8), "float32"))
    with pytest.raises(TypeError, match=r"Received: w of type keras\.\S+ \(a Keras variable: pass"):
        glu_kernels.glu(x, kernel)
    assert tuple(glu_kernels.glu(x, kernel.value).shape) == (4, 4)
