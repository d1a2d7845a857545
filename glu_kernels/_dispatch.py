"""Which backend runs a call: the framework of its tensors, found by type and cached per type.

A tensor's framework is read off the top-level module of its class (or a base class), so finding
it never imports a framework: if the caller holds a ``torch.Tensor``, torch is already imported. The
backend module itself is imported on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from functools import cache
from types import ModuleType
from typing import Any

from glu_kernels import _validate

# backend name -> (top-level modules whose array types it takes, the framework's import name,
#                  how its arrays are named in messages)
REGISTRY: dict[str, tuple[tuple[str, ...], str, str]] = {
    "numpy": (("numpy",), "numpy", "numpy.ndarray"),
    "jax": (("jax", "jaxlib"), "jax", "jax.Array"),
    "torch": (("torch",), "torch", "torch.Tensor"),
    "tensorflow": (("tensorflow",), "tensorflow", "tf.Tensor / tf.Variable"),
}

# backend name -> the framework's array classes, as (module, attribute): a framework's other
# objects (jax.ShapeDtypeStruct, torch.Size, tf.TensorSpec, ...) are no arrays of it
_ARRAY_CLASSES: dict[str, tuple[tuple[str, str], ...]] = {
    "numpy": (("numpy", "ndarray"), ("numpy", "generic")),
    "jax": (("jax", "Array"), ("jax.core", "Tracer")),  # a tracer is an Array by isinstance only
    "torch": (("torch", "Tensor"),),
    "tensorflow": (
        ("tensorflow", "Tensor"),
        ("tensorflow", "Variable"),
        # a tf.Variable made under ParameterServerStrategy with a variable_partitioner
        ("tensorflow.python.distribute.sharded_variable", "ShardedVariable"),
    ),
}

_SUPPORTED = tuple(kind for _, _, kind in REGISTRY.values())


@cache
def backend_name_of_type(t: type) -> str | None:
    """The registered backend whose framework defines ``t`` (or a base class of it), else None
    (also for a framework's sparse and ragged types)."""
    not_dense = any(k.__name__ in _validate.SPARSE_OR_RAGGED for k in t.__mro__)
    if not_dense or t.__module__.startswith("keras."):
        # not dense arrays; and Keras variables (a tf.Variable's subclass under Keras' TensorFlow
        # backend, but no array of JAX or torch): refused alike on every backend, with a hint
        return None
    for klass in t.__mro__:
        top = klass.__module__.partition(".")[0]
        for name, (modules, _, _) in REGISTRY.items():
            if top in modules:
                return name if _is_array_class(name, t) else None
    return None


def _is_array_class(name: str, t: type) -> bool:
    # the framework is imported (one of its classes is in hand); a class another version of it
    # moved or lacks counts for nothing
    for module, attribute in _ARRAY_CLASSES[name]:
        try:
            klass = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError):
            continue
        if issubclass(t, klass):
            return True
    return False


def backend(name: str) -> ModuleType:
    """The backend module ``glu_kernels.backends.<name>``, imported on first use."""
    if name == "torch":
        # A static import: torch.compile(fullgraph=True) traces this function, and Dynamo can run an
        # import statement but not importlib.import_module (a graph break), even on the first call.
        # (Not a module global set on first use: a traced call would guard on it being unset, and
        # recompile once it is.)
        from glu_kernels.backends import torch as module

        return module
    return _imported_backend(name)


@cache
def _imported_backend(name: str) -> ModuleType:
    return importlib.import_module(f"glu_kernels.backends.{name}")


def _all_torch(tensor: type, x: object, w: object, b: object | None) -> bool:
    return isinstance(x, tensor) and isinstance(w, tensor) and (b is None or isinstance(b, tensor))


def refuse_not_dense(error: Exception | None, op: str, **args: Any) -> None:
    """Raises the op's TypeError, from ``error``, if one of the named arguments is a torch tensor
    that is not dense (sparse, mkldnn and jagged tensors have other layouts; a strided nested
    tensor says is_nested); returns otherwise."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    for arg, value in args.items():
        if isinstance(value, torch.Tensor) and (
            value.layout is not torch.strided or value.is_nested
        ):
            raise _validate.unsupported_type(arg, value, _SUPPORTED, op) from error


def backend_of(x: object, w: object, b: object | None) -> ModuleType:
    """The backend module for one call; raises TypeError for unsupported or mixed array types."""
    torch = sys.modules.get("torch")
    if torch is not None and _all_torch(torch.Tensor, x, w, b):
        # torch.compile traces this function: isinstance it can, a walk over the __mro__ of a
        # tensor subclass (nn.Parameter, as Keras' torch backend passes) it cannot
        return backend("torch")
    name = backend_name_of_type(type(x))
    if (
        name is not None
        and backend_name_of_type(type(w)) == name
        and (b is None or backend_name_of_type(type(b)) == name)
    ):
        return backend(name)
    kinds: dict[str, tuple[str, type]] = {}
    for arg, value in (("x", x), ("w", w), ("b", b)):
        if value is None and arg == "b":
            continue
        name = backend_name_of_type(type(value))
        if name is None:
            raise _validate.unsupported_type(arg, value, _SUPPORTED)
        kinds[arg] = (name, type(value))
    names = {name for name, _ in kinds.values()}
    if len(names) > 1:
        raise _validate.mixed_frameworks(kinds)
    return backend(names.pop())


def backend_of_array(value: object, arg: str, op: str) -> ModuleType:
    """The backend module for a call on one array, ``value`` (named ``arg`` in ``op``'s errors);
    raises TypeError for an unsupported type."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return backend("torch")
    name = backend_name_of_type(type(value))
    if name is None:
        raise _validate.unsupported_type(arg, value, _SUPPORTED, op)
    return backend(name)


def available_backends() -> list[str]:
    """The backends whose framework is installed (importable), without importing any of them."""
    return [
        name
        for name, (_, module, _) in REGISTRY.items()
        if importlib.util.find_spec(module) is not None
    ]
