"""TransformerLens weight processing on NumPy state dicts (TL parameter names).

``process_weights`` reproduces ``HookedTransformer.load_and_process_state_dict``
(TransformerLens 3.x, ``ProcessWeights.process_weights``): fold the norms into
the next linear layer, centre the weights that write to the residual stream,
centre the unembedding, fold the value biases into the output bias. None of
these change the model's log-probs; they make weights easier to read.

Shape legend (TL layout): D = d_model, H = n_heads, Dh = d_head, M = d_mlp,
V = d_vocab, Vo = d_vocab_out, C = n_ctx.
  embed.W_E [V, D]        pos_embed.W_pos [C, D]
  blocks.l.attn.W_Q/W_K/W_V [H, D, Dh]   b_Q/b_K/b_V [H, Dh]   (GQA: _W_K/_W_V, _b_K/_b_V)
  blocks.l.attn.W_O [H, Dh, D]   b_O [D]
  blocks.l.mlp.W_in / W_gate [D, M]   b_in [M]   W_out [M, D]   b_out [D]
  blocks.l.ln1.w/b, ln2.w/b [D]   ln_final.w/b [D]   unembed.W_U [D, Vo]   b_U [Vo]
"""
import numpy as np

from .factored_matrix import FactoredMatrix
from .utils import to_numpy

_LN_TYPES = ("LN", "LNPre")
_RMS_TYPES = ("RMS", "RMSPre")


def processed_normalization_type(cfg, fold_ln=True):
    """The normalization type a model has after processing: LN -> LNPre, RMS -> RMSPre when folding."""
    norm = getattr(cfg, "normalization_type", None)
    if fold_ln and norm == "LN":
        return "LNPre"
    if fold_ln and norm == "RMS":
        return "RMSPre"
    return norm


def _key(sd, name):
    """``name`` or its GQA-private twin (``attn.W_K`` -> ``attn._W_K``), whichever is present."""
    if name in sd:
        return name
    head, _, leaf = name.rpartition(".")
    alt = f"{head}._{leaf}"
    return alt if alt in sd else name


def _cfg_get(cfg, name, default=None):
    return getattr(cfg, name, default)


def _check_shape(sd, key, shape):
    got = sd[key].shape
    if len(got) != len(shape) or any(s is not None and g != s for g, s in zip(got, shape)):
        want = tuple("*" if s is None else s for s in shape)
        raise ValueError(f"state dict tensor {key!r} has shape {tuple(got)}, expected {want}")


def _fold_attention_ln(sd, cfg, l, fold_biases, center_weights):
    """Fold ln1 into W_Q/W_K/W_V (and b_Q/b_K/b_V); returns ln1 (w, b) for parallel blocks."""
    ln_w = sd.get(f"blocks.{l}.ln1.w")
    ln_b = sd.get(f"blocks.{l}.ln1.b")
    if ln_w is None:
        return None, None
    d_model = cfg.d_model
    _check_shape(sd, f"blocks.{l}.ln1.w", (d_model,))
    for m in "QKV":
        w_key = _key(sd, f"blocks.{l}.attn.W_{m}")
        if w_key not in sd:
            raise KeyError(f"state dict has blocks.{l}.ln1.w but no {w_key!r} to fold it into")
        _check_shape(sd, w_key, (None, d_model, None))
        W = sd[w_key]
        if fold_biases and ln_b is not None:
            b_key = _key(sd, f"blocks.{l}.attn.b_{m}")
            b = sd[b_key] if b_key in sd else np.zeros((W.shape[0], W.shape[2]), W.dtype)
            # The LN bias passes through W: b += sum_d W[h, d, :] * ln_b[d]  (original W)
            sd[b_key] = b + np.einsum("hdk,d->hk", W, ln_b)
        W = W * ln_w[None, :, None]
        if center_weights:
            W = W - W.mean(axis=1, keepdims=True)
        sd[w_key] = W
    return ln_w, ln_b


def _fold_mlp_ln(sd, cfg, l, fold_biases, center_weights, ln_w, ln_b):
    """Fold ln2 (or, for parallel blocks without one, ln1) into W_in / W_gate / b_in / b_gate."""
    if _cfg_get(cfg, "attn_only", False) or ln_w is None:
        return
    w_in_key = f"blocks.{l}.mlp.W_in"
    if w_in_key not in sd:
        raise KeyError(f"state dict has the layer-{l} MLP norm but no {w_in_key!r} to fold it into")
    _check_shape(sd, w_in_key, (cfg.d_model, None))
    W_in = sd[w_in_key]
    W_gate = sd.get(f"blocks.{l}.mlp.W_gate") if _cfg_get(cfg, "gated_mlp", False) else None
    if fold_biases and ln_b is not None:
        b_in_key = f"blocks.{l}.mlp.b_in"
        folded = ln_b @ W_in
        sd[b_in_key] = sd[b_in_key] + folded if b_in_key in sd else folded
        b_gate_key = f"blocks.{l}.mlp.b_gate"
        if W_gate is not None and b_gate_key in sd:
            sd[b_gate_key] = sd[b_gate_key] + ln_b @ W_gate
    W_in = W_in * ln_w[:, None]
    if W_gate is not None:
        # TransformerLens scales W_gate but does not centre it (see below)
        sd[f"blocks.{l}.mlp.W_gate"] = W_gate * ln_w[:, None]
    if center_weights:
        W_in = W_in - W_in.mean(axis=0, keepdims=True)
    sd[w_in_key] = W_in


def _fold_solu_ln(sd, l, fold_biases, center_weights):
    """SoLU's inner LayerNorm (mlp.ln) folded into W_out / b_out."""
    ln_w, ln_b = sd.get(f"blocks.{l}.mlp.ln.w"), sd.get(f"blocks.{l}.mlp.ln.b")
    if ln_w is None:
        return
    W_out = sd[f"blocks.{l}.mlp.W_out"]
    if fold_biases and ln_b is not None:
        sd[f"blocks.{l}.mlp.b_out"] = sd[f"blocks.{l}.mlp.b_out"] + ln_b @ W_out
    W_out = W_out * ln_w[:, None]
    if center_weights:
        W_out = W_out - W_out.mean(axis=0, keepdims=True)
    sd[f"blocks.{l}.mlp.W_out"] = W_out


def _fold_final_ln(sd, cfg, fold_biases, center_weights):
    """ln_final into W_U / b_U."""
    ln_w = sd.get("ln_final.w")
    if ln_w is None:
        return
    if "unembed.W_U" not in sd:
        raise KeyError("state dict has ln_final.w but no 'unembed.W_U' to fold it into")
    _check_shape(sd, "unembed.W_U", (cfg.d_model, None))
    W_U = sd["unembed.W_U"]
    ln_b = sd.get("ln_final.b")
    if not _cfg_get(cfg, "final_rms", False) and fold_biases and "unembed.b_U" in sd and ln_b is not None:
        sd["unembed.b_U"] = sd["unembed.b_U"] + ln_b @ W_U
    W_U = W_U * ln_w[:, None]
    if center_weights:
        W_U = W_U - W_U.mean(axis=0, keepdims=True)
    sd["unembed.W_U"] = W_U


def fold_layer_norm(state_dict, cfg, fold_biases=True, center_weights=True):
    """Fold every LN / RMS norm weight (and, with ``fold_biases``, bias) into the next linear layer.

    Returns a new dict without the norm parameters (the model then uses LNPre / RMSPre).
    ``center_weights`` centres the folded reading weights over d_model (exact for LN, whose
    input is centred). For RMS norm use ``fold_biases=False, center_weights=False``.
    """
    sd = {k: np.array(to_numpy(v), copy=True) for k, v in state_dict.items()}
    parallel = _cfg_get(cfg, "parallel_attn_mlp", False)
    solu = str(_cfg_get(cfg, "act_fn", "") or "").startswith("solu")
    for l in range(cfg.n_layers):
        ln1_w, ln1_b = _fold_attention_ln(sd, cfg, l, fold_biases, center_weights)
        if f"blocks.{l}.ln2.w" in sd:
            _check_shape(sd, f"blocks.{l}.ln2.w", (cfg.d_model,))
            ln2_w, ln2_b = sd[f"blocks.{l}.ln2.w"], sd.get(f"blocks.{l}.ln2.b")
        elif parallel:
            # Shared-norm parallel blocks (GPT-J, Phi-2): the MLP reads ln1's output too
            ln2_w, ln2_b = ln1_w, ln1_b
        else:
            ln2_w = ln2_b = None
        _fold_mlp_ln(sd, cfg, l, fold_biases, center_weights, ln2_w, ln2_b)
        if solu and not _cfg_get(cfg, "attn_only", False):
            _fold_solu_ln(sd, l, fold_biases, center_weights)
    _fold_final_ln(sd, cfg, fold_biases, center_weights)
    norm_suffixes = (".ln1.w", ".ln1.b", ".ln2.w", ".ln2.b", ".mlp.ln.w", ".mlp.ln.b")
    for k in [k for k in sd if k.endswith(norm_suffixes) or k in ("ln_final.w", "ln_final.b")]:
        del sd[k]
    return sd


def center_writing_weights(state_dict, cfg):
    """Centre W_E, W_pos, W_O, b_O, W_out, b_out over d_model (their writes to the stream)."""
    sd = dict(state_dict)
    if "embed.W_E" not in sd:
        raise KeyError("center_writing_weights: 'embed.W_E' is not in the state dict")
    sd["embed.W_E"] = sd["embed.W_E"] - sd["embed.W_E"].mean(-1, keepdims=True)
    if _cfg_get(cfg, "positional_embedding_type", "standard") not in ("rotary", "alibi", "none"):
        if "pos_embed.W_pos" not in sd:
            raise KeyError("center_writing_weights: 'pos_embed.W_pos' is not in the state dict "
                           f"(positional_embedding_type={_cfg_get(cfg, 'positional_embedding_type')!r})")
        sd["pos_embed.W_pos"] = sd["pos_embed.W_pos"] - sd["pos_embed.W_pos"].mean(-1, keepdims=True)
    for l in range(cfg.n_layers):
        k = f"blocks.{l}.attn.W_O"
        if k in sd:
            sd[k] = sd[k] - sd[k].mean(-1, keepdims=True)
            kb = f"blocks.{l}.attn.b_O"
            if kb in sd:
                sd[kb] = sd[kb] - sd[kb].mean()
        if not _cfg_get(cfg, "attn_only", False):
            k = f"blocks.{l}.mlp.W_out"
            if k in sd:
                sd[k] = sd[k] - sd[k].mean(-1, keepdims=True)
                kb = f"blocks.{l}.mlp.b_out"
                if kb in sd:
                    sd[kb] = sd[kb] - sd[kb].mean()
    return sd


def center_unembed(state_dict):
    """Centre W_U and b_U over the vocabulary (softmax is shift-invariant)."""
    sd = dict(state_dict)
    if "unembed.W_U" not in sd:
        raise KeyError("center_unembed: 'unembed.W_U' is not in the state dict")
    sd["unembed.W_U"] = sd["unembed.W_U"] - sd["unembed.W_U"].mean(-1, keepdims=True)
    if "unembed.b_U" in sd:
        sd["unembed.b_U"] = sd["unembed.b_U"] - sd["unembed.b_U"].mean()
    return sd


def fold_value_biases(state_dict, cfg):
    """b_O += sum_h b_V[h] @ W_O[h]; b_V = 0 (attention rows sum to 1, so it is a constant)."""
    sd = dict(state_dict)
    n_kv = _cfg_get(cfg, "n_key_value_heads", None)
    for l in range(cfg.n_layers):
        b_V_key = f"blocks.{l}.attn.b_V" if n_kv is None else _key(sd, f"blocks.{l}.attn.b_V")
        if b_V_key not in sd:
            continue
        b_V = sd[b_V_key]
        if b_V.size == 0:
            continue
        W_O = sd[f"blocks.{l}.attn.W_O"]
        b_O_key = f"blocks.{l}.attn.b_O"
        b_O = sd.get(b_O_key, np.zeros(cfg.d_model, dtype=b_V.dtype))
        b_V_heads = b_V if b_V.ndim == 2 else b_V.reshape(cfg.n_heads if n_kv is None else n_kv, -1)
        if n_kv is not None and b_V_heads.shape[0] != W_O.shape[0]:
            b_V_heads = np.repeat(b_V_heads, cfg.n_heads // n_kv, axis=0)
        if b_V_heads.shape != W_O.shape[:2]:
            raise ValueError(f"fold_value_biases: {b_V_key!r} has shape {b_V.shape}, which does "
                             f"not match blocks.{l}.attn.W_O {W_O.shape}")
        sd[b_O_key] = b_O + np.einsum("hk,hkd->d", b_V_heads, W_O)
        sd[b_V_key] = np.zeros_like(b_V)
    return sd


def refactor_factored_attn_matrices(state_dict, cfg):
    """Refactor each head's QK and OV circuits into balanced, orthogonal factors; the
    model computes the same function (TransformerLens's experimental refactoring).

    QK: the bilinear form (x W_Q + b_Q)(y W_K + b_K)^T is W_Q' W_K'^T of the effective
    weights [D+1, Dh] (the bias as an extra input row whose input is always 1); its
    SVD U S V^T gives W_Q' = U sqrt(S), W_K' = V sqrt(S), split back into weight and bias.
    OV: b_V moves into b_O (attention rows sum to 1), then W_V W_O = U S V^T gives
    W_V = U S, W_O = V^T (W_O a rotation). Returns a new dict.
    """
    if _cfg_get(cfg, "positional_embedding_type", "standard") == "rotary":
        raise ValueError("refactor_factored_attn_matrices: the QK circuit of a rotary model "
                         "depends on the positions of query and key and cannot be refactored")
    sd = dict(state_dict)
    for l in range(cfg.n_layers):
        p = f"blocks.{l}.attn."
        if p + "W_Q" not in sd:
            continue
        need = [p + k for k in ("W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")]
        missing = [k for k in need if k not in sd]
        if missing:
            raise KeyError(f"refactor_factored_attn_matrices: layer {l} has {p}W_Q but not {missing}")
        W_Q, W_K, b_Q, b_K = (to_numpy(sd[p + k]) for k in ("W_Q", "W_K", "b_Q", "b_K"))
        W_Q_eff = np.concatenate([W_Q, b_Q[:, None, :]], axis=1)   # [H, D+1, Dh]
        W_K_eff = np.concatenate([W_K, b_K[:, None, :]], axis=1)   # [H, D+1, Dh]
        q_even, k_even_t = FactoredMatrix(W_Q_eff, np.swapaxes(W_K_eff, -1, -2)).make_even().pair
        k_even = np.swapaxes(k_even_t, -1, -2)
        sd[p + "W_Q"], sd[p + "b_Q"] = q_even[:, :-1, :], q_even[:, -1, :]
        sd[p + "W_K"], sd[p + "b_K"] = k_even[:, :-1, :], k_even[:, -1, :]

        W_V, W_O, b_V, b_O = (to_numpy(sd[p + k]) for k in ("W_V", "W_O", "b_V", "b_O"))
        sd[p + "b_O"] = b_O + np.einsum("hk,hkd->d", b_V, W_O)
        sd[p + "b_V"] = np.zeros_like(b_V)
        U, S, V = FactoredMatrix(W_V, W_O).svd()
        sd[p + "W_V"] = U * S[..., None, :]
        sd[p + "W_O"] = np.swapaxes(V, -1, -2)
    return sd


def process_weights(state_dict, cfg, fold_ln=True, center_writing_weights=True, center_unembed=True,
                    fold_value_biases=True, refactor_factored_attn_matrices=False):
    """TransformerLens's weight processing on a TL-named NumPy state dict; returns a new dict.

    Same steps, order and conditions as ``HookedTransformer.load_and_process_state_dict``:
    fold_ln (LN: biases folded and reading weights centred; RMS: weights only; skipped for
    other norms or when no norm weights are present), center_writing_weights (only for
    LN / LNPre models without final_rms), center_unembed, fold_value_biases (then b_O is
    re-centred for centred LN models), refactor_factored_attn_matrices (off by default, as
    TransformerLens). Float32 / float64 inputs keep their dtype; other float dtypes are
    processed in float32 and cast back. The input dict is not modified.
    Use ``processed_normalization_type(cfg, fold_ln)`` for the model's new norm type.
    """
    sd = {}
    original_dtypes = {}
    for k, v in state_dict.items():
        a = to_numpy(v)
        if np.issubdtype(a.dtype, np.floating) and a.dtype not in (np.float32, np.float64):
            original_dtypes[k] = a.dtype
            a = a.astype(np.float32)
        sd[k] = a
    norm = _cfg_get(cfg, "normalization_type", None)
    if fold_ln and norm in _LN_TYPES + _RMS_TYPES and any(
            k.endswith((".ln1.w", ".ln2.w", "ln_final.w")) for k in sd):
        is_ln = norm in _LN_TYPES
        sd = fold_layer_norm(sd, cfg, fold_biases=is_ln, center_weights=is_ln)
    centred = norm in _LN_TYPES and not _cfg_get(cfg, "final_rms", False)
    if center_writing_weights and centred:
        sd = globals()["center_writing_weights"](sd, cfg)
    if center_unembed:
        sd = globals()["center_unembed"](sd)
    if fold_value_biases:
        sd = globals()["fold_value_biases"](sd, cfg)
        if center_writing_weights and norm in _LN_TYPES:
            for l in range(cfg.n_layers):
                k = f"blocks.{l}.attn.b_O"
                if k in sd:
                    sd[k] = sd[k] - sd[k].mean()
    if refactor_factored_attn_matrices:
        sd = globals()["refactor_factored_attn_matrices"](sd, cfg)
    for k, dtype in original_dtypes.items():
        if k in sd:
            sd[k] = sd[k].astype(dtype)
    return sd
