"""One module per framework, each with the same interface: NAME, shape, dtype_name, glu, implementation."""
