"""Test-only oracle of the no-position seed's mean-ablation sweep, written with
TransformerLens + torch as the seed writes it (tests/test_analysis_sweeps.py,
bench/analysis.py), and the TransformerLens / mechinterp_c model pair the parity tests
build from one config (tl_pair)."""
import warnings

import numpy as np
import torch


def tl_pair(cfg, perturb=0.1):
    """A TransformerLens model and mechinterp_c's HookedTransformer of config ``cfg``
    holding the same weights: TransformerLens's initialisation plus ``perturb`` times
    N(0, 1) noise (so biases and LayerNorm weights are not their trivial 0 / 1)."""
    import transformer_lens as tl

    from mechinterp_c.config import HookedTransformerConfig
    from mechinterp_c.hooked_transformer import HookedTransformer
    warnings.filterwarnings("ignore")
    tm = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg))
    rng = np.random.default_rng(0)
    sd = {k: v.detach().numpy().copy() for k, v in tm.state_dict().items()}
    for k, v in sd.items():
        if v.dtype == np.float32 and k.split(".")[-1] not in ("mask", "IGNORE"):
            sd[k] = (v + perturb * rng.standard_normal(v.shape)).astype(np.float32)
    tm.load_state_dict({k: torch.tensor(v) for k, v in sd.items()})
    m = HookedTransformer(HookedTransformerConfig(**cfg))
    m.load_state_dict(sd)
    return tm, m


def seed_loss_fn(logits, tokens, per_token=False):
    """The no-position seed's loss: logits[:, 1:] predict tokens[:, :-1]."""
    logits = logits[:, 1:]
    tokens = tokens[:, :-1]
    log_probs = logits.log_softmax(-1)
    correct = log_probs.gather(-1, tokens[..., None])[..., 0]
    return -correct if per_token else -correct.mean()


def seed_mean_ablation(tm, mean_tokens, tokens):
    """The seed's sweep cell on TransformerLens model ``tm``: the mean over
    ``mean_tokens`` of every cached hook point (but hook_pos_embed and the per-head
    results) written into a pass over ``tokens``. Returns (losses, hook names)."""
    with torch.no_grad():
        _, cache = tm.run_with_cache(torch.tensor(mean_tokens))
        new_token_batch = torch.tensor(tokens)
        losses, labels = [], []
        for hook_name in list(tm.hook_dict.keys()):
            if hook_name in cache and hook_name != "hook_pos_embed" and "result" not in hook_name:
                average_act = cache[hook_name].mean(0)

                def replacing_with_average_act(activation, hook):
                    activation[:] = average_act.expand(activation.shape)
                    return activation

                logits = tm.run_with_hooks(new_token_batch,
                                           fwd_hooks=[(hook_name, replacing_with_average_act)])
                losses.append(seed_loss_fn(logits, new_token_batch).item())
                labels.append(hook_name)
    return losses, labels
