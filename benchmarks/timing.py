"""The timing harness: warm-up, then rounds in which every variant runs once in rotated order (A/B
interleaved, so drift and neighbours' load hit all variants alike), medians with spread."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass
class Stats:
    median: float  # seconds per call
    q1: float
    q3: float
    min: float
    max: float
    reps: int
    inner: int  # calls per sample (tiny shapes are timed in batches of calls)

    @property
    def iqr_pct(self) -> float:
        return 100.0 * (self.q3 - self.q1) / self.median if self.median else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"iqr_pct": self.iqr_pct}


def _quantiles(xs: list[float]) -> tuple[float, float, float]:
    """Quartiles (inclusive method: interpolated between samples, never the extremes for n >= 3)."""
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[1], q[2]


def measure(
    fns: dict[str, Callable[[], object]],
    *,
    budget_s: float,
    min_reps: int = 3,
    max_reps: int = 50,
    warmup: int = 2,
    min_sample_s: float = 2e-3,
) -> dict[str, Stats]:
    """Times each callable (which must synchronise: block_until_ready / .numpy()), interleaved."""
    names = list(fns)
    per_call: dict[str, float] = {}
    for name in names:  # warm-up: compile, allocate, fill caches; also estimates the cost per call
        t = math.inf
        for _ in range(warmup):
            t0 = time.perf_counter()
            fns[name]()
            t = min(t, time.perf_counter() - t0)
        per_call[name] = t
    inner = {n: max(1, min(1000, math.ceil(min_sample_s / max(per_call[n], 1e-7)))) for n in names}
    round_s = sum(per_call[n] * inner[n] for n in names)
    reps = int(min(max_reps, max(min_reps, budget_s / max(round_s, 1e-9))))
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:  # rotate the order every round
            fn, n = fns[name], inner[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n)
    out = {}
    for name, xs in samples.items():
        q1, med, q3 = _quantiles(xs)
        out[name] = Stats(med, q1, q3, min(xs), max(xs), len(xs), inner[name])
    return out


def fastest(forms: dict[str, Callable[[], object]], budget_s: float = 0.5) -> tuple[str, Callable]:
    """``(name, form)``: the fastest of equivalent forms of one computation, timed here. A floor is
    the fastest way to compute its products, not one chosen spelling (on this CPU a transposed
    bfloat16 operand, or a separate bias pass, can cost more than the GEMM's own work)."""
    stats = measure(forms, budget_s=budget_s, min_reps=5, max_reps=15)
    name = min(stats, key=lambda k: stats[k].median)
    return name, forms[name]
