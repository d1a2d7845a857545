"""``GatedLinearUnit``: a Keras 3 layer computing ``a * act(g)``, ``[a | g] = x @ [W | V] + b``.

One (D, 2, U) kernel and one (2, U) bias, one call into :func:`glu_kernels.glu` with the backend's
own tensors (JAX, PyTorch or TensorFlow), so the forward is one matmul and training uses
glu_kernels' custom gradient under every Keras backend. A drop-in for KMR's (``kerasfactory``)
layer of the same name; KMR ``.keras`` files load into it through
:func:`glu_keras.kmr_custom_objects`.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import keras
from keras import constraints, initializers, ops, regularizers

import glu_kernels
from glu_keras._kmr import KMRSublayerView, holds_kmr_halves
from glu_keras.initializers import PerHalf, per_half_constraint, per_half_regularizer
from glu_kernels._validate import resolve_activation

__all__ = ["GatedLinearUnit"]


def _check_units(units: Any) -> None:
    # KMR's exact check and message (bool is refused too: ``units=True`` is never meant).
    if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
        raise ValueError(f"units must be a positive integer, got {units}")


@keras.saving.register_keras_serializable(package="glu_keras")
class GatedLinearUnit(keras.layers.Layer):
    """Gated linear unit: ``(x @ W + b_w) * act(x @ V + b_v)``, one fused matmul on ``[W | V]``.

    Replaces KMR's ``GatedLinearUnit`` (two ``Dense`` sublayers ``linear`` and ``sigmoid``): same
    constructor, same ``units`` check, same output, but one kernel of shape (input_dim, 2, units)
    (index 0 = value W, 1 = gate V) and one bias of shape (2, units), created in ``build()``, and a
    call into :func:`glu_kernels.glu` (one matmul, fused epilogue, memory-lean custom gradient).

    Mixed precision: variables stay float32 under ``mixed_float16``/``mixed_bfloat16`` policies
    (global or per layer); inputs and weights are cast to the compute dtype and the output has the
    compute dtype. glu_kernels accumulates 16-bit matmuls and computes the epilogue in float32.

    Args:
        units: width of the output, a positive ``int``.
        name: the layer's name.
        activation: the gate's activation, any of ``glu_kernels.ACTIVATIONS``: ``"sigmoid"`` (GLU,
            KMR's behaviour), ``"silu"``/``"swish"`` (SwiGLU), ``"gelu"``, ``"gelu_tanh"`` (GeGLU),
            ``"relu"`` (ReGLU), ``"linear"`` (bilinear).
        use_bias: whether to add the (2, units) bias.
        kernel_initializer: initializer applied to each half as a (input_dim, units) matrix (see
            :class:`glu_keras.initializers.PerHalf`); default ``"glorot_uniform"``, as KMR's
            ``Dense``.
        bias_initializer: initializer applied to each (units,) half of the bias; default
            ``"zeros"``.
        kernel_regularizer: regularizer applied to each (input_dim, units) half of the kernel, as
            on two ``Dense`` kernels, the penalties summed.
        bias_regularizer: regularizer applied to each (units,) half of the bias.
        kernel_constraint: constraint applied to each (input_dim, units) half of the kernel, as on
            a ``Dense`` kernel (``MaxNorm``, ``UnitNorm`` of either axis mean what they mean there).
        bias_constraint: constraint applied to each (units,) half of the bias.
        propagate_mask: pass an incoming Keras mask (``Embedding(mask_zero=True)``, ``Masking``)
            on to the next layers, as ``Dense`` does. KMR's layer drops it (Keras warns); models
            loaded through ``kmr_custom_objects`` get ``False``, so they compute what they did.
        **kwargs: base ``keras.layers.Layer`` arguments (``dtype``, ``trainable``,
            ``activity_regularizer``, ...).

    Input shape:
        (batch_size, ..., input_dim), rank >= 2.

    Output shape:
        (batch_size, ..., units).

    Example:
        >>> import keras
        >>> from glu_keras import GatedLinearUnit
        >>> layer = GatedLinearUnit(units=8)
        >>> y = layer(keras.random.normal((32, 16)))
        >>> tuple(y.shape), len(layer.trainable_weights)
        ((32, 8), 2)
    """

    def __init__(
        self,
        units: int,
        name: str | None = None,
        *,
        activation: str = "sigmoid",
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        propagate_mask: bool = True,
        **kwargs: Any,
    ) -> None:
        _check_units(units)  # before the Keras base init, as KMR
        act = resolve_activation(activation)  # ValueError listing the valid names
        super().__init__(name=name, **kwargs)
        self.units = units
        self.activation = act.name
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.propagate_mask = bool(propagate_mask)
        self.supports_masking = self.propagate_mask
        self.kernel = None
        self.bias = None
        # Set by glu_keras.kmr_custom_objects() on layers deserialized from a KMR config: their own
        # weight entry in the file is empty, the weights come through the `linear`/`sigmoid` views.
        self._kmr_compat = False

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                "GatedLinearUnit needs a known last input dimension (input_dim). "
                f"Received: input_shape={tuple(input_shape)}"
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_dim, 2, self.units),
            initializer=PerHalf(self.kernel_initializer),
            regularizer=per_half_regularizer(self.kernel_regularizer),
            constraint=per_half_constraint(self.kernel_constraint),
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(2, self.units),
                initializer=PerHalf(self.bias_initializer),
                regularizer=per_half_regularizer(self.bias_regularizer),
                constraint=per_half_constraint(self.bias_constraint),
            )
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})

    def call(self, inputs: Any) -> Any:
        dtype = self.compute_dtype
        # sparse inputs are densified, as Dense takes them
        x = ops.convert_to_tensor(inputs, sparse=False)
        if keras.backend.standardize_dtype(x.dtype) != dtype:  # e.g. integer inputs, as Dense takes
            x = ops.cast(x, dtype)
        kernel = self._native(self.kernel, dtype)
        bias = self._native(self.bias, dtype) if self.use_bias else None
        return glu_kernels.glu(x, kernel, bias, activation=self.activation)

    @staticmethod
    def _native(variable: Any, dtype: str) -> Any:
        # `.value` is the backend's own tensor (a jax.Array, a torch Parameter, a tf.Variable),
        # already cast to the compute dtype inside the layer's autocast scope (mixed precision).
        value = variable.value
        if keras.backend.standardize_dtype(value.dtype) != dtype:
            value = ops.cast(value, dtype)
        return value

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*tuple(input_shape)[:-1], self.units)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        # as Dense: the mask of the leading axes passes through; or dropped, as KMR's layer does
        return mask if self.propagate_mask else None

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "activation": self.activation,
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "kernel_constraint": constraints.serialize(self.kernel_constraint),
                "bias_constraint": constraints.serialize(self.bias_constraint),
                "propagate_mask": self.propagate_mask,
            }
        )
        return config

    # --- Saving and KMR migration ----------------------------------------------------------------

    def load_own_variables(self, store: Any) -> None:
        if len(store.keys()) == 0 and (self._kmr_compat or holds_kmr_halves(store)):
            return  # a KMR file: the `linear` and `sigmoid` views below receive the weights
        super().load_own_variables(store)

    def _kmr_view(self, half: int) -> KMRSublayerView:
        # One view per half, kept for the layer's lifetime: Keras' saving walk tells objects apart
        # by id(). Held in a plain namespace, which that walk ignores, and rebuilt for a copy.
        views = self.__dict__.get("_kmr_views")
        if views is None or views.halves[0].owner() is not self:
            views = SimpleNamespace(halves=(KMRSublayerView(self, 0), KMRSublayerView(self, 1)))
            self.__dict__["_kmr_views"] = views
        return views.halves[half]

    @property
    def linear(self) -> KMRSublayerView:
        """KMR compatibility: where a KMR file keeps the value half (its ``Dense`` ``linear``).

        Keras loads a ``.keras`` file by attribute path (``.../gated_linear_unit/linear/vars/0``);
        this view receives that ``Dense``'s kernel and bias and writes them into ``kernel[:, 0]``
        and ``bias[0]``. It saves nothing: files written by this layer keep the fused weights only.
        """
        return self._kmr_view(0)

    @property
    def sigmoid(self) -> KMRSublayerView:
        """KMR compatibility: the gate half (KMR's ``Dense`` named ``sigmoid``); see ``linear``."""
        return self._kmr_view(1)
