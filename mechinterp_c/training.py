"""Training on the C core: Parameter objects, ``backward`` and a train loop.

``HookedTransformer`` has these as methods (from :class:`TrainingMixin`):
``model.backward(tokens, targets)``, ``model.parameters()``,
``model.named_parameters()``, ``model.get_parameter(name)``, ``model.zero_grad()``
and ``model.train_steps(...)``; its weight views are :class:`_Weight` arrays, whose
``requires_grad`` is the parameter's.

Gradients live in one float32 blob with the parameter blob's layout; every
``Parameter.grad`` is a NumPy view into it with the same shape and strides as
``Parameter.data`` (so ``blocks.0.attn.W_Q`` [H, D, Dh] is a strided view of the
fused QKV gradient, exactly like its weights).

In torch mode the same C backward also serves PyTorch autograd (``loss.backward()``
on the logits of ``model(tokens)``, :mod:`mechinterp_c.autograd`): torch then owns the
``.grad`` of the ``torch.nn.Parameter`` views and ``torch.optim`` updates the weights.

Frozen parameters (``requires_grad = False``): ``backward`` leaves their
``.grad`` unchanged (it stays zero unless you write to it), and
``optim.AdamW`` / ``optim.clip_grad_norm_`` skip them, as PyTorch skips
parameters whose ``.grad`` is None.
"""
import numpy as np

from . import _core
from .array_type import to_user_param, torch_mode
from . import optim


class _Weight(np.ndarray):
    """A writable view of the C model's weights: a plain NumPy array except that
    ``.data`` is the array itself (not a memoryview), so torch idioms such as
    ``model.pos_embed.W_pos.data[:] = 0`` edit the weights as in TransformerLens, and
    ``requires_grad`` freezes the parameter for training as in torch
    (``model.pos_embed.W_pos.requires_grad = False`` is ``get_parameter(
    "pos_embed.W_pos").requires_grad = False``). Arithmetic on it gives plain arrays;
    a slice or copy reports its parameter's flag but cannot set it (freezing part of a
    parameter is not supported: AttributeError)."""

    def __array_finalize__(self, obj):
        self._param_name = None            # set on the parameter's own view only
        self._requires_grad = getattr(obj, "_requires_grad", True)

    @property
    def data(self):
        """The weights themselves as a plain ndarray view (torch's ``.data``)."""
        return self.view(np.ndarray)

    @property
    def requires_grad(self):
        """Whether training (``backward``, ``optim``) updates this parameter. In torch mode
        the parameter's ``torch.nn.Parameter`` view holds it (one flag, whichever of the
        two sets it)."""
        p = self.__dict__.get("_torch_param")
        return p.requires_grad if p is not None else self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        if self._param_name is None:
            raise AttributeError("requires_grad can only be set on a whole parameter (e.g. "
                                 "model.pos_embed.W_pos or model.get_parameter(name)), not on a "
                                 "slice, copy or result of one")
        self._requires_grad = bool(value)
        p = self.__dict__.get("_torch_param")
        if p is not None:
            p.requires_grad = bool(value)

    def requires_grad_(self, requires_grad=True):
        """torch's in-place ``requires_grad_``: sets ``requires_grad``; returns self."""
        self.requires_grad = requires_grad
        return self

    def __array_wrap__(self, obj, context=None, return_scalar=False):
        obj = obj.view(np.ndarray)
        return obj[()] if return_scalar else obj

    def __repr__(self):
        return repr(self.view(np.ndarray))


class Parameter:
    """One named model parameter: ``.data`` (writable view of the weights), ``.grad``
    (view of its gradient, same shape/strides), settable ``.requires_grad``, which is
    the flag of the weight view itself (``model.pos_embed.W_pos.requires_grad``): one
    flag, whichever of the two sets it."""

    __slots__ = ("name", "data", "grad")

    def __init__(self, name, data, grad, requires_grad=True):
        if not isinstance(data, _Weight):      # a plain array: its own weight view holds the flag
            data = data.view(_Weight)
            data._param_name = name
        self.name = name
        self.data = data
        self.grad = grad
        if not requires_grad:
            self.requires_grad = False

    @property
    def requires_grad(self):
        """Whether training updates this parameter."""
        return self.data.requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        self.data.requires_grad = value

    @property
    def shape(self):
        """Shape of the parameter (TransformerLens shape)."""
        return self.data.shape

    def __array__(self, dtype=None, copy=None):
        """``np.asarray(param)`` gives the weights (a view unless a dtype change copies)."""
        return np.asarray(self.data, dtype=dtype)

    def __repr__(self):
        """Name, shape and requires_grad."""
        return f"Parameter({self.name!r}, shape={self.data.shape}, requires_grad={self.requires_grad})"


class _TrainState:
    """The gradient blob and Parameter objects of one C model instance."""

    def __init__(self, model):
        self.core = model._core
        self.grads = _core.grad_blob(model._core)
        # each gradient sits where its parameter sits in the blob (the core's table), and
        # gets the parameter's TransformerLens view (W_Q: a strided view of W_qkv's)
        raw = {name: self.grads[off:off + int(np.prod(shape))].reshape(shape)
               for name, off, shape in model._core.param_table()}
        grads = model._tl_views(raw)
        self.params = {name: Parameter(name, view, grads[name]) for name, view in model._params.items()}
        self.workspace, self.workspace_shape = None, None
        # bumped by every pass that writes the workspace's activations: a torch-mode
        # forward's backward reads them only while the number is still its own
        self.generation = 0


class TrainingMixin:
    """The training methods of ``HookedTransformer``: ``backward``, ``parameters``,
    ``named_parameters``, ``get_parameter``, ``zero_grad`` and ``train_steps``."""

    def _training_state(self):
        """The model's gradient blob and Parameters, (re)made when the C model is new."""
        st = getattr(self, "_train_state", None)
        if st is None or st.core is not self._core:   # new, or the C model was rebuilt
            st = _TrainState(self)
            self._train_state = st
        return st

    def named_parameters(self):
        """Iterate ``(name, Parameter)`` pairs with TransformerLens names, as torch. After
        ``set_array_type("torch")`` the values are ``torch.nn.Parameter`` leaves sharing the
        C weights' memory (the same objects as ``model.W_E`` etc.; their ``requires_grad``
        is the parameter's)."""
        params = self._training_state().params
        if torch_mode():
            return iter([(k, to_user_param(p.data)) for k, p in params.items()])
        return iter(params.items())

    def parameters(self):
        """Iterate the model's :class:`Parameter` objects (``torch.nn.Parameter`` views of
        the weights after ``set_array_type("torch")``, see ``named_parameters``)."""
        return iter([p for _, p in self.named_parameters()])

    def get_parameter(self, name):
        """The :class:`Parameter` called ``name`` (KeyError naming it otherwise)."""
        params = self._training_state().params
        if name not in params:
            raise KeyError(f"get_parameter: no parameter {name!r}; known: {', '.join(list(params)[:8])}, ...")
        return to_user_param(params[name].data) if torch_mode() else params[name]

    def zero_grad(self):
        """Set every gradient of the model to zero."""
        self._training_state().grads[...] = 0.0

    def backward(self, tokens, targets, attention_mask=None):
        """Forward + mean cross-entropy + backward.

        ``targets[b, p]`` is the id the logits at ``(b, p)`` must predict (-100: ignored).
        Returns the mean loss over non-ignored positions (a float) and ACCUMULATES the
        gradients into ``Parameter.grad`` (call ``zero_grad`` between steps). Frozen
        parameters' gradients are left unchanged.

        ``attention_mask`` [batch, pos] (1 keep, 0 padding) works as in the forward
        (TransformerLens semantics: padding keys are masked out of attention, positions
        count only kept tokens, padding positions get no positional embedding), and the
        gradients are those of that masked forward. The loss still counts every position
        whose target is not -100: set the targets of padding positions to -100.

        Errors: ValueError for a targets or attention_mask shape different from tokens,
        every target ignored, or a non-finite loss (gradients are then left unchanged);
        IndexError for token or target ids out of range.
        """
        st = self._training_state()
        tokens = np.asarray(tokens)
        targets = np.asarray(targets)
        for nm, a in (("tokens", tokens), ("targets", targets)):
            if a.dtype.kind not in "iu":
                raise TypeError(f"backward: {nm} must be integer ids, got dtype {a.dtype}")
        if tokens.ndim == 1:
            tokens = tokens[None]
            targets = targets[None] if targets.ndim == 1 else targets
        frozen = [(p.grad, p.grad.copy()) for p in st.params.values() if not p.requires_grad]
        if tokens.ndim == 2 and st.workspace_shape != tokens.shape:
            try:   # kept across steps: the activations' pages are faulted in once
                st.workspace = _core.backward_workspace(self._core, *tokens.shape)
                st.workspace_shape = tokens.shape
            except ValueError:
                st.workspace, st.workspace_shape = None, None
        pos_ids, key_mask = self._mask(attention_mask, tokens) if attention_mask is not None else (None, None)
        st.generation += 1
        loss = _core.loss_backward(self._core, tokens, targets, st.grads, st.workspace, None, pos_ids, key_mask)
        for g, saved in frozen:
            g[...] = saved
        return loss

    def train_steps(self, batches, optimizer, scheduler=None, max_grad_norm=None, progress=True):
        """Run one optimiser step per ``(tokens, targets)`` in ``batches``: zero_grad,
        backward, optional ``clip_grad_norm_``, ``optimizer.step()``, ``scheduler.step()``.
        Shows a tqdm bar when tqdm is installed (a plain line every 100 steps otherwise)
        unless ``progress`` is False. Returns the list of losses."""
        try:
            total = len(batches)
        except TypeError:
            total = None
        it = batches
        bar = None
        if progress:
            try:
                from tqdm.auto import tqdm
                bar = it = tqdm(batches, total=total)
            except ImportError:
                bar = None
        losses = []
        params = list(self.parameters())
        for i, (tokens, targets) in enumerate(it):
            optimizer.zero_grad()
            loss = self.backward(tokens, targets)
            if max_grad_norm is not None:
                optim.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(loss)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}")
            elif progress and (i % 100 == 0):
                print(f"step {i}{'/' + str(total) if total else ''} loss {loss:.4f}", flush=True)
        return losses
