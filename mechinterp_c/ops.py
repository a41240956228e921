"""Kernels of the C core as NumPy functions (float32, GIL released).

Each function takes float32 C-contiguous arrays in place, converts other float
input once, and raises ``TypeError``/``ValueError`` naming the argument and
its shape for anything else.
"""
from ._core import gelu, layer_norm, matmul, relu, rms_norm, silu

__all__ = ["matmul", "layer_norm", "rms_norm", "gelu", "relu", "silu"]
