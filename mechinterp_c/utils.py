"""Helpers with TransformerLens's names: ``get_act_name``, ``to_numpy``."""
import re

import numpy as np

_LAYER_TYPE_ALIAS = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}
_ACT_NAME_ALIAS = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q",
                   "value": "v", "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post"}
_ATTN_NAMES = {"k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores"}
_MLP_NAMES = {"pre", "post", "mid", "pre_linear"}


def get_act_name(name, layer=None, layer_type=None):
    """Full hook name from TransformerLens's short form, as ``transformer_lens.utils.get_act_name``.

    ``get_act_name("pattern", 0) == "blocks.0.attn.hook_pattern"``,
    ``get_act_name("scale", 1, "ln2") == "blocks.1.ln2.hook_scale"``,
    ``get_act_name("scale") == "ln_final.hook_scale"``, ``get_act_name("q3")`` also works.
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    match = re.match(r"([a-z]+)(\d+)([a-z]?.*)", name)
    if match is not None:
        name, layer, layer_type = match.groups(0)
    name = _ACT_NAME_ALIAS.get(name, name)
    full = f"blocks.{layer}." if layer is not None else ""
    if name in _ATTN_NAMES:
        layer_type = "attn"
    elif name in _MLP_NAMES:
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPE_ALIAS:
        layer_type = _LAYER_TYPE_ALIAS[layer_type]
    if layer_type:
        full += f"{layer_type}."
    full += f"hook_{name}"
    if name in ("scale", "normalized") and layer is None:
        full = f"ln_final.{full}"
    return full


def to_numpy(x):
    """A NumPy array from an array, a torch tensor (detached, on the CPU), a list or a scalar."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class Slice:
    """A slice along one axis with TransformerLens's ``utils.Slice`` semantics.

    ``None`` leaves the axis unchanged; an ``int`` indexes it (the axis goes away);
    a tuple ``t`` is ``slice(*t)`` (so ``(k,)`` is ``:k``, ``(a, b)`` is ``a:b``,
    ``(a, b, s)`` is ``a:b:s``); a Python ``slice`` is used as is; a list, NumPy
    array or torch tensor is an array of indices (or a boolean mask) along the axis.
    """

    def __init__(self, input_slice=None):
        if isinstance(input_slice, Slice):
            self.slice, self.mode = input_slice.slice, input_slice.mode
        elif isinstance(input_slice, tuple):
            self.slice = slice(*input_slice)
            self.mode = "slice"
        elif isinstance(input_slice, (int, np.integer)) and not isinstance(input_slice, bool):
            self.slice = int(input_slice)
            self.mode = "int"
        elif isinstance(input_slice, slice):
            self.slice = input_slice
            self.mode = "slice"
        elif isinstance(input_slice, (list, np.ndarray)) or hasattr(input_slice, "detach"):
            self.slice = to_numpy(input_slice)
            if self.slice.dtype != np.bool_ and not np.issubdtype(self.slice.dtype, np.integer):
                if self.slice.size == 0:
                    self.slice = self.slice.astype(np.int64)
                else:
                    raise ValueError(f"Slice: an index array must hold integers or booleans, "
                                     f"got dtype {self.slice.dtype}")
            self.mode = "array"
        elif input_slice is None:
            self.slice = slice(None)
            self.mode = "identity"
        else:
            raise ValueError(f"Invalid input_slice {input_slice!r}: expected None, an int, a tuple, "
                             f"a slice, a list or an array of indices")

    def apply(self, array, dim=0):
        """``array`` with this slice applied along axis ``dim`` (negative axes allowed)."""
        ndim = array.ndim
        if not -ndim <= dim < ndim:
            raise ValueError(f"Slice.apply: dim {dim} is out of range for an array of shape "
                             f"{tuple(array.shape)}")
        index = [slice(None)] * ndim
        index[dim] = self.slice
        try:
            return array[tuple(index)]
        except IndexError as e:
            raise IndexError(f"Slice {self.slice!r} does not fit axis {dim} of an array of shape "
                             f"{tuple(array.shape)}: {e}") from None

    def indices(self, max_ctx=None):
        """The indices this slice selects on an axis of length ``max_ctx`` (as an int64 array)."""
        if self.mode == "int":
            return np.array([self.slice], dtype=np.int64)
        if max_ctx is None:
            raise ValueError("max_ctx must be specified if slice is not an integer")
        return np.arange(max_ctx, dtype=np.int64)[self.slice]

    @classmethod
    def unwrap(cls, slice_input):
        """A ``Slice`` from a ``Slice`` or a slice input; an int becomes ``[int]`` (keeps the axis)."""
        if isinstance(slice_input, Slice):
            return slice_input
        if isinstance(slice_input, (int, np.integer)) and not isinstance(slice_input, bool):
            slice_input = [int(slice_input)]
        return cls(slice_input)

    def __repr__(self):
        return f"Slice: {self.slice} Mode: {self.mode} "


def _log_softmax64(logits):
    """log_softmax over the last axis in float64, via a max-shifted logsumexp."""
    x = np.asarray(logits, dtype=np.float64)
    shift = x.max(axis=-1, keepdims=True)
    shift = np.where(np.isfinite(shift), shift, 0.0)
    return x - shift - np.log(np.exp(x - shift).sum(axis=-1, keepdims=True))


def _check_lm_inputs(fn, logits, tokens):
    logits = to_numpy(logits)
    tokens = to_numpy(tokens)
    if logits.ndim < 2:
        raise ValueError(f"{fn}: logits must be [batch, pos, d_vocab] or [pos, d_vocab], "
                         f"got shape {logits.shape}")
    if tokens.shape != logits.shape[:-1]:
        raise ValueError(f"{fn}: tokens shape {tokens.shape} does not match logits shape "
                         f"{logits.shape} (expected tokens of shape {logits.shape[:-1]})")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise TypeError(f"{fn}: tokens must be integers, got dtype {tokens.dtype}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= logits.shape[-1]):
        bad = tokens[(tokens < 0) | (tokens >= logits.shape[-1])].flat[0]
        raise ValueError(f"{fn}: token {bad} is out of range for d_vocab={logits.shape[-1]}")
    return logits, tokens


def lm_cross_entropy_loss(logits, tokens, attention_mask=None, per_token=False):
    """Next-token cross-entropy loss, as ``transformer_lens.utils.lm_cross_entropy_loss``.

    ``logits`` [batch, pos, d_vocab], ``tokens`` [batch, pos] (ints). Position p's
    logits predict token p + 1, so the last logit is unused. ``attention_mask``
    [batch, pos] (bool or 0/1) drops predictions whose current or next token is
    masked. Returns the mean loss (float64 scalar), or with ``per_token=True``
    the negative log-probs [batch, pos - 1] (masked entries 0). The
    log-softmax is computed in float64 via logsumexp.
    """
    logits, tokens = _check_lm_inputs("lm_cross_entropy_loss", logits, tokens)
    log_probs = _log_softmax64(logits[..., :-1, :])
    predicted = np.take_along_axis(log_probs, tokens[..., 1:, None].astype(np.intp), axis=-1)[..., 0]
    if attention_mask is not None:
        mask = to_numpy(attention_mask)
        if mask.shape != tokens.shape:
            raise ValueError("attention_mask must have the same shape as tokens, "
                             f"got {tuple(mask.shape)} and {tuple(tokens.shape)}")
        mask = mask.astype(bool)
        next_token_mask = mask[..., :-1] & mask[..., 1:]
        predicted = np.where(next_token_mask, predicted, 0.0)
        n_tokens = int(next_token_mask.sum())
    else:
        n_tokens = predicted.size
    if per_token:
        return -predicted
    return -predicted.sum() / n_tokens


def lm_accuracy(logits, tokens, per_token=False):
    """Next-token top-1 accuracy, as ``transformer_lens.utils.lm_accuracy``.

    Returns the fraction of positions whose argmax logit equals the next token,
    or with ``per_token=True`` the boolean matches [batch, pos - 1].
    """
    logits, tokens = _check_lm_inputs("lm_accuracy", logits, tokens)
    correct = logits.argmax(axis=-1)[..., :-1] == tokens[..., 1:]
    if per_token:
        return correct
    return correct.sum() / correct.size


def get_attention_mask(tokenizer, tokens, prepend_bos, padding_side=None):
    """The attention mask of padded ``tokens`` [batch, pos] (1 real, 0 pad; int64), as
    ``transformer_lens.utils.get_attention_mask``.

    Only the pads at the padded end count: the trailing run of ``tokenizer.pad_token_id``
    with ``padding_side="right"``, the leading run with "left" (default: the
    tokenizer's side). When BOS and pad are the same id and ``prepend_bos``, the last
    leading "pad" of a left-padded row is its BOS and stays unmasked. Without a
    tokenizer every token is real.
    """
    toks = np.asarray(to_numpy(tokens))
    if toks.dtype.kind not in "iu":
        raise TypeError(f"get_attention_mask: tokens must be integer ids, got dtype {toks.dtype}")
    mask = np.ones(toks.shape, np.int64)
    if tokenizer is None:
        return mask
    side = padding_side if padding_side is not None else tokenizer.padding_side
    if side not in ("left", "right"):
        raise ValueError(f"get_attention_mask: padding_side must be 'left' or 'right', got {side!r}")
    not_pad = toks != tokenizer.pad_token_id
    if side == "right":
        mask[np.cumsum(not_pad[..., ::-1], axis=-1)[..., ::-1] == 0] = 0
        return mask
    leading = np.cumsum(not_pad, axis=-1) == 0
    mask[leading] = 0
    if prepend_bos and tokenizer.bos_token_id == tokenizer.pad_token_id:
        # the BOS is the last of the leading "pads" (index -1 when there is no pad: already 1)
        bos_pos = leading.sum(-1) - 1
        np.put_along_axis(mask, bos_pos[..., None], 1, axis=-1)
    return mask
