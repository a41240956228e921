"""Loading checkpoints without PyTorch: safetensors (mmap, zero-copy), config.json
(cJSON) and model resolution in a local directory or the Hugging Face cache.

The parsing is done in C (``csrc/io/``); this module adds the file-layout logic:
sharded checkpoints through ``model.safetensors.index.json`` and the Hugging Face
hub cache layout ``models--ORG--NAME/refs/main`` -> ``snapshots/REV/``.

The mapping contract: by default a checkpoint is mapped, not read, and the
arrays handed out are views of the file's pages. Such a file must not be
truncated or written over in place while views of it (or a model reading its
weights from it) live: a truncated mapping kills the process with SIGBUS when
a lost page is read, and an in-place rewrite changes the weights under the
model. Replacing the file by renaming a new one over it (what careful writers,
:func:`save_safetensors` included, do) is safe: the mapping keeps the old file.
Models loaded zero-copy check the files before every forward pass
(:meth:`SafeTensors.check`) and raise OSError naming the file instead of
crashing or computing with changed weights; plain arrays cannot be checked.
``copy=True`` on every loader reads the files into private memory once
instead, after which the files may change or disappear freely.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from . import _core

__all__ = [
    "SafeTensors",
    "load_safetensors",
    "save_safetensors",
    "load_sharded",
    "load_weights",
    "open_checkpoint",
    "open_sharded",
    "load_config",
    "parse_json",
    "hf_cache_dir",
    "resolve_pretrained",
    "SAFETENSORS_NAME",
    "SAFETENSORS_INDEX_NAME",
]

SafeTensors = _core.SafeTensors
parse_json = _core.parse_json

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def load_safetensors(path, float32=False, copy=False):
    """Load every tensor of a ``.safetensors`` file into a dict of NumPy arrays.

    With ``float32=False`` the arrays are read-only zero-copy views of the mapped
    file in their stored dtype (BF16, which NumPy lacks, comes back as float32).
    With ``float32=True`` every tensor is float32 (F16/BF16 converted exactly in C).
    The mapping stays alive as long as any returned array does, and the file must
    not be truncated or written over in place meanwhile (see the module docstring);
    ``copy=True`` reads the file into private memory instead, so it may change.
    """
    with SafeTensors(path, copy=copy) as st:
        get = st.get_float32 if float32 else st.get
        return {name: get(name) for name in st.keys()}


# NumPy dtype -> safetensors dtype name (little-endian storage)
_ST_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64",
              "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def _write_safetensors(path, entries, metadata=None):
    """Write a safetensors file from ``entries``: ``(name, dtype, shape, produce)``
    where ``produce()`` returns the array; arrays are produced one at a time while
    writing, so at most one is in memory. The file is written to a temporary name
    and renamed into place (a reader never sees a partial file)."""
    header, offset, plan = {}, 0, []
    if metadata is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("save_safetensors: metadata must map str to str")
        header["__metadata__"] = dict(metadata)
    for name, dtype, shape, produce in entries:
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"save_safetensors: invalid tensor name {name!r}")
        if name in header:
            raise ValueError(f"save_safetensors: duplicate tensor name {name!r}")
        dt = np.dtype(dtype)
        if dt.name not in _ST_DTYPES:
            raise TypeError(f"save_safetensors: tensor {name!r} has dtype {dt}, which safetensors "
                            f"cannot store (supported: {', '.join(_ST_DTYPES)})")
        shape = tuple(int(n) for n in shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        header[name] = {"dtype": _ST_DTYPES[dt.name], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        plan.append((name, dt, shape, nbytes, produce))
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)          # 8-byte aligned data start, as safetensors pads
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for name, dt, shape, nbytes, produce in plan:
                a = np.asarray(produce())
                if a.shape != shape:
                    raise ValueError(f"save_safetensors: tensor {name!r} was declared {shape}, "
                                     f"produced {a.shape}")
                a = np.ascontiguousarray(a, dtype=dt.newbyteorder("<"))
                f.write(memoryview(a.reshape(-1)).cast("B"))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_safetensors(path, tensors, metadata=None):
    """Write a dict of NumPy arrays to a ``.safetensors`` file (``safetensors.numpy.save_file``).

    Names keep the dict's order; each array is stored C-contiguous, little-endian,
    in its dtype (float64/32/16, int64/32/16/8, uint8, bool). ``metadata`` (str -> str)
    goes into the header's ``__metadata__``. Written to a temporary file and renamed,
    so readers never see a partial file. Returns the path.
    """
    entries = []
    for name, a in tensors.items():
        arr = np.asarray(a)
        entries.append((name, arr.dtype, arr.shape, (lambda arr=arr: arr)))
    return _write_safetensors(path, entries, metadata)


def load_config(path, required=()):
    """Parse a JSON file (``config.json``) with cJSON into a dict.

    ``path`` may be the file or a directory holding ``config.json``. Invalid JSON
    raises ValueError ``FILE:LINE:COL: ...``; a name in ``required`` that the
    file lacks raises KeyError naming the file and the field.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    cfg = _core.parse_json_file(path)
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, "
                         f"got {type(cfg).__name__}")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise KeyError(f"{path}: missing required field(s) {', '.join(map(repr, missing))}")
    return cfg


def load_sharded(directory, float32=False, index_name=SAFETENSORS_INDEX_NAME, copy=False):
    """Load a sharded checkpoint through its ``model.safetensors.index.json``.

    The index's ``weight_map`` (tensor name -> shard file) is read with cJSON; each
    shard is mapped once. Every tensor the index names must be in its shard
    (KeyError naming index, shard and tensor otherwise). Arrays are as in
    :func:`load_safetensors` (``copy`` too).
    """
    out = {}
    for name, st in open_sharded(directory, index_name, copy=copy).items():
        out[name] = st.get_float32(name) if float32 else st.get(name)
    return out


def open_sharded(directory, index_name=SAFETENSORS_INDEX_NAME, copy=False):
    """``{tensor name: SafeTensors}`` of a sharded checkpoint: every shard its
    ``model.safetensors.index.json`` names mapped once (``copy=True``: read into
    memory once), nothing converted yet; checked as :func:`load_sharded` checks."""
    directory = Path(directory)
    index_path = directory / index_name
    index = load_config(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index_path}: missing 'weight_map' object")
    by_shard = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or os.path.basename(shard) != shard:
            raise ValueError(f"{index_path}: tensor {name!r}: shard {shard!r} is not a file "
                             f"name in {directory}")
        by_shard.setdefault(shard, []).append(name)
    out = {}
    for shard, names in by_shard.items():
        shard_path = directory / shard
        if not os.path.lexists(shard_path):
            raise FileNotFoundError(f"{index_path}: shard {shard!r} (needed for tensor "
                                    f"{names[0]!r}) not found in {directory}")
        st = SafeTensors(shard_path, copy=copy)   # names a symlink loop, FIFO, ... itself
        for name in names:
            if name not in st:
                raise KeyError(f"{index_path}: tensor {name!r} is mapped to {shard!r} "
                               f"but {shard_path} has no such tensor")
            out[name] = st
    return out


def hf_cache_dir():
    """The Hugging Face hub cache directory, as huggingface_hub chooses it:
    ``$HF_HUB_CACHE``, else ``$HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``,
    else ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _snapshot_in_cache(repo_id, revision, cache, looked):
    """The snapshot directory of ``repo_id`` at ``revision`` in ``cache`` or None;
    appends every place it looked to ``looked``."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    if not repo_dir.is_dir():
        looked.append(f"{repo_dir} (no such directory)")
        return None
    ref = repo_dir / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
        snap = repo_dir / "snapshots" / commit
        if snap.is_dir():
            return snap
        looked.append(f"{snap} (named by {ref}, missing)")
        return None
    looked.append(f"{ref} (no such file)")
    snap = repo_dir / "snapshots" / revision
    if _COMMIT_RE.match(revision) and snap.is_dir():
        return snap
    snaps = sorted(p.name for p in (repo_dir / "snapshots").glob("*")) \
        if (repo_dir / "snapshots").is_dir() else []
    looked.append(f"{repo_dir / 'snapshots'} (has {', '.join(snaps) if snaps else 'nothing'})")
    return None


def resolve_pretrained(name_or_path, filename=None, revision="main", cache_dir=None):
    """Find a model's files on disk, without network access.

    ``name_or_path`` is a local directory, or a hub id (``"gpt2"``,
    ``"gpt2-large"``, ``"org/name"``) looked up in the Hugging Face cache
    (``cache_dir`` or :func:`hf_cache_dir`): ``models--ORG--NAME/refs/<revision>``
    gives the commit, ``snapshots/<commit>/`` the files. Returns that directory,
    or with ``filename`` the path of that file in it. When nothing is found,
    FileNotFoundError lists every place it looked.
    """
    looked = []
    name = os.fspath(name_or_path)
    if not revision or ".." in revision.split("/") or revision.startswith("/"):
        raise ValueError(f"revision {revision!r} is not a branch, tag or commit name")
    local = Path(name).expanduser()
    if local.is_dir():
        base = local
    else:
        looked.append(f"{local} (not a local directory)")
        base = None
        if re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", name) and ".." not in name:
            cache = Path(cache_dir).expanduser() if cache_dir is not None else hf_cache_dir()
            base = _snapshot_in_cache(name, revision, cache, looked)
        else:
            looked.append(f"{name!r} is not a hub id of the form 'name' or 'org/name'")
        if base is None:
            raise FileNotFoundError(
                f"model {name!r} not found (revision {revision!r}); looked in:\n  "
                + "\n  ".join(looked)
                + "\nThis machine has no hub access: pass a local directory or put the model "
                  "in the Hugging Face cache.")
    if filename is None:
        return base
    target = base / filename
    if not os.path.lexists(target):
        present = sorted(p.name for p in base.iterdir())
        raise FileNotFoundError(f"{name!r}: no file {filename!r} in {base} (it has: "
                                f"{', '.join(present) if present else 'nothing'})")
    return target


def load_weights(name_or_path, float32=False, revision="main", cache_dir=None, copy=False):
    """All weights of a model as a dict of NumPy arrays: ``model.safetensors``
    if present, else the shards named by ``model.safetensors.index.json``.
    ``name_or_path`` is resolved by :func:`resolve_pretrained`; ``copy`` as in
    :func:`load_safetensors`."""
    files = open_checkpoint(name_or_path, revision=revision, cache_dir=cache_dir, copy=copy)
    return {name: st.get_float32(name) if float32 else st.get(name) for name, st in files.items()}


def open_checkpoint(name_or_path, revision="main", cache_dir=None, copy=False):
    """``{tensor name: SafeTensors}`` of a model's weights, mapped but not read
    (``copy=True``: read into private memory once): ``model.safetensors`` if
    present, else the shards named by ``model.safetensors.index.json`` (see
    :func:`open_sharded`). ``name_or_path`` is resolved by
    :func:`resolve_pretrained`. Loaders take zero-copy views with
    ``files[name].get_float32(name, writable=True)``."""
    base = resolve_pretrained(name_or_path, revision=revision, cache_dir=cache_dir)
    # lexists, not is_file: a symlink loop, a dangling link or a FIFO is opened and
    # refused by SafeTensors with its own reason, not reported as "missing"
    if os.path.lexists(base / SAFETENSORS_NAME):
        st = SafeTensors(base / SAFETENSORS_NAME, copy=copy)
        return dict.fromkeys(st.keys(), st)
    if os.path.lexists(base / SAFETENSORS_INDEX_NAME):
        return open_sharded(base, copy=copy)
    present = sorted(p.name for p in base.iterdir())
    hint = ""
    if any(p.endswith((".bin", ".pt", ".pth")) for p in present):
        hint = ("; PyTorch pickles are not read (that needs torch): convert them once with "
                "transformers' save_pretrained(..., safe_serialization=True)")
    raise FileNotFoundError(f"{base}: neither {SAFETENSORS_NAME} nor {SAFETENSORS_INDEX_NAME} "
                            f"(it has: {', '.join(present) if present else 'nothing'}){hint}")
