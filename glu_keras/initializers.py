"""``PerHalf``: an initializer that fills the value and gate halves of a packed GLU weight apart;
and the same for regularizers and constraints (``per_half_regularizer``, ``per_half_constraint``).

A fused GLU keeps ``[W | V]`` in one (D, 2, U) kernel. Handing that shape to ``glorot_uniform``
would compute its fans from (D, 2, U) (fan_in = 2D, fan_out = DU): the wrong statistics. ``PerHalf``
calls the wrapped initializer once per half on the half's own shape, (D, U), exactly as two
``Dense(U)`` layers (KMR's layout) would be initialized, and stacks the halves on the size-2 axis
(the second to last).
"""

from __future__ import annotations

from typing import Any

import keras

__all__ = ["PerHalf"]


@keras.saving.register_keras_serializable(package="glu_keras")
class PerHalf(keras.initializers.Initializer):
    """Initializes each half of a packed (..., 2, U) weight as its own (..., U) weight.

    Used by :class:`glu_keras.GatedLinearUnit` for its (D, 2, U) kernel and (2, U) bias, so that a
    ``kernel_initializer`` such as ``"glorot_uniform"`` or ``"he_normal"`` gives each half the
    statistics of a ``Dense(U)`` kernel of shape (D, U). The two halves never share values: an
    initializer with a fixed integer seed is cloned with another seed for the gate half (Keras'
    seeded initializers return the same values on every call), one far from the seed so that
    layers seeded 0, 1, 2, ... share no half.

    Args:
        initializer: the initializer applied to each half: a name, a config dict, an
            ``Initializer`` or a callable ``(shape, dtype) -> tensor``.

    Example:
        >>> init = PerHalf("glorot_uniform")
        >>> tuple(init((16, 2, 8)).shape)
        (16, 2, 8)
    """

    def __init__(self, initializer: Any = "glorot_uniform") -> None:
        if isinstance(initializer, PerHalf):
            initializer = initializer.initializer
        self.initializer = keras.initializers.get(initializer)

    def __call__(self, shape: tuple[int, ...], dtype: Any = None) -> Any:
        shape = tuple(shape)
        if len(shape) < 2 or shape[-2] != 2:
            raise ValueError(
                "PerHalf initializes packed GLU weights of shape (..., 2, U). "
                f"Received: shape={shape}"
            )
        half = shape[:-2] + shape[-1:]
        value = self.initializer(half, dtype=dtype)
        gate = _reseeded(self.initializer)(half, dtype=dtype)
        return keras.ops.stack([value, gate], axis=-2)

    def get_config(self) -> dict[str, Any]:
        return {"initializer": keras.initializers.serialize(self.initializer)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PerHalf:
        return cls(keras.initializers.deserialize(config["initializer"]))


# The gate half's seed: the value half's plus this (2^31 / golden ratio), modulo 2^31. Not + 1, or a
# layer seeded s would get the value half of one seeded s + 1 as its gate.
_GATE_SEED_OFFSET = 0x4F1BBCDD


def _reseeded(initializer: Any) -> Any:
    """The same initializer with another integer seed (see above), so the two halves differ."""
    seed = getattr(initializer, "seed", None)
    if isinstance(seed, int) and not isinstance(seed, bool) and hasattr(initializer, "get_config"):
        config = initializer.get_config()
        if "seed" in config:
            gate_seed = (seed + _GATE_SEED_OFFSET) % 2**31
            return type(initializer).from_config({**config, "seed": gate_seed})
    return initializer  # unseeded callables and SeedGenerator-seeded initializers differ per call


def _halves(weight: Any) -> tuple[Any, Any]:
    return weight[..., 0, :], weight[..., 1, :]


def per_half_regularizer(regularizer: Any) -> Any:
    """``regularizer`` applied to each half of a packed (..., 2, U) weight as to a Dense weight of
    shape (..., U), the penalties summed (the same as on the whole weight for L1/L2; rank-2 ones
    such as ``OrthogonalRegularizer`` need it). None stays None."""
    if regularizer is None:
        return None

    def regularize(weight: Any) -> Any:
        value, gate = _halves(weight)
        return regularizer(value) + regularizer(gate)

    return regularize


def per_half_constraint(constraint: Any) -> Any:
    """``constraint`` applied to each half of a packed (..., 2, U) weight as to a Dense weight of
    shape (..., U) (a norm over ``axis=1`` then normalises a half's rows, as on a Dense kernel).
    None stays None."""
    if constraint is None:
        return None

    def constrain(weight: Any) -> Any:
        value, gate = _halves(weight)
        return keras.ops.stack([constraint(value), constraint(gate)], axis=-2)

    return constrain
