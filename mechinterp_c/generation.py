"""Text generation for ``HookedTransformer``: TransformerLens's ``generate``.

``GenerationMixin`` gives a model ``generate`` and ``generate_stream`` with
TransformerLens 3.9's arguments and semantics; the choice of each token runs in
the C sampler (``_core.sample``: penalties, temperature, top-k, top-p, and a
counter-based generator seeded per call, so a seed gives the same tokens on any
thread count). Hooks registered with ``model.hooks(...)`` or ``add_hook`` fire
on every step, so a hook that adds a vector to ``blocks.{i}.hook_resid_pre``
steers the whole completion.

With ``use_past_kv_cache=True`` (the default, as TransformerLens) the first step
runs the prompt into a ``HookedTransformerKeyValueCache`` held by the C core and
every later step runs only the new token, attending over the cached keys and
values; hooks then see the new position only, as in TransformerLens. With
``False`` each step recomputes the whole sequence.
"""
import secrets

import numpy as np

from . import _core
from .hooked_text import check_padding_side
from .utils import get_attention_mask, to_numpy

_RETURN_TYPES = ("input", "str", "tokens")


class HookedTransformerKeyValueCacheEntry:
    """One layer of a ``HookedTransformerKeyValueCache`` (TransformerLens's entry):
    ``past_keys`` / ``past_values`` [batch, pos_so_far, n_heads, d_head] are copies of
    what the C cache holds for the layer; ``frozen`` is the whole cache's flag."""

    def __init__(self, cache, layer):
        self._cache, self._layer = cache, layer

    @property
    def past_keys(self):
        """Cached keys [batch, pos_so_far, n_kv_heads, d_head] (a copy)."""
        return np.ascontiguousarray(self._cache._core.keys(self._layer).transpose(0, 2, 1, 3))

    @property
    def past_values(self):
        """Cached values [batch, pos_so_far, n_kv_heads, d_head] (a copy)."""
        return np.ascontiguousarray(self._cache._core.values(self._layer).transpose(0, 2, 1, 3))

    @property
    def frozen(self):
        """Whether forward passes leave the cache's length as it is."""
        return self._cache.frozen


class HookedTransformerKeyValueCache:
    """TransformerLens's key/value cache for generation, held by the C core
    (``_core.KVCache``): per layer the keys and values of every position passed so far
    and the padding mask of those positions.

    ``model(tokens, past_kv_cache=cache)`` runs only the new positions, attends over the
    cached ones too, and grows the cache by the positions passed (unless ``freeze()``d:
    then a pass sees the cache and its own positions but leaves the cache as it was, as
    TransformerLens). The storage grows on use up to ``capacity`` positions (default
    ``n_ctx``); a call past it is refused. A cache is bound to the first model that
    fills it; another model or batch size is refused with a ValueError naming the
    difference."""

    def __init__(self, core_cache):
        self._core = core_cache

    @classmethod
    def init_cache(cls, cfg, device=None, batch_size=1, capacity=None):
        """An empty cache for a model of config ``cfg`` and ``batch_size`` rows (``device``
        must be CPU); ``capacity``: the most positions it may hold (default ``cfg.n_ctx``)."""
        if device is not None and str(device).split(":")[0] != "cpu":
            raise ValueError(f"init_cache: device {device!r}: only the CPU is supported")
        if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"init_cache: batch_size must be an int >= 1, got {batch_size!r}")
        n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        cap = cfg.n_ctx if capacity is None else capacity
        return cls(_core.KVCache(cfg.n_layers, int(batch_size), n_kv, cfg.d_head, int(cap)))

    @property
    def entries(self):
        """One ``HookedTransformerKeyValueCacheEntry`` per layer."""
        return [HookedTransformerKeyValueCacheEntry(self, l) for l in range(self._core.n_layers)]

    def __getitem__(self, idx):
        return self.entries[idx]

    def __len__(self):
        return self._core.n_layers

    @property
    def frozen(self):
        """True after ``freeze()``: passes do not grow the cache."""
        return self._core.frozen

    def freeze(self):
        """Passes read the cache but no longer add their positions to it."""
        self._core.frozen = True

    def unfreeze(self):
        """Passes add their positions to the cache again."""
        self._core.frozen = False

    @property
    def previous_attention_mask(self):
        """The padding mask of the cached positions [batch, pos_so_far] (int64, 1 real)."""
        return self._core.mask().astype(np.int64)

    def get_seq_length(self, layer_idx=0):
        """Positions cached (padding included) by layer ``layer_idx``."""
        return self._core.length(layer_idx)

    @property
    def batch_size(self):
        """Rows the cache holds."""
        return self._core.batch

    def reset(self):
        """Forget every cached position."""
        self._core.reset()


def resolve_seed(seed=None, generator=None):
    """A 64-bit seed for the C sampler: ``seed`` as given, else one drawn from
    ``generator`` (a ``torch.Generator`` or ``numpy.random.Generator``), else a
    fresh random one."""
    if seed is not None and generator is not None:
        raise ValueError("give seed= or generator=, not both")
    if seed is not None:
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        return int(seed) % (1 << 64)
    if generator is None:
        return secrets.randbits(64)
    if isinstance(generator, np.random.Generator):
        return int(generator.integers(0, 1 << 63))
    if type(generator).__name__ == "Generator" and type(generator).__module__.startswith("torch"):
        import torch
        return int(torch.randint(0, (1 << 63) - 1, (1,), generator=generator).item())
    raise TypeError(f"generator must be a torch.Generator or numpy.random.Generator, "
                    f"got {type(generator).__name__}")


def progress(total, verbose):
    """A tqdm bar over ``total`` steps when ``verbose`` and tqdm is installed, else None."""
    if not verbose:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total)


def check_prompt(tokens, d_vocab, n_ctx, max_new_tokens, where):
    """Refuse what cannot be generated from: an empty prompt, ids outside the
    vocabulary, a sequence that would outgrow the context (the model has absolute
    positions up to ``n_ctx``: the request is refused before any step runs)."""
    if isinstance(max_new_tokens, (bool, np.bool_)) or not isinstance(max_new_tokens, (int, np.integer)) \
            or max_new_tokens < 0:
        raise ValueError(f"{where}: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    B, T = tokens.shape
    if B == 0 or T == 0:
        raise ValueError(f"{where}: the prompt is empty (token shape {tokens.shape}); give at "
                         f"least one token per row")
    bad = (tokens < 0) | (tokens >= d_vocab)
    if bad.any():
        r, t = map(int, np.argwhere(bad)[0])
        raise ValueError(f"{where}: token id {int(tokens[r, t])} at [{r}, {t}] is outside the "
                         f"vocabulary [0, {d_vocab})")
    if T + max_new_tokens > n_ctx:
        raise ValueError(f"{where}: prompt of {T} tokens + max_new_tokens={max_new_tokens} exceeds "
                         f"the context of {n_ctx} positions")


def _as_tokens(input, where):
    arr = np.asarray(to_numpy(input))
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{where}: input must be a string, a list of strings or integer token "
                        f"ids [batch, pos]; got dtype {arr.dtype} (input embeddings are not "
                        f"supported)")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise ValueError(f"{where}: token ids must be [batch, pos], got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _decode(tok, ids):
    ids = [int(i) for i in ids]
    try:
        return tok.decode(ids, skip_special_tokens=True)
    except TypeError:
        return tok.decode(ids)


class GenerationMixin:
    """``generate`` / ``generate_stream`` for ``HookedTransformer`` (TransformerLens API)."""

    def _generation_input(self, input, prepend_bos, padding_side, return_type, where):
        """(tokens [B, T] int64, attention mask or None, return_type) as TransformerLens
        prepares them: strings tokenized (a batch of several strings padded on the left),
        the mask from the pad tokens whenever the model has a tokenizer."""
        if return_type not in _RETURN_TYPES:
            raise ValueError(f"{where}: return_type must be one of {list(_RETURN_TYPES)}, got "
                             f"{return_type!r} (input embeddings are not supported)")
        check_padding_side(padding_side)
        if prepend_bos is None:
            prepend_bos = getattr(self.cfg, "default_prepend_bos", True)
        side = padding_side or getattr(self.tokenizer, "padding_side", None) or "right"
        many = isinstance(input, (list, tuple)) and (not input or isinstance(input[0], str))
        if isinstance(input, str) or many:
            if many and not input:
                raise ValueError(f"{where}: the list of prompts is empty")
            if many and not all(isinstance(s, str) for s in input):
                raise TypeError(f"{where}: a list input must hold only strings")
            if self.tokenizer is None:
                raise ValueError(f"{where}: string input needs a tokenizer")
            if many and len(input) > 1:
                side = "left"   # real tokens flush right, so the last column is every row's next
            tokens = np.asarray(self.to_tokens(list(input) if many else input,
                                               prepend_bos=prepend_bos, padding_side=side))
            kind = "str"
        else:
            tokens = _as_tokens(input, where)
            kind = "tokens"
        if return_type == "input":
            return_type = kind
        if return_type == "str" and self.tokenizer is None:
            raise ValueError(f"{where}: return_type='str' needs a tokenizer")
        mask = None
        if self.tokenizer is not None and tokens.size:
            mask = get_attention_mask(self.tokenizer, tokens, prepend_bos, side)
        return tokens, mask, return_type

    def _generation_step(self, tokens, mask, cache):
        """Logits of the last position [batch, d_vocab_out] (a float32 copy) of one cached
        pass over ``tokens`` (the positions after the cached ones), hooks live."""
        out, _ = self._run(tokens, (), None, mask, None, past_kv_cache=cache)
        return np.array(out[:, -1], dtype=np.float32)

    def _generate_iter(self, where, input, max_new_tokens, stop_at_eos, eos_token_id, do_sample,
                       top_k, top_p, temperature, freq_penalty, prepend_bos, padding_side,
                       return_type, verbose, seed, use_past_kv_cache=True):
        """Yield (prompt tokens [B, T], return_type) first, then the next token of every row
        [B], one step at a time (TransformerLens's loop: rows that produced an end token get
        the padding end token from then on)."""
        tokens, mask, return_type = self._generation_input(input, prepend_bos, padding_side,
                                                           return_type, where)
        check_prompt(tokens, self.cfg.d_vocab, self.cfg.n_ctx, max_new_tokens, where)
        if top_k is not None and top_k <= 0:
            raise ValueError(f"{where}: top_k has to be greater than 0, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"{where}: top_p has to be in (0, 1], got {top_p}")
        stop, pad_eos = [], 0
        if stop_at_eos:
            tok_eos = getattr(self.tokenizer, "eos_token_id", None)
            if eos_token_id is None:
                if tok_eos is None:
                    raise ValueError(f"{where}: stop_at_eos=True needs eos_token_id (the model "
                                     f"has no tokenizer with an eos_token_id)")
                eos_token_id = tok_eos
            if isinstance(eos_token_id, (int, np.integer)):
                stop, pad_eos = [int(eos_token_id)], int(eos_token_id)
            else:
                stop = [int(e) for e in eos_token_id]
                pad_eos = tok_eos if tok_eos is not None else stop[0]
        seed = resolve_seed(seed)
        yield tokens, return_type
        B = tokens.shape[0]
        finished = np.zeros(B, bool)
        seq = tokens
        cache = None
        if use_past_kv_cache and max_new_tokens:
            cache = HookedTransformerKeyValueCache.init_cache(
                self.cfg, batch_size=B, capacity=tokens.shape[1] + max_new_tokens)
        ones = np.ones((B, 1), np.float32)
        bar = progress(max_new_tokens, verbose)
        try:
            for step in range(max_new_tokens):
                if cache is not None:
                    # the prompt first, then one token a step over the cache
                    new = seq if step == 0 else seq[:, -1:]
                    m = mask if step == 0 else ones
                    last = self._generation_step(new, m, cache)
                else:
                    m = None if mask is None else np.concatenate([mask, np.ones((B, step), mask.dtype)], 1)
                    logits = to_numpy(self.forward(seq, attention_mask=m))
                    last = np.array(logits[:, -1], dtype=np.float32)
                if do_sample and temperature != 0.0:
                    nxt = _core.sample(last, seq if freq_penalty else None, temperature=temperature,
                                       top_k=top_k or 0, top_p=1.0 if top_p is None else top_p,
                                       freq_penalty=freq_penalty, rules="tl", seed=seed,
                                       counter=step)
                else:
                    nxt = _core.argmax_rows(last)
                if stop:
                    nxt[finished] = pad_eos
                    finished |= np.isin(nxt, stop)
                seq = np.concatenate([seq, nxt[:, None]], 1)
                if bar is not None:
                    bar.update(1)
                yield nxt
                if stop and finished.all():
                    break
        finally:
            if bar is not None:
                bar.close()

    def generate(self, input="", max_new_tokens=10, stop_at_eos=True, eos_token_id=None,
                 do_sample=True, top_k=None, top_p=None, temperature=1.0, freq_penalty=0.0,
                 use_past_kv_cache=True, prepend_bos=None, padding_side=None,
                 return_type="input", verbose=True, seed=None):
        """Continue ``input`` by up to ``max_new_tokens`` tokens (TransformerLens's ``generate``).

        ``input``: a string, a list of strings (padded on the left) or token ids [batch, pos].
        Stops early when every row has produced ``eos_token_id`` (default the tokenizer's)
        with ``stop_at_eos``; finished rows are padded with the end token. ``do_sample=False``
        is greedy (first maximum); otherwise tokens are drawn from softmax(logits / temperature)
        after ``freq_penalty`` and top-k or else top-p (TransformerLens's rules), by the C
        sampler with ``seed`` (a fresh random seed when None; the same seed gives the same
        tokens on any thread count). A model with a tokenizer masks the padding as
        TransformerLens does (``get_attention_mask`` on ``padding_side``), positions skipping it.
        ``use_past_kv_cache``: run each step over a key/value cache (only the new token;
        hooks see that position, as in TransformerLens), else recompute the whole sequence
        every step; same tokens either way. Prompt length + ``max_new_tokens`` beyond ``n_ctx``
        is refused up front (ValueError). ``return_type``: "input" (strings for string input,
        else tokens), "str" (decoded, one string for a batch of one) or "tokens" (int64
        [batch, pos + new], prompt included). ``verbose`` shows a tqdm bar when tqdm is
        installed.
        """
        steps = self._generate_iter("generate", input, max_new_tokens, stop_at_eos, eos_token_id,
                                    do_sample, top_k, top_p, temperature, freq_penalty,
                                    prepend_bos, padding_side, return_type, verbose, seed,
                                    use_past_kv_cache)
        tokens, return_type = next(steps)
        new = list(steps)
        out = np.concatenate([tokens] + [t[:, None] for t in new], 1)
        if return_type == "tokens":
            return out
        texts = [_decode(self.tokenizer, row) for row in out]
        return texts[0] if len(texts) == 1 else texts

    def generate_stream(self, input="", max_new_tokens=10, max_tokens_per_yield=25,
                        stop_at_eos=True, eos_token_id=None, do_sample=True, top_k=None,
                        top_p=None, temperature=1.0, freq_penalty=0.0, use_past_kv_cache=True,
                        prepend_bos=None, padding_side=None, return_type="input", verbose=True,
                        seed=None):
        """``generate`` as an iterator (TransformerLens's ``generate_stream``): yields token ids
        [batch, n] as they are produced, a chunk once it holds ``max_tokens_per_yield`` columns
        (the first starts with the prompt, whose tokens count, as in TransformerLens). Same
        arguments and tokens as ``generate``."""
        if max_tokens_per_yield < 1:
            raise ValueError(f"generate_stream: max_tokens_per_yield must be >= 1, got "
                             f"{max_tokens_per_yield}")
        steps = self._generate_iter("generate_stream", input, max_new_tokens, stop_at_eos,
                                    eos_token_id, do_sample, top_k, top_p, temperature,
                                    freq_penalty, prepend_bos, padding_side, return_type, verbose,
                                    seed, use_past_kv_cache)
        tokens, _ = next(steps)
        chunk, n_new = [tokens], 0
        for nxt in steps:
            chunk.append(nxt[:, None])
            n_new += 1
            if sum(c.shape[1] for c in chunk) >= max_tokens_per_yield:
                yield np.concatenate(chunk, 1)
                chunk, n_new = [], 0
        if n_new:
            yield np.concatenate(chunk, 1)
