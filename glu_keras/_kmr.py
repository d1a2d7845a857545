"""Everything about KMR's ``GatedLinearUnit`` (package ``kmr``, on PyPI as ``kerasfactory``).

- :func:`kmr_custom_objects`: the ``custom_objects`` that load a ``.keras`` file saved with KMR's
  layer into :class:`glu_keras.GatedLinearUnit` (its two ``Dense`` sublayers packed into the fused
  kernel).
- :class:`KMRSublayerView`: how those weights arrive (see below).
- :class:`KMRStyleGatedLinearUnit`: a reference two-``Dense`` layer computing what KMR's computes,
  for benchmarks and tests (KMR itself pins pytest<9 and imports pandas, plotly and scikit-learn).

How the migration works: Keras finds a layer's weights in a ``.keras`` file by attribute path,
e.g. ``layers/gated_linear_unit/linear/vars/{0,1}`` for KMR's value ``Dense`` (kernel (D, U), bias
(U,)) and ``.../sigmoid/vars/{0,1}`` for its gate, and nothing under the layer's own ``vars``. Our
layer has the same snake-case path (same class name) and two attributes of those names, ``linear``
and ``sigmoid``: views whose ``load_own_variables`` copy each ``Dense`` into its half of the
(D, 2, U) kernel and (2, U) bias. The views save nothing, so a migrated model saves as a plain
glu_keras model.
"""

from __future__ import annotations

import warnings
import weakref
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from keras.src.saving.keras_saveable import KerasSaveable

if TYPE_CHECKING:
    from glu_keras.layer import GatedLinearUnit

__all__ = [
    "kmr_custom_objects",
    "KMRStyleGatedLinearUnit",
    "KMRSublayerView",
    "KMR_REGISTERED_NAMES",
]

# The names KMR registered its layer under (``@register_keras_serializable(package=...)``), as they
# appear in "registered_name" of a saved config. kerasfactory 0.1.1 writes the second.
KMR_REGISTERED_NAMES: tuple[str, ...] = (
    "kmr.layers>GatedLinearUnit",
    "kerasfactory.layers>GatedLinearUnit",
)

_HALF_NAMES = ("linear", "sigmoid")


class KMRSublayerView(KerasSaveable):
    """One half of a :class:`glu_keras.GatedLinearUnit` seen as KMR's ``Dense`` sublayer (loading).

    ``load_own_variables`` takes a KMR ``Dense``'s stored variables (``"0"``: kernel (D, U),
    ``"1"``: bias (U,); after ``model.quantize("int8")``: int8 kernel, bias, ``kernel_scale``
    (U,)) and writes them into ``kernel[:, half]``, ``bias[half]`` (and ``kernel_scale[half]``)
    of the fused layer, which must be quantized alike. An empty store (any file this package
    wrote) is left alone. Holds its layer by weak
    reference, so the saving walk never recurses back into the layer.
    """

    def __init__(self, layer: GatedLinearUnit, half: int) -> None:
        self._layer_ref = weakref.ref(layer)
        self._half = half

    def owner(self) -> GatedLinearUnit | None:
        """The layer whose half this is (None once it is gone). A method, not an attribute: Keras'
        saving walk follows attributes and must not walk back into the layer."""
        return self._layer_ref()

    def __getattr__(self, name: str) -> Any:
        # Reached only for what the view lacks, such as the kernel and bias KMR's Dense had.
        if name.startswith("_"):
            raise AttributeError(name)
        half = self.__dict__.get("_half", 0)
        raise AttributeError(
            f"GatedLinearUnit.{_HALF_NAMES[half]} is not a Dense layer (only where KMR files keep "
            f"that half): the fused layer holds its weights as layer.kernel[:, {half}] and "
            f"layer.bias[{half}]. Received: .{_HALF_NAMES[half]}.{name}"
        )

    def _obj_type(self) -> str:
        # Keras' saving walk asks for one of its known kinds to pick which attributes to skip; this
        # view has no Keras attributes at all, and the "Loss" skip set is the smallest harmless one.
        return "Loss"

    def load_own_variables(self, store: Any) -> None:
        if len(store.keys()) == 0:
            return
        layer = self.owner()
        name = f"{getattr(layer, 'name', '?')}/{_HALF_NAMES[self._half]}"
        if layer is None or not layer.built:
            raise ValueError(f"Cannot load KMR weights into the unbuilt layer {name}.")
        units, d = layer.units, layer.kernel.shape[0]
        kernel = np.asarray(store["0"])
        # Dense's layouts: (kernel, bias) in floating point; (int8 kernel, bias, kernel_scale)
        # after model.quantize("int8"), the scale last
        stored_int8, layer_int8 = kernel.dtype == np.int8, layer.quantization_mode == "int8"
        if stored_int8 != layer_int8:
            raise ValueError(
                f"KMR Dense '{name}' holds {'int8' if stored_int8 else 'floating-point'} "
                f"weights, but this layer is {'quantized (int8)' if layer_int8 else 'not'}: "
                + (
                    "load them before model.quantize('int8')."
                    if layer_int8
                    else "build the model in code, call model.quantize('int8'), then load them "
                    "with model.load_weights(...)."
                )
                + f" Received: kernel.dtype={kernel.dtype}, "
                f"layer quantization_mode={layer.quantization_mode}"
            )
        if kernel.shape != (d, units):
            raise ValueError(
                f"KMR Dense '{name}' has a kernel of shape {kernel.shape}; this layer expects "
                f"(input_dim, units) = {(d, units)}."
            )
        _assign_half(layer.kernel, self._half, kernel)
        if stored_int8:
            scale = np.asarray(store[str(len(store.keys()) - 1)])
            if scale.shape != (units,):
                raise ValueError(
                    f"KMR Dense '{name}' has a kernel_scale of shape {scale.shape}; expected "
                    f"({units},)."
                )
            _assign_half(layer.kernel_scale, self._half, scale)
        if "1" in store and not (stored_int8 and len(store.keys()) == 2):
            if not layer.use_bias:
                raise ValueError(
                    f"KMR Dense '{name}' has a bias, but the layer has use_bias=False."
                )
            bias = np.asarray(store["1"])
            if bias.shape != (units,):
                raise ValueError(
                    f"KMR Dense '{name}' has a bias of shape {bias.shape}; expected ({units},)."
                )
            _assign_half(layer.bias, self._half, bias)


def _assign_half(variable: Any, half: int, value: np.ndarray) -> None:
    """``variable[:, half] = value`` for the (D, 2, U) kernel, ``variable[half]`` for the (2, U)
    bias and kernel_scale."""
    packed = keras.ops.convert_to_numpy(variable.value).copy()
    if packed.ndim == 3:
        packed[:, half, :] = value
    else:
        packed[half] = value
    variable.assign(packed)


def holds_kmr_halves(store: Any) -> bool:
    """Whether the weights file behind ``store`` (Keras' H5 store, positioned at one layer) keeps
    KMR's two ``Dense`` sublayers there: a KMR file loaded into a model built in code with this
    layer (``model.load_weights``). False for any other store, which then must hold our weights."""
    h5_file, path = getattr(store, "h5_file", None), getattr(store, "_h5_entry_path", None)
    if h5_file is None or not isinstance(path, str) or not path:
        return False
    if hasattr(store, "sharding_config"):
        # A sharded weights file (save_weights(..., max_shard_size=...)): h5_file is the shard
        # open now, and the halves may sit in others; the store's weight map knows them all.
        return all(store.has_path(f"{path}/{half}/vars") for half in _HALF_NAMES)
    try:
        return all(f"{path}/{half}/vars" in h5_file for half in _HALF_NAMES)
    except (TypeError, ValueError, KeyError):
        return False


class _KMRLoader:
    """Stands in for KMR's class during deserialization: builds our layer from KMR's config."""

    @staticmethod
    def from_config(config: dict[str, Any]) -> GatedLinearUnit:
        from glu_keras.layer import GatedLinearUnit

        # KMR's layer does not support masking: Keras drops a mask there, and the model after it
        # computes without one. The loaded layer does the same (and says so in its config).
        layer = GatedLinearUnit.from_config({**config, "propagate_mask": False})
        layer._kmr_compat = True
        return layer


def kmr_custom_objects() -> dict[str, Any]:
    """The ``custom_objects`` that load a ``.keras`` file saved with KMR's ``GatedLinearUnit``.

    Each KMR layer becomes a :class:`glu_keras.GatedLinearUnit` with the same name, ``units`` and
    dtype policy, its ``linear`` Dense packed into the value half and its ``sigmoid`` Dense into the
    gate half: the loaded model computes what the KMR model computed. Saving it writes a file that
    loads with nothing but ``import glu_keras``. (A compiled KMR model's optimizer state has four
    variables per layer where ours has two; Keras then warns and starts the optimizer afresh.)
    Migrate in a process that does not import KMR: Keras' global registry, which ``import
    kerasfactory`` fills, takes precedence over ``custom_objects`` (this function warns if so).

    Returns:
        A dict from KMR's registered names (``"kerasfactory.layers>GatedLinearUnit"``,
        ``"kmr.layers>GatedLinearUnit"``) to a loader.

    Example:
        >>> import keras, glu_keras
        >>> model = keras.models.load_model(
        ...     "kmr_model.keras", custom_objects=glu_keras.kmr_custom_objects()
        ... )  # doctest: +SKIP
        >>> model.save("glu_model.keras")  # doctest: +SKIP
    """
    shadowing = [
        name
        for name in KMR_REGISTERED_NAMES
        if keras.saving.get_registered_object(name) not in (None, _KMRLoader)
    ]
    if shadowing:
        warnings.warn(
            f"KMR's own layer is registered in this process ({', '.join(shadowing)}, e.g. by "
            "`import kerasfactory`), and Keras' registry takes precedence over custom_objects: "
            "load_model will build KMR's layer, not glu_keras.GatedLinearUnit. Migrate in a "
            "process that does not import KMR.",
            stacklevel=2,
        )
    return dict.fromkeys(KMR_REGISTERED_NAMES, _KMRLoader)


@keras.saving.register_keras_serializable(package="glu_keras.kmr")
class KMRStyleGatedLinearUnit(keras.layers.Layer):
    """Reference for benchmarks and tests: KMR's layer, ``Dense(U)(x) * Dense(U, "sigmoid")(x)``.

    The same two sublayers as KMR (``linear`` and ``sigmoid``, glorot_uniform kernels, zero
    biases), built in ``build()`` so their weights exist before the first call. Four variables, two
    matmuls, Keras' own autodiff: the unfused baseline :class:`glu_keras.GatedLinearUnit` is
    measured against.

    Args:
        units: width of the output, a positive ``int``.
        name: the layer's name.
        **kwargs: base ``keras.layers.Layer`` arguments.

    Example:
        >>> import keras
        >>> from glu_keras._kmr import KMRStyleGatedLinearUnit
        >>> tuple(KMRStyleGatedLinearUnit(8)(keras.random.normal((4, 16))).shape)
        (4, 8)
    """

    def __init__(self, units: int, name: str | None = None, **kwargs: Any) -> None:
        if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"units must be a positive integer, got {units}")
        super().__init__(name=name, **kwargs)
        self.units = units
        self.linear = keras.layers.Dense(units, dtype=self.dtype_policy, name="linear")
        self.sigmoid = keras.layers.Dense(
            units, activation="sigmoid", dtype=self.dtype_policy, name="sigmoid"
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.linear.build(input_shape)
        self.sigmoid.build(input_shape)

    def call(self, inputs: Any) -> Any:
        return self.linear(inputs) * self.sigmoid(inputs)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*tuple(input_shape)[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units}
