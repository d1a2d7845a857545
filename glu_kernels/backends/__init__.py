"""One module per framework, each with the same interface.

Every backend module provides: NAME, shape, dtype_name, glu, implementation.
"""
