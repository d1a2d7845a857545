"""nox sessions: `nox -s tests` (the whole suite, what CI runs) and `nox -s bench` (the benchmark).

Every session that installs does so with constraints.txt (torch pinned to the CPU wheel) and reuses
its virtualenv; `tests-gpu` installs nothing and runs in the current environment.
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


# The numerical and error tests, whose torch tensors go to tests/backend_arrays.py's TORCH_DEVICE
# (JAX's arrays to its default device): the set run on an H200 (README, "On a GPU").
GPU_TESTS = (
    "tests/test_reference_parity.py",
    "tests/test_gradients.py",
    "tests/test_half_precision.py",
    "tests/test_fixed_cases.py",
    "tests/test_relu_kink.py",
    "tests/test_errors.py",
)


_CUDA_CHECK = (
    "import sys, torch; sys.exit(None if torch.cuda.is_available() else "
    "f'tests-gpu: expected a CUDA device visible to torch; torch {torch.__version__} sees none')"
)


@nox.session(name="tests-gpu", venv_backend="none")
def tests_gpu(session: nox.Session) -> None:
    """Parity, gradient and error tests with torch tensors on CUDA and JAX on its default device, in
    the current environment, which must hold a CUDA build of torch (and may hold one of JAX; CI
    has no GPU). JAX is kept from preallocating GPU memory, which torch shares."""
    session.run("python", "-c", _CUDA_CHECK)
    session.run(
        "python",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-m",
        "not keras and not sharding",
        "-k",
        "torch or jax",
        *GPU_TESTS,
        *session.posargs,
        env={"GLU_TEST_TORCH_DEVICE": "cuda", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
    )
