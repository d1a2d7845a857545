"""Hypothesis strategies for glu's inputs (array-api-tests habits: capped sizes, bounded values, no
subnormals), and ``examples(n)`` to size a test's example count with the loaded profile.

Sizes are drawn from a short list, not from a full range: every distinct shape costs a trace and a
compile in JAX (and a retrace in TF functions), so capping the number of distinct shapes is what
keeps the suite fast, while the list still covers 1, small primes, powers of two and the ~96 upper
end.
Values are drawn from a seeded NumPy generator (a failing example reports its seed, which reproduces
it exactly); w is scaled by 1/sqrt(D) so the pre-activation stays O(1) whatever D is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from backend_arrays import round_to
from hypothesis import settings
from hypothesis import strategies as st

ACTIVATIONS = ("sigmoid", "silu", "gelu", "gelu_tanh", "relu", "linear")
SIZES = (1, 2, 3, 5, 8, 16, 17, 32, 64, 96)  # D and U
LEADING_DIMS = (0, 1, 2, 3, 7)

_DEFAULT_EXAMPLES = 10  # max_examples of the default profile (conftest.py)


def examples(n: int) -> int:
    """``n`` examples under the default profile, scaled like the loaded profile's max_examples."""
    return max(1, round(n * settings().max_examples / _DEFAULT_EXAMPLES))


@dataclass
class Case:
    """One glu call's inputs, already rounded to ``dtype``, as float64 NumPy arrays."""

    x: np.ndarray
    w: np.ndarray
    b: np.ndarray | None
    dy: np.ndarray
    activation: str
    dtype: str

    @property
    def units(self) -> int:
        return self.w.shape[-1] if self.w.ndim == 3 else self.w.shape[-1] // 2

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        b = None if self.b is None else self.b.shape
        return (
            f"Case(x.shape={self.x.shape}, w.shape={self.w.shape}, b.shape={b}, "
            f"activation={self.activation!r}, dtype={self.dtype!r})"
        )


leading_shapes = st.one_of(
    st.just(()),  # 1-D x
    st.lists(st.sampled_from(LEADING_DIMS), min_size=1, max_size=3).map(tuple),
)


@st.composite
def cases(draw, dtype: str, activation: str | None = None, *, max_leading: int = 3):
    """A glu call: leading shape (none, empty or 1-3 dims), D and U, 2-D or 3-D weight, bias
    (2U,), (2, U) or None, and a cotangent dy for gradient tests."""
    act = activation or draw(st.sampled_from(ACTIVATIONS))
    lead = draw(leading_shapes.filter(lambda s: len(s) <= max_leading))
    d = draw(st.sampled_from(SIZES))
    u = draw(st.sampled_from(SIZES))
    weight_3d = draw(st.booleans())
    bias = draw(st.sampled_from([None, "flat", "split"]))
    x_mag = draw(st.sampled_from([1.0, 3.0]))  # 3: gates deep into saturation, |out| larger
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = round_to(rng.uniform(-x_mag, x_mag, (*lead, d)), dtype)
    w = rng.uniform(-1.0, 1.0, (d, 2, u)) * np.sqrt(3.0 / d)  # unit variance per output
    w = round_to(w if weight_3d else w.reshape(d, 2 * u), dtype)
    b = None
    if bias is not None:
        b = round_to(rng.uniform(-1.0, 1.0, (2, u)), dtype)
        b = b.reshape(2 * u) if bias == "flat" else b
    dy = round_to(rng.uniform(-1.0, 1.0, (*lead, u)), dtype)
    return Case(x, w, b, dy, act, dtype)
