"""Ablation sweeps: the mean-ablation and head-ablation loops of interpretability
notebooks as one call each, on a mechinterp_c ``HookedTransformer`` or ``transformers``
GPT-2 model.

Both sweeps run one clean pass that caches the residual stream entering every
layer they need, then start each ablated pass at the ablated layer from that
cached stream: the layers before the ablation are not recomputed. The passes
run on the activation-patching engine (``_core.patch_run``, as
``mechinterp_c.patching``): the ablations of one layer are stacked along the
batch axis of one pass and written in C; the head sweep reads only its target
rows and, with causal attention, recomputes only the positions from the first
ablated one. The forward pass is deterministic, so a pass started at layer l
gives the same logits as a full pass with the same hook. Hooks the user left on
the model make the sweeps run plain forward calls with those hooks instead.
"""
import numpy as np

from . import _core
from .array_type import raw_hook, user_facing
from .patching import _past_kv_names

__all__ = ["mean_ablation_sweep", "MeanAblationSweep", "head_ablation_sweep", "HeadAblationSweep"]


def _hooked_model(model, fn):
    """The HookedTransformer behind ``model`` (itself, or a mechinterp_c
    ``transformers`` GPT-2 model's)."""
    ht = getattr(model, "_ht", model)
    if not (hasattr(ht, "hook_dict") and hasattr(ht, "run_with_cache") and hasattr(ht, "_point_layer")):
        raise TypeError(f"{fn}: model must be a mechinterp_c HookedTransformer or a "
                        f"mechinterp_c.transformers GPT-2 model, got {type(model).__name__}")
    return ht


def _shifted_targets(tokens, shift):
    """[B*T] int64 targets: tokens[b, t+shift] at position t, -100 (skipped) where
    that index is outside the sequence."""
    B, T = tokens.shape
    tg = np.full((B, T), -100, dtype=np.int64)
    if shift > 0:
        tg[:, :T - shift] = tokens[:, shift:]
    else:
        tg[:, -shift:] = tokens[:, :T + shift]
    return tg.reshape(-1)


def _loss_function(loss_fn, tokens):
    """The sweep's loss_fn argument checked: (shift, None) for the built-in losses
    (targets tokens[:, t + shift]), (None, loss(logits) -> float) for a callable."""
    if loss_fn is None or isinstance(loss_fn, str):
        kind = loss_fn or "next_token"
        shifts = {"next_token": 1, "previous_token": -1}
        if kind not in shifts:
            raise ValueError(f"loss_fn: expected None, 'next_token', 'previous_token' or a "
                             f"callable (logits, tokens) -> loss, got {loss_fn!r}")
        if tokens.shape[1] < 2:
            raise ValueError(f"loss_fn={kind!r}: tokens need at least 2 positions, got shape "
                             f"{tokens.shape}")
        return shifts[kind], None
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected None, a name or a callable (logits, tokens) -> "
                        f"loss, got {type(loss_fn).__name__}")

    def loss(logits):
        v = loss_fn(logits, tokens)
        try:
            return float(v.item() if hasattr(v, "item") else v)
        except (TypeError, ValueError):
            raise TypeError(f"loss_fn returned {type(v).__name__}; expected a scalar loss")
    return None, loss


def _start_layer(ht, name):
    """Where an ablated pass at hook point ``name`` can start: its block, n_layers
    for the final norm / unembedding, None (a full pass) for the embeddings."""
    layer = ht._point_layer[ht.hook_dict[name].point_id]
    if layer >= 0:
        return layer
    if name in ("hook_embed", "hook_pos_embed"):
        return None
    return ht.cfg.n_layers


def _resid_name(ht, layer):
    """The cached point holding the residual stream entering block ``layer``."""
    L = ht.cfg.n_layers
    return f"blocks.{layer}.hook_resid_pre" if layer < L else f"blocks.{L - 1}.hook_resid_post"


def _sweep_hook_names(ht, hook_names):
    fires = [n for n, hp in ht.hook_dict.items() if hp.point_id is not None]
    if hook_names is None:   # the notebook: every cached point but hook_pos_embed and hook_result
        return [n for n in fires if n != "hook_pos_embed" and "result" not in n]
    if callable(hook_names):
        return [n for n in fires if hook_names(n)]
    if isinstance(hook_names, str):
        hook_names = [hook_names]
    names = list(hook_names)
    for n in names:
        if n not in ht.hook_dict:
            raise KeyError(f"hook_names: unknown hook point {n!r} (see model.hook_dict)")
        if ht.hook_dict[n].point_id is None:
            raise ValueError(f"hook_names: {n!r} never fires for this model's config "
                             f"(e.g. hook_result needs use_attn_result)")
    return names


class MeanAblationSweep:
    """Result of :func:`mean_ablation_sweep`.

    ``names`` (list of hook point names, in sweep order), ``losses`` (float64
    ``[len(names)]``: the loss with that point replaced by its mean),
    ``baseline`` (the clean loss), ``means`` (``{name: mean activation}``, the
    values written in). ``table()`` gives ``{"name": [...], "loss": array}``;
    iterating gives ``(name, loss)`` pairs.
    """

    def __init__(self, names, losses, baseline, means):
        self.names = list(names)
        self.losses = np.asarray(losses, dtype=np.float64)
        self.baseline = float(baseline)
        self.means = means

    def table(self):
        """``{"name": names, "loss": losses, "delta": losses - baseline}``."""
        return {"name": list(self.names), "loss": self.losses.copy(),
                "delta": self.losses - self.baseline}

    def __len__(self):
        return len(self.names)

    def __iter__(self):
        return iter(zip(self.names, self.losses.tolist()))

    def __getitem__(self, name):
        """The loss of the sweep entry ``name``."""
        return float(self.losses[self.names.index(name)])

    def __repr__(self):
        rows = "\n".join(f"  {n:40s} {l:.6g}" for n, l in self)
        return f"MeanAblationSweep(baseline={self.baseline:.6g},\n{rows})"


# A forward call's arena above glibc's largest mmap threshold (32 MiB) is mapped
# fresh for every call and every page faults on first touch (about half of a
# small model's pass); below it the freed arena is reused. Sweeps split their
# batch so that each pass's arena stays under this budget.
_ARENA_BUDGET = 24 << 20


def _chunk_size(ht, T, cached_names=(), budget=_ARENA_BUDGET):
    """Sequences per pass so that one pass's arena (caching cached_names) fits budget."""
    flags = bytearray(ht._n_points)
    for n in cached_names:
        flags[ht.hook_dict[n].point_id] |= _core.HOOK_CACHE
    flags = bytes(flags)
    one = ht._core.arena_bytes(1, T, flags)
    per_seq = max(1, ht._core.arena_bytes(2, T, flags) - one)
    return max(1, 1 + (budget - one) // per_seq)


@user_facing
def mean_ablation_sweep(model, tokens, hook_names=None, loss_fn=None, mean_tokens=None,
                        start_at_layer=True, batch_size=None):
    """Replace each hook point's activation by its mean and record the loss, one call.

    The no-position notebook's loop::

        for name in hook_names:
            average_act = cache[name].mean(0)          # cache = run_with_cache(mean_tokens)
            logits = model.run_with_hooks(tokens, fwd_hooks=[(name, set_to(average_act))])
            losses.append(loss_fn(logits, tokens))

    ``model``: a ``HookedTransformer`` (or a ``mechinterp_c.transformers`` GPT-2
    model). ``tokens`` ``[batch, pos]`` are the evaluated batch; the means are
    over the batch axis of the activations of ``mean_tokens`` (default:
    ``tokens``; it needs the same ``pos``), one value per position as the notebook
    (``cache[name].mean(0)``, accumulated in float64). ``hook_names``: None is
    the notebook's list, every hook point the model fires in ``model.hook_dict``
    order except ``hook_pos_embed`` and ``hook_result``; or a list of names,
    or a filter function of the name. ``loss_fn``: None / ``"next_token"``
    (TransformerLens's mean next-token cross-entropy), ``"previous_token"``
    (the notebook's ``loss_fn``: ``logits[:, 1:]`` predict ``tokens[:, :-1]``),
    both computed in C (per-token losses summed in float64), or any callable
    ``loss_fn(logits, tokens) -> scalar`` on NumPy arrays (called once per
    hook point with the whole batch's logits).

    The clean passes cache the means and the residual stream entering every
    block; each ablated pass starts at the ablated block
    (``start_at_layer=False`` re-runs the whole model each time, as the notebook).
    Passes run ``batch_size`` sequences at a time (default: as many as keep a
    pass's activation arena under 24 MiB, where memory is reused instead of
    freshly mapped; rows are independent, so this only changes speed).
    Returns a :class:`MeanAblationSweep` (``.names``, ``.losses``, ``.baseline``).
    """
    ht = _hooked_model(model, "mean_ablation_sweep")
    tokens = ht._tokens(tokens)
    B, T = tokens.shape
    names = _sweep_hook_names(ht, hook_names)
    shift, loss = _loss_function(loss_fn, tokens)
    builtin = loss is None
    if mean_tokens is not None:
        mean_tokens = ht._tokens(mean_tokens)
        if mean_tokens.shape[1] != T:
            raise ValueError(f"mean_tokens: the means are per position, so mean_tokens needs "
                             f"tokens' {T} positions, got shape {mean_tokens.shape}")
    starts = {n: (_start_layer(ht, n) if start_at_layer else None) for n in names}
    layers = sorted({l for l in starts.values() if l is not None})
    resid_names = {_resid_name(ht, l): l for l in layers}
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")

    if builtin:
        targets = _shifted_targets(tokens, shift).reshape(B, T)
        n_terms = B * (T - 1)

        def chunk_loss(logits, b0, b1):        # sum of the chunk's per-token losses
            per_row = _core._token_losses(logits.reshape(-1, logits.shape[-1]),
                                          np.ascontiguousarray(targets[b0:b1]).reshape(-1))[1]
            return float(np.sum(per_row, dtype=np.float64))
    else:
        full_logits = None

    # clean pass(es): residual streams of `tokens`, means of `mean_tokens`, baseline
    same = mean_tokens is None
    cached = set(resid_names) | (set(names) if same else set())
    bs = batch_size or _chunk_size(ht, T, cached)
    resid = {l: None for l in layers}
    sums = {n: None for n in names}
    base_sum = 0.0
    for b0 in range(0, B, bs):
        b1 = min(B, b0 + bs)
        logits, cache = ht.run_with_cache(tokens[b0:b1], names_filter=cached)
        for rn, l in resid_names.items():
            if resid[l] is None:
                resid[l] = np.empty((B,) + cache[rn].shape[1:], np.float32)
            resid[l][b0:b1] = cache[rn]
        if same:
            _accumulate_sums(sums, cache, names)
        if builtin:
            base_sum += chunk_loss(logits, b0, b1)
        else:
            if full_logits is None:
                full_logits = np.empty((B,) + logits.shape[1:], np.float32)
            full_logits[b0:b1] = logits
        del logits, cache
    baseline = base_sum / n_terms if builtin else loss(full_logits)
    if not same:
        M = mean_tokens.shape[0]
        mbs = batch_size or _chunk_size(ht, T, names)
        for b0 in range(0, M, mbs):
            _, cache = ht.run_with_cache(mean_tokens[b0:b0 + mbs], names_filter=set(names),
                                         return_type=None)
            _accumulate_sums(sums, cache, names)
            del cache
    n_mean = B if same else mean_tokens.shape[0]
    with np.errstate(invalid="ignore"):
        means = {n: (sums[n] / n_mean).astype(np.float32) for n in names}
    del sums

    bs = batch_size or _chunk_size(ht, T)
    losses = [None] * len(names)
    if start_at_layer and not _user_hooks(ht):
        _mean_ablation_engine(ht, tokens, names, starts, resid, means, bs, losses,
                              chunk_loss if builtin else None, loss, n_terms if builtin else None)
    for i, n in enumerate(names):
        if losses[i] is not None:
            continue
        avg = means[n]

        @raw_hook

        def replace_with_mean(act, hook, avg=avg):
            act[...] = avg

        s = starts[n]
        total = 0.0
        with ht.hooks([(n, replace_with_mean)]):
            for b0 in range(0, B, bs):
                b1 = min(B, b0 + bs)
                out = ht.forward(tokens[b0:b1]) if s is None else \
                    ht.forward(resid[s][b0:b1], start_at_layer=s)
                if builtin:
                    total += chunk_loss(out, b0, b1)
                else:
                    full_logits[b0:b1] = out
                del out
        losses[i] = total / n_terms if builtin else loss(full_logits)
    return MeanAblationSweep(names, losses, baseline, means)


def _user_hooks(ht):
    """Whether hooks the user left on the model must see the passes (then they run
    as full forward calls with those hooks, not on the patching engine)."""
    return any(hp._handles for hp in ht.hook_dict.values())


def _mean_ablation_engine(ht, tokens, names, starts, resid, means, bs, losses, chunk_loss,
                          loss, n_terms):
    """The sweep's per-block points on the patching engine (``_core.patch_run``):
    the points of block l are the cells of one call starting at block l from the
    cached residual stream, stacked along the batch axis, each cell writing its
    point's mean (one [pos, ...] array shared by every row) in C. Fills
    losses[i] for those points; the others (embeddings, final norm) stay None, as
    do all with a callable loss whose batch runs in chunks (it sees the whole
    batch's logits at once)."""
    B, T = tokens.shape
    L = ht.cfg.n_layers
    if chunk_loss is None and bs < B:
        return
    by_layer = {}
    for i, n in enumerate(names):
        s = starts[n]
        if s is not None and s < L:
            by_layer.setdefault(s, []).append(i)
    for l, idx in sorted(by_layer.items()):
        pts = {}
        for i in idx:
            pts.setdefault(names[i], len(pts))
        srcs = [(ht.hook_dict[n].point_id, np.ascontiguousarray(means[n], dtype=np.float32), 0, 8)
                for n in pts]
        cells = np.full((len(idx), 4), -1, dtype=np.int64)
        cells[:, 0] = [pts[names[i]] for i in idx]
        totals = np.zeros(len(idx))
        for b0 in range(0, B, bs):
            b1 = min(B, b0 + bs)
            x = np.ascontiguousarray(resid[l][b0:b1])
            per_pass = max(1, bs // (b1 - b0))
            for j0 in range(0, len(idx), per_pass):
                j1 = min(len(idx), j0 + per_pass)
                out = _core.patch_run(ht._core, l, x, srcs, cells[j0:j1], per_pass)
                for j in range(j1 - j0):
                    lg = out[j * (b1 - b0):(j + 1) * (b1 - b0)]
                    if chunk_loss is not None:
                        totals[j0 + j] += chunk_loss(lg, b0, b1)
                    else:                      # one chunk: the whole batch's logits
                        losses[idx[j0 + j]] = loss(lg)
                del out
        if chunk_loss is not None:
            for j, i in enumerate(idx):
                losses[i] = totals[j] / n_terms


def _accumulate_sums(sums, cache, names):
    """sums[name] += cache[name].sum(0) in float64 (the batch axis)."""
    with np.errstate(invalid="ignore"):
        for n in names:
            part = cache[n].sum(0, dtype=np.float64)
            if sums[n] is None:
                sums[n] = part
            else:
                sums[n] += part


class HeadAblationSweep:
    """Result of :func:`head_ablation_sweep`.

    ``logprobs`` float32 ``[n_layers, n_heads, batch, n_targets]``: the
    log-probability of the true next token ``tokens[b, t + 1]`` at each target
    position ``t`` with that (layer, head) ablated; ``logits`` the same shape,
    the raw logit of that token; ``clean_logprobs`` / ``clean_logits``
    ``[batch, n_targets]`` without ablation. ``layers``, ``heads``,
    ``positions`` (ablated positions, None = all) and ``target_positions``
    label the axes. ``delta`` is ``logprobs - clean_logprobs``.
    """

    def __init__(self, layers, heads, positions, target_positions, logprobs, logits,
                 clean_logprobs, clean_logits):
        self.layers, self.heads = list(layers), list(heads)
        self.positions, self.target_positions = positions, target_positions
        self.logprobs, self.logits = logprobs, logits
        self.clean_logprobs, self.clean_logits = clean_logprobs, clean_logits

    @property
    def delta(self):
        """Change in log-probability, ``logprobs - clean_logprobs``."""
        return self.logprobs - self.clean_logprobs

    def __repr__(self):
        return (f"HeadAblationSweep(layers={len(self.layers)}, heads={len(self.heads)}, "
                f"logprobs shape {self.logprobs.shape})")


def _index_list(v, n, what):
    """Normalised (non-negative) list of indices into range(n)."""
    if v is None:
        return list(range(n))
    items = [v] if np.ndim(v) == 0 else list(np.asarray(v).ravel())
    out = []
    for i in items:
        if not isinstance(i, (int, np.integer)) or isinstance(i, (bool, np.bool_)):
            raise TypeError(f"{what}: expected integers, got {i!r}")
        if not -n <= i < n:
            raise IndexError(f"{what}: {int(i)} is out of range for {n}")
        out.append(int(i) % n)
    if not out:
        raise ValueError(f"{what}: empty selection")
    return out


class _StopPass(Exception):
    """Raised by a sweep's own hook to end a forward pass once it has what it needs."""


def _final_rows(ht):
    """x [rows..., d_model] -> logits, the model's final norm and unembedding in NumPy
    (float64 norm, float32 product), or None when hooks on those points must run."""
    tail = [hp for n, hp in ht.hook_dict.items() if n.startswith(("ln_final.", "unembed."))]
    if any(hp._handles for hp in tail):
        return None
    W_U = ht._params["unembed.W_U"]
    b_U = ht._params.get("unembed.b_U")
    final_norm = ht.ln_final

    def unembed(x):
        y = np.asarray(final_norm(x), dtype=np.float32) @ W_U
        return y + b_U if b_U is not None else y
    return unembed


@user_facing
def head_ablation_sweep(model, tokens, layers=None, heads=None, positions=None,
                        target_positions=None, max_rows=4096):
    """Zero one attention head (at some positions) per pass and record the next-token
    log-probabilities, for every (layer, head) in one call.

    The GPT-2 attention-breakdown notebook's loop::

        for layer in layers:                          # a pre-hook on h[layer].attn.c_proj
            z = input[0].view(B, T, n_heads, d_head); z[:, pos, head, :] = 0
            logp = log_softmax(model(tokens).logits[0, -2])[tokens[0, -1]]

    Zeroing a head's slice of ``c_proj``'s input is zeroing TransformerLens's
    ``blocks.{layer}.attn.hook_z[:, positions, head]``, which is what is done.
    ``model``: a ``HookedTransformer`` or a ``mechinterp_c.transformers`` GPT-2
    model. ``layers`` / ``heads``: None (all) or indices; ``positions``: the
    query positions zeroed (None: all; the notebook: ``-2``); ``target_positions``:
    where the log-probability of the true next token is read (None: every
    position but the last; the notebook: ``-2``). The notebook's number is
    ``head_ablation_sweep(m, tokens, heads=4, positions=-2,
    target_positions=-2).logprobs[:, 0, 0, 0]``.

    One clean pass caches the residual stream entering each layer; the passes
    for a layer start there, with the heads of that layer stacked along the
    batch axis (at most ``max_rows`` batch x pos rows per pass, and a pass's
    activation arena under 24 MiB where it is reused). When only some
    positions are targets, each pass ends after the last block and the final
    norm and unembedding (float64 norm, float32 product in NumPy) run on the
    target rows only (~1e-6 relative from the full pass's logits); with causal
    attention the passes also stop at the last target position (later tokens
    cannot change it). Returns a :class:`HeadAblationSweep`.
    """
    ht = _hooked_model(model, "head_ablation_sweep")
    tokens = ht._tokens(tokens)
    B, T = tokens.shape
    if T < 2:
        raise ValueError(f"tokens: need at least 2 positions to read a next-token "
                         f"log-probability, got shape {tokens.shape}")
    L, H = ht.cfg.n_layers, ht.cfg.n_heads
    layers = _index_list(layers, L, "layers")
    heads = _index_list(heads, H, "heads")
    pos = None if positions is None else _index_list(positions, T, "positions")
    tpos = _index_list(target_positions, T, "target_positions") if target_positions is not None \
        else list(range(T - 1))
    for t in tpos:
        if t == T - 1:
            raise ValueError(f"target_positions: the last position ({T - 1}) has no next token "
                             f"to score")
    tpos_a = np.asarray(tpos)
    targets_bt = np.full((B, T), -100, dtype=np.int64)
    targets_bt[:, tpos_a] = tokens[:, tpos_a + 1]
    next_tok = tokens[:, tpos_a + 1]                                   # [B, nt]

    def read(logits, n_copies, rows_only=False, Te=T):
        """(logprobs, logits) of the next tokens at the target positions, [n, B, nt];
        logits [n*B, Te, V] (the first Te positions), or [n*B, nt, V] rows at the
        target positions only."""
        V = logits.shape[-1]
        if rows_only:
            tg = np.tile(next_tok.reshape(-1), n_copies)
            nll = _core._token_losses(np.ascontiguousarray(logits).reshape(-1, V), tg)[1]
            lg = logits.reshape(n_copies, B, len(tpos), V)
            nll = nll.reshape(n_copies, B, len(tpos))
        else:
            tg = np.tile(np.ascontiguousarray(targets_bt[:, :Te]).reshape(-1), n_copies)
            nll = _core._token_losses(logits.reshape(-1, V), tg)[1].reshape(n_copies, B, Te)
            nll = nll[:, :, tpos_a]
            lg = logits.reshape(n_copies, B, Te, V)[:, :, tpos_a]     # [n, B, nt, V] view
        picked = np.take_along_axis(lg, np.broadcast_to(next_tok[None, :, :, None],
                                                        (n_copies, B, len(tpos), 1)), -1)[..., 0]
        return -nll, picked

    if not _user_hooks(ht):
        return _head_ablation_engine(ht, tokens, layers, heads, pos, tpos, read, max_rows)
    logits, cache = ht.run_with_cache(tokens, names_filter={_resid_name(ht, l) for l in layers})
    clean_lp, clean_lg = read(logits, 1)
    del logits
    # Only len(tpos) of the T positions are read: the passes stop at the last block's
    # output and the final norm + unembedding run on those rows only (the unembedding
    # of every position is most of a short pass on a 50k vocabulary), unless hooks
    # the user left on the final norm / unembedding must see the full pass.
    unembed = _final_rows(ht) if len(tpos) < T else None
    # causal attention: positions after the last target cannot change its logits, so
    # the ablated passes run on the prefix up to it (the notebook's target is the
    # penultimate token)
    Te = max(tpos) + 1 if ht.cfg.attention_dir == "causal" else T
    last = f"blocks.{L - 1}.hook_resid_post"
    # copies of the batch per pass: at most max_rows rows and an arena under the budget
    per_pass = max(1, min(len(heads), int(max_rows) // max(1, B * Te),
                          _chunk_size(ht, Te) // B))
    out_lp = np.empty((len(layers), len(heads), B, len(tpos)), dtype=np.float32)
    out_lg = np.empty_like(out_lp)
    sel = slice(None) if pos is None else np.asarray([p for p in pos if p < Te], dtype=np.intp)
    for li, l in enumerate(layers):
        resid = cache[_resid_name(ht, l)][:, :Te]
        for h0 in range(0, len(heads), per_pass):
            hs = heads[h0:h0 + per_pass]
            n = len(hs)
            x = np.broadcast_to(resid[None], (n,) + resid.shape).reshape(n * B, Te, -1)

            @raw_hook

            def zero_heads(z, hook, hs=hs):
                for j, h in enumerate(hs):
                    z[j * B:(j + 1) * B, sel, h] = 0.0

            hooks = [(f"blocks.{l}.attn.hook_z", zero_heads)]
            if unembed is None:
                with ht.hooks(hooks):
                    lg = ht.forward(x, start_at_layer=l)
                out_lp[li, h0:h0 + n], out_lg[li, h0:h0 + n] = read(lg, n, Te=Te)
            else:
                got = {}

                @raw_hook

                def take_final(r, hook):
                    got["rows"] = np.array(r[:, tpos_a])
                    raise _StopPass

                with ht.hooks(hooks + [(last, take_final)]):
                    try:
                        ht.forward(x, start_at_layer=l)
                    except _StopPass:
                        pass
                out_lp[li, h0:h0 + n], out_lg[li, h0:h0 + n] = read(unembed(got["rows"]), n, True)
            del x
    return HeadAblationSweep(layers, heads, pos, tpos, out_lp, out_lg, clean_lp[0], clean_lg[0])


def _head_ablation_engine(ht, tokens, layers, heads, pos, tpos, read, max_rows):
    """head_ablation_sweep on the patching engine (``_core.patch_run``): the heads of
    block l are the cells of one call starting at block l from the cached residual
    stream, stacked along the batch axis, the zeros written in C; the final norm
    and unembedding run on the target rows only. Causal attention: the passes stop
    at the last target and recompute only positions from the first ablated one
    (earlier positions' keys and values from the clean run); targets before it are
    the clean values."""
    B, T = tokens.shape
    L = ht.cfg.n_layers
    causal = ht.cfg.attention_dir == "causal"
    Te = max(tpos) + 1 if causal else T
    sel = [p for p in pos if p < Te] if pos is not None else None
    p0 = min(sel) if causal and sel else 0
    names = {f"blocks.{l}.hook_resid_pre" for l in layers}
    one_slice = sel is None or len(sel) == 1     # zeros at one position or all: a shared zero array
    if not one_slice:
        names |= {f"blocks.{l}.attn.hook_z" for l in layers}
    if p0 > 0:
        names |= {n for i in range(min(layers), L) for n in _past_kv_names(ht, i)}
    logits, cache = ht.run_with_cache(tokens, names_filter=names)
    clean_lp, clean_lg = read(logits, 1)
    del logits
    out_lp = np.empty((len(layers), len(heads), B, len(tpos)), dtype=np.float32)
    out_lg = np.empty_like(out_lp)
    out_lp[...] = clean_lp[0]
    out_lg[...] = clean_lg[0]
    if sel is not None and not sel:          # every ablated position is after the last target
        return HeadAblationSweep(layers, heads, pos, tpos, out_lp, out_lg, clean_lp[0], clean_lg[0])
    ti = [i for i, t in enumerate(tpos) if t >= p0]    # targets the ablation can change
    rows = np.array([(b, tpos[i]) for b in range(B) for i in ti], dtype=np.int64).reshape(-1, 2)
    cols = np.ascontiguousarray(tokens[rows[:, 0], rows[:, 1] + 1].reshape(-1, 1), dtype=np.int64)
    # the engine plans one arena per call (no logits buffer: rows are read), so only
    # max_rows bounds a pass
    per_pass = max(1, min(len(heads), int(max_rows) // max(1, B * (Te - p0))))
    for li, l in enumerate(layers):
        pid = ht.hook_dict[f"blocks.{l}.attn.hook_z"].point_id
        zshape = (Te, ht.cfg.n_heads, ht.cfg.d_head)
        cells = np.full((len(heads), 4), -1, dtype=np.int64)
        cells[:, 0] = 0
        cells[:, 2] = heads
        if one_slice:
            src = [(pid, np.zeros(zshape, np.float32), 1, 8)]
            if sel is not None:
                cells[:, 1] = sel[0]
        else:                # the clean z with the ablated positions zeroed, each head's slice
            z = np.array(cache[f"blocks.{l}.attn.hook_z"][:, :Te], dtype=np.float32)
            z[:, sel] = 0.0
            src = [(pid, z, 1)]
        resid = np.ascontiguousarray(cache[f"blocks.{l}.hook_resid_pre"][:, :Te])
        kw = {}
        if p0 > 0:
            kw = dict(pos0=p0, past_k=[np.ascontiguousarray(cache[_past_kv_names(ht, i)[0]][:, :Te])
                                       for i in range(l, L)],
                      past_v=[np.ascontiguousarray(cache[_past_kv_names(ht, i)[1]][:, :Te])
                              for i in range(l, L)])
        v = _core.patch_run(ht._core, l, resid, src, cells, per_pass, None, rows, cols, True, **kw)
        v = v.reshape(len(heads), B, len(ti), 2)
        out_lg[li][:, :, ti] = v[..., 0]
        out_lp[li][:, :, ti] = v[..., 0] - v[..., 1]
    return HeadAblationSweep(layers, heads, pos, tpos, out_lp, out_lg, clean_lp[0], clean_lg[0])
