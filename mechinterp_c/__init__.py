"""mechinterp_c: the model-side work of mechanistic interpretability in C.

Transformer forward passes with hook points, activation caches, ablations,
small-model training and analyses, with every activation handed to Python as
a zero-copy NumPy array. ``from mechinterp_c import HookedTransformer`` is a
drop-in for TransformerLens; ``mechinterp_c.transformers`` for Hugging Face.
"""
import os
import sys

# OpenMP threads that spin while waiting starve each other (and Python) on a
# small shared machine: a training step measured 4x slower with libgomp's
# default spin of a few milliseconds. Threads that sleep at once instead must be
# woken by the kernel at every parallel region, hundreds per decode step: a
# GPT-2 decode step measured 1.4x slower than with a ~0.1 ms spin (GOMP_SPINCOUNT
# 10000), which costs training nothing measurable. So: that short spin in
# libgomp, passive waiting elsewhere, unless the user chose. Read once, when the
# runtime starts: set before _core loads (a torch imported later inherits it).
# torch loaded first started its own OpenMP runtime with spinning threads (told in torch mode)
_torch_spins = "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import _core, ablation, analysis, attribution, checkpoints, io, metrics, ops, optim, patching, reve, training, transformers, utils, weight_processing
from ._core import get_num_threads, set_num_threads
from .activation_cache import ActivationCache
from .config import HookedTransformerConfig
from .factored_matrix import FactoredMatrix
from .generation import HookedTransformerKeyValueCache
from .hook_points import HookPoint
from .hooked_transformer import HookedTransformer
from .array_type import get_array_type, set_array_type
from . import array_type as _array_type

_array_type._TORCH_SPINS[0] = _torch_spins

__all__ = [
    "ActivationCache", "FactoredMatrix", "HookPoint", "HookedTransformer", "HookedTransformerConfig",
    "HookedTransformerKeyValueCache",
    "analysis", "checkpoints", "io", "ops", "optim", "reve", "training", "transformers", "utils", "weight_processing",
    "set_num_threads", "get_num_threads", "cpu_isa", "set_array_type", "get_array_type",
]
__version__ = "0.1.0"


def cpu_isa():
    """The instruction set the kernels were dispatched to: 'avx512', 'avx2' or 'scalar'.

    The environment variable ``MI_FORCE_ISA=scalar|avx2|avx512``, set before the
    import, caps it: the kernels then run as on a CPU without the higher levels.
    """
    return _core.cpu_isa()


def _check_forced_isa():
    """Reject an MI_FORCE_ISA the core does not know, and say when the CPU lacks it."""
    name = os.environ.get("MI_FORCE_ISA")
    if not name:
        return
    try:
        got = _core.force_isa(name) if name != "best" else None
    except ValueError:
        got = None
    if got is None:
        raise ImportError(f"MI_FORCE_ISA={name!r}: expected 'scalar', 'avx2' or 'avx512'")
    if got != name:
        import warnings
        warnings.warn(f"MI_FORCE_ISA={name!r}: this CPU supports {got!r} at most; the kernels use "
                      f"{got!r}", RuntimeWarning, stacklevel=2)


_check_forced_isa()
