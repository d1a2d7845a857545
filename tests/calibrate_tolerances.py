"""Measures the largest error/scale ratio of every backend and dtype.

These are the figures behind tolerances.py.

    python tests/calibrate_tolerances.py [examples per backend, dtype and activation]   (default 60)

Prints, per dtype, the max of ``error_ratio`` (see tolerances.py) over forward outputs and
gradients, with the backend and activation where it occurred. Set RTOL to ~4x the figure (not below
the unit roundoff) and write the figure beside it.
"""

# B023: the hypothesis @given function `run` is defined and run within the same loop iteration, so
# its loop variables are always current; binding them as defaults would clash with @given.
# ruff: noqa: B023

from __future__ import annotations

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import backend_arrays as ba  # noqa: E402
import conftest  # noqa: E402,F401  (jax x64)
from hypothesis import given, settings  # noqa: E402
from strategies import ACTIVATIONS, cases  # noqa: E402
from tolerances import error_ratio, gradient_scales, output_scale  # noqa: E402

from glu_kernels.reference import glu_reference, glu_reference_vjp  # noqa: E402


def main(n: int) -> None:
    worst: dict[tuple[str, str], tuple[float, str]] = {}

    def record(dtype, kind, ratio, where):
        key = (dtype, kind)
        if ratio > worst.get(key, (-1.0, ""))[0]:
            worst[key] = (ratio, where)

    for backend in ba.BACKENDS:
        if not ba.installed(backend):
            continue
        for dtype in ba.DTYPES[backend]:
            for act in ACTIVATIONS:

                @settings(max_examples=n, database=None, deadline=None)
                @given(case=cases(dtype, act))
                def run(case):
                    c = case
                    ref = glu_reference(c.x, c.w, c.b, c.activation)
                    scale = output_scale(c.x, c.w, c.b, c.activation)
                    if backend == "numpy":
                        out = ba.to_numpy64(
                            ba.forward(backend, c.x, c.w, c.b, dtype, activation=act)
                        )
                        record(
                            dtype,
                            "forward",
                            error_ratio(out, ref, scale, dtype),
                            f"{backend} {act} {c}",
                        )
                        return
                    out, dx, dw, db = ba.gradients(
                        backend, c.x, c.w, c.b, c.dy, dtype, activation=act
                    )
                    record(
                        dtype,
                        "forward",
                        error_ratio(out, ref, scale, dtype),
                        f"{backend} {act} {c}",
                    )
                    refs = glu_reference_vjp(c.x, c.w, c.b, c.dy, act)
                    scales = gradient_scales(c.x, c.w, c.b, c.dy, act, dtype)
                    for name, g, r, s in zip(
                        ("dx", "dw", "db"), (dx, dw, db), refs, scales, strict=True
                    ):
                        if r is not None:
                            record(
                                dtype,
                                "backward",
                                error_ratio(g, r, s, dtype),
                                f"{backend} {act} {name} {c}",
                            )

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    run()
            print(f"done {backend} {dtype}", file=sys.stderr, flush=True)
    for (dtype, kind), (ratio, where) in sorted(worst.items()):
        print(f"{dtype:9s} {kind:9s} max error/scale = {ratio:.3g}   ({where})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 60)
