"""mechinterp_c: the model-side work of mechanistic interpretability in C.

Transformer forward passes with hook points, activation caches, ablations,
small-model training and analyses, with every activation handed to Python as
a zero-copy NumPy array. See README.md.
"""
from . import _core, ops
from ._core import get_num_threads, set_num_threads

__all__ = ["ops", "set_num_threads", "get_num_threads", "cpu_isa"]
__version__ = "0.1.0"


def cpu_isa():
    """The instruction set the kernels were dispatched to: 'avx512', 'avx2' or 'scalar'."""
    return _core.cpu_isa()
