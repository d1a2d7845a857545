"""What is measured: the shapes, dtypes and backends of each run mode, and the time budgets."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    features: int
    units: int

    @property
    def label(self) -> str:
        return f"{self.batch}x{self.features}->{self.units}"

    def gemm_flops(self) -> float:
        """FLOPs of the forward GEMM x (B, D) @ W2 (D, 2U)."""
        return 2.0 * self.batch * self.features * 2 * self.units


SHAPES = {
    s.name: s
    for s in (
        Shape("seed", 32, 16, 8),
        Shape("tabular", 1024, 256, 256),
        Shape("ffn", 2048, 1024, 1024),
        Shape("ffn-wide", 4096, 1024, 2048),
        Shape("llama", 2048, 4096, 11008),
        # 16K tokens through a Llama FFN: a size for a GPU (--device cuda --shapes llama-16k)
        Shape("llama-16k", 16384, 4096, 11008),
    )
}

BACKENDS = ("torch", "jax", "tensorflow", "numpy")
DEVICE_BACKENDS = ("torch", "jax")  # the backends whose cases take --device
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class Plan:
    """One run mode: which cases, and how long each may take."""

    mode: str
    shapes: tuple[str, ...]
    dtypes: tuple[str, ...]
    backends: tuple[str, ...]
    budget_s: float  # time budget per (backend, shape, dtype, forward|train) group, after warm-up
    min_reps: int
    max_reps: int
    compile_torch: bool  # torch.compile costs ~10 s per graph on 2 cores
    keras_shapes: tuple[str, ...]
    keras_budget_s: float


def plan(mode: str, backends: tuple[str, ...] | None = None) -> Plan:
    backends = backends or BACKENDS
    if mode == "quick":
        return Plan(
            mode, ("seed", "tabular"), DTYPES, backends, 0.25, 3, 15, False, ("tabular",), 0.5
        )
    if mode == "full":
        return Plan(
            mode,
            ("seed", "tabular", "ffn", "ffn-wide", "llama"),
            DTYPES,
            backends,
            6.0,
            3,
            60,
            True,
            ("tabular", "ffn"),
            4.0,
        )
    return Plan(
        mode,
        ("seed", "tabular", "ffn", "ffn-wide"),
        DTYPES,
        backends,
        1.2,
        5,  # at least 5 samples: the quartiles are then samples 2 and 4, not interpolated extremes
        40,
        True,
        ("tabular",),
        2.0,
    )


_PACKED_ARGS = ("x", "w2", "b2")
_SPLIT_ARGS = ("x", "w", "v", "bw", "bv")


def memory_cases(glu: Callable, unfused: Callable, packed: Callable, activation: str) -> dict:
    """The variants whose saved-for-backward bytes are compared, the same on every backend:
    name -> (function, names of the tensors it takes, as keys of the backend's ``tensors()``)."""
    return {
        "fused (save=activations)": (
            lambda x, w2, b2: glu(x, w2, b2, activation=activation),
            _PACKED_ARGS,
        ),
        "fused (save=input)": (
            lambda x, w2, b2: glu(x, w2, b2, activation=activation, save="input"),
            _PACKED_ARGS,
        ),
        "unfused": (lambda *a: unfused(*a, activation), _SPLIT_ARGS),
        "packed": (lambda *a: packed(*a, activation), _PACKED_ARGS),
    }


_GPU_DEVICE = re.compile(r"cuda(?::(0|[1-9][0-9]*))?")


def gpu_index(device: str) -> int | None:
    """The GPU ordinal of a ``--device`` string: 0 for "cuda", N for "cuda:N"; None if the string
    is neither (e.g. "cpu", "gpu", "cuda:", "cuda:01")."""
    match = _GPU_DEVICE.fullmatch(device)
    if match is None:
        return None
    return int(match.group(1) or 0)
