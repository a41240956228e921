"""torch's ``register_full_backward_hook`` / ``register_full_backward_pre_hook`` on the
Hugging Face module trees, fed by the C core's gradient pass, and the ``backward``
call on a model output that runs it.

There is no autograd graph behind a drop-in's output: ``out = model(input_ids)`` keeps
what the pass needs, and ``out.backward(metric="loss")`` runs one C pass forward
(registered forward hooks run again, so the gradients are those of the hooked forward,
as in torch), the metric at the logits, and the backward to the embeddings, calling the
modules' backward hooks as each gradient is complete.

Each module's gradients are hook points' gradients (the same tensors
``run_with_cache(incl_bwd=True)`` gives, see ``mechinterp_c.metrics``):

* ``grad_output`` is the gradient of the point holding the module's output
  (a block's: ``hook_resid_post``; attention: ``hook_attn_out``; MLP: ``hook_mlp_out``;
  ``c_attn`` / ``q_proj``...: ``hook_q/k/v``; ``c_fc`` / ``gate_proj``: ``mlp.hook_pre``;
  the final norm: ``unembed.hook_in``; ``lm_head``: ``unembed.hook_out``, the uncapped
  logits). A pre-hook's returned tuple replaces it before it flows upstream.
* ``grad_input`` is the gradient of the point holding the module's input when the module
  is that point's only reader (a block: ``hook_resid_pre``; ``c_proj`` / ``o_proj`` /
  ``dense``: ``attn.hook_z``; ``mlp.c_proj`` / ``down_proj``: ``mlp.hook_post``; ``act``:
  ``mlp.hook_pre``; the final norm: the last ``hook_resid_post``; ``lm_head``:
  ``unembed.hook_in``): a returned tuple replaces it, as in torch. Modules that read a
  norm's output (attention, MLP, their input projections) get their input's gradient
  computed from their products' gradients (``grad_out @ W``), for reading only: the
  norm's output is no hook point, so a replacement raises NotImplementedError (replace
  the block's or the norm input's gradient instead).
* Gemma 2's modules inside its post norms (``self_attn``, ``mlp``, ``o_proj``,
  ``down_proj``): their output is a post norm's input, whose gradient the C pass
  computes without keeping it; full hooks get it computed from the post norm's
  ``hook_normalized`` / ``hook_scale`` gradients (read-only), pre-hooks are refused.
* Modules whose gradients are no hook point's refuse backward hooks when registered
  (NotImplementedError naming the module): the block norms (``ln_1``,
  ``input_layernorm``, ...), Gemma 2's ``embed_tokens`` (the C pass holds the scaled
  embedding), the root model.
  GPT-NeoX's ``query_key_value`` sees its gradient in NeoX's (head, q/k/v, d_head)
  order, a permuted copy whose edits are permuted back, as its forward hooks do.

Order at one point: full hooks of the module whose input gradient completes there run
first (a block's, at the next block's output), then pre-hooks of modules whose output
gradient it is; hooks of modules sharing one point (``attn`` and ``attn.c_proj``) run in
registration order, not module order (as forward hooks here). ``grad_input`` is a
1-tuple (an embedding's: ``(None,)``, its ids have no gradient); ``grad_output`` is a
1-tuple, ``(grad, None)`` for attention modules (whose output is ``(out, None)``).
"""
import numpy as np

from .. import _core, metrics
from ..array_type import raw_hook
from .modeling_utils import RemovableHandle, _hf, _same, _write_back

__all__ = ["BackwardMixin", "register_backward_hook", "run_backward"]


class _Entry:
    """One registered hook at one point of a model's backward dispatcher."""

    def __init__(self, site, phase, fn):
        self.site, self.phase, self.fn = site, phase, fn

    def remove(self):
        """Unregister (the dispatcher leaves the point when it holds nothing)."""
        lst = self.site.phases[self.phase]
        if self in lst:
            lst.remove(self)
        if self.site.handles and not any(self.site.phases.values()):
            for h in self.site.handles:
                h.remove()
            self.site.handles = []


class _Site:
    """The backward hook of one point, in torch's order: full hooks of the modules whose
    input is this point (a block's, at the previous block's output), pre-hooks of the
    modules whose output it is, the grad_output stashes, full hooks of those same modules
    (a projection whose input gradient is computed from this one, an embedding), then
    full hooks of the modules containing them (attention, MLP)."""

    PHASES = ("full", "pre", "stash", "last", "outer")

    def __init__(self, ht, point):
        self.ht, self.point = ht, point
        self.phases = {p: [] for p in self.PHASES}
        self.handles = []

    def add(self, phase, fn, prepend=False):
        if not self.handles:
            phases = self.phases

            @raw_hook
            def run(grad, hook):
                for p in _Site.PHASES:
                    for e in list(phases[p]):
                        e.fn(grad)
            self.handles = self.ht.add_hook(self.point, run, dir="bwd", is_permanent=True)
        e = _Entry(self, phase, fn)
        self.phases[phase].insert(0, e) if prepend else self.phases[phase].append(e)
        return e


def _site(model, point):
    sites = model.__dict__.setdefault("_bwd_sites", {})
    if point not in sites:
        if point not in model._ht.hook_dict or model._ht.hook_dict[point].point_id is None:
            raise NotImplementedError(f"backward hooks: the C pass of this model has no point {point!r}")
        sites[point] = _Site(model._ht, point)
    return sites[point]


def _weight_out_in(module):
    """The module's weight as [out, in] float32 (HF Linear's layout; GPT-2's Conv1D is [in, out])."""
    w = module._np("weight")
    if w.dtype == np.uint16:
        w = _core.from_bfloat16(w)
    return w.T if type(module).__name__ == "Conv1D" else w


def grad_sites(module):
    """(out, inp) of ``module``: out = (point, view, site) of its output's gradient or
    None (site: None, or a permutation of the C buffer that the forward hooks see too,
    with ``expose`` / ``absorb``: GPT-NeoX's query_key_value);
    inp = ("point", point, view) | ("sum", [(point, view, reader module)]) |
    ("none",) | None (see the module docstring)."""
    spec = module.__dict__.get("_bwd_spec", "derive")
    if spec != "derive":
        return spec
    fwd, pre = module._fwd, module._pre
    out = None
    scale_point = module.__dict__.get("_scale_point")
    if fwd is not None and scale_point is not None:
        # the input of a post norm (Gemma 2): its gradient is computed from the norm's
        out = ("postnorm", fwd[0], scale_point)
    elif fwd is not None:
        if fwd[2] is None or _permutes(fwd[2]):
            out = (fwd[0], fwd[1], fwd[2])
        elif fwd[0] == "ln_final.hook_normalized":
            out = ("unembed.hook_in", _same, None)   # the final norm's output (with weights)
    if out is None:
        return None, None
    if getattr(module, "_grad_input_empty", False):
        inp = ("empty",)      # called with keyword arguments only: torch's grad_input is ()
    elif pre is None:
        inp = ("none",) if fwd[0] in ("hook_embed", "hook_pos_embed") else None
    elif fwd[0] == "ln_final.hook_normalized":       # the final norm: the last resid_post
        inp = ("point", pre[0], pre[1])
    elif pre[0] == "ln_final.hook_normalized":       # lm_head: ln_final's output
        inp = ("point", "unembed.hook_in", _same)
    elif pre[2] is None and not pre[3]:
        inp = ("point", pre[0], pre[1])
    elif pre[2] is not None:
        # reads a norm's output: its products' gradients times their weights
        readers = [module] if module._np("weight") is not None else [
            c for c in module.children() if c._np("weight") is not None and c._pre is not None
            and c._pre[0] == pre[0] and c._fwd is not None and (c._fwd[2] is None or _permutes(c._fwd[2]))]
        inp = ("sum", [(c._fwd[0], _shown(c._fwd[1], c._fwd[2]), c) for c in readers]) if readers else None
    else:
        inp = None
    return out, inp


def _permutes(site):
    """Whether a forward site only permutes the C buffer (so gradients permute alike)."""
    return getattr(site, "permutes_only", False)


def _shown(view, site):
    """The gradient as the module's output is laid out: the point's view, permuted by ``site``."""
    return view if site is None else (lambda g: site.expose(view(g)))


def _refuse(module, what):
    raise NotImplementedError(
        f"{module._name}: {what} is not available on this module: its gradient is not one the "
        f"C pass holds (see mechinterp_c.transformers.backward_hooks for the modules that take "
        f"backward hooks: blocks, attention, MLP, their projections, the final norm, lm_head, "
        f"embeddings)")


def _grad_output(module, g):
    shown = module._wrap_output(_hf(g))
    return shown if isinstance(shown, tuple) else (_hf(g),)


def register_backward_hook(module, hook, pre, prepend=False):
    """``register_full_backward_pre_hook`` (``pre``) or ``register_full_backward_hook`` of
    ``module`` (see the module docstring). Returns a handle."""
    if not callable(hook):
        raise TypeError(f"{module._name}: hook must be callable, got {type(hook).__name__}")
    model = module._model_ref() if module._model_ref is not None else None
    if model is None or model is module:
        _refuse(module, "a backward hook on the root model")
    out, inp = grad_sites(module)
    if out is None or (not pre and inp is None):
        _refuse(module, "a full backward pre-hook" if pre else "a full backward hook")
    kind = "backward pre-hook" if pre else "backward hook"
    if out[0] == "postnorm":
        if pre:
            raise NotImplementedError(
                f"{module._name}: a full backward pre-hook is not available on this module: its "
                f"output is a post norm's input, whose gradient the C pass computes but keeps no "
                f"tensor for, so it cannot be replaced (hook the post norm, whose grad_output it "
                f"is, or the layer); full backward hooks work")
        return _post_norm_hook(model, module, hook, out[1], out[2], grad_sites(module)[1])
    out_point, out_raw, out_site = out
    out_view = _shown(out_raw, out_site)
    where = f"{kind} on {module._name}"
    if pre:
        def run_pre(g):
            raw = out_raw(g)
            view = raw if out_site is None else out_site.expose(raw)
            ret = hook(module, _grad_output(module, view))
            if ret is not None and not isinstance(ret, tuple):
                raise TypeError(f"{where}: a backward pre-hook returns None or a tuple "
                                f"replacing grad_output, got {type(ret).__name__}")
            if out_site is not None:
                out_site.absorb(raw, view, ret)    # in-place edits of the copy too
            elif ret is not None:
                _write_back(view, ret, where)
        return RemovableHandle([_site(model, out_point).add("pre", run_pre, prepend)])

    state = {}

    def stash_out(g):
        state["out"] = np.array(out_view(g))   # after the pre-hooks: what flows on

    entries = [_site(model, out_point).add("stash", stash_out)]
    return _full_hook(model, module, hook, inp, out_point, state, entries, prepend, where)


def _post_norm_hook(model, module, hook, norm_point, scale_point, inp):
    """A full hook of a module whose output x is a post norm's input (Gemma 2's o_proj,
    down_proj, self_attn, mlp): grad_output is d x = dnormalized / scale + dscale *
    normalized / d_model (TransformerLens's RMSNorm graph: scale -> normalized), from the
    norm's point gradients and the forward's activations, once the scale's is complete."""
    fwd, state = {}, {}

    @raw_hook
    def keep_fwd(act, hook):
        fwd[hook.name] = act

    lens = model._ht.add_hook(norm_point, keep_fwd) + model._ht.add_hook(scale_point, keep_fwd)

    def keep_dn(g):
        state["dn"] = np.array(g)

    def stash_out(g):
        n, s = fwd[norm_point], fwd[scale_point]
        state["out"] = state.pop("dn") / s + g * n / np.float32(n.shape[-1])

    entries = lens + [_site(model, norm_point).add("stash", keep_dn),
                      _site(model, scale_point).add("stash", stash_out)]
    return _full_hook(model, module, hook, inp, scale_point, state, entries, False,
                      f"backward hook on {module._name}")


def _full_hook(model, module, hook, inp, out_point, state, entries, prepend, where):
    """Register the full hook whose grad_output ``state["out"]`` is stashed by ``entries``."""

    def call(grad_input):
        return hook(module, grad_input, _grad_output(module, state.pop("out", None)))

    if inp[0] in ("none", "empty"):
        def run_none(g):
            ret = call((None,) if inp[0] == "none" else ())
            if ret is not None and any(r is not None for r in (ret if isinstance(ret, tuple) else (ret,))):
                raise ValueError(f"{where}: the module's input (token or position ids) has no "
                                 f"gradient to replace; return None")
        entries.append(_site(model, out_point).add("last", run_none, prepend))
    elif inp[0] == "point":
        in_point, in_view = inp[1], inp[2]

        extra = (None,) * getattr(module, "_grad_input_extra", 0)

        def run_point(g):
            view = in_view(g)
            ret = call((_hf(view),) + extra)
            if ret is not None:
                if not isinstance(ret, tuple):
                    raise TypeError(f"{where}: a full backward hook returns None or a tuple "
                                    f"replacing grad_input, got {type(ret).__name__}")
                _write_back(view, ret, where)
        entries.append(_site(model, in_point).add("full", run_point, prepend))
    else:
        readers = inp[1]
        ids = {p: model._ht.hook_dict[p].point_id for p, _, _ in readers}
        fire = min(ids, key=ids.get)     # the first in the forward is the last in the backward
        grads = {}
        for p, view, _ in readers:
            if p != fire:
                def keep(g, p=p, view=view):
                    grads[p] = view(g)
                entries.append(_site(model, p).add("stash", keep))

        def run_sum(g):
            total = None
            for p, view, reader in readers:
                gp = view(g) if p == fire else grads.pop(p)
                B, T = gp.shape[:2]
                part = gp.reshape(B, T, -1) @ _weight_out_in(reader)
                total = part if total is None else total + part
            ret = call((_hf(total.astype(np.float32)),))
            if ret is not None and any(r is not None for r in (ret if isinstance(ret, tuple) else (ret,))):
                raise NotImplementedError(
                    f"{where}: replacing grad_input is not supported here: this module's input is "
                    f"a norm's output, which the C pass keeps no gradient for; return None (and "
                    f"replace the gradient at the block input or with a pre-hook instead)")
        entries.append(_site(model, fire).add("last" if fire == out_point else "outer", run_sum, prepend))
    return RemovableHandle(entries)


def run_backward(model, tokens, pos, mask, labels, metric, fwd_dispatch=None, fwd_points=()):
    """One C pass: forward (with the registered forward hooks, ``fwd_dispatch(pid, act)``
    running them, and ``fwd_points`` also called back), the metric at the logits, the
    backward with the modules' backward hooks. Returns the metric's value (float).

    ``metric``: ``"loss"`` is Hugging Face's causal-LM loss (``logits[:, :-1]`` against
    ``labels[:, 1:]``, -100 ignored; labels default to the input ids); a
    ``mechinterp_c.metrics`` built-in or a function ``logits -> (value, dvalue_dlogits)``
    (NumPy, float32 gradient of the logits' shape) otherwise."""
    ht = model._ht
    n = ht._n_points
    flags, bflags = bytearray(n), bytearray(n)
    any_fwd = any_bwd = False
    for hp in ht.hook_dict.values():
        if hp.point_id is None:
            continue
        if hp._handles:
            flags[hp.point_id] |= _core.HOOK_CALLBACK
            any_fwd = True
        if hp._bwd_handles:
            bflags[hp.point_id] |= _core.HOOK_CALLBACK
            any_bwd = True
    for pid in fwd_points:
        flags[pid] |= _core.HOOK_CALLBACK
        any_fwd = True
    points = ht._points
    if fwd_dispatch is None:
        def fwd_dispatch(pid, act):
            points[pid].run(act)
    if isinstance(metric, str) and metric == "loss":
        lab = tokens if labels is None else np.asarray(labels)
        lab = np.asarray(lab).reshape(tokens.shape) if np.size(lab) == tokens.size else lab
        if np.shape(lab) != tokens.shape:
            raise ValueError(f"backward: labels must have the input ids' shape {tokens.shape}, "
                             f"got {np.shape(lab)}")
        targets = np.full(tokens.shape, -100, dtype=np.int64)
        targets[:, :-1] = lab[:, 1:]
        spec = ("loss", targets)
    else:
        spec = metrics.resolve(metric, tokens, mask, tokens.shape + (ht.cfg.d_vocab_out,))
    value, _, _, _ = _core.grad(ht._core, tokens, bytes(flags), bytes(bflags), spec,
                                fwd_dispatch if any_fwd else None,
                                (lambda pid, g: points[pid].run(g, "bwd")) if any_bwd else None,
                                pos, mask, None)
    return value


class BackwardMixin:
    """What a causal LM drop-in's root adds for backward hooks: the registration its
    modules' ``register_full_backward_hook`` / ``register_full_backward_pre_hook`` call."""

    def _register_backward_hook(self, module, hook, pre, prepend=False):
        return register_backward_hook(module, hook, pre, prepend)
