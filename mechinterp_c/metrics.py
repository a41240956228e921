"""Metrics of the logits whose gradient starts a backward pass through the hooked graph.

There is no autograd on NumPy arrays, so a metric comes in one of two forms:

* a **built-in metric**, computed in C together with its gradient:
  ``"loss"`` (mean next-token cross-entropy of the input tokens, as
  ``return_type="loss"``), :func:`logit_diff` and :func:`logprob` (means over the
  batch);
* a **function** ``metric(logits) -> (value, dvalue_dlogits)`` of the logits
  [batch, pos, d_vocab_out] returning the scalar value and its gradient, an array
  of the logits' shape.

Example (the indirect-object logit difference, both ways)::

    from mechinterp_c import metrics
    m = metrics.logit_diff(answer_tokens, wrong_tokens)          # built in, pos=-1
    value, cache = model.run_with_cache(tokens, incl_bwd=True, metric=m)
    cache["blocks.0.hook_resid_pre_grad"]                        # d value / d resid_pre

    def my_logit_diff(logits):
        b = np.arange(len(logits))
        value = (logits[b, -1, answer_tokens] - logits[b, -1, wrong_tokens]).mean()
        grad = np.zeros_like(logits)
        grad[b, -1, answer_tokens] += 1 / len(logits)
        grad[b, -1, wrong_tokens] -= 1 / len(logits)
        return value, grad
    value, cache = model.run_with_cache(tokens, incl_bwd=True, metric=my_logit_diff)
"""
import numpy as np

from .utils import to_numpy


class BuiltinMetric:
    """A metric the C core computes with its gradient: ``kind`` and its arguments."""

    def __init__(self, kind, **args):
        self.kind = kind
        self.args = args

    def __repr__(self):
        return f"metrics.{self.kind}({', '.join(f'{k}=...' for k in self.args)})"

    def _positions(self, batch, seq):
        pos = np.asarray(to_numpy(self.args.get("pos", -1)))
        if pos.dtype.kind not in "iu":
            raise TypeError(f"{self.kind}: pos must be an integer or integer array, got dtype {pos.dtype}")
        pos = np.broadcast_to(pos, (batch,)) if pos.ndim == 0 else pos
        if pos.shape != (batch,):
            raise ValueError(f"{self.kind}: pos must be an integer or an array [batch={batch}], got "
                             f"shape {pos.shape}")
        if ((pos < -seq) | (pos >= seq)).any():
            raise IndexError(f"{self.kind}: pos {pos.tolist()} outside [-{seq}, {seq})")
        return np.ascontiguousarray(np.where(pos < 0, pos + seq, pos), dtype=np.int64)

    def _ids(self, name, batch):
        ids = np.asarray(to_numpy(self.args[name]))
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{self.kind}: {name} must be integer token ids, got dtype {ids.dtype}")
        if ids.ndim == 0:
            ids = np.broadcast_to(ids, (batch,))
        if ids.shape != (batch,):
            raise ValueError(f"{self.kind}: {name} must be one token id per batch item [batch={batch}], "
                             f"got shape {ids.shape}")
        return np.ascontiguousarray(ids, dtype=np.int64)

    def spec(self, tokens, attention_mask):
        """The tuple the C core takes for tokens [batch, pos]."""
        batch, seq = tokens.shape
        if self.kind == "loss":
            targets = np.full(tokens.shape, -100, dtype=np.int64)
            targets[:, :-1] = tokens[:, 1:]
            if attention_mask is not None:
                keep = np.asarray(attention_mask) != 0
                targets[:, :-1][~(keep[:, :-1] & keep[:, 1:])] = -100
            return ("loss", targets)
        pos = self._positions(batch, seq)
        if self.kind == "logit_diff":
            return ("logit_diff", pos, self._ids("answer_tokens", batch), self._ids("wrong_tokens", batch))
        return ("logprob", pos, self._ids("tokens", batch))


def loss():
    """Mean next-token cross-entropy of the input tokens (TransformerLens's
    ``return_type="loss"``; an attention mask drops predictions of or from padding)."""
    return BuiltinMetric("loss")


def logit_diff(answer_tokens, wrong_tokens, pos=-1):
    """Mean over the batch of ``logits[b, pos[b], answer_tokens[b]] - logits[b, pos[b],
    wrong_tokens[b]]`` (each argument an int or one per batch item)."""
    return BuiltinMetric("logit_diff", answer_tokens=answer_tokens, wrong_tokens=wrong_tokens, pos=pos)


def logprob(tokens, pos=-1):
    """Mean over the batch of ``log_softmax(logits[b, pos[b]])[tokens[b]]``."""
    return BuiltinMetric("logprob", tokens=tokens, pos=pos)


def resolve(metric, tokens, attention_mask, logits_shape):
    """What the C core takes for ``metric``: a built-in metric's tuple, or a function of
    the logits view returning ``(value, float32 gradient)`` after checking the user's."""
    if isinstance(metric, str):
        if metric != "loss":
            raise ValueError(f"metric: the only named metric is 'loss', got {metric!r}; use "
                             f"metrics.logit_diff / metrics.logprob or a function")
        metric = loss()
    if isinstance(metric, BuiltinMetric):
        return metric.spec(tokens, attention_mask)
    if not callable(metric):
        raise TypeError(f"metric must be 'loss', a metrics.* built-in or a function logits -> "
                        f"(value, gradient), got {type(metric).__name__}")

    def run(logits):
        out = metric(logits)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError(f"metric {getattr(metric, '__name__', metric)!r} must return (value, "
                            f"dvalue_dlogits), got {type(out).__name__}")
        value, grad = out
        value = np.asarray(to_numpy(value))
        if value.size != 1 or value.dtype.kind not in "fiub":
            raise TypeError(f"metric: the value must be a scalar number, got shape {value.shape} "
                            f"dtype {value.dtype}")
        grad = np.asarray(to_numpy(grad))
        if grad.dtype.kind != "f":
            raise TypeError(f"metric: the gradient must be a floating-point array of the logits' "
                            f"shape {tuple(logits_shape)}, got dtype {grad.dtype}")
        if grad.shape != tuple(logits_shape):
            raise ValueError(f"metric: the gradient has shape {grad.shape}; expected the logits' "
                             f"shape {tuple(logits_shape)}")
        return float(value), np.ascontiguousarray(grad, dtype=np.float32)
    return run
