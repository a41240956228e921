"""mechinterp_c: the model-side work of mechanistic interpretability in C.

Transformer forward passes with hook points, activation caches, ablations,
small-model training and analyses, with every activation handed to Python as
a zero-copy NumPy array. ``from mechinterp_c import HookedTransformer`` is a
drop-in for TransformerLens; ``mechinterp_c.transformers`` for Hugging Face.
"""
import os

# OpenMP threads that spin while waiting starve each other (and Python) on a
# small shared machine: a training step measured 4x faster with passive waiting
# (bench/train.py). Read once, when libgomp starts: set it before _core loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import _core, analysis, checkpoints, io, ops, optim, reve, training, transformers, utils, weight_processing
from ._core import get_num_threads, set_num_threads
from .activation_cache import ActivationCache
from .config import HookedTransformerConfig
from .factored_matrix import FactoredMatrix
from .hook_points import HookPoint
from .hooked_transformer import HookedTransformer
from .transformers.modeling_gpt2 import get_array_type, set_array_type

__all__ = [
    "ActivationCache", "FactoredMatrix", "HookPoint", "HookedTransformer", "HookedTransformerConfig",
    "analysis", "checkpoints", "io", "ops", "optim", "reve", "training", "transformers", "utils", "weight_processing",
    "set_num_threads", "get_num_threads", "cpu_isa", "set_array_type", "get_array_type",
]
__version__ = "0.1.0"


def cpu_isa():
    """The instruction set the kernels were dispatched to: 'avx512', 'avx2' or 'scalar'."""
    return _core.cpu_isa()
