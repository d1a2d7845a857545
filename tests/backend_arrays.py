"""Moving test data between NumPy and each backend's framework, and the backend parameters.

Test data is made in float64 NumPy, rounded to the dtype under test *in NumPy* (``round_to``), and
only then converted: every value is then exactly representable in the target dtype, so the
conversion is exact in every framework and the float64 reference can be evaluated on exactly the
values the backend sees. ``to_numpy64`` brings a result back as float64 NumPy.

``backend_params()`` gives one pytest param per backend (id = the backend's name, so ``-k torch``
selects one backend), skipped where the framework is not installed.

Devices: JAX puts arrays on its default device (a GPU where jaxlib has one). torch tensors go to
``GLU_TEST_TORCH_DEVICE`` (default "cpu"), so ``GLU_TEST_TORCH_DEVICE=cuda pytest -k torch`` runs
the same checks on a GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import numpy as np
import pytest

BACKENDS = ("numpy", "jax", "torch", "tensorflow")
GRAD_BACKENDS = ("jax", "torch", "tensorflow")  # NumPy is forward only

# Dtypes each backend supports (NumPy has no native bfloat16).
DTYPES: dict[str, tuple[str, ...]] = {
    "numpy": ("float16", "float32", "float64"),
    "jax": ("bfloat16", "float16", "float32", "float64"),
    "torch": ("bfloat16", "float16", "float32", "float64"),
    "tensorflow": ("bfloat16", "float16", "float32", "float64"),
}
HALF = ("float16", "bfloat16")

_MODULES = {"numpy": "numpy", "jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}
TORCH_DEVICE = os.environ.get("GLU_TEST_TORCH_DEVICE", "cpu")


def installed(backend: str) -> bool:
    return importlib.util.find_spec(_MODULES[backend]) is not None


def _skip_unless(backend: str):
    return pytest.mark.skipif(
        not installed(backend), reason=f"{_MODULES[backend]} is not installed"
    )


def backend_params(backends=BACKENDS):
    """One ``pytest.param`` per backend, id = its name, skipped when its framework is missing."""
    return [pytest.param(b, id=b, marks=_skip_unless(b)) for b in backends]


def backend_dtype_params(backends=BACKENDS):
    """``(backend, dtype)`` params with ids like ``torch-bfloat16``."""
    return [
        pytest.param(b, d, id=f"{b}-{d}", marks=_skip_unless(b))
        for b in backends
        for d in DTYPES[b]
    ]


def numpy_dtype(dtype: str) -> np.dtype:
    """The NumPy dtype for a dtype name.

    bfloat16 comes from ml_dtypes (installed with JAX and TF).
    """
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def finfo(dtype: str):
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return ml_dtypes.finfo(ml_dtypes.bfloat16)
    return np.finfo(np.dtype(dtype))


def round_to(a, dtype: str) -> np.ndarray:
    """``a`` rounded to ``dtype`` (round to nearest even), as float64 NumPy; subnormals -> 0.

    Inputs are kept free of subnormals (the array-api-tests habit): flush-to-zero modes (TensorFlow
    sets them on its CPU threads) would otherwise make a correct backend differ from the reference.
    """
    a = np.asarray(a, dtype=np.float64)
    if dtype in ("float16", "bfloat16", "float32"):
        a = np.where(np.abs(a) < float(finfo(dtype).tiny), 0.0, a)
        a = a.astype(numpy_dtype(dtype)).astype(np.float64)
    return a


def framework(backend: str):
    """The framework module of a backend (skipping the test when it is not installed)."""
    if backend == "tensorflow":
        return pytest.importorskip("tensorflow")
    if backend == "jax":
        pytest.importorskip("jax")
        return importlib.import_module("jax.numpy")
    return pytest.importorskip(_MODULES[backend])


def to_backend(backend: str, a, dtype: str, *, variable: bool = False, requires_grad: bool = False):
    """NumPy data -> the backend's array of ``dtype`` (any dtype name: float*, int32, bool, ...).

    Float data should already be representable in ``dtype`` (see ``round_to``); the conversion goes
    through float64 so it is exact. ``variable`` gives a ``tf.Variable`` (TensorFlow only);
    ``requires_grad`` a leaf torch tensor that requires grad.
    """
    a = np.asarray(a)
    fw = framework(backend)
    if backend == "numpy":
        return a.astype(numpy_dtype(dtype))
    if backend == "jax":
        return fw.asarray(a).astype(dtype)
    if backend == "torch":
        # (a.copy, not ascontiguousarray, which makes 0-d arrays 1-d)
        t = fw.from_numpy(a.copy(order="C")).to(device=TORCH_DEVICE, dtype=getattr(fw, dtype))
        return t.requires_grad_(True) if requires_grad else t
    if backend == "tensorflow":
        t = fw.cast(fw.constant(a), dtype)
        return fw.Variable(t) if variable else t
    raise AssertionError(backend)


def to_numpy64(t) -> np.ndarray:
    """Any backend's array (or None) -> float64 NumPy (None stays None)."""
    if t is None:
        return None
    module = type(t).__module__.partition(".")[0]
    if module == "torch":
        import torch

        return t.detach().to(torch.float64).cpu().numpy()
    if module == "tensorflow":
        import tensorflow as tf

        return tf.cast(t, tf.float64).numpy()
    return np.asarray(t).astype(np.float64)  # numpy, jax (jax/jaxlib array types)


def array_type(backend: str) -> tuple[type, ...]:
    """The type(s) a backend's outputs must be instances of."""
    fw = framework(backend)
    if backend == "numpy":
        return (fw.ndarray,)
    if backend == "jax":
        import jax

        return (jax.Array,)
    if backend == "torch":
        return (fw.Tensor,)
    return (fw.Tensor,)


def forward(backend: str, x, w, b, dtype: str, **kwargs):
    """``glu_kernels.glu`` on the backend's arrays of ``dtype`` made from NumPy data.

    Returns the raw result, in the backend's framework.
    """
    import glu_kernels as gk

    conv = [None if a is None else to_backend(backend, a, dtype) for a in (x, w, b)]
    return gk.glu(*conv, **kwargs)


def gradients(backend: str, x, w, b, dy, dtype: str, **kwargs):
    """``(out, dx, dw, db)`` of ``glu_kernels.glu`` as float64 NumPy: dL/d(x, w, b) for
    ``L = sum(glu(x, w, b) * dy)``, through each framework's own autodiff (JAX: ``jax.vjp``;
    torch: ``torch.autograd.grad``; TensorFlow: a GradientTape on tf.Variables)."""
    import glu_kernels as gk

    has_b = b is not None
    if backend == "jax":
        import jax

        args = [to_backend(backend, a, dtype) for a in (x, w, b) if a is not None]
        out, vjp = jax.vjp(lambda *a: gk.glu(*a, **kwargs), *args)
        grads = vjp(to_backend(backend, dy, dtype))
    elif backend == "torch":
        import torch

        args = [
            to_backend(backend, a, dtype, requires_grad=True) for a in (x, w, b) if a is not None
        ]
        out = gk.glu(*args, **kwargs)
        grads = torch.autograd.grad(out, args, to_backend(backend, dy, dtype))
    elif backend == "tensorflow":
        import tensorflow as tf

        args = [to_backend(backend, a, dtype, variable=True) for a in (x, w, b) if a is not None]
        dy_t = to_backend(backend, dy, dtype)
        with tf.GradientTape() as tape:
            out = gk.glu(*args, **kwargs)
            loss = tf.reduce_sum(tf.cast(out, tf.float64) * tf.cast(dy_t, tf.float64))
        grads = tape.gradient(loss, args)
    else:
        raise AssertionError(f"{backend} has no gradients")
    # one gradient per array passed (no db without a bias)
    for g, a in zip(grads, [arr for arr in (x, w, b) if arr is not None], strict=True):
        assert g is not None, f"{backend}: no gradient"
        assert tuple(g.shape) == np.shape(a), (
            f"{backend}: gradient shape {tuple(g.shape)} != {np.shape(a)}"
        )
        assert _dtype_name(g) == dtype, f"{backend}: gradient dtype {_dtype_name(g)} != {dtype}"
    grads = [to_numpy64(g) for g in grads]
    return (to_numpy64(out), *grads, *([None] if not has_b else []))


def _dtype_name(t) -> str:
    dt = t.dtype
    name = getattr(dt, "name", None)
    if isinstance(name, str):
        return name
    return str(dt).removeprefix("torch.")
