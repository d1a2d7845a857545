"""The bad-input catalogue (OpInfo's ErrorInputs): every backend, NumPy included, raises the same
exception type with the same words, and no framework-internal exception type leaks out.

Each entry is checked by exact type (ValueError/TypeError themselves, not a framework's subclass)
and by a message regex; shape errors must say ``Received:`` with the shapes.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import backend_arrays as ba
import numpy as np
import pytest

import glu_kernels as gk

VALID_ACTIVATIONS = r"'sigmoid', 'silu', 'gelu', 'gelu_tanh', 'relu', 'linear'"
SUPPORTED_TYPES = r"numpy\.ndarray, jax\.Array, torch\.Tensor, tf\.Tensor / tf\.Variable"


@dataclass
class ErrorInput:
    name: str
    x: tuple  # shapes
    w: tuple
    b: tuple | None
    error: type
    match: str
    kwargs: dict = field(default_factory=dict)
    dtypes: tuple = ("float32", "float32", "float32")  # x, w, b


CATALOGUE = [
    ErrorInput(
        "odd_packed_width",
        (4, 6),
        (6, 7),
        None,
        ValueError,
        r"w's last dimension must be even.*Received: x\.shape=\(4, 6\), w\.shape=\(6, 7\)",
    ),
    ErrorInput(
        "feature_mismatch",
        (4, 5),
        (6, 8),
        None,
        ValueError,
        r"x's last dimension must equal w's first dimension.*"
        r"Received: x\.shape=\(4, 5\), w\.shape=\(6, 8\)",
    ),
    ErrorInput(
        "feature_mismatch_3d_w",
        (2, 3, 5),
        (6, 2, 4),
        None,
        ValueError,
        r"x's last dimension must equal w's first.*Received: x\.shape=\(2, 3, 5\), "
        r"w\.shape=\(6, 2, 4\)",
    ),
    ErrorInput(
        "bias_wrong_length",
        (4, 6),
        (6, 8),
        (6,),
        ValueError,
        r"b must have shape \(2U,\) = \(8,\) or \(2, U\) = \(2, 4\).*"
        r"Received: x\.shape=\(4, 6\), w\.shape=\(6, 8\), b\.shape=\(6,\)",
    ),
    ErrorInput(
        "bias_transposed",
        (4, 6),
        (6, 2, 4),
        (4, 2),
        ValueError,
        r"b must have shape.*Received: x\.shape=\(4, 6\), w\.shape=\(6, 2, 4\), b\.shape=\(4, 2\)",
    ),
    ErrorInput(
        "bias_rank_3",
        (4, 6),
        (6, 8),
        (1, 2, 4),
        ValueError,
        r"b must have shape.*b\.shape=\(1, 2, 4\)",
    ),
    ErrorInput(
        "rank0_x",
        (),
        (6, 8),
        None,
        ValueError,
        r"x must have at least one dimension.*Received: x\.shape=\(\), w\.shape=\(6, 8\)",
    ),
    ErrorInput(
        "w3_middle_not_2",
        (4, 6),
        (6, 3, 4),
        None,
        ValueError,
        r"3-D w must have shape \(D, 2, U\).*Received: x\.shape=\(4, 6\), w\.shape=\(6, 3, 4\)",
    ),
    ErrorInput(
        "w_rank1",
        (4, 6),
        (6,),
        None,
        ValueError,
        r"w must have shape \(D, 2U\) or \(D, 2, U\)\. "
        r"Received: x\.shape=\(4, 6\), w\.shape=\(6,\)",
    ),
    ErrorInput(
        "w_rank4",
        (4, 6),
        (6, 2, 2, 2),
        None,
        ValueError,
        r"w must have shape \(D, 2U\) or \(D, 2, U\)\. Received: x\.shape=\(4, 6\), "
        r"w\.shape=\(6, 2, 2, 2\)",
    ),
    ErrorInput(
        "unknown_activation",
        (4, 6),
        (6, 8),
        None,
        ValueError,
        rf"Unknown activation\. Expected one of {VALID_ACTIVATIONS}.*'swish'.*"
        r"Received: activation='swishh'",
        kwargs={"activation": "swishh"},
    ),
    ErrorInput(
        "bad_save_mode",
        (4, 6),
        (6, 8),
        None,
        ValueError,
        r"save must be one of 'activations', 'input'\. Received: save='outputs'",
        kwargs={"save": "outputs"},
    ),
    ErrorInput(
        "save_mode_not_a_string",
        (4, 6),
        (6, 8),
        None,
        ValueError,
        r"save must be one of 'activations', 'input'\. Received: save=array\('input'",
        kwargs={"save": np.array("input")},
    ),
    ErrorInput(
        "int_dtype",
        (4, 6),
        (6, 8),
        None,
        TypeError,
        r"glu needs floating-point inputs \(float16, bfloat16, float32, float64\)\. "
        r"Received: x\.dtype=int32, w\.dtype=int32",
        dtypes=("int32", "int32", None),
    ),
    ErrorInput(
        "bool_dtype",
        (4, 6),
        (6, 8),
        (8,),
        TypeError,
        r"floating-point inputs.*Received: x\.dtype=float32, w\.dtype=float32, b\.dtype=bool",
        dtypes=("float32", "float32", "bool"),
    ),
    ErrorInput(
        "mixed_dtypes",
        (4, 6),
        (6, 8),
        None,
        TypeError,
        r"x, w and b must share one dtype.*Received: x\.dtype=float32, w\.dtype=float64",
        dtypes=("float32", "float64", None),
    ),
    ErrorInput(
        "mixed_dtypes_bias",
        (4, 6),
        (6, 8),
        (8,),
        TypeError,
        r"share one dtype.*Received: x\.dtype=float16, w\.dtype=float16, b\.dtype=float32",
        dtypes=("float16", "float16", "float32"),
    ),
]


def _make(backend, case: ErrorInput):
    rng = np.random.default_rng(0)
    arrays = []
    for shape, dtype in zip((case.x, case.w, case.b), case.dtypes, strict=True):
        if shape is None:
            arrays.append(None)
            continue
        data = rng.uniform(-1, 1, shape)
        if dtype in ("int32", "bool"):
            data = (data > 0) if dtype == "bool" else np.round(data * 3)
        arrays.append(ba.to_backend(backend, data, dtype or "float32"))
    return arrays


def _raise(backend, case: ErrorInput):
    x, w, b = _make(backend, case)
    with pytest.raises(case.error) as info:
        gk.glu(x, w, b, **case.kwargs)
    return info


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda c: c.name)
@pytest.mark.parametrize("backend", ba.backend_params())
def test_bad_input(backend, case):
    info = _raise(backend, case)
    assert type(info.value) is case.error, f"{type(info.value)!r} leaked instead of {case.error!r}"
    assert "Received:" in str(info.value)
    assert re.search(case.match, str(info.value)), str(info.value)
    # explain() validates exactly as glu does
    x, w, b = _make(backend, case)
    with pytest.raises(case.error, match=case.match):
        gk.explain(x, w, b, **case.kwargs)


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda c: c.name)
def test_bad_input_same_words_on_every_backend(case):
    backends = [b for b in ba.BACKENDS if ba.installed(b)]
    messages = {b: str(_raise(b, case).value) for b in backends}
    assert len(set(messages.values())) == 1, messages


@pytest.mark.parametrize("backend", ba.backend_params())
def test_mixed_frameworks_names_both(backend):
    other = "torch" if backend == "numpy" else "numpy"
    if not ba.installed(other):
        pytest.skip(f"{other} not installed")
    x = ba.to_backend(backend, np.ones((4, 6)), "float32")
    w = ba.to_backend(other, np.ones((6, 8)), "float32")
    with pytest.raises(TypeError) as info:
        gk.glu(x, w)
    msg = str(info.value)
    assert type(info.value) is TypeError
    assert re.search(
        rf"x, w and b must all be arrays of one framework.*Received: x is \S+ \({backend}\), "
        rf"w is \S+ \({other}\)",
        msg,
    ), msg
    # the bias from a third place
    b = ba.to_backend(other, np.ones(8), "float32")
    with pytest.raises(TypeError, match=rf"w is \S+ \({backend}\), b is \S+ \({other}\)"):
        gk.glu(
            ba.to_backend(backend, np.ones((4, 6)), "float32"),
            ba.to_backend(backend, np.ones((6, 8)), "float32"),
            b,
        )


@pytest.mark.parametrize(
    "bad", [[[1.0, 2.0]], 3.0, None, "x"], ids=["list", "float", "None", "str"]
)
@pytest.mark.parametrize("backend", ba.backend_params())
def test_unsupported_types_list_the_supported_ones(backend, bad):
    w = ba.to_backend(backend, np.ones((2, 4)), "float32")
    x = ba.to_backend(backend, np.ones((3, 2)), "float32")
    with pytest.raises(TypeError) as info:
        gk.glu(bad, w)
    assert type(info.value) is TypeError
    assert re.search(
        rf"glu takes dense arrays of one of these types: {SUPPORTED_TYPES}\. "
        rf"Received: x of type builtins\.{type(bad).__name__}",
        str(info.value),
    ), str(info.value)
    if bad is not None:  # as w (b=None is fine, w=None is not)
        with pytest.raises(TypeError, match=rf"{SUPPORTED_TYPES}\. Received: w of type builtins\."):
            gk.glu(x, bad)
    with pytest.raises(TypeError, match=rf"{SUPPORTED_TYPES}\. Received: b of type builtins\."):
        gk.glu(x, w, [1.0] * 4)


def _framework_objects_that_are_not_arrays(backend):
    """Objects of a framework's own modules that are no arrays of it (dispatch once took any
    class of a framework's modules for that framework's array, and the framework failed inside)."""
    if backend == "jax":
        import jax

        return [jax.ShapeDtypeStruct((3, 2), np.float32)]
    if backend == "torch":
        import torch

        return [torch.Size([3, 2]), torch.float32]
    if backend == "tensorflow":
        import tensorflow as tf

        return [tf.TensorSpec([3, 2]), tf.TensorShape([3, 2])]
    return [np.dtype("float32")]


@pytest.mark.parametrize("backend", ba.backend_params())
def test_framework_objects_that_are_not_arrays_get_glu_words(backend):
    w = ba.to_backend(backend, np.ones((2, 4)), "float32")
    for thing in _framework_objects_that_are_not_arrays(backend):
        for function, args, arg, op in [
            (gk.glu, (thing, w), "x", "glu"),
            (gk.explain, (thing, w), "x", "glu"),
            (gk.gated, (thing,), "h", "gated"),
            (gk.explain_gated, (thing,), "h", "gated"),
        ]:
            with pytest.raises(TypeError) as info:
                function(*args)
            assert type(info.value) is TypeError
            assert re.search(
                rf"^{op} takes dense arrays of one of these types: {SUPPORTED_TYPES}\. "
                rf"Received: {arg} of type \S*{type(thing).__name__}",
                str(info.value),
            ), str(info.value)


@pytest.mark.parametrize("backend", ba.backend_params())
def test_unhashable_activation_is_a_value_error(backend):
    """A list as activation must get glu's own message, not the validation cache's TypeError."""
    x = ba.to_backend(backend, np.ones((3, 2)), "float32")
    w = ba.to_backend(backend, np.ones((2, 4)), "float32")
    with pytest.raises(ValueError, match=r"Unknown activation.*Received: activation=\['silu'\]"):
        gk.glu(x, w, activation=["silu"])


@pytest.mark.parametrize("backend", ba.backend_params())
def test_activation_names_are_case_insensitive(backend):
    x = ba.to_backend(backend, np.ones((3, 2)), "float32")
    w = ba.to_backend(backend, np.ones((2, 4)), "float32")
    assert (
        ba.to_numpy64(gk.glu(x, w, activation="SiLU"))
        == ba.to_numpy64(gk.glu(x, w, activation="silu"))
    ).all()


def _not_dense(backend):
    """(the call's arguments, which argument is not dense, the words the message names it by)."""
    dense = np.ones((2, 2), np.float32)
    x = ba.to_backend(backend, np.ones((3, 2)), "float32")
    w = ba.to_backend(backend, np.ones((2, 4)), "float32")
    if backend == "tensorflow":
        import tensorflow as tf

        ragged = tf.ragged.constant([[1.0, 2.0], [3.0, 4.0]])
        sparse = tf.sparse.from_dense(dense)
        return [((ragged, w), "x", "RaggedTensor"), ((sparse, w), "x", "SparseTensor")]
    if backend == "torch":
        import torch

        t = torch.from_numpy(dense)
        with warnings.catch_warnings():  # "prototype stage"
            warnings.simplefilter("ignore", UserWarning)
            nested = torch.nested.nested_tensor([t, t[:1]])
            jagged = torch.nested.nested_tensor([t, t[:1]], layout=torch.jagged)
        coo = r"Tensor \(layout torch\.sparse_coo\)"
        return [
            ((nested, w), "x", r"Tensor \(nested\)"),
            ((jagged, w), "x", r"NestedTensor \(nested\)"),
            ((x, torch.ones(2, 4).to_sparse(), torch.ones(4)), "w", coo),
            ((x, w, torch.ones(4).to_sparse()), "b", coo),
            ((t.reshape(1, 2, 2).to_sparse(), w), "x", coo),
            ((t.to_mkldnn(), w), "x", r"Tensor \(layout torch\._mkldnn\)"),
        ]
    if backend == "numpy":

        class Masked(np.ma.MaskedArray):  # a subclass is a masked array too
            pass

        masked = np.ma.masked_array(dense, mask=np.eye(2, dtype=bool))
        return [((masked, w), "x", "MaskedArray"), ((masked.view(Masked), w), "x", "Masked")]
    from jax.experimental import sparse

    return [
        ((sparse.BCOO.fromdense(dense), w), "x", "BCOO"),
        ((sparse.COO.fromdense(dense), w), "x", "COO"),  # the older classes: JAXSparse's too
        ((sparse.CSR.fromdense(dense), w), "x", "CSR"),
        ((x, sparse.CSC.fromdense(np.ones((2, 4), np.float32))), "w", "CSC"),
    ]


@pytest.mark.parametrize("backend", ba.backend_params())
def test_not_dense_arrays_are_refused_with_a_hint(backend):
    """Sparse, ragged, nested and masked arrays: refused by name, never computed on wrongly (a
    masked array's mask was ignored; torch's nested tensors and most sparse ones failed inside
    torch: diagnosed after that failure, so that dense calls pay nothing for it)."""
    for args, arg, name in _not_dense(backend):
        with pytest.raises(TypeError) as info:
            gk.glu(*args)
        assert re.search(
            rf"{SUPPORTED_TYPES}\. Received: {arg} of type \S*{name} \(sparse, ragged, "
            r"nested and masked arrays are not dense arrays: convert first",
            str(info.value),
        ), str(info.value)


@pytest.mark.parametrize("layout", ["sparse_coo", "sparse_csr"])
def test_torch_two_dimensional_sparse_x_computes_what_dense_x_does(layout):
    """torch's addmm takes a 2-D sparse first operand: glu lets it (values and gradients)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(3, 4)).astype("float32"))
    w = torch.from_numpy(rng.normal(size=(4, 6)).astype("float32")).requires_grad_()
    sparse = x.to_sparse() if layout == "sparse_coo" else x.to_sparse_csr()
    out = gk.glu(sparse, w, activation="silu")
    want = gk.glu(x, w, activation="silu")
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(
        torch.autograd.grad(out.sum(), w)[0], torch.autograd.grad(want.sum(), w)[0]
    )
