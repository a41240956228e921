"""PyTorch autograd through the C engine (``set_array_type("torch")``).

In torch mode, with grad mode on and at least one parameter requiring grad,
``model(tokens)`` returns logits whose ``grad_fn`` is a ``torch.autograd.Function``
backed by the C training pass: ``loss = any_torch_function(logits); loss.backward()``
hands the gradient of the loss with respect to the logits to the C backward, which
computes every parameter's gradient; torch then accumulates them into the ``.grad``
of the ``torch.nn.Parameter`` leaves (views of the C weights) that require grad, as
it does for any leaf (set when None, added in place otherwise). So
``torch.optim.AdamW(model.parameters())``, ``torch.nn.utils.clip_grad_norm_``,
``LambdaLR`` and ``optimizer.zero_grad()`` train the C model: the optimiser's
in-place updates of the Parameters are updates of the C weights.

How the pass is kept: the forward writes every activation into the model's training
workspace and stamps it with a generation number; the backward reads them from there
when no other forward has overwritten the workspace since, and otherwise runs the
forward again from the saved tokens first (same weights, same activations). The
parameters' torch version counters are saved at the forward: an in-place update of a
parameter (``optimizer.step()``, ``p.mul_(...)``) between the forward and the backward
makes the backward raise RuntimeError, as torch does for a tensor a backward needs
that was modified in place; so does a write that bypasses the version counters
(``p.data[...] =``, ``load_state_dict``, NumPy writes to the weight views), caught by a
fingerprint of the weights' bits (a wrapping sum and an xor of their 64-bit words) taken
at the forward and compared at the backward, where torch would silently use the new
weights.

Backward hooks (``model.add_hook(name, fn, dir="bwd")``) registered when the forward
runs fire during ``loss.backward()``: that backward runs the hooked-gradient pass
(``_core.grad``: forward again, then the gradient at every hook point with the hooks
editing it, then the parameter gradients).

Plain tensors (no ``grad_fn``), as before, under ``torch.no_grad()``, when every
parameter is frozen, with forward hooks registered (a Python hook's own derivative is
unknown to the C backward), and for ``start_at_layer`` / ``stop_at_layer`` /
``past_kv_cache`` calls. The logits of a model the C backward cannot differentiate
(bfloat16 weights, ``use_split_qkv_input`` / ``use_attn_in``, ``solu_ln``) get a
``grad_fn`` whose backward raises NotImplementedError saying why.

This module imports torch only when its functions run (they run in torch mode only).
"""
import numpy as np

from . import _core

__all__ = ["wants_graph", "forward_with_graph"]


def _torch_params(model):
    """(name, torch.nn.Parameter) of every parameter, in ``named_parameters`` order."""
    return list(model.named_parameters())


def _fingerprint(model):
    """A cheap summary of every weight's bits (wrapping sum and xor of its words): a write
    that bypasses torch's version counters (``p.data[...] =``, ``load_state_dict``, NumPy
    writes to the weight views) changes it."""
    out = []
    for a in model._raw.values():
        if not a.flags.c_contiguous:       # the tied unembedding: a view of W_E
            continue
        w = a.reshape(-1)
        w = w.view(np.uint64) if w.nbytes % 8 == 0 else w.view(np.uint8)
        out.append((int(np.add.reduce(w)), int(np.bitwise_xor.reduce(w))))
    return tuple(out)


def _refusal(model):
    """Why the C backward cannot differentiate this model (None: it can). Such a model's
    torch-mode forward still returns logits with a ``grad_fn``, whose backward raises
    NotImplementedError with this reason, so ``loss.backward()`` says why."""
    cfg = model.cfg
    if model._bf16:
        return ("training a bfloat16 model is not supported (its weights are stored as "
                "bfloat16); load it as float32 to train, or run under torch.no_grad()")
    if model._CORE_SPEC.get("no_head"):
        return "this model has no unembedding: there are no logits to differentiate"
    if cfg.n_layers < 1:
        return "the backward pass needs n_layers >= 1"
    if cfg.use_split_qkv_input or cfg.use_attn_in:
        return ("models with use_split_qkv_input or use_attn_in have no backward pass; turn "
                "them off to train")
    if not cfg.attn_only and cfg.act_fn == "solu_ln":
        return "act_fn 'solu_ln' has no backward pass (forward and analysis only)"
    return None


def wants_graph(model, return_type, start_at_layer, stop_at_layer, past_kv_cache):
    """Whether this torch-mode forward should return logits with a C-backed ``grad_fn``."""
    import torch
    if not torch.is_grad_enabled() or return_type is None:
        return False
    if start_at_layer is not None or stop_at_layer is not None or past_kv_cache is not None:
        return False
    if any(hp._handles for hp in model.hook_dict.values() if hp.point_id is not None):
        return False
    if _refusal(model):    # a graph whose backward says why, rather than a tensor without one
        return True
    return any(p.requires_grad for _, p in _torch_params(model))


class _Pass:
    """What one forward saves for its backward."""

    def __init__(self, model, tokens, attention_mask):
        self.model = model
        self.core = model._core
        self.tokens = tokens
        self.attention_mask = attention_mask
        self.pos_ids, self.key_mask = model._mask(attention_mask, tokens)
        self.refusal = _refusal(model)
        self.named = [] if self.refusal else _torch_params(model)
        self.versions = [p._version for _, p in self.named]
        self.fingerprint = None if self.refusal else _fingerprint(model)
        self.inputs = [(n, p) for n, p in self.named if p.requires_grad]
        self.bwd_points = [pid for pid, hp in enumerate(model._points)
                           if hp is not None and hp._bwd_handles]
        self.workspace = None
        self.generation = None

    def _workspace(self):
        """The model's training workspace for this batch shape (made when new)."""
        st = self.model._training_state()
        if st.workspace is None or st.workspace_shape != self.tokens.shape:
            st.workspace = _core.backward_workspace(self.core, *self.tokens.shape)
            st.workspace_shape = self.tokens.shape
        return st

    def forward(self):
        """Run the forward into the workspace: the logits (a copy the user owns)."""
        st = self._workspace()
        logits = _core.train_forward(self.core, self.tokens, st.workspace, self.pos_ids, self.key_mask)
        st.generation += 1
        self.workspace, self.generation = st.workspace, st.generation
        return np.array(logits)

    def check_unchanged(self):
        """RuntimeError when the model was rebuilt or a parameter updated in place since
        the forward (its gradient would be that of other weights)."""
        if self.model._core is not self.core:
            raise RuntimeError("backward: the model was rebuilt (set_use_*, a config change) after "
                               "the forward that made these logits; run the forward again")
        named = _torch_params(self.model)
        for (name, p), (_, p0), v in zip(named, self.named, self.versions):
            if p is not p0 or p._version != v:
                raise RuntimeError(
                    f"one of the variables needed for gradient computation has been modified by an "
                    f"inplace operation: the parameter {name} changed after the forward that made "
                    f"these logits (e.g. optimizer.step() before loss.backward()); run the forward "
                    f"again after changing weights")
        if _fingerprint(self.model) != self.fingerprint:
            raise RuntimeError(
                "backward: the model's weights changed after the forward that made these logits "
                "(a write torch does not track: p.data[...] = ..., load_state_dict, a NumPy write "
                "to a weight view); run the forward again after changing weights")

    def backward(self, dlogits):
        """The parameter gradients for ``dlogits`` (d loss / d logits, a NumPy float32
        array): a list of arrays in ``inputs`` order, views into one fresh blob."""
        model = self.model
        blob = _core.grad_blob(self.core)
        if self.bwd_points:
            self._hooked_backward(dlogits, blob)
        else:
            st = model._training_state()
            if st.workspace is not self.workspace or st.generation != self.generation:
                # another forward (or model.backward) reused the workspace: run this one again
                self.forward()
            _core.logits_backward(self.core, self.tokens, dlogits, blob, st.workspace, self.pos_ids,
                                  self.key_mask)
        raw = {name: blob[off:off + int(np.prod(shape))].reshape(shape)
               for name, off, shape in self.core.param_table()}
        views = model._tl_views(raw)
        return [views[name] for name, _ in self.inputs]

    def _hooked_backward(self, dlogits, blob):
        """The backward through the hooked-gradient pass, firing the backward hooks."""
        model = self.model
        n = model._n_points
        flags, bflags = bytearray(n), bytearray(n)
        for pid in self.bwd_points:
            bflags[pid] |= _core.HOOK_CALLBACK
        points = model._points

        def metric(logits):
            return 0.0, dlogits

        _core.grad(self.core, self.tokens, bytes(flags), bytes(bflags), metric, None,
                   lambda pid, g: points[pid].run(g, "bwd"), self.pos_ids, self.key_mask, blob)


_FUNCTION = []


def _function():
    """The ``torch.autograd.Function`` class (made once, when torch is first needed)."""
    if _FUNCTION:
        return _FUNCTION[0]
    import torch

    class CTransformerFunction(torch.autograd.Function):
        """Logits of the C forward; backward: the C backward pass from dlogits."""

        @staticmethod
        def forward(ctx, run, marker, *params):
            ctx.run = run
            ctx.save_for_backward(marker)    # freed after a backward: torch's error on a second one
            if run.refusal:
                return torch.from_numpy(np.array(run.model._forward(
                    run.tokens, "logits", False, run.attention_mask, None, ())[0]))
            return torch.from_numpy(run.forward())

        @staticmethod
        def backward(ctx, dlogits):
            ctx.saved_tensors            # raises when the graph was freed by an earlier backward
            run = ctx.run
            if run.refusal:
                raise NotImplementedError(f"loss.backward(): {run.refusal}")
            run.check_unchanged()
            d = np.ascontiguousarray(dlogits.detach().cpu().numpy(), dtype=np.float32)
            grads = run.backward(d)
            return (None, None) + tuple(torch.from_numpy(g) for g in grads)

    _FUNCTION.append(CTransformerFunction)
    return CTransformerFunction


def _lm_loss(logits, tokens, attention_mask, per_token):
    """TransformerLens's ``lm_cross_entropy_loss`` in torch ops (so it has a grad_fn)."""
    import torch
    t = torch.as_tensor(tokens)
    log_probs = torch.log_softmax(logits, dim=-1)
    predicted = log_probs[:, :-1].gather(-1, t[:, 1:, None])[..., 0]
    if attention_mask is not None:
        m = torch.as_tensor(np.asarray(attention_mask).astype(bool))
        keep = m[:, :-1] & m[:, 1:]
        predicted = torch.where(keep, predicted, torch.zeros_like(predicted))
        n = int(keep.sum())
    else:
        n = predicted.numel()
    if per_token:
        return -predicted
    return -predicted.sum() / n


def forward_with_graph(model, tokens, return_type, loss_per_token, attention_mask):
    """``model.forward`` in torch mode with a C-backed ``grad_fn`` (see the module
    docstring): ``tokens`` [batch, pos] int64, ``attention_mask`` as forward takes it."""
    import torch
    tokens = model._tokens(tokens)
    if attention_mask is not None:
        attention_mask = np.asarray(model._mask(attention_mask, tokens)[1])
    run = _Pass(model, tokens, attention_mask)
    # a model the backward refuses (bfloat16: no Parameters) gets its graph from the marker
    marker = torch.empty(0, requires_grad=run.refusal is not None)
    logits = _function().apply(run, marker, *[p for _, p in run.inputs])
    if return_type == "logits":
        return logits
    loss = _lm_loss(logits, tokens, attention_mask, loss_per_token)
    return loss if return_type == "loss" else (logits, loss)
