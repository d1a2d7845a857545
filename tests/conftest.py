"""Shared test setup: hypothesis profiles, and JAX's float64 mode.

Hypothesis profiles (array-api-tests habit: settings behind flags, a failure prints how to
reproduce):

    default   fast, random: the developer's loop (`pytest -m "not keras and not sharding"`)
    ci        derandomized (the same examples on every run), 4x more examples, no deadline, and
              print_blob=True so a failing example prints the `@reproduce_failure(...)` line

The profile is taken from the environment variable HYPOTHESIS_PROFILE, else ``ci`` when CI=true,
else ``default``. Tests size their example counts with ``strategies.examples(n)`` (n examples under
the default profile, scaled with the loaded profile), so one switch here scales the whole suite.

JAX: float64 is one of the dtypes under test, so x64 mode is switched on once, here, for the whole
process (only if JAX is installed; importing it is cheap next to the tests that use it); on a GPU,
float32 matmuls are asked for in float32 (see below).
"""

from __future__ import annotations

import importlib.util
import os

from hypothesis import HealthCheck, settings

# Tracing/compiling a new shape in JAX or TF, or a busy shared machine, can make one example slow:
# deadlines would only make the suite flaky. Arrays are drawn from a seed, so no size health check.
_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("default", max_examples=10, **_COMMON)
settings.register_profile(
    "ci", max_examples=40, derandomize=True, print_blob=True, database=None, **_COMMON
)
# Handy for a soak run hunting for rare failures: HYPOTHESIS_PROFILE=thorough.
settings.register_profile("thorough", max_examples=400, print_blob=True, **_COMMON)

_profile = os.environ.get("HYPOTHESIS_PROFILE") or (
    "ci" if os.environ.get("CI", "").lower() == "true" else "default"
)
settings.load_profile(_profile)

if importlib.util.find_spec("jax") is not None:
    import jax

    jax.config.update("jax_enable_x64", True)
    if jax.default_backend() != "cpu":
        # On a GPU, JAX multiplies float32 matrices in TF32 (10-bit mantissa) unless told
        # otherwise, and glu follows the framework's setting, as ``x @ w`` does. The float32
        # tolerances check float32 arithmetic, so the tests ask for it.
        jax.config.update("jax_default_matmul_precision", "highest")


def pytest_report_header(config):
    return f"hypothesis profile: {_profile} (max_examples={settings().max_examples})"
