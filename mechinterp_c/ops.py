"""Kernels of the C core as NumPy functions (float32, GIL released).

Each function takes float32 C-contiguous arrays in place, converts other float
input once, and raises ``TypeError``/``ValueError`` naming the argument and
its shape for anything else. NumPy has no bfloat16: ``to_bfloat16`` /
``from_bfloat16`` convert to and from uint16 arrays of bfloat16 bit patterns
(round to nearest even, as torch).
"""
import numpy as np

from . import _core
from ._core import attention, from_bfloat16, gelu, layer_norm, matmul, relu, rms_norm, silu, to_bfloat16

__all__ = ["matmul", "layer_norm", "rms_norm", "gelu", "relu", "silu", "softmax", "attention",
           "to_bfloat16", "from_bfloat16"]


def softmax(x, axis=-1, mask=None):
    """Softmax of ``x`` along ``axis`` in float32.

    ``mask`` is an optional boolean array broadcastable to ``x``; ``False``
    entries are masked out (treated as ``-inf``). A slice whose entries are all
    masked (or all ``-inf``) gives zeros; a NaN in a slice gives a NaN slice.
    Returns a new float32 array of ``x``'s shape.
    """
    if not isinstance(x, np.ndarray):
        if x is None:
            raise TypeError("x: expected a float array, got None")
        x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError("x: expected at least 1 dimension, got shape ()")
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"axis: expected an int, got {type(axis).__name__}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis: {axis} is out of range for x of shape {x.shape}")
    axis = int(axis) % x.ndim
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise TypeError(f"mask: expected a boolean array (False = masked), got dtype {mask.dtype}")
        try:
            mask = np.broadcast_to(mask, x.shape)
        except ValueError:
            raise ValueError(f"mask: shape {mask.shape} does not broadcast to x's shape "
                             f"{x.shape}") from None
    last = axis == x.ndim - 1
    if not last:
        x = np.moveaxis(x, axis, -1)
        if mask is not None:
            mask = np.moveaxis(mask, axis, -1)
    if mask is not None:
        mask = np.ascontiguousarray(mask)
    y = _core.softmax(x, mask)
    return y if last else np.moveaxis(y, -1, axis)
