"""Numba kernels, one module per family, each beside a plain-NumPy reference."""
