"""Where and in what precision models run: the CPU, in float32, or with bfloat16 weights
where a model's loader accepts them (``dtype="bfloat16"``: weights stored as bfloat16,
activations and sums float32). Anything else asked for is refused with an error naming
it, never ignored: another device is a ValueError, another dtype (float16, float64) a
NotImplementedError.

``CPUFloat32`` gives a model class torch's moving methods (``to``, ``cpu``, ``float``,
``cuda``, ``half``, ``bfloat16``, ``double``, ``mps``): those that ask for the CPU or
float32 return the model unchanged, the others raise.
"""
import numpy as np

_FLOAT32_NAMES = ("float32", "float", "fp32", "torch.float32", "torch.float")
_BFLOAT16_NAMES = ("bfloat16", "bf16", "torch.bfloat16")
_DTYPE_WORDS = _FLOAT32_NAMES + _BFLOAT16_NAMES + ("float16", "half", "fp16", "float64",
                                                   "double", "auto")


def _is_dtype_like(x):
    if isinstance(x, (np.dtype, type)):
        return True
    if type(x).__name__ == "dtype":                     # torch.dtype
        return True
    return isinstance(x, str) and (x.startswith("torch.") or x in _DTYPE_WORDS)


def is_bfloat16(dtype):
    """Whether ``dtype`` names bfloat16 ("bfloat16", "bf16" or ``torch.bfloat16``)."""
    return dtype is not None and str(dtype) in _BFLOAT16_NAMES


def check_dtype(dtype, where, allow_auto=False, allow_bf16=False):
    """Nothing for None and float32 (a string, NumPy's or torch's); with ``allow_auto``
    also "auto" (Hugging Face's "the checkpoint's dtype", float32 here); with
    ``allow_bf16`` also bfloat16 (:func:`is_bfloat16`). Anything else:
    NotImplementedError naming it."""
    if dtype is None or (allow_auto and dtype == "auto") or (allow_bf16 and is_bfloat16(dtype)):
        return
    name = str(dtype)
    if name in _FLOAT32_NAMES or (isinstance(dtype, (np.dtype, type)) and np.dtype(dtype) == np.float32):
        return
    hint = (" (bfloat16 weights: load the model with dtype='bfloat16')" if is_bfloat16(dtype)
            else "")
    raise NotImplementedError(f"{where}: dtype {name!r} is not supported: the C core computes in "
                              f"float32 only (leave the dtype out or pass float32){hint}")


def warn_bf16_path(where):
    """The one-line warning a bfloat16 model gets on a CPU without AVX512-BF16."""
    from . import _core
    if _core._bgemm_best_path() != "bf16":
        import warnings
        warnings.warn(f"{where}: this CPU has no AVX512-BF16: bfloat16 weights run on the slower "
                      f"fp32 path (weight tiles widened to float32 for the float32 GEMM)",
                      RuntimeWarning, stacklevel=3)


def check_cpu_device(device, where=None):
    """Nothing for None and the CPU ("cpu", "cpu:0", torch.device("cpu")); any other
    device (a GPU, "meta", ...) is a ValueError naming it: the C core computes, and keeps
    weights and activations, in CPU memory only."""
    if device is None:
        return
    name = str(device)
    if name == "cpu" or name.startswith("cpu:"):
        return
    raise ValueError(f"{where + ': ' if where else ''}device={name!r}: mechinterp_c computes and "
                     f"keeps activations in CPU memory only; use device=None or 'cpu'")


class CPUFloat32:
    """torch's moving and casting methods for a model that lives on the CPU in float32
    (mixed into ``HookedTransformer`` and the Hugging Face modules)."""

    def _where(self, method):
        return f"{type(self).__name__}.{method}"

    def _weights_bf16(self):
        """Whether the model's weights are stored as bfloat16 (models override this)."""
        return False

    def _cast(self, dtype, where):
        """A cast to ``dtype`` (None: no cast): the dtype the weights already have is a
        no-op; converting between float32 and bfloat16 in place is refused (load the
        model again with the dtype wanted), as is any other dtype."""
        if dtype is None:
            return
        check_dtype(dtype, where, allow_bf16=True)
        if is_bfloat16(dtype) != self._weights_bf16():
            have = "bfloat16" if self._weights_bf16() else "float32"
            raise NotImplementedError(f"{where}: the weights are {have} and are not converted in "
                                      f"place; load the model again with dtype={str(dtype)!r} "
                                      f"(from_pretrained(..., dtype=...) or the config's dtype)")

    def to(self, *args, **kwargs):
        """``to(device)``, ``to(dtype)``, ``to(device, dtype)``: the CPU and the dtype the
        weights have (float32, or bfloat16 for a bfloat16 model) return the model
        unchanged; anything else raises (NotImplementedError for a dtype, ValueError
        for a device) naming it.
        ``non_blocking``/``copy``/``print_details`` are accepted (nothing moves)."""
        where = self._where("to")
        for k in ("non_blocking", "copy", "print_details", "memory_format"):
            kwargs.pop(k, None)
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        if kwargs:
            raise TypeError(f"{where}: unexpected argument(s) {sorted(kwargs)}")
        for a in args:
            if _is_dtype_like(a):
                self._cast(a, where)
            else:
                check_cpu_device(a, where)
        check_cpu_device(device, where)
        self._cast(dtype, where)
        return self

    def cpu(self):
        """Returns the model (it is on the CPU)."""
        return self

    def float(self):
        """Returns the model when it is float32 (a bfloat16 model: NotImplementedError)."""
        self._cast("float32", self._where("float"))
        return self

    def cuda(self, device=None):
        """Refused (ValueError): the C core runs on the CPU only."""
        check_cpu_device("cuda" if device is None else f"cuda:{device}", self._where("cuda"))

    def mps(self):
        """Refused (ValueError): the C core runs on the CPU only."""
        check_cpu_device("mps", self._where("mps"))

    def half(self):
        """Refused: the C core computes in float32 only."""
        check_dtype("float16", self._where("half"))

    def bfloat16(self):
        """Returns a bfloat16 model; a float32 one is not converted in place
        (NotImplementedError: load it with dtype="bfloat16")."""
        self._cast("bfloat16", self._where("bfloat16"))
        return self

    def double(self):
        """Refused: the C core computes in float32 only."""
        check_dtype("float64", self._where("double"))
