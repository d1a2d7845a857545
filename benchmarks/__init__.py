"""`nox -s bench`: glu_kernels.glu against the unfused formula, the framework's own glu, its
compiler, and the bare-GEMM floors, per backend, shape and dtype. Run ``python -m benchmarks
--help``."""
