"""REVE EEG front end on the C core, and the electrode position bank.

REVE (brain-bzh/reve-base) turns an EEG recording ``eeg [B, C, T]`` and the
electrodes' positions ``pos [B, C, 3]`` into a token sequence for a
transformer:

1. ``patches = eeg.unfold(2, patch_size, patch_size - patch_overlap)``
   ``[B, C, P, patch_size]`` (a partial last window is dropped);
2. ``patch_emb = to_patch_embedding(patches)`` reshaped to ``[B, C*P, D]``
   (tokens channel-major);
3. ``pos4 = fourier4d.add_time_patch(pos, P)`` ``[B, C*P, 4]`` (x, y, z, t);
   ``pos_embed = ln(fourier4d(pos4) + mlp4d(pos4))``;
4. ``x = patch_emb + pos_embed``: the residual stream input.

:class:`ReveFrontEnd` runs all of it in one C call (``frontend(eeg, pos)``)
and exposes the PyTorch-named parts the original notebook calls one by one
(``to_patch_embedding[0].weight``, ``fourier4d.add_time_patch``, ``mlp4d``,
``ln``), each callable on NumPy arrays. :class:`PositionBank` maps electrode
names to coordinates, as ``brain-bzh/reve-positions`` does.

The whole model (front end + the shared C transformer, module tree with hooks,
TransformerLens API) is :class:`mechinterp_c.transformers.modeling_reve.ReveModel`
(``AutoModel.from_pretrained``) and ``modeling_reve.HookedReve``; that module builds on
this one, never the other way round.
"""
import difflib
import os

import numpy as np

from . import _core, ops

__all__ = ["ReveFrontEnd", "PositionBank", "default_position_bank", "Linear", "GELU",
           "LayerNorm", "Sequential", "FourierEmb4D", "unfold", "DEFAULT_POSITIONS_PATH"]

DEFAULT_POSITIONS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                                      "reve_positions.json")


def _f32(x, name):
    """x as a float32 NumPy array (torch tensors and sequences accepted)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as e:  # pragma: no cover - exotic objects
        raise TypeError(f"{name}: expected a float array, got {type(x).__name__}") from e
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a float array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def unfold(eeg, patch_size, patch_overlap):
    """Overlapping windows along the last axis: ``[..., T] -> [..., P, patch_size]``,
    step ``patch_size - patch_overlap``, as ``torch.Tensor.unfold`` (partial last window
    dropped). Raises ValueError for a signal shorter than one patch or non-finite values."""
    return _core.reve_unfold(eeg, int(patch_size), int(patch_overlap))


class Linear:
    """``y = x @ weight.T + bias`` with PyTorch's layout ``weight [out, in]``; bias may be None."""

    def __init__(self, weight, bias=None):
        self.weight = _f32(weight, "weight")
        if self.weight.ndim != 2:
            raise ValueError(f"weight: expected [out, in], got shape {self.weight.shape}")
        self.bias = None if bias is None else _f32(bias, "bias")
        if self.bias is not None and self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"bias: expected shape ({self.weight.shape[0]},), got {self.bias.shape}")

    @property
    def in_features(self):
        """Input width."""
        return self.weight.shape[1]

    @property
    def out_features(self):
        """Output width."""
        return self.weight.shape[0]

    def __call__(self, x):
        return ops.matmul(x, self.weight, self.bias, trans_b=True)

    def __repr__(self):
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None})")


class GELU:
    """Exact (erf) GELU, as ``torch.nn.GELU()``."""

    def __call__(self, x):
        return ops.gelu(x)

    def __repr__(self):
        return "GELU(approximate='none')"


class LayerNorm:
    """LayerNorm over the last axis with affine ``weight``, ``bias`` and ``eps`` (1e-5)."""

    def __init__(self, weight, bias, eps=1e-5):
        self.weight = _f32(weight, "weight")
        self.bias = _f32(bias, "bias")
        self.eps = float(eps)

    def __call__(self, x):
        return ops.layer_norm(x, self.weight, self.bias, self.eps)

    def __repr__(self):
        return f"LayerNorm(({self.weight.shape[0]},), eps={self.eps})"


class Sequential:
    """Apply the modules in order; indexable like ``torch.nn.Sequential``."""

    def __init__(self, *modules):
        self._modules = list(modules)

    def __getitem__(self, i):
        return self._modules[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __call__(self, x):
        for mod in self._modules:
            x = mod(x)
        return x

    def __repr__(self):
        inner = "\n".join(f"  ({i}): {m!r}" for i, m in enumerate(self._modules))
        return f"Sequential(\n{inner}\n)"


class FourierEmb4D:
    """REVE's 4-D Fourier position features ``[..., 4] -> [..., dimension]``.

    ``t`` is scaled by ``increment_time`` (0.1), ``margin`` (0.4) is added to all four
    coordinates, the ``freqs**4`` phases ``2*pi*(fx*x + fy*y + fz*z + ft*t)/(1 + 2*margin)``
    (x slowest, t fastest) are cut to the first ``dimension/2``; output ``cat(cos, sin)``.
    """

    def __init__(self, dimension, freqs, increment_time=0.1, margin=0.4):
        self.dimension = int(dimension)
        self.freqs = int(freqs)
        self.increment_time = float(increment_time)
        self.margin = float(margin)

    def __call__(self, pos4):
        return _core.reve_fourier4d(pos4, self.dimension, self.freqs, self.increment_time,
                                    self.margin)

    @staticmethod
    def add_time_patch(pos, n_patches):
        """``[B, C, 3] -> [B, C*n_patches, 4]``: each channel's (x, y, z) with t = 0..P-1."""
        return _core.reve_add_time_patch(pos, int(n_patches))

    def __repr__(self):
        return f"FourierEmb4D(dimension={self.dimension}, freqs={self.freqs})"


def _torch_like_uniform(rng, shape, fan_in):
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


class ReveFrontEnd:
    """The REVE patch + position front end on the C core.

    Parameters: ``embed_dim`` D (512), ``patch_size`` (200), ``patch_overlap`` (20),
    ``freqs`` (4), and ``state_dict``: a mapping with the PyTorch names
    ``to_patch_embedding.0.weight/bias``, ``mlp4d.0.weight``, ``mlp4d.2.weight/bias``,
    ``ln.weight/bias`` (extra keys, e.g. the transformer's, are ignored; NumPy arrays or
    torch tensors). Without a state_dict, weights are drawn like PyTorch's defaults from
    ``seed``.

    ``fe(eeg, pos)`` returns the residual stream input ``[B, C*P, D]``; with
    ``intermediates=True`` a dict of every step (``patches``, ``patch_emb``, ``pos4``,
    ``fourier``, ``mlp4d``, ``pos_embed``, ``x``). ``pos`` may have batch 1 (one montage
    for every example) or B.
    """

    KEYS = ("to_patch_embedding.0.weight", "to_patch_embedding.0.bias", "mlp4d.0.weight",
            "mlp4d.2.weight", "mlp4d.2.bias", "ln.weight", "ln.bias")

    def __init__(self, embed_dim=512, patch_size=200, patch_overlap=20, freqs=4,
                 state_dict=None, seed=0):
        self.embed_dim, self.patch_size = int(embed_dim), int(patch_size)
        self.patch_overlap, self.freqs = int(patch_overlap), int(freqs)
        if not 0 <= self.patch_overlap < self.patch_size:
            raise ValueError(f"patch_overlap: must be in [0, patch_size={self.patch_size}), "
                             f"got {self.patch_overlap}")
        D, S = self.embed_dim, self.patch_size
        if state_dict is None:
            rng = np.random.default_rng(seed)
            state_dict = {
                "to_patch_embedding.0.weight": _torch_like_uniform(rng, (D, S), S),
                "to_patch_embedding.0.bias": _torch_like_uniform(rng, (D,), S),
                "mlp4d.0.weight": _torch_like_uniform(rng, (D, 4), 4),
                "mlp4d.2.weight": np.ones(D, np.float32), "mlp4d.2.bias": np.zeros(D, np.float32),
                "ln.weight": np.ones(D, np.float32), "ln.bias": np.zeros(D, np.float32),
            }
        missing = [k for k in self.KEYS if k not in state_dict]
        if missing:
            raise KeyError(f"state_dict: missing REVE front-end weights {missing}")
        want = {"to_patch_embedding.0.weight": (D, S), "mlp4d.0.weight": (D, 4)}
        w = {}
        for k in self.KEYS:
            arr = _f32(state_dict[k], k)
            shape = want.get(k, (D,))
            if arr.shape != shape:
                raise ValueError(f"{k}: expected shape {shape}, got {arr.shape}")
            w[k] = arr
        self.to_patch_embedding = Sequential(Linear(w["to_patch_embedding.0.weight"],
                                                    w["to_patch_embedding.0.bias"]))
        self.fourier4d = FourierEmb4D(D, self.freqs)
        self.mlp4d = Sequential(Linear(w["mlp4d.0.weight"]), GELU(),
                                LayerNorm(w["mlp4d.2.weight"], w["mlp4d.2.bias"]))
        self.ln = LayerNorm(w["ln.weight"], w["ln.bias"])

    @classmethod
    def from_torch(cls, model):
        """Build from a PyTorch REVE module (its config attributes and state_dict)."""
        sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        w = sd["to_patch_embedding.0.weight"]
        overlap = getattr(model, "overlap_size", getattr(model, "patch_overlap", None))
        return cls(embed_dim=w.shape[0], patch_size=w.shape[1], patch_overlap=overlap,
                   freqs=model.fourier4d.freqs, state_dict=sd)

    @classmethod
    def from_pretrained(cls, name_or_path, revision="main", cache_dir=None):
        """Load the front end of a REVE checkpoint: a local directory or a Hugging Face
        cache entry (resolved by :func:`mechinterp_c.io.resolve_pretrained`) with
        ``config.json`` (``embed_dim``, ``patch_size``, ``patch_overlap``, ``freqs``) and
        ``model.safetensors`` (or shards). Transformer weights in the file are ignored here.
        Keys may carry a module prefix (``model.to_patch_embedding.0.weight``)."""
        from . import io
        base = io.resolve_pretrained(name_or_path, revision=revision, cache_dir=cache_dir)
        cfg = io.load_config(base, required=("embed_dim", "patch_size", "patch_overlap", "freqs"))
        weights = io.load_weights(base, float32=True)
        sd = {}
        for key in cls.KEYS:
            hits = [k for k in weights if k == key or k.endswith("." + key)]
            if len(hits) > 1:
                hits = [k for k in hits if k == key] or hits
            if hits:   # a copy: the front end keeps no view of the mapped file
                sd[key] = np.array(weights[min(hits, key=len)])
        return cls(embed_dim=int(cfg["embed_dim"]), patch_size=int(cfg["patch_size"]),
                   patch_overlap=int(cfg["patch_overlap"]), freqs=int(cfg["freqs"]),
                   state_dict=sd)

    def state_dict(self):
        """The front-end weights under their PyTorch names (float32 arrays, not copies)."""
        return {
            "to_patch_embedding.0.weight": self.to_patch_embedding[0].weight,
            "to_patch_embedding.0.bias": self.to_patch_embedding[0].bias,
            "mlp4d.0.weight": self.mlp4d[0].weight,
            "mlp4d.2.weight": self.mlp4d[2].weight, "mlp4d.2.bias": self.mlp4d[2].bias,
            "ln.weight": self.ln.weight, "ln.bias": self.ln.bias,
        }

    @property
    def step(self):
        """Hop between patches: patch_size - patch_overlap."""
        return self.patch_size - self.patch_overlap

    def n_patches(self, n_samples):
        """Patches per channel for a signal of n_samples (the partial last one dropped)."""
        if n_samples < self.patch_size:
            raise ValueError(f"eeg: signal of {n_samples} samples is shorter than one patch "
                             f"(patch_size={self.patch_size})")
        return (n_samples - self.patch_size) // self.step + 1

    def patches(self, eeg):
        """``[B, C, T] -> [B, C, P, patch_size]`` (step 1 of the notebook)."""
        return unfold(eeg, self.patch_size, self.patch_overlap)

    def __call__(self, eeg, pos, intermediates=False):
        """Residual stream input ``[B, C*P, D]`` for ``eeg [B, C, T]`` and ``pos [B or 1, C, 3]``;
        with ``intermediates=True`` a dict of every step (see the class docstring)."""
        sd = self.state_dict()
        return _core.reve_frontend(
            eeg, pos, sd["to_patch_embedding.0.weight"], sd["to_patch_embedding.0.bias"],
            sd["mlp4d.0.weight"], sd["mlp4d.2.weight"], sd["mlp4d.2.bias"], sd["ln.weight"],
            sd["ln.bias"], self.patch_size, self.patch_overlap, self.freqs,
            intermediates=bool(intermediates), ln_eps=self.ln.eps)

    frontend = __call__

    def __repr__(self):
        return (f"ReveFrontEnd(embed_dim={self.embed_dim}, patch_size={self.patch_size}, "
                f"patch_overlap={self.patch_overlap}, freqs={self.freqs})")


class PositionBank:
    """Electrode name -> (x, y, z) coordinates, called like ``brain-bzh/reve-positions``:
    ``bank(["Fp1", "Fp2", ...])`` returns a ``[n, 3]`` float32 array.

    Loaded from a JSON file that maps names to ``[x, y, z]``, either at the top level or
    under ``"positions"`` (keys starting with ``"__"``, such as ``"__metadata__"``, are
    metadata). Lookup is exact first, then case-insensitive; an unknown name raises
    ``KeyError`` listing the closest known names.
    """

    def __init__(self, path=DEFAULT_POSITIONS_PATH):
        self.path = os.fspath(path)
        try:
            doc = _core.parse_json_file(self.path)
        except AttributeError:  # pragma: no cover - a branch without the JSON parser
            import json
            with open(self.path) as f:
                doc = json.load(f)
        self.metadata = doc.get("__metadata__", {}) if isinstance(doc, dict) else {}
        self._init(doc, self.path)

    @classmethod
    def from_dict(cls, mapping, metadata=None):
        """A bank from ``{name: [x, y, z]}`` held in memory."""
        self = cls.__new__(cls)
        self.path = None
        self.metadata = dict(metadata or {})
        self._init(mapping, "mapping")
        return self

    def _init(self, doc, where):
        if not isinstance(doc, dict):
            raise ValueError(f"{where}: expected a JSON object mapping names to [x, y, z]")
        table = doc.get("positions", doc)
        if not isinstance(table, dict):
            raise ValueError(f"{where}: 'positions' must be an object mapping names to [x, y, z]")
        self._pos = {}
        for name, xyz in table.items():
            if name.startswith("__"):
                continue
            arr = np.asarray(xyz, dtype=np.float64) if isinstance(xyz, (list, tuple)) else None
            if arr is None or arr.shape != (3,) or not np.all(np.isfinite(arr)):
                raise ValueError(f"{where}: position of {name!r} must be 3 finite numbers "
                                 f"[x, y, z], got {xyz!r}")
            self._pos[name] = arr.astype(np.float32)
        self._lower = {}
        for name in self._pos:
            self._lower.setdefault(name.lower(), name)

    @property
    def names(self):
        """All electrode names, in file order."""
        return list(self._pos)

    def __len__(self):
        return len(self._pos)

    def __contains__(self, name):
        return isinstance(name, str) and (name in self._pos or name.lower() in self._lower)

    def position(self, name):
        """The (x, y, z) of one electrode as a float32 [3] array (KeyError if unknown)."""
        if not isinstance(name, str):
            raise TypeError(f"electrode name must be a str, got {type(name).__name__}")
        if name in self._pos:
            return self._pos[name].copy()
        if name.lower() in self._lower:
            return self._pos[self._lower[name.lower()]].copy()
        close = difflib.get_close_matches(name, self.names, n=5, cutoff=0.5)
        for low in difflib.get_close_matches(name.lower(), list(self._lower), n=5, cutoff=0.5):
            if self._lower[low] not in close:
                close.append(self._lower[low])
        close = close[:5]
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise KeyError(f"unknown electrode {name!r}{hint}")

    def __call__(self, names):
        if isinstance(names, str):
            names = [names]
        out = np.empty((len(names), 3), np.float32)
        for i, name in enumerate(names):
            out[i] = self.position(name)
        return out

    def __repr__(self):
        return f"PositionBank({len(self)} electrodes, path={self.path!r})"


_default_bank = None


def default_position_bank():
    """The bundled bank (``mechinterp_c/data/reve_positions.json``: idealised spherical
    10-10 positions in meters, RAS head frame; see its ``__metadata__``), loaded once."""
    global _default_bank
    if _default_bank is None:
        _default_bank = PositionBank(DEFAULT_POSITIONS_PATH)
    return _default_bank
