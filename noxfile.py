"""nox sessions: `nox -s tests` (the whole suite, what CI runs) and `nox -s bench` (the benchmark).

Every session installs with constraints.txt (torch pinned to the CPU wheel) and reuses its
virtualenv.
"""

from __future__ import annotations

import nox

nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests"]

PYTHON = "3.11"
CONSTRAINTS = ("-c", "constraints.txt")
KERAS_BACKENDS = ("jax", "torch", "tensorflow")
# The sharding tests simulate 8 CPU devices; their Keras test runs the layer under ModelParallel.
SHARDING_ENV = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "KERAS_BACKEND": "jax"}


def _install(session: nox.Session, extras: str) -> None:
    session.install(*CONSTRAINTS, "-e", f".[{extras}]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The README's test command: every backend, then each Keras backend in its own process."""
    _install(session, "all")
    pytest = ("pytest", "-p", "no:cacheprovider", *session.posargs)
    session.run(*pytest, "-m", "not keras and not sharding")
    session.run(*pytest, "-m", "sharding", env=SHARDING_ENV)
    for backend in KERAS_BACKENDS:
        session.run(*pytest, "-m", "keras", env={"KERAS_BACKEND": backend})


@nox.session(python=PYTHON, name="tests-backend")
@nox.parametrize("backend", ["numpy", "jax", "torch", "tensorflow"])
def tests_backend(session: nox.Session, backend: str) -> None:
    """One backend's tests, for a focused run: `nox -s "tests-backend(backend='torch')"`."""
    _install(session, "all")
    session.run("pytest", "-m", "not keras and not sharding", "-k", backend, *session.posargs)


@nox.session(python=PYTHON, name="tests-keras")
@nox.parametrize("backend", list(KERAS_BACKENDS))
def tests_keras(session: nox.Session, backend: str) -> None:
    """The Keras layer's tests under one Keras backend."""
    _install(session, "all")
    session.run("pytest", "-m", "keras", *session.posargs, env={"KERAS_BACKEND": backend})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The benchmark: `nox -s bench` (default, < 5 min), `-- --quick` (< 1 min), `-- --full`."""
    _install(session, "all")
    session.run("python", "-m", "benchmarks", *session.posargs)
