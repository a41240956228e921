"""``generate`` for the Hugging Face causal LMs (transformers' ``GenerationMixin``).

Greedy search and multinomial sampling with transformers 5.x's semantics: the
repetition penalty, then temperature, top-k (default 50) and top-p warpers in
that order, the attention mask inferred from the pad token when none is given,
position ids from the attention mask (so left-padded prompts continue from
their own last position), finished rows padded with ``pad_token_id``. Token
choice runs in the C sampler with a seed (``seed=`` or drawn from
``generator=``), so the same seed gives the same tokens on any thread count.
Module hooks fire on every step. With ``use_cache=True`` (the default) the
prompt runs into a ``DynamicCache`` held by the C core and each later step runs
only the new token over it; ``use_cache=False`` recomputes the whole sequence
every step (same tokens).
"""
import numpy as np

from .. import _core
from ..generation import check_prompt, progress, resolve_seed
from ..utils import to_numpy
from .cache_utils import DynamicCache
from .modeling_utils import get_array_type

# transformers' GenerationConfig defaults for the arguments left as None
_DEFAULTS = {"max_length": 20, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
             "repetition_penalty": 1.0}


def _ids_list(x):
    """None, an int or a sequence of ints -> list of ints (None -> [])."""
    if x is None:
        return []
    if isinstance(x, (int, np.integer)):
        return [int(x)]
    return [int(i) for i in to_numpy(x).reshape(-1)] if hasattr(x, "shape") else [int(i) for i in x]


class GenerationMixin:
    """``model.generate(...)`` for a causal LM whose ``forward(input_ids, attention_mask,
    position_ids)`` returns ``.logits``."""

    def generate(self, input_ids=None, attention_mask=None, max_new_tokens=None, max_length=None,
                 do_sample=False, temperature=None, top_k=None, top_p=None,
                 repetition_penalty=None, eos_token_id=None, pad_token_id=None,
                 num_return_sequences=1, generator=None, seed=None, use_cache=True,
                 verbose=False):
        """Continue ``input_ids`` [batch, pos] (transformers' ``generate``; greedy or sampling).

        Returns token ids [batch * num_return_sequences, pos + new] (int64; a torch tensor
        under ``set_array_type("torch")``), prompt included. ``max_new_tokens`` (or
        ``max_length`` total, default 20) bounds the length; prompt + new tokens beyond
        ``n_positions`` is refused up front (ValueError). ``do_sample=False``: greedy on the
        logits after ``repetition_penalty``; ``do_sample=True``: repetition penalty,
        ``temperature``, ``top_k`` (default 50, 0 = off), ``top_p``, then a draw by the C
        sampler seeded by ``seed`` or ``generator`` (torch or NumPy; fresh when neither).
        ``eos_token_id`` (default the config's) ends a row; finished rows get ``pad_token_id``
        (default the first end token). Without ``attention_mask`` the pad tokens are masked
        when the pad id differs from the end token (transformers' rule). ``use_cache``:
        one token a step over a key/value cache (default), else the full pass every step.
        ``verbose`` shows a tqdm bar when tqdm is installed.
        """
        where = f"{type(self).__name__}.generate"
        if input_ids is None:
            raise ValueError(f"{where}: input_ids is required")
        ids = np.asarray(to_numpy(input_ids))
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{where}: input_ids must be integer token ids, got dtype {ids.dtype}")
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2:
            raise ValueError(f"{where}: input_ids must be [batch, pos], got shape {ids.shape}")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        B, T = ids.shape
        if max_new_tokens is None:
            max_new_tokens = max((_DEFAULTS["max_length"] if max_length is None else max_length) - T, 0)
        cfg = self.config
        check_prompt(ids, cfg.vocab_size, cfg.n_positions, max_new_tokens, where)

        eos = _ids_list(getattr(cfg, "eos_token_id", None) if eos_token_id is None else eos_token_id)
        pad = pad_token_id if pad_token_id is not None else getattr(cfg, "pad_token_id", None)
        if pad is None and eos:
            pad = eos[0]
        if attention_mask is None:
            infer = pad is not None and (ids == pad).any() and pad not in eos
            mask = (ids != pad).astype(np.int64) if infer else np.ones_like(ids)
        else:
            mask = np.asarray(to_numpy(attention_mask))
            if mask.ndim == 1:
                mask = mask[None]
            if mask.shape != (B, T):
                raise ValueError(f"{where}: attention_mask must have the shape of input_ids "
                                 f"{(B, T)}, got {mask.shape}")
            mask = (mask != 0).astype(np.int64)

        n = int(num_return_sequences)
        if n < 1:
            raise ValueError(f"{where}: num_return_sequences must be >= 1, got {num_return_sequences}")
        if n > 1 and not do_sample:
            raise ValueError(f"{where}: greedy search returns one sequence per prompt; "
                             f"num_return_sequences={n} needs do_sample=True")
        ids, mask = np.repeat(ids, n, axis=0), np.repeat(mask, n, axis=0)

        rep = _DEFAULTS["repetition_penalty"] if repetition_penalty is None else repetition_penalty
        knobs = {"repetition_penalty": rep, "rules": "hf"}
        if do_sample:
            knobs.update(temperature=_DEFAULTS["temperature"] if temperature is None else temperature,
                         top_k=_DEFAULTS["top_k"] if top_k is None else top_k,
                         top_p=_DEFAULTS["top_p"] if top_p is None else top_p)
            if not knobs["temperature"] > 0:
                raise ValueError(f"{where}: temperature has to be a strictly positive float, got "
                                 f"{knobs['temperature']} (use do_sample=False for greedy)")
            if knobs["top_k"] < 0:
                raise ValueError(f"{where}: top_k has to be >= 0 (0 = off), got {knobs['top_k']}")
            if not 0.0 <= knobs["top_p"] <= 1.0:
                raise ValueError(f"{where}: top_p has to be in [0, 1], got {knobs['top_p']}")
            # transformers takes top_p=0 as "keep only the most likely token": the smallest
            # positive float does the same under its rule (drop mass <= 1 - top_p from below)
            knobs["top_p"] = max(knobs["top_p"], np.nextafter(np.float32(0), np.float32(1)))
            seed = resolve_seed(seed, generator)

        seq = self._generate_loop(ids, mask, max_new_tokens, do_sample, knobs, eos, pad, seed,
                                  progress(max_new_tokens, verbose), use_cache)
        if get_array_type() == "torch":
            import torch
            return torch.from_numpy(seq)
        return seq

    def _generate_loop(self, seq, mask, max_new_tokens, do_sample, knobs, eos, pad, seed, bar,
                       use_cache=True):
        """Append one token per row per step; the sequences [B, T + new]."""
        B = seq.shape[0]
        unfinished = np.ones(B, bool)
        cache = DynamicCache() if use_cache else None
        try:
            for step in range(max_new_tokens):
                pos = np.cumsum(mask, axis=1) - 1
                pos[mask == 0] = 0
                if cache is None:
                    out = self.forward(seq, attention_mask=mask, position_ids=pos)
                else:   # the prompt, then one new token a step
                    new = seq.shape[1] if step == 0 else 1
                    out = self.forward(seq[:, -new:], attention_mask=mask,
                                       position_ids=pos[:, -new:], past_key_values=cache)
                logits = to_numpy(out.logits)
                last = np.array(logits[:, -1], dtype=np.float32)
                if do_sample:
                    nxt = _core.sample(last, seq, seed=seed, counter=step, **knobs)
                else:
                    if knobs["repetition_penalty"] != 1.0:
                        last = _core.sampling_logits(last, seq, **knobs)
                    nxt = _core.argmax_rows(last)
                if eos:
                    nxt = np.where(unfinished, nxt, pad)
                    unfinished &= ~np.isin(nxt, eos)
                seq = np.concatenate([seq, nxt[:, None]], 1)
                mask = np.concatenate([mask, np.ones((B, 1), mask.dtype)], 1)
                if bar is not None:
                    bar.update(1)
                if eos and not unfinished.any():
                    break
        finally:
            if bar is not None:
                bar.close()
        return seq
