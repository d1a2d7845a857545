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
from keras import constraints, dtype_policies, initializers, ops, quantizers, regularizers

import glu_kernels
from glu_keras import _int8
from glu_keras._kmr import KMRSublayerView, holds_kmr_halves
from glu_keras.initializers import PerHalf, per_half_constraint, per_half_regularizer
from glu_kernels._validate import resolve_activation

__all__ = ["GatedLinearUnit"]


def _int8_only(mode: Any) -> NotImplementedError:
    # Model.quantize turns this into a warning and leaves the layer in floating point
    return NotImplementedError(
        f"GatedLinearUnit quantizes to mode='int8' only. Received: mode={mode!r}"
    )


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

    Quantization: ``model.quantize("int8")`` (or ``layer.quantize("int8")``) quantizes the layer
    as Keras quantizes ``Dense``, and so as it quantizes KMR's two sublayers, to the same int8
    values: per-column abs-max int8 kernel, inputs rounded to int8 per row on each call, bias
    kept; the kernel is then frozen and the input gradient passes straight through the rounding.
    Under JAX, and under torch on the CPU in float32 for input_dim >= 512, the product is an
    int8 GEMM with int32 accumulation (XLA's, ``torch._int_mm``), then the scales, the bias and
    the fused epilogue (:func:`glu_kernels.gated`) in float32; otherwise one fused glu on the
    operands scaled back to floating point (each measured faster where it runs; see
    :mod:`glu_keras._int8`).

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
        lora_rank: if set, :meth:`enable_lora` with this rank when the layer is built (as
            ``Dense``); set by Keras when a LoRA-enabled model loads.
        lora_alpha: the LoRA scale's numerator (the update is ``lora_alpha / lora_rank * a @ b``);
            default ``lora_rank``.
        quantization_config: the ``keras.quantizers.Int8QuantizationConfig`` of a layer quantized
            with ``quantize("int8", config=...)``; set by Keras when a quantized model loads.
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
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        quantization_config: Any = None,
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
        self.quantization_config = quantization_config
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha if lora_alpha is not None else lora_rank
        self.lora_enabled = False
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
        kernel_shape = (input_dim, 2, self.units)
        if self.quantization_mode not in (None, "int8"):  # e.g. dtype="int4_from_float32"
            raise _int8_only(self.quantization_mode)
        if self.quantization_mode is not None:  # a quantized model being loaded
            self.quantized_build(kernel_shape, self.quantization_mode, self.quantization_config)
        else:
            self.kernel = self.add_weight(
                name="kernel",
                shape=kernel_shape,
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
        if self.lora_rank:  # a LoRA-enabled layer being loaded, or lora_rank= given
            self.built = True  # as Dense: enable_lora needs a built layer
            self.enable_lora(self.lora_rank, self.lora_alpha)

    def call(self, inputs: Any) -> Any:
        x = self._dense_input(inputs)
        kernel = self._native(self.kernel, self.compute_dtype)
        if self.lora_enabled:
            return self._glu_with_lora(x, x, kernel)
        return glu_kernels.glu(x, kernel, self._native_bias(), activation=self.activation)

    def _dense_input(self, inputs: Any) -> Any:
        # sparse inputs are densified, integer inputs cast, as Dense takes them
        x = ops.convert_to_tensor(inputs, sparse=False)
        if keras.backend.backend() == "torch" and str(x.layout) != "torch.strided":
            x = x.to_dense()  # Keras' torch backend leaves torch's sparse tensors sparse
        if keras.backend.standardize_dtype(x.dtype) != self.compute_dtype:
            x = ops.cast(x, self.compute_dtype)
        return x

    def _native_bias(self) -> Any:
        return self._native(self.bias, self.compute_dtype) if self.use_bias else None

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
        if self.quantization_config is not None:  # absent otherwise: older versions load the file
            config["quantization_config"] = keras.saving.serialize_keras_object(
                self.quantization_config
            )
        if self.lora_rank:
            config["lora_rank"] = self.lora_rank
            config["lora_alpha"] = self.lora_alpha
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> GatedLinearUnit:
        config = dict(config)
        config["quantization_config"] = keras.saving.deserialize_keras_object(
            config.get("quantization_config")
        )
        return super().from_config(config)

    # --- LoRA (Keras' `enable_lora` protocol, as `Dense`) --------------------------------------

    def enable_lora(
        self,
        rank: int,
        lora_alpha: float | None = None,
        a_initializer: Any = "he_uniform",
        b_initializer: Any = "zeros",
    ) -> None:
        """Freezes the kernel and adds a trainable low-rank update, as ``Dense.enable_lora``.

        The layer then computes ``glu`` with the kernel ``kernel + (lora_alpha / rank) *
        lora_kernel_a @ lora_kernel_b``: ``lora_kernel_a`` (input_dim, rank) and ``lora_kernel_b``
        (rank, 2, units), float32, one adapter on the packed kernel (as a ``Dense`` of 2 * units
        columns; KMR's two ``Dense`` would each have their own ``lora_kernel_a``). The update runs
        as its own low-rank branch, ``(x @ a) @ b`` added to the pre-activation, so the frozen
        kernel costs no gradient GEMM. Saving merges it into the kernel (re-quantized if the layer
        is int8, as ``Dense`` does); a loaded layer restarts from a zero update.

        Example:
            >>> import keras
            >>> from glu_keras import GatedLinearUnit
            >>> layer = GatedLinearUnit(8)
            >>> layer.build((None, 16))
            >>> layer.enable_lora(2)
            >>> [w.name for w in layer.trainable_weights]
            ['bias', 'lora_kernel_a', 'lora_kernel_b']

        Raises:
            ValueError: on an unbuilt layer, a layer with a kernel constraint, or a second call
                (Keras' words for ``Dense``).
        """
        if self.kernel_constraint:
            raise ValueError(
                "Lora is incompatible with kernel constraints. In order to enable lora on this "
                "layer, remove the `kernel_constraint` argument."
            )
        if not self.built:
            raise ValueError("Cannot enable lora on a layer that isn't yet built.")
        if self.lora_enabled:
            raise ValueError("lora is already enabled. This can only be done once per layer.")
        input_dim = self.kernel.shape[0]
        self._tracker.unlock()
        self.lora_kernel_a = self.add_weight(
            name="lora_kernel_a",
            shape=(input_dim, rank),
            initializer=initializers.get(a_initializer),
            dtype="float32",  # as Dense: no underflow of small updates under mixed precision
            regularizer=self.kernel_regularizer,
        )
        self.lora_kernel_b = self.add_weight(
            name="lora_kernel_b",
            shape=(rank, 2, self.units),
            initializer=initializers.get(b_initializer),
            dtype="float32",
            regularizer=per_half_regularizer(self.kernel_regularizer),  # as the kernel's
        )
        self.kernel.trainable = False
        self._tracker.lock()
        self.lora_enabled = True
        self.lora_rank = rank
        self.lora_alpha = lora_alpha if lora_alpha is not None else rank

    def _lora_update(self, x: Any) -> Any:
        """``(lora_alpha / rank) * (x @ lora_kernel_a) @ lora_kernel_b``, (..., 2U)."""
        a = self._native(self.lora_kernel_a, self.compute_dtype)
        b = ops.reshape(self._native(self.lora_kernel_b, self.compute_dtype), (self.lora_rank, -1))
        return ops.multiply((x @ a) @ b, self.lora_alpha / self.lora_rank)  # `@`: see below

    def _glu_with_lora(self, x: Any, x_product: Any, kernel: Any) -> Any:
        """``gated(x_product @ kernel + bias + update(x))``: the frozen kernel's product, then the
        low-rank branch (on the unrounded x under int8, as ``Dense``)."""
        # The backends' own `@` and `+`, not Keras ops: Keras' torch matmul computes float64 in
        # float32, and Keras' TensorFlow add takes a (0, 2U) operand for a bias (BiasAdd fails).
        h = x_product @ ops.reshape(kernel, (kernel.shape[0], 2 * self.units))
        if self.use_bias:
            h = ops.add(h, ops.reshape(self._native_bias(), (2 * self.units,)))
        h = h + self._lora_update(x)
        return glu_kernels.gated(h, activation=self.activation)

    def _merged_kernel(self) -> Any:
        """The kernel with the LoRA update added, in float32 (float64 kernels in float64; int8
        kernels scaled back first)."""
        wide = keras.backend.standardize_dtype(self.kernel.dtype) == "float64"
        dtype = "float64" if wide else "float32"
        if self.quantization_mode == "int8":
            kernel = _int8.dequantized(self.kernel, self.kernel_scale, dtype)
        else:
            kernel = ops.cast(self.kernel, dtype)
        a = ops.cast(self.lora_kernel_a, dtype)
        b = ops.cast(ops.reshape(self.lora_kernel_b, (self.lora_rank, -1)), dtype)
        update = ops.multiply(a @ b, self.lora_alpha / self.lora_rank)  # `@`: see _glu_with_lora
        return ops.add(kernel, ops.reshape(update, tuple(kernel.shape)))

    # --- int8 quantization (Keras' `quantize` protocol, the scheme of `Dense`'s "int8" mode) ----

    def quantize(
        self, mode: str | None = None, type_check: bool = True, config: Any = None
    ) -> None:
        """Quantizes the built layer in place; only ``mode="int8"`` is offered.

        The kernel becomes int8 with one float32 scale per output column (``kernel_scale``, shape
        (2, units)): ``kernel ~= int8_kernel / kernel_scale``. Each call rounds its inputs to int8
        with one scale per row (unless ``config`` has ``activation_quantizer=None``). These are
        the values Keras computes for KMR's two ``Dense`` sublayers, bit for bit.

        Raises:
            NotImplementedError: any other mode (``Model.quantize`` turns it into a warning and
                leaves the layer in floating point), or a subclass when ``type_check`` is set (its
                ``call`` may not be the one quantized here).
        """
        if type_check and type(self) is not GatedLinearUnit:
            raise self._not_implemented_error(self.quantize)
        if mode != "int8":
            if self.dtype_policy.quantization_mode == mode:
                # Keras' dtype_policy setter applies the policy, then calls quantize: undo it, so
                # the layer stays what it was, in floating point
                self.dtype_policy = self.dtype_policy.name.split("_from_", 1)[1]
            raise _int8_only(mode)
        weight_quantizer = quantizers.QuantizationConfig.weight_quantizer_or_default(
            config, quantizers.AbsMaxQuantizer(axis=0)
        )
        kernel_shape = tuple(self.kernel.shape)
        kernel_value, kernel_scale = _int8.requantized(self.kernel, weight_quantizer)
        self.quantization_config = config
        del self.kernel
        self.quantized_build(kernel_shape, mode, config)
        self.kernel.assign(kernel_value)
        self.kernel_scale.assign(kernel_scale)
        if self.dtype_policy.quantization_mode is None:
            self.dtype_policy = dtype_policies.get(f"{mode}_from_{self.dtype_policy.name}")

    def quantized_build(self, kernel_shape: tuple[int, ...], mode: str, config: Any = None) -> None:
        if mode != "int8":
            raise self._quantization_mode_error(mode)
        self.inputs_quantizer = quantizers.QuantizationConfig.activation_quantizer_or_default(
            config, quantizers.AbsMaxQuantizer()
        )
        self.kernel = self.add_weight(
            name="kernel", shape=kernel_shape, initializer="zeros", dtype="int8", trainable=False
        )
        self.kernel_scale = self.add_weight(
            name="kernel_scale",
            shape=kernel_shape[1:],
            initializer="ones",
            trainable=False,
            autocast=False,  # float32 under mixed precision too: the kernel is scaled in float32
        )
        self._is_quantized = True

    def _int8_call(self, inputs: Any, training: bool | None = None) -> Any:
        x = self._dense_input(inputs)
        quantizer = self.inputs_quantizer
        if quantizer is not None and _int8.has_no_rows(x):
            quantizer = None  # nothing to round; Keras' max refuses empty tensors (torch, TF)
        shape, dtype = tuple(self.kernel.shape), self.compute_dtype
        if quantizer is not None and _int8.multiplies_in_int8(x, quantizer, shape, dtype):
            h = _int8.integer_preactivation(
                x, self.kernel.value, self.kernel_scale.value, self._native_bias(), quantizer
            )
            if self.lora_enabled:
                h = h + ops.cast(self._lora_update(x), "float32")  # `+`: see _glu_with_lora
            return ops.cast(glu_kernels.gated(h, activation=self.activation), self.compute_dtype)
        x_product = x if quantizer is None else _int8.rounded_to_int8(x, quantizer)
        kernel = _int8.dequantized(self.kernel.value, self.kernel_scale.value, self.compute_dtype)
        if self.lora_enabled:
            return self._glu_with_lora(x, x_product, kernel)
        return glu_kernels.glu(x_product, kernel, self._native_bias(), activation=self.activation)

    def save_own_variables(self, store: Any) -> None:
        if self.quantization_mode is None and not self.lora_enabled:
            super().save_own_variables(store)
            return
        if self.quantization_mode not in (None, "int8"):
            raise self._quantization_mode_error(self.quantization_mode)
        if not self.built:
            return
        values = self._saved_variables()  # a LoRA update is merged into the kernel, as by Dense
        if self.lora_enabled:
            kernel = self._merged_kernel()
            if self.quantization_mode == "int8":
                kernel, values[-1] = _int8.requantized(kernel, self._weight_quantizer())
            values[0] = ops.cast(kernel, self.kernel.dtype)
        for i, value in enumerate(values):
            store[str(i)] = value

    def _saved_variables(self) -> list[Any]:
        # Dense's order: kernel, bias, then kernel_scale for int8
        variables = [self.kernel, *([self.bias] if self.use_bias else [])]
        return variables + ([self.kernel_scale] if self.quantization_mode == "int8" else [])

    def _weight_quantizer(self) -> Any:
        return quantizers.QuantizationConfig.weight_quantizer_or_default(
            self.quantization_config, quantizers.AbsMaxQuantizer(axis=0)
        )

    # --- Saving and KMR migration ----------------------------------------------------------------

    def load_own_variables(self, store: Any) -> None:
        if len(store.keys()) == 0 and (self._kmr_compat or holds_kmr_halves(store)):
            if self.lora_enabled:  # as for any other load: the loaded weights, a zero update
                self.lora_kernel_a.assign(ops.zeros(self.lora_kernel_a.shape))
                self.lora_kernel_b.assign(ops.zeros(self.lora_kernel_b.shape))
            return  # a KMR file: the `linear` and `sigmoid` views below receive the weights
        if self.quantization_mode is None and not self.lora_enabled:
            super().load_own_variables(store)
            return
        if self.quantization_mode not in (None, "int8"):
            raise self._quantization_mode_error(self.quantization_mode)
        variables = self._saved_variables()
        if len(store.keys()) != len(variables):  # Keras' words, counting the saved variables
            raise ValueError(
                f"Layer '{self.name}' expected {len(variables)} variables, but received "
                f"{len(store.keys())} variables during loading. "
                f"Expected: {[v.name for v in variables]}"
            )
        for i, variable in enumerate(variables):
            variable.assign(store[str(i)])
        if self.lora_enabled:  # the update was merged into the kernel when saved
            self.lora_kernel_a.assign(ops.zeros(self.lora_kernel_a.shape))
            self.lora_kernel_b.assign(ops.zeros(self.lora_kernel_b.shape))

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
