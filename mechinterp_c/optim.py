"""Optimisers for the C core with PyTorch semantics: ``AdamW``, ``LambdaLR`` and
``clip_grad_norm_``, over :class:`mechinterp_c.training.Parameter` objects.

Parameters whose ``requires_grad`` is False are skipped (no update, no weight
decay, no state), as PyTorch skips parameters whose ``.grad`` is None.
"""
import numpy as np

from . import _core


def _check_params(params, who):
    params = list(params)
    if not params:
        raise ValueError(f"{who}: got an empty parameter list")
    for p in params:
        if not (hasattr(p, "data") and hasattr(p, "grad") and hasattr(p, "requires_grad")):
            raise TypeError(f"{who}: expected Parameter objects (model.parameters()), got "
                            f"{type(p).__name__}")
    return params


class AdamW:
    """``torch.optim.AdamW``: decoupled weight decay ``p -= lr*wd*p``, bias-corrected
    moments; the update runs in a C kernel (``_core.adamw_step``). One param group."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        if not lr >= 0.0:
            raise ValueError(f"AdamW: invalid learning rate {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdamW: invalid betas {betas}")
        if not eps >= 0.0:
            raise ValueError(f"AdamW: invalid eps {eps}")
        self.params = _check_params(params, "AdamW")
        self.param_groups = [dict(params=self.params, lr=float(lr), betas=tuple(betas),
                                  eps=float(eps), weight_decay=float(weight_decay))]
        self.state = {}   # index -> {"step", "exp_avg", "exp_avg_sq"}
        self._grads = [p.grad for p in self.params]

    def zero_grad(self):
        """Zero every parameter's gradient (one C call over all of them)."""
        _core.zero_arrays(self._grads)

    def step(self):
        """One AdamW update of every parameter with ``requires_grad``: one C call over
        all of them (``_core.adamw_step_many``), each with its own step count."""
        g = self.param_groups[0]
        b1, b2 = g["betas"]
        ps, gs, ms, vs, steps = [], [], [], [], []
        state = self.state
        for i, p in enumerate(self.params):
            if not p.requires_grad:
                continue
            st = state.get(i)
            if st is None:
                st = state[i] = {"step": 0, "exp_avg": np.zeros(p.data.shape, np.float32),
                                 "exp_avg_sq": np.zeros(p.data.shape, np.float32)}
            st["step"] += 1
            ps.append(p.data); gs.append(p.grad); ms.append(st["exp_avg"]); vs.append(st["exp_avg_sq"])
            steps.append(st["step"])
        _core.adamw_step_many(ps, gs, ms, vs, steps, g["lr"], b1, b2, g["eps"], g["weight_decay"])

    def state_dict(self):
        """A copy of the state, as torch: ``{"state": {i: {...}}, "param_groups": [...]}``."""
        state = {i: {"step": s["step"], "exp_avg": s["exp_avg"].copy(),
                     "exp_avg_sq": s["exp_avg_sq"].copy()} for i, s in self.state.items()}
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        groups[0]["params"] = list(range(len(self.params)))
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd):
        """Restore a ``state_dict()`` (shapes checked)."""
        groups = sd["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("AdamW.load_state_dict: the state has a different number of parameters")
        for i, s in sd["state"].items():
            i = int(i)
            if s["exp_avg"].shape != self.params[i].data.shape:
                raise ValueError(f"AdamW.load_state_dict: state of parameter {i} "
                                 f"({self.params[i].name}) has shape {s['exp_avg'].shape}")
        self.state = {int(i): {"step": int(s["step"]),
                               "exp_avg": np.array(s["exp_avg"], np.float32),
                               "exp_avg_sq": np.array(s["exp_avg_sq"], np.float32)}
                      for i, s in sd["state"].items()}
        for k, v in groups[0].items():
            if k != "params":
                self.param_groups[0][k] = tuple(v) if k == "betas" else v


class LambdaLR:
    """``torch.optim.lr_scheduler.LambdaLR``: ``lr = base_lr * lr_lambda(step)``,
    applied at construction with step 0 and by each ``step()``."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        self.optimizer = optimizer
        self.lr_lambda = lr_lambda
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def step(self):
        """Advance one step and set the optimiser's learning rate."""
        self.last_epoch += 1
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * self.lr_lambda(self.last_epoch)

    def get_last_lr(self):
        """The learning rates set by the last step."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self):
        """``{"last_epoch", "base_lrs"}`` (the lambda itself is not saved, as torch)."""
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, sd):
        """Restore ``state_dict()``."""
        self.last_epoch = int(sd["last_epoch"])
        self.base_lrs = list(sd["base_lrs"])


def clip_grad_norm_(params, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """``torch.nn.utils.clip_grad_norm_``: scale the gradients of the parameters with
    ``requires_grad`` by ``min(1, max_norm / (total_norm + 1e-6))``; returns the total
    L2 norm (float; squares summed in float64)."""
    if norm_type != 2.0:
        raise NotImplementedError("clip_grad_norm_: only norm_type=2.0 is supported")
    params = [p for p in _check_params(params, "clip_grad_norm_") if p.requires_grad]
    if not params:
        return 0.0
    # one C call: the norm, the error check, then the scaling (float32 coef, as torch)
    return _core.clip_grads([p.grad for p in params], float(max_norm), bool(error_if_nonfinite))
