"""The common shape of a benchmark variant, shared by the per-backend case modules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# variant keys, in report order; "floor" is what every ratio divides by
FUSED, UNFUSED, PACKED, COMPILED, FLOOR = "fused", "unfused", "packed", "compiled", "floor"
ORDER = (FUSED, UNFUSED, PACKED, COMPILED, FLOOR)
LABELS = {
    FUSED: "glu_kernels.glu",
    UNFUSED: "unfused (2 GEMMs, autograd)",
    PACKED: "1 GEMM + framework glu",
    COMPILED: "compiler on unfused",
    FLOOR: "GEMM floor",
}


@dataclass
class Variant:
    key: str
    what: str  # how this backend spells it, for the report
    forward: Callable[[], object] | None  # one synchronised call
    train: Callable[[], object] | None  # forward + backward (dx, dW, db), synchronised
