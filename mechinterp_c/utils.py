"""Helpers with TransformerLens's names: ``get_act_name``, ``to_numpy``, ``Slice``, the
losses, and the text helpers (``get_attention_mask``, ``sample_logits``, ``test_prompt``,
``tokenize_and_concatenate``)."""
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


def sample_logits(final_logits, top_k=None, top_p=None, temperature=1.0, freq_penalty=0.0,
                  repetition_penalty=1.0, tokens=None, rng=None):
    """Sample one token id per row of ``final_logits`` [batch, d_vocab], as
    ``transformer_lens.utils.sample_logits``.

    ``temperature=0`` is greedy (argmax). Otherwise, in TransformerLens's order: the
    repetition penalty (positive logits of tokens seen in ``tokens`` divided by it,
    negative ones multiplied), division by ``temperature``, the frequency penalty
    (``freq_penalty`` times each token's count in ``tokens`` subtracted; needs
    ``tokens``), then ``top_k`` (keep the k largest; clamped to d_vocab) or ``top_p``
    (keep the smallest set of most likely tokens whose probability reaches top_p), and
    a draw from the softmax. The draw uses ``rng`` (a ``numpy.random.Generator``), else
    NumPy's global generator (``np.random.seed`` makes it repeatable, as
    ``torch.manual_seed`` does for TransformerLens). Returns int64 ids [batch].
    """
    logits = np.array(to_numpy(final_logits), dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"sample_logits: final_logits must be [batch, d_vocab], got shape {logits.shape}")
    toks = None if tokens is None else np.asarray(to_numpy(tokens))
    if repetition_penalty != 1.0 and toks is not None:
        for b in range(logits.shape[0]):
            seen = np.unique(toks[b])
            s = logits[b, seen]
            logits[b, seen] = np.where(s > 0, s / repetition_penalty, s * repetition_penalty)
    if temperature == 0.0:
        return logits.argmax(-1)
    logits /= temperature
    if freq_penalty > 0:
        if toks is None or toks.ndim != 2:
            raise ValueError("sample_logits: freq_penalty needs the tokens [batch, pos] generated so far")
        for b in range(logits.shape[0]):
            logits[b] -= freq_penalty * np.bincount(toks[b], minlength=logits.shape[-1])
    if top_k is not None:
        if top_k <= 0:
            raise ValueError(f"sample_logits: top_k has to be greater than 0, got {top_k}")
        k = min(int(top_k), logits.shape[-1])
        kth = -np.sort(-logits, axis=-1)[:, k - 1:k]
        logits[logits < kth] = -np.inf
    elif top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"sample_logits: top_p has to be in (0, 1], got {top_p}")
        order = np.argsort(-logits, axis=-1, kind="stable")
        sorted_logits = np.take_along_axis(logits, order, -1)
        cum = np.cumsum(np.exp(_log_softmax64(sorted_logits)), axis=-1)
        drop_sorted = np.zeros_like(cum, dtype=bool)
        drop_sorted[:, 1:] = cum[:, :-1] > top_p      # keep up to the first token reaching top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, -1)
        logits[drop] = -np.inf
    probs = np.exp(_log_softmax64(logits))
    u = (rng.random(probs.shape[0]) if rng is not None else np.random.random_sample(probs.shape[0]))
    cdf = np.cumsum(probs, axis=-1)
    idx = (cdf < (u * cdf[:, -1])[:, None]).sum(-1)
    return np.minimum(idx, probs.shape[-1] - 1).astype(np.int64)


def test_prompt(prompt, answer, model, prepend_space_to_answer=True, print_details=True,
                prepend_bos=None, top_k=10):
    """Print how the model does on ``answer`` after ``prompt``, as
    ``transformer_lens.utils.test_prompt``: the tokenized prompt and answer, the rank,
    logit and probability of each answer token, and the ``top_k`` tokens at each answer
    position. A list of answers compares them as single next-token candidates. Returns
    None (prints plain text: TransformerLens's bold markup is dropped)."""
    answers = [answer] if isinstance(answer, str) else list(answer)
    n_answers = len(answers)
    multiple = n_answers > 1
    if prepend_space_to_answer:
        answers = [a if a.startswith(" ") else " " + a for a in answers]
    prompt_tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
    answer_tokens = model.to_tokens(answers, prepend_bos=False)
    if multiple:
        answer_tokens = answer_tokens[:, :1]
    tokens = np.concatenate([np.repeat(prompt_tokens, answer_tokens.shape[0], 0), answer_tokens], 1)
    prompt_str_tokens = model.to_str_tokens(prompt, prepend_bos=prepend_bos)
    answer_str_tokens_list = [model.to_str_tokens(a, prepend_bos=False) for a in answers]
    prompt_length = len(prompt_str_tokens)
    answer_length = 1 if multiple else len(answer_str_tokens_list[0])
    if print_details:
        print("Tokenized prompt:", prompt_str_tokens)
        if multiple:
            print("Tokenized answers:", answer_str_tokens_list)
        else:
            print("Tokenized answer:", answer_str_tokens_list[0])
    logits = np.asarray(to_numpy(model(tokens)), dtype=np.float32)
    probs = np.exp(_log_softmax64(logits)).astype(np.float32)
    answer_ranks = []
    for index in range(prompt_length, prompt_length + answer_length):
        ids = tokens[:, index]
        strs = [a[index - prompt_length] for a in answer_str_tokens_list]
        token_probs = probs[:, index - 1]
        order = np.argsort(-token_probs, axis=-1, kind="stable")
        ranks = np.argsort(order, axis=-1)[np.arange(n_answers), ids].tolist()
        answer_ranks.append(list(zip(strs, ranks)))
        if print_details:
            print(f"Performance on answer token{'s' if n_answers > 1 else ''}:\n" + "\n".join(
                f"Rank: {ranks[i]: <8} Logit: {logits[i, index - 1, ids[i]]:5.2f} "
                f"Prob: {token_probs[i, ids[i]]:6.2%} Token: |{strs[i]}|" for i in range(n_answers)))
            for i in range(top_k):
                t = order[0, i]
                print(f"Top {i}th token. Logit: {logits[0, index - 1, t]:5.2f} "
                      f"Prob: {token_probs[0, t]:6.2%} Token: |{model.to_string(t)}|")
    print("Ranks of the answer tokens:", [r[0] for r in answer_ranks] if not multiple else answer_ranks)


test_prompt.__test__ = False      # not a pytest test, though its name says so


def tokenize_and_concatenate(dataset, tokenizer, streaming=False, max_length=1024, column_name="text",
                             add_bos_token=True, num_proc=None, set_format=True):
    """Tokenize documents, join them with EOS between documents and cut the stream into
    rows of ``max_length`` tokens (each starting with BOS when ``add_bos_token``), as
    ``transformer_lens.utils.tokenize_and_concatenate``.

    ``dataset``: a list of strings, or a Hugging Face ``datasets`` dataset with a
    ``column_name`` column (imported only then). Documents are joined in groups of
    1000, as ``datasets.map(batched=True)`` groups them for TransformerLens, and each
    group's tail shorter than a row is dropped (a group shorter than one row is padded
    with the pad token, else EOS). A tokenizer without a pad token gets ``<PAD>`` added,
    as TransformerLens does. Returns ``{"tokens": int64 array [rows, max_length]}`` for
    a list, and for a dataset a dataset with one ``tokens`` column (NumPy format with
    ``set_format``). ``num_proc`` is passed to ``datasets.map``; its default is None
    (in-process; TransformerLens: 10 forked workers), which gives the same rows.
    """
    if tokenizer.eos_token is None:
        raise ValueError("tokenize_and_concatenate: the tokenizer must have an EOS token")
    has_pad = tokenizer.pad_token is not None
    if not has_pad:
        tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    seq_len = max_length - 1 if add_bos_token else max_length
    if seq_len <= 0:
        raise ValueError(f"tokenize_and_concatenate: max_length={max_length} leaves no room for tokens")

    def rows_of(texts):
        if not texts:
            return np.zeros((0, max_length), np.int64)
        encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        pieces = []
        for i, ids in enumerate(encoded):
            pieces.append(np.asarray(ids, dtype=np.int64))
            if i < len(encoded) - 1:
                pieces.append(np.array([tokenizer.eos_token_id], np.int64))
        stream = np.concatenate(pieces)
        if len(stream) < seq_len:
            pad = tokenizer.eos_token_id if not has_pad else tokenizer.pad_token_id
            stream = np.concatenate([stream, np.full(seq_len - len(stream), pad, np.int64)])
        n_rows = len(stream) // seq_len
        out = stream[:n_rows * seq_len].reshape(n_rows, seq_len)
        if add_bos_token:
            out = np.concatenate([np.full((n_rows, 1), tokenizer.bos_token_id, np.int64), out], 1)
        return out

    if isinstance(dataset, (list, tuple)):
        if not all(isinstance(t, str) for t in dataset):
            raise TypeError("tokenize_and_concatenate: a list dataset must hold strings")
        groups = [rows_of(dataset[i:i + 1000]) for i in range(0, len(dataset), 1000)]
        return {"tokens": np.concatenate(groups) if groups else np.zeros((0, max_length), np.int64)}
    if not hasattr(dataset, "map") or not hasattr(dataset, "column_names"):
        raise TypeError(f"tokenize_and_concatenate: expected a list of strings or a datasets "
                        f"dataset, got {type(dataset).__name__}")
    if column_name not in dataset.column_names:
        raise KeyError(f"tokenize_and_concatenate: the dataset has no column {column_name!r} "
                       f"(columns: {dataset.column_names})")
    dataset = dataset.remove_columns([c for c in dataset.column_names if c != column_name])
    out = dataset.map(lambda batch: {"tokens": rows_of(batch[column_name])}, batched=True,
                      remove_columns=[column_name],
                      **({"num_proc": num_proc} if num_proc is not None and not streaming else {}))
    if set_format:
        out.set_format(type="numpy", columns=["tokens"])
    return out


def composition_scores(left, right, broadcast_dims=True):
    """How much ``right`` reads what ``left`` writes: ||L R||_F / (||L||_F ||R||_F), from
    the factors (TransformerLens's ``utils.composition_scores``). With ``broadcast_dims``
    the leading dims of left and right are crossed: result [*left_lead, *right_lead]."""
    if broadcast_dims:
        l_lead, r_lead = left.ndim - 2, right.ndim - 2
        for i in range(l_lead):
            right = right.unsqueeze(i)
        for i in range(r_lead):
            left = left.unsqueeze(i + l_lead)
    if left.rdim != right.ldim:
        raise ValueError(f"Composition scores require left.rdim==right.ldim, shapes were left: "
                         f"{left.shape}, right: {right.shape}")
    # drop the orthogonal outer factors: the norms only see the core
    new_left, new_right = left.collapse_l(), right.collapse_r()
    fro = lambda x: np.sqrt((x * x).sum((-2, -1)))
    return fro(new_left @ new_right) / fro(new_right) / fro(new_left)


def get_matrix_corner(matrix, n=3):
    """The top-left n x ... x n corner of a FactoredMatrix's product."""
    return matrix[tuple(slice(n) for _ in range(matrix.ndim))].AB
