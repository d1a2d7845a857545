"""Every check on glu's arguments and every error message, in one place, for every backend.

Backends report shapes as tuples (``None`` for a dimension unknown until run time, as in a
``tf.function`` traced with an unknown batch size) and dtypes by name; nothing here imports a
framework.
Messages follow Keras' convention: say what was expected, then ``Received: ...``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from glu_kernels._activations import ACTIVATIONS, ALIASES, Activation

Shape = tuple[int | None, ...]


class _UnknownRank:
    """The shape of a tensor whose rank is unknown until run time (a TensorFlow graph traced with
    a ``TensorSpec(None)``)."""

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN_RANK = _UnknownRank()

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
HALF_DTYPES = ("float16", "bfloat16")
SAVE_MODES = ("activations", "input")
# Also checked at run time where x's last dimension is unknown until then (TensorFlow graphs).
FEATURES_MISMATCH = "x's last dimension must equal w's first dimension (D, the input features)."


@dataclass(frozen=True)
class GluSpec:
    """What a validated call computes, as every backend needs it.

    Attributes:
        features: D, the last dimension of x.
        units: U, the width of the output.
        weight_rank: 2 for a (D, 2U) weight, 3 for (D, 2, U).
        has_bias: whether a bias is added.
        activation: the gate activation.
        save: ``"activations"`` (keep h for backward) or ``"input"`` (recompute h).
        dtype: the dtype of x, w, b and the output.
        compute_dtype: the dtype of the elementwise epilogue: float32 for 16-bit inputs.
    """

    features: int
    units: int
    weight_rank: int
    has_bias: bool
    activation: Activation
    save: str
    dtype: str
    compute_dtype: str


@cache
def numpy_dtype_name(dtype) -> str:
    """The name of a NumPy dtype (JAX's dtypes are NumPy's), cached: NumPy builds the string anew
    on every access (~1.6 us, three times a call)."""
    return dtype.name


def _shape(shape: Sequence[int | None]) -> str:
    return str(tuple(shape))


def _check_known_ranks(**shapes: Shape | _UnknownRank | None) -> None:
    for name, shape in shapes.items():
        if shape is UNKNOWN_RANK:
            raise ValueError(
                f"{name} must have a known rank (number of dimensions). "
                f"Received: {name}.shape=<unknown>"
            )


def activation_names() -> str:
    names = [f"'{n}'" for n in ACTIVATIONS]
    aliases = ", ".join(f"'{a}' (= '{c}')" for a, c in ALIASES.items())
    return ", ".join(names) + (f"; aliases: {aliases}" if aliases else "")


def resolve_activation(activation: str) -> Activation:
    """Returns the table entry for an activation name or alias, or raises ValueError."""
    if isinstance(activation, str):
        key = ALIASES.get(activation.lower(), activation.lower())
        if key in ACTIVATIONS:
            return ACTIVATIONS[key]
    raise ValueError(
        f"Unknown activation. Expected one of {activation_names()}. "
        f"Received: activation={activation!r}"
    )


class _Received:
    """``Received: x.shape=..., w.shape=...`` for the named shapes, formatted only when an error
    message uses it: a call traced by torch.compile has symbolic sizes, and formatting those would
    break the graph."""

    def __init__(self, **shapes: Shape) -> None:
        self.shapes = shapes

    def __format__(self, spec: str) -> str:
        shapes = ", ".join(f"{name}.shape={_shape(s)}" for name, s in self.shapes.items())
        return f"Received: {shapes}"


def check(
    x_shape: Shape,
    w_shape: Shape,
    b_shape: Shape | None,
    x_dtype: str,
    w_dtype: str,
    b_dtype: str | None,
    activation: str,
    save: str,
) -> GluSpec:
    """Validates one glu call and returns its spec.

    Raises ValueError or TypeError naming the inputs.
    """
    act = resolve_activation(activation)
    if not isinstance(save, str) or save not in SAVE_MODES:
        raise ValueError(
            f"save must be one of {', '.join(map(repr, SAVE_MODES))}. Received: save={save!r}"
        )
    _check_dtypes(x_dtype, w_dtype, b_dtype)
    _check_known_ranks(x=x_shape, w=w_shape, b=b_shape)

    received = _Received(x=x_shape, w=w_shape)  # formatted only if an error message is built
    if len(x_shape) < 1:
        raise ValueError(f"x must have at least one dimension, shape (..., D). {received}")
    if len(w_shape) == 2:
        features, packed = w_shape
        if packed is None or features is None:
            raise ValueError(f"w must have a static shape (D, 2U) or (D, 2, U). {received}")
        if packed % 2:
            raise ValueError(
                f"w's last dimension must be even: it packs [W | V], value and gate halves of "
                f"width U each, shape (D, 2U). {received}"
            )
        units = packed // 2
    elif len(w_shape) == 3:
        features, two, units = w_shape
        if features is None or two is None or units is None:
            raise ValueError(f"w must have a static shape (D, 2U) or (D, 2, U). {received}")
        if two != 2:
            raise ValueError(
                "A 3-D w must have shape (D, 2, U): its middle axis indexes value (0) and gate "
                f"(1). {received}"
            )
    else:
        raise ValueError(f"w must have shape (D, 2U) or (D, 2, U). {received}")
    if x_shape[-1] is not None and x_shape[-1] != features:
        raise ValueError(f"{FEATURES_MISMATCH} {received}")
    if b_shape is not None and tuple(b_shape) not in ((2 * units,), (2, units)):
        raise ValueError(
            f"b must have shape (2U,) = ({2 * units},) or (2, U) = (2, {units}), or be None. "
            f"{received}, b.shape={_shape(b_shape)}"
        )
    return GluSpec(
        features=features,
        units=units,
        weight_rank=len(w_shape),
        has_bias=b_shape is not None,
        activation=act,
        save=save,
        dtype=x_dtype,
        compute_dtype="float32" if x_dtype in HALF_DTYPES else x_dtype,
    )


@dataclass(frozen=True)
class GatedSpec:
    """What a validated ``gated`` call computes.

    Attributes:
        units: U, the width of the output (half of h's last dimension).
        activation: the gate activation.
        dtype: the dtype of h and the output.
        compute_dtype: the dtype of the elementwise math: float32 for 16-bit inputs.
    """

    units: int
    activation: Activation
    dtype: str
    compute_dtype: str


def check_gated(h_shape: Shape, h_dtype: str, activation: str) -> GatedSpec:
    """Validates one ``gated`` call and returns its spec.

    Raises ValueError or TypeError naming h.
    """
    act = resolve_activation(activation)
    if h_dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"gated needs a floating-point h ({', '.join(FLOAT_DTYPES)}). "
            f"Received: h.dtype={h_dtype}"
        )
    _check_known_ranks(h=h_shape)
    received = _Received(h=h_shape)
    if len(h_shape) < 1:
        raise ValueError(f"h must have at least one dimension, shape (..., 2U). {received}")
    if h_shape[-1] is None:
        raise ValueError(f"h's last dimension (2U) must be static. {received}")
    if h_shape[-1] % 2:
        raise ValueError(
            "h's last dimension must be even: it packs [a | g], value and gate halves of width U "
            f"each, shape (..., 2U). {received}"
        )
    return GatedSpec(
        units=h_shape[-1] // 2,
        activation=act,
        dtype=h_dtype,
        compute_dtype="float32" if h_dtype in HALF_DTYPES else h_dtype,
    )


def _check_dtypes(x_dtype: str, w_dtype: str, b_dtype: str | None) -> None:
    received = f"Received: x.dtype={x_dtype}, w.dtype={w_dtype}" + (
        f", b.dtype={b_dtype}" if b_dtype is not None else ""
    )
    for dtype in (x_dtype, w_dtype, b_dtype):
        if dtype is not None and dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"glu needs floating-point inputs ({', '.join(FLOAT_DTYPES)}). {received}"
            )
    if w_dtype != x_dtype or (b_dtype is not None and b_dtype != x_dtype):
        raise TypeError(
            "x, w and b must share one dtype; cast them first (glu never casts silently). "
            f"{received}"
        )


# Sparse and ragged types of the supported frameworks: not dense arrays, so not taken (by name,
# so that nothing here imports a framework).
SPARSE_OR_RAGGED = frozenset(
    {"RaggedTensor", "SparseTensor", "IndexedSlices", "JAXSparse", "MaskedArray"}
)


_NOT_DENSE_HINT = (
    " (sparse, ragged, nested and masked arrays are not dense arrays: convert first, e.g. "
    "tf.sparse.to_dense, RaggedTensor.to_tensor(), BCOO.todense(), torch's .to_dense() or "
    ".to_padded_tensor(0), a masked array's .filled(0))"
)


def unsupported_type(
    arg: str, value: object, supported: Sequence[str], op: str = "glu"
) -> TypeError:
    kind, hint = _type_name(type(value)), ""
    layout = getattr(value, "layout", None) if kind.startswith("torch.") else None
    if kind.startswith("torch.") and getattr(value, "is_nested", False):
        kind, hint = f"{kind} (nested)", _NOT_DENSE_HINT
    elif layout is not None and str(layout) != "torch.strided":
        kind, hint = f"{kind} (layout {layout})", _NOT_DENSE_HINT
    elif any(k.__name__ in SPARSE_OR_RAGGED for k in type(value).__mro__):
        hint = _NOT_DENSE_HINT
    elif kind.startswith("keras.") and "Variable" in type(value).__name__:
        hint = " (a Keras variable: pass variable.value, the backend's own tensor)"
    return TypeError(
        f"{op} takes dense arrays of one of these types: {', '.join(supported)}. "
        f"Received: {arg} of type {kind}{hint}"
    )


def mixed_frameworks(kinds: dict[str, tuple[str, type]]) -> TypeError:
    detail = ", ".join(
        f"{arg} is {_type_name(t)} ({framework})" for arg, (framework, t) in kinds.items()
    )
    return TypeError(
        f"x, w and b must all be arrays of one framework; convert them first. Received: {detail}"
    )


def backend_unavailable(name: str, reason: str) -> RuntimeError:
    return RuntimeError(f"The {name} backend of glu_kernels cannot run here: {reason}")


def _type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"
