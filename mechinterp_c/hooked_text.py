"""Text in, text out for ``HookedTransformer``: TransformerLens's tokenizer methods.

Any tokenizer with Hugging Face's interface serves (``mechinterp_c.transformers.
GPT2Tokenizer`` or a ``transformers`` tokenizer): ``encode(text,
add_special_tokens=False)``, ``decode``, ``bos/eos/pad_token`` and their ``_id``,
``padding_side``.

Padding follows TransformerLens 3.9. ``to_tokens`` pads on ``padding_side`` (the
argument, else ``tokenizer.padding_side``) with the pad token. A forward pass whose
padding side is "left" (the argument, else the tokenizer's) and that is given no
``attention_mask`` builds one from the tokens with ``utils.get_attention_mask``: pads
are masked out of attention and positions count only the real tokens, so each
prompt's tokens get the logits of the prompt alone. Right padding needs no mask for
the real tokens of a causal model (they never attend to the pads after them), and
none is built, as in TransformerLens.

Deliberate differences from TransformerLens: arrays are NumPy int64 (not tensors);
``to_str_tokens`` also takes a [batch, pos] array (a list of lists back) where
TransformerLens asserts; errors TransformerLens raises with ``assert`` are
``ValueError`` here.
"""
import numpy as np

from . import utils
from .utils import to_numpy

PADDING_SIDES = ("left", "right")


def check_padding_side(padding_side, what="padding_side"):
    """``padding_side`` itself when it is None, "left" or "right"; ValueError otherwise."""
    if padding_side is not None and padding_side not in PADDING_SIDES:
        raise ValueError(f"{what} must be 'left', 'right' or None, got {padding_side!r}")
    return padding_side


def _check_prepend_bos(prepend_bos):
    if prepend_bos not in (None, True, False):
        raise ValueError(f"prepend_bos must be True, False or None, got {prepend_bos!r}")


def is_text(input):
    """True for a string or a non-empty list/tuple of strings (what ``to_tokens`` takes)."""
    if isinstance(input, str):
        return True
    return isinstance(input, (list, tuple)) and len(input) > 0 and all(isinstance(s, str) for s in input)


class TextMixin:
    """The tokenizer methods of ``HookedTransformer`` (``self.tokenizer``, ``self.cfg``,
    ``self.W_U`` are the model's)."""

    def set_tokenizer(self, tokenizer, default_padding_side=None):
        """Attach ``tokenizer`` as TransformerLens's ``set_tokenizer`` does: its padding side
        becomes ``default_padding_side`` when given (else it keeps its own, "right" when it
        has none); missing eos / pad / bos tokens are filled in (eos "<|endoftext|>", pad and
        bos the eos token); ``cfg.d_vocab`` is taken from the tokenizer when it is -1.
        The tokenizer object itself is changed (as TransformerLens changes it)."""
        for attr in ("encode", "decode"):
            if not callable(getattr(tokenizer, attr, None)):
                raise TypeError(f"set_tokenizer: {type(tokenizer).__name__} has no {attr}() method; "
                                f"expected a Hugging Face style tokenizer")
        check_padding_side(default_padding_side, "default_padding_side")
        if default_padding_side is not None:
            tokenizer.padding_side = default_padding_side
        if getattr(tokenizer, "padding_side", None) is None:
            tokenizer.padding_side = "right"
        if tokenizer.eos_token is None:
            tokenizer.eos_token = "<|endoftext|>"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.bos_token is None:
            tokenizer.bos_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.cfg.tokenizer_prepends_bos = len(tokenizer.encode("")) > 0
        if self.cfg.d_vocab == -1:
            vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else tokenizer.vocab
            self.cfg.d_vocab = max(vocab.values()) + 1
        if self.cfg.d_vocab_out == -1:
            self.cfg.d_vocab_out = self.cfg.d_vocab

    def _need_tokenizer(self, what):
        if self.tokenizer is None:
            raise ValueError(f"{what} needs a tokenizer: this model has none (pass tokenizer=..., "
                             f"call set_tokenizer, or load a checkpoint that has tokenizer files)")
        return self.tokenizer

    def _encode(self, text):
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return [int(i) for i in getattr(ids, "ids", ids)]

    def _padding_side(self, padding_side):
        """The side a call pads on: the argument, else the tokenizer's (None without one)."""
        check_padding_side(padding_side)
        if padding_side is not None:
            return padding_side
        return getattr(self.tokenizer, "padding_side", None) if self.tokenizer is not None else None

    def to_tokens(self, input, prepend_bos=None, padding_side=None, move_to_device=True,
                  truncate=True):
        """Token ids [batch, pos] (int64) of a string or a list of strings.

        BOS is prepended when ``prepend_bos`` (default ``cfg.default_prepend_bos``);
        shorter texts are padded with the pad token on ``padding_side`` (default
        ``tokenizer.padding_side``); with ``truncate`` each row is cut to ``cfg.n_ctx``
        tokens (BOS included), keeping its start. ``move_to_device`` is accepted for
        TransformerLens compatibility (there is only the CPU)."""
        tok = self._need_tokenizer("to_tokens")
        _check_prepend_bos(prepend_bos)
        side = self._padding_side(padding_side)
        if not is_text(input):
            raise TypeError(f"to_tokens: input must be a string or a non-empty list of strings, got "
                            f"{type(input).__name__}")
        texts = [input] if isinstance(input, str) else list(input)
        if prepend_bos is None:
            prepend_bos = self.cfg.default_prepend_bos
        bos = [tok.bos_token_id] if prepend_bos else []
        rows = [bos + self._encode(t) for t in texts]
        if truncate:
            rows = [r[:self.cfg.n_ctx] for r in rows]
        n = max(len(r) for r in rows)
        out = np.full((len(rows), n), tok.pad_token_id, np.int64)
        for i, r in enumerate(rows):
            if side == "left":
                out[i, n - len(r):] = r
            else:
                out[i, :len(r)] = r
        return out

    def _input_tokens(self, input, prepend_bos, padding_side, attention_mask):
        """(tokens, attention_mask) of a forward pass's ``input`` (text or token ids), with
        the mask TransformerLens builds for left padding when none is given."""
        _check_prepend_bos(prepend_bos)
        side = self._padding_side(padding_side)
        if is_text(input):
            tokens = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=side)
        else:
            tokens = self._tokens(input)
        if attention_mask is None and side == "left" and self.tokenizer is not None:
            if prepend_bos is None:
                prepend_bos = self.cfg.default_prepend_bos
            attention_mask = utils.get_attention_mask(self.tokenizer, tokens, prepend_bos, side)
        return tokens, attention_mask

    def to_string(self, tokens):
        """Decode token ids: [pos] (or a list of ids, or one id) -> str, [batch, pos] -> list of str."""
        tok = self._need_tokenizer("to_string")
        arr = np.asarray(to_numpy(tokens))
        if arr.ndim <= 1:
            return tok.decode([int(i) for i in arr.reshape(-1)], clean_up_tokenization_spaces=False)
        if arr.ndim == 2:
            return [tok.decode([int(i) for i in row], clean_up_tokenization_spaces=False) for row in arr]
        raise ValueError(f"to_string: expected 0-, 1- or 2-D token ids, got shape {arr.shape}")

    def to_str_tokens(self, input, prepend_bos=None, padding_side=None):
        """The string of every token: of a string (tokenized as ``to_tokens``), of token ids
        [pos] or [1, pos], a list of strings, or an id array [batch, pos] (a list of lists
        for either)."""
        tok = self._need_tokenizer("to_str_tokens")
        if isinstance(input, list):
            return [self.to_str_tokens(x, prepend_bos, padding_side) for x in input]
        if isinstance(input, str):
            ids = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)[0]
        elif isinstance(input, np.ndarray) or hasattr(input, "detach"):
            ids = np.asarray(to_numpy(input))
            if ids.ndim == 2 and ids.shape[0] > 1:
                return [self.to_str_tokens(row) for row in ids]
            ids = ids.reshape(-1) if ids.size == 1 else ids.squeeze()
            if ids.ndim != 1:
                raise ValueError(f"to_str_tokens: invalid token ids of shape {ids.shape}")
        else:
            raise ValueError(f"Invalid input type to to_str_tokens: {type(input)}")
        return [tok.decode([int(i)], clean_up_tokenization_spaces=False) for i in ids]

    def to_single_token(self, string):
        """The id of ``string``, which must be exactly one token (ValueError otherwise)."""
        ids = self.to_tokens(string, prepend_bos=False)[0]
        if ids.shape != (1,):
            raise ValueError(f"Input string: {string!r} is not a single token! (it is {ids.size} tokens)")
        return int(ids[0])

    def to_single_str_token(self, int_token):
        """The string of the one token id ``int_token`` (a Python int)."""
        if not isinstance(int_token, (int, np.integer)) or isinstance(int_token, bool):
            raise TypeError(f"to_single_str_token: expected an int token id, got {type(int_token).__name__}")
        return self.to_str_tokens(np.array([int(int_token)]))[0]

    def get_token_position(self, single_token, input, mode="first", prepend_bos=None,
                           padding_side=None):
        """Position of ``single_token`` (a string of one token, or an id) in ``input`` (a
        string, or token ids [pos] or [1, pos]): the first or the ``mode="last"`` occurrence.
        ValueError when it does not occur."""
        if isinstance(input, str):
            tokens = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)
        else:
            tokens = np.asarray(to_numpy(input))
        if tokens.ndim == 2:
            if tokens.shape[0] != 1:
                raise ValueError(f"If tokens are rank two, they must have shape [1, seq_len], not "
                                 f"{tokens.shape}")
            tokens = tokens[0]
        if isinstance(single_token, str):
            single_token = self.to_single_token(single_token)
        else:
            single_token = int(np.asarray(to_numpy(single_token)).reshape(()))
        where = np.flatnonzero(tokens == single_token)
        if where.size == 0:
            raise ValueError(f"The token {single_token} does not occur in the prompt")
        if mode == "first":
            return int(where[0])
        if mode == "last":
            return int(where[-1])
        raise ValueError(f"mode must be 'first' or 'last', not {mode!r}")

    def tokens_to_residual_directions(self, tokens):
        """The unembedding direction ``W_U[:, token]`` of a token (a string of one token, an
        int or a one-element array) [d_model], or of an id array [..., d_model]."""
        W_U = np.asarray(self.W_U)
        if isinstance(tokens, str):
            return W_U[:, self.to_single_token(tokens)]
        if isinstance(tokens, (int, np.integer)) and not isinstance(tokens, bool):
            return W_U[:, int(tokens)]
        if isinstance(tokens, np.ndarray) or hasattr(tokens, "detach"):
            ids = np.asarray(to_numpy(tokens))
            if ids.dtype.kind not in "iu":
                raise TypeError(f"tokens_to_residual_directions: expected integer ids, got dtype {ids.dtype}")
            if ids.size == 1:
                return W_U[:, int(ids.reshape(()))]
            return np.moveaxis(W_U[:, ids], 0, -1)
        raise ValueError(f"Invalid token type: {type(tokens)}")
