"""Corpus-scale activation statistics on Dask (``pip install mechinterp_c[distributed]``).

:func:`run_over_corpus` splits a token corpus into partitions, runs each on a Dask
worker (a ``LocalCluster`` of processes by default, or any ``dask.distributed.Client``,
e.g. ``Client("tcp://scheduler:8786")``), where the worker's own copy of the model
gathers :mod:`mechinterp_c.stats` accumulators over the partition's tokens, and
merges the partial results into one set of statistics, returned as NumPy arrays.

- The model is named, never shipped: each worker process opens ``model_spec``
  (a checkpoint directory or a Hugging Face name) once with
  ``HookedTransformer.from_pretrained``; safetensors are memory-mapped, so workers
  on one host share the weight pages.
- Token positions: every token has a global position, its offset in the corpus read
  in order (the sequences concatenated). Top-k and reservoir results report those
  positions; :meth:`CorpusStats.locate` turns them into (sequence, position).
- Exactness: counts, histograms, top-k and reservoir samples are exactly those of a
  single pass over the same tokens, whatever the partitioning and worker count;
  means and variances agree to float64 rounding (Chan's merge).
- Checkpoints: with ``checkpoint_dir``, each finished partition's state is written
  there under a name derived from the model (name, and file sizes and times of a
  local directory), the hooks, the statistics, the batch size and the partition's
  tokens; a rerun (after a client restart) loads those and computes only the rest.
  A worker lost mid-job has its partitions recomputed by Dask's scheduler.
- Bad partitions (token ids outside the vocabulary, a non-integer dtype, a failure
  of the model on them) do not stop the others: every other partition is finished
  (and checkpointed), then :class:`CorpusError` is raised naming each failed
  partition, with the statistics of the good ones in ``error.result``.
"""
from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import stats as _stats

__all__ = ["run_over_corpus", "CorpusStats", "CorpusError", "PartitionFailure", "split_corpus"]

_FORMAT = "mi-corpus-v1"   # bump when the checkpoint content changes


# --------------------------------------------------------------------------- partitions
@dataclass
class Partition:
    """A contiguous run of corpus sequences, shipped to one task.

    ``sequences``: the token arrays, or None when the worker reads them from
    ``memmap`` = (filename, dtype, offset, n_tokens) itself.
    ``starts``: global position of each sequence's first token."""

    index: int
    starts: np.ndarray
    lengths: np.ndarray
    sequences: list | None = None
    memmap: tuple | None = None
    fingerprint: str = ""

    @property
    def n_tokens(self):
        """Tokens in the partition."""
        return int(self.lengths.sum())

    def load(self):
        """The token arrays (read from the memmap file on the worker when that is the source)."""
        if self.sequences is not None:
            return self.sequences
        filename, dtype, offset, n = self.memmap
        flat = np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=(n,))
        return [flat[s:s + ln] for s, ln in zip(self.starts, self.lengths)]


def _as_sequences(item):
    """One source item as a list of 1-D token arrays (a 2-D array: one per row)."""
    a = np.asarray(item)
    if a.ndim == 2:
        return list(a)
    if a.ndim == 1:
        return [a]
    raise ValueError(f"token arrays must be 1-D (a sequence) or 2-D (rows of sequences), got shape {a.shape}")


def _chunks(tokens, seq_len):
    return [tokens[i:i + seq_len] for i in range(0, len(tokens), seq_len)]


def _tokenizer(model_spec):
    from .transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model_spec)


def _source_sequences(model_spec, token_source, seq_len):
    """(list of 1-D arrays, memmap description or None) of any supported source."""
    if isinstance(token_source, np.memmap):
        mm = token_source
        if mm.ndim == 2:
            seq_len = mm.shape[1]
        elif mm.ndim != 1:
            raise ValueError(f"token_source: a memmap of token ids must be 1-D or 2-D, got shape {mm.shape}")
        if not isinstance(mm.base, mmap.mmap):
            # a slice keeps its parent's `offset`, so workers would read the wrong tokens
            raise ValueError("token_source: pass the memmap as np.memmap opened it, not a slice or view "
                             "(open it with offset= and shape= to select a range)")
        return None, (str(mm.filename), mm.dtype.str, mm.offset, mm.size), seq_len
    if isinstance(token_source, (str, os.PathLike)):
        token_source = [token_source]
    if _is_dataset(token_source):
        cols = token_source.column_names
        col = next((c for c in ("input_ids", "tokens") if c in cols), None)
        if col is not None:
            return [np.asarray(r[col]) for r in token_source], None, seq_len
        if "text" not in cols:
            raise ValueError(f"token_source: the dataset needs an 'input_ids', 'tokens' or 'text' column, "
                             f"has {cols}")
        tok = _tokenizer(model_spec)
        seqs = []
        for r in token_source:
            seqs += _chunks(np.asarray(tok.encode(r["text"]), dtype=np.int64), seq_len)
        return seqs, None, seq_len
    items = list(token_source)
    if items and all(isinstance(i, (str, os.PathLike)) for i in items):
        tok = _tokenizer(model_spec)
        seqs = []
        for path in items:
            with open(path, encoding="utf-8") as f:
                ids = np.asarray(tok.encode(f.read()), dtype=np.int64)
            seqs += _chunks(ids, seq_len)
        return seqs, None, seq_len
    seqs = []
    for item in items:
        seqs += _as_sequences(item)
    return seqs, None, seq_len


def _is_dataset(obj):
    try:
        import datasets
    except ImportError:
        return False
    return isinstance(obj, datasets.Dataset)


def split_corpus(model_spec, token_source, n_partitions=8, seq_len=128):
    """The corpus as a list of :class:`Partition`: contiguous runs of sequences with
    about equal token counts (a sequence is never split).

    Sequences: each 1-D array of an iterable (each row of a 2-D one), each row of a
    2-D memmap, ``seq_len`` chunks of a 1-D memmap, of each tokenized text file and of
    each ``text`` of a ``datasets`` dataset (rows of ``input_ids``/``tokens`` as they are)."""
    if int(n_partitions) != n_partitions or n_partitions < 1:
        raise ValueError(f"n_partitions must be a positive integer, got {n_partitions!r}")
    if int(seq_len) != seq_len or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    seqs, mm, seq_len = _source_sequences(model_spec, token_source, int(seq_len))
    if mm is not None:
        n = mm[3]
        lengths = np.diff(np.append(np.arange(0, n, seq_len), n)).astype(np.int64)
    else:
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    if lengths.size == 0 or lengths.sum() == 0:
        raise ValueError("token_source holds no tokens")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    # cut where the running token count crosses each 1/n of the total
    bounds = np.searchsorted(np.cumsum(lengths), np.arange(1, n_partitions) * lengths.sum() / n_partitions,
                             side="left") + 1
    bounds = np.unique(np.concatenate([[0], np.minimum(bounds, lengths.size), [lengths.size]]))
    parts = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        p = Partition(i, starts[a:b], lengths[a:b])
        if mm is None:
            p.sequences = seqs[a:b]
        else:
            p.memmap = mm
        parts.append(p)
    return parts


def _model_key(model_spec):
    """The checkpoint's name, and for a local directory its files' sizes and times, so
    that checkpoints of a changed model are not resumed."""
    d = Path(model_spec)
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in d.iterdir() if f.is_file()) \
        if d.is_dir() else []
    return [str(model_spec), files]


def _fingerprint(job_key, part):
    """Names a partition's checkpoint: the job (model, hooks, statistics) and the tokens."""
    h = hashlib.blake2b(job_key.encode(), digest_size=16)
    h.update(part.starts.tobytes())
    h.update(part.lengths.tobytes())
    for s in part.load():
        a = np.asarray(s)
        h.update(a.dtype.str.encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- worker side
_MODELS = {}   # per worker process: model_spec -> HookedTransformer


def _open_model(model_spec):
    model = _MODELS.get(model_spec)
    if model is None:
        from .hooked_transformer import HookedTransformer
        model = _MODELS[model_spec] = HookedTransformer.from_pretrained(model_spec)
    return model


def _is_pattern(hook):
    return hook.endswith("hook_pattern")


def _applies(acc, hook):
    """Attention entropies are taken of hook_pattern, every other statistic of the rest."""
    return isinstance(acc, _stats.AttentionEntropy) == _is_pattern(hook)


def _check_tokens(part, seqs, d_vocab):
    for j, s in enumerate(seqs):
        a = np.asarray(s)
        where = f"partition {part.index} (sequence {j}, corpus position {int(part.starts[j])})"
        if a.dtype.kind not in "iu":
            raise ValueError(f"{where}: token ids must be integers, got dtype {a.dtype}")
        if a.size and (int(a.min()) < 0 or int(a.max()) >= d_vocab):
            bad = int(a.min()) if int(a.min()) < 0 else int(a.max())
            raise ValueError(f"{where}: token id {bad} is outside the vocabulary [0, {d_vocab})")


def _batches(seqs, starts, batch_size):
    """Consecutive sequences of one length, at most batch_size per batch: (tokens[b, n], starts[b])."""
    i = 0
    while i < len(seqs):
        j = i + 1
        while j < len(seqs) and j - i < batch_size and len(seqs[j]) == len(seqs[i]):
            j += 1
        yield np.stack([np.asarray(s, dtype=np.int64) for s in seqs[i:j]]), starts[i:j]
        i = j


def _compute_partition(model_spec, part, hook_names, templates, batch_size):
    """Accumulators {hook: [acc or None per template]} over one partition's tokens."""
    model = _open_model(model_spec)
    unknown = [h for h in hook_names if h not in model.hook_dict]
    if unknown:
        raise ValueError(f"hook_names: {unknown} are not hook points of {model_spec}")
    seqs = part.load()
    _check_tokens(part, seqs, model.cfg.d_vocab)
    accs = {h: [t.empty() if _applies(t, h) else None for t in templates] for h in hook_names}
    for tokens, starts in _batches(seqs, part.starts, batch_size):
        _, cache = model.run_with_cache(tokens, names_filter=list(hook_names), return_type=None,
                                        return_cache_object=False)
        b, n = tokens.shape
        row_index = (starts[:, None] + np.arange(n)[None, :]).ravel()
        for h in hook_names:
            act = cache[h]   # a view of the pass's arena: consumed before the next pass
            rows = act if _is_pattern(h) else act.reshape(b * n, *act.shape[2:])
            for acc in accs[h]:
                if acc is not None:
                    acc.update(rows, row_index)
    return accs


def _worker_threads():
    try:
        from distributed import get_worker
        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return None


def _run_partition(part, model_spec, hook_names, templates, batch_size):
    """The task: {"index", "ok", "states" (bytes per hook and template) or "error", "seconds"}."""
    from . import _core
    threads = _worker_threads()
    if threads is not None:
        _core.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        accs = _compute_partition(model_spec, part, hook_names, templates, batch_size)
    except (ValueError, TypeError, IndexError, KeyError, OSError, MemoryError) as e:
        msg = str(e) if str(e).startswith(f"partition {part.index}") else f"partition {part.index}: {e}"
        return {"index": part.index, "ok": False, "error": f"{type(e).__name__}: {msg}"}
    states = {h: [None if a is None else a.to_bytes() for a in lst] for h, lst in accs.items()}
    return {"index": part.index, "ok": True, "states": states, "n_tokens": part.n_tokens,
            "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- checkpoints
def _ckpt_path(checkpoint_dir, part):
    return Path(checkpoint_dir) / f"partition-{part.fingerprint}.npz"


def _save(checkpoint_dir, part, res):
    arrays = {f"{h}\t{j}": np.frombuffer(b, np.uint8)
              for h, lst in res["states"].items() for j, b in enumerate(lst) if b is not None}
    meta = json.dumps({"index": res["index"], "n_tokens": res["n_tokens"], "hooks": list(res["states"]),
                       "n_stats": len(next(iter(res["states"].values())))})
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.array(meta), **arrays)
    path = _ckpt_path(checkpoint_dir, part)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)   # atomic: a rerun never sees half a file


def _load(checkpoint_dir, part):
    path = _ckpt_path(checkpoint_dir, part)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"]))
        states = {h: [z[f"{h}\t{j}"].tobytes() if f"{h}\t{j}" in z.files else None
                      for j in range(meta["n_stats"])] for h in meta["hooks"]}
    return {"index": part.index, "ok": True, "states": states, "n_tokens": meta["n_tokens"], "resumed": True}


# --------------------------------------------------------------------------- results
@dataclass
class PartitionFailure:
    """A partition that failed: its index and the error naming it."""

    index: int
    error: str


@dataclass
class CorpusStats:
    """Merged statistics of a corpus.

    ``stats[hook][i]`` is the accumulator of the ``i``-th entry of ``run_over_corpus``'s
    ``stats`` at ``hook`` (None where it does not apply: attention entropy only at
    ``hook_pattern``, the others only elsewhere); ``self[hook, kind]`` is the first
    of that kind (``"moments"``, ``"histogram"``, ``"topk"``, ``"quantiles"``,
    ``"reservoir"``, ``"attn_entropy"``)."""

    stats: dict
    n_tokens: int
    sequence_starts: np.ndarray
    computed: list = field(default_factory=list)   # partitions computed in this run
    resumed: list = field(default_factory=list)    # partitions loaded from checkpoint_dir
    failures: list = field(default_factory=list)   # PartitionFailure
    seconds: float = 0.0

    def __getitem__(self, key):
        hook, kind = key
        for acc in self.stats[hook]:
            if acc is not None and acc.kind == kind:
                return acc
        raise KeyError(f"no {kind!r} statistic at {hook!r}")

    def locate(self, index):
        """(sequence number, position in the sequence) of global token positions ``index``."""
        index = np.asarray(index, dtype=np.int64)
        seq = np.searchsorted(self.sequence_starts, index, side="right") - 1
        return seq, index - self.sequence_starts[seq]


class CorpusError(RuntimeError):
    """Some partitions failed; ``failures`` names them, ``result`` holds the statistics
    of every other partition (also checkpointed when ``checkpoint_dir`` was given)."""

    def __init__(self, failures, result):
        self.failures, self.result = failures, result
        lines = "\n".join(f"  {f.error}" for f in failures)
        super().__init__(f"{len(failures)} of the corpus partitions failed (the others' statistics are "
                         f"in .result):\n{lines}")


class _Merger:
    """Merges partition results in partition order (so the float64 rounding of the
    moments does not depend on the order partitions finish in)."""

    def __init__(self, hook_names, templates):
        self.total = {h: [t.empty() if _applies(t, h) else None for t in templates] for h in hook_names}
        self.pending, self.next = {}, 0

    def add(self, index, states):
        self.pending[index] = states

    def skip(self, index):
        self.pending[index] = None

    def drain(self):
        while self.next in self.pending:
            states = self.pending.pop(self.next)
            if states is not None:
                for h, lst in states.items():
                    for a, b in zip(self.total[h], lst):
                        if b is not None:
                            a.merge_(_stats.from_bytes(b))
            self.next += 1


def _progress_bar(total, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="partitions", unit="part")


def _default_hooks(model_spec):
    from .io import resolve_pretrained
    with open(Path(resolve_pretrained(model_spec)) / "config.json") as f:
        n_layer = json.load(f)["n_layer"]
    return [f"blocks.{i}.hook_resid_post" for i in range(n_layer)]


def run_over_corpus(model_spec, token_source, stats, batch_size=8, hook_names=None, client=None,
                    checkpoint_dir=None, progress=True, n_partitions=8, seq_len=128, n_workers=2):
    """Statistics of a model's activations over a token corpus, computed on Dask.

    Args:
        model_spec: a checkpoint directory or Hugging Face name; each worker opens it
            once (``HookedTransformer.from_pretrained``, so with TransformerLens's
            default weight processing); only the name travels.
        token_source: an iterable of token arrays (1-D: a sequence; 2-D: rows of
            sequences), a list of text files (tokenized with the checkpoint's tokenizer,
            in this process), a NumPy memmap of token ids (workers open the file
            themselves), or a ``datasets.Dataset`` (``input_ids``/``tokens`` or
            ``text`` column). See :func:`split_corpus`.
        stats: unsized :mod:`mechinterp_c.stats` accumulators used as templates
            (``[Moments(), TopK(k=20), Histogram(edges), ...]``), each gathered at every
            hook it applies to.
        batch_size: sequences per forward pass (consecutive sequences of one length).
        hook_names: TransformerLens hook names (default: every ``hook_resid_post``).
        client: a ``dask.distributed.Client``; None starts a ``LocalCluster`` of
            ``n_workers`` processes with 1 thread each and closes it at the end;
            ``"serial"`` runs the partitions in this process, one after another.
        checkpoint_dir: where finished partitions' states are written and read back
            on a rerun (None: no checkpoints).
        progress: print the Dask dashboard link and a tqdm bar over partitions
            (when tqdm is installed).
        n_partitions, seq_len: see :func:`split_corpus`.
        n_workers: workers of the ``LocalCluster`` started when ``client`` is None.

    Returns:
        :class:`CorpusStats`. Raises :class:`CorpusError` after all other partitions
        finished when some failed (bad token ids or dtype: the message names the
        partition, sequence and corpus position).
    """
    t0 = time.perf_counter()
    templates = list(stats)
    for t in templates:
        if not isinstance(t, _stats.Accumulator) or t.unit_shape is not None:
            raise TypeError(f"stats: expected unsized mechinterp_c.stats accumulators, got {t!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    hook_names = list(_default_hooks(model_spec) if hook_names is None else
                      ([hook_names] if isinstance(hook_names, str) else hook_names))
    if not hook_names or not templates:
        raise ValueError("run_over_corpus: give at least one hook name and one statistic")
    if any(isinstance(t, _stats.AttentionEntropy) for t in templates) and not any(map(_is_pattern, hook_names)):
        raise ValueError("stats: AttentionEntropy needs a hook_pattern among hook_names")
    parts = split_corpus(model_spec, token_source, n_partitions, seq_len)
    job_key = json.dumps([_FORMAT, _model_key(model_spec), hook_names,
                          [[t.kind, t._params()] for t in templates], int(batch_size)])
    for p in parts:
        p.fingerprint = _fingerprint(job_key, p)
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)

    merger = _Merger(hook_names, templates)
    computed, resumed, failures = [], [], []

    def finish(res):
        if res["ok"]:
            if checkpoint_dir is not None and not res.get("resumed"):
                _save(checkpoint_dir, parts[res["index"]], res)
            (resumed if res.get("resumed") else computed).append(res["index"])
            merger.add(res["index"], res["states"])
        else:
            failures.append(PartitionFailure(res["index"], res["error"]))
            merger.skip(res["index"])
        merger.drain()

    todo = []
    for p in parts:
        res = _load(checkpoint_dir, p) if checkpoint_dir is not None else None
        if res is None:
            todo.append(p)
        else:
            finish(res)
    args = (model_spec, hook_names, templates, int(batch_size))
    own_cluster = bar = None
    try:
        if todo and client != "serial":
            from distributed import Client, LocalCluster, as_completed
            if client is None:
                own_cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                           dashboard_address=":0")
                client = Client(own_cluster)
            if progress:
                print(f"Dask dashboard: {client.dashboard_link}", flush=True)
        bar = _progress_bar(len(parts), progress)
        if bar is not None:
            bar.update(len(parts) - len(todo))
        if client == "serial":
            for p in todo:
                finish(_run_partition(p, *args))
                if bar is not None:
                    bar.update(1)
        elif todo:
            futures = client.map(_run_partition, todo, *[[a] * len(todo) for a in args],
                                 key=[f"mi-partition-{p.index}-{p.fingerprint}" for p in todo])
            for fut in as_completed(futures):
                finish(fut.result())
                fut.release()
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if own_cluster is not None:
            client.close()
            own_cluster.close()
    result = CorpusStats(merger.total, int(sum(p.n_tokens for p in parts)),
                         np.concatenate([p.starts for p in parts]), sorted(computed), sorted(resumed),
                         sorted(failures, key=lambda f: f.index), time.perf_counter() - t0)
    if failures:
        raise CorpusError(result.failures, result)
    return result
