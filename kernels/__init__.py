"""Triton kernels and their torch references. Leaf code: imports neither core nor plugins."""
