"""Numba CUDA kernels of the cuda executor (installed as gpu_pitr.kernels)."""
