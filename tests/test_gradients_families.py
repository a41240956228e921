"""Gradients at every hook point (``run_with_cache(incl_bwd=True, metric=...)``) and
backward hooks for the families whose blocks have more than the basic graph: Gemma 2
(post norms ln1_post / ln2_post, attention-score and final-logit soft-caps, alternating
sliding-window and global layers, grouped-query attention, rotary), Mistral and Qwen2
(sliding windows on Llama-shaped blocks, Qwen2's q/k/v biases), against TransformerLens
3.9's autograd on the same weights and tokens. The models come from random-initialised
``transformers`` checkpoints (``save_pretrained`` in tmp dirs) converted by our loader;
TransformerLens gets our converted config and its own conversion of the same
``transformers`` model (``convert_gemma_weights``, ...: tests/tl_conversion.py). Llama-shaped (rotary, GQA, gated SiLU) and
Pythia-shaped (parallel attention/MLP, partial rotary) TransformerLens configs are in
tests/test_gradients.py (FAMILY_CONFIGS).

Tolerance: every ``*_grad`` entry within 1e-5 of the reference tensor's largest
magnitude, the reference being TransformerLens's autograd in float64 on the same
(float32) weights. Ours is float32; peaked attention (q/k scaled up so the windows show
and the soft-caps' tanh is in its curved part) makes the norms' hook_scale gradients (a
sum of d_model products that cancel) sensitive to rounding: a float32 TransformerLens
differs from its own float64 run by up to ~1.1e-5 on these checkpoints (Qwen2,
logit_diff), ours by ~2.6e-6 at worst, so the float64 reference keeps the 1e-5 bound
about our error alone. The TransformerLens-config Gemma 2 (tests/test_gemma2.py's,
learned positions, every weight perturbed by 0.3) is compared the same way: there a float32
TransformerLens is 2.7e-5 off its float64 run on blocks.3.ln1.hook_scale; ours ~4.8e-6 at
worst (hook_scale gradients held to their terms' scale, see assert_grads_close). Masked
attention entries hold exactly 0 on both sides."""
import warnings

import numpy as np
import pytest

import mechinterp_c as mi
from mechinterp_c import metrics

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tl_mod = pytest.importorskip("transformer_lens")

from test_gradients import assert_grads_match, assert_param_grads_equal_training, tl_hook, tl_logit_diff, tl_loss, tl_run  # noqa: E402
from tl_conversion import tl_twin  # noqa: E402
from transformer_lens.pretrained import weight_conversions as wc  # noqa: E402

T = 16
V = 97
WINDOW = 5
SMALL = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
             vocab_size=V, max_position_embeddings=64, sliding_window=WINDOW)


def _hf_config(family):
    if family == "gemma2":
        return transformers.Gemma2Config(**SMALL, num_hidden_layers=4, head_dim=16, query_pre_attn_scalar=24,
                                         attn_logit_softcapping=2.0, final_logit_softcapping=1.5)
    if family == "mistral":
        return transformers.MistralConfig(**SMALL, num_hidden_layers=3)
    return transformers.Qwen2Config(**SMALL, num_hidden_layers=3, use_sliding_window=True, max_window_layers=1)


def _save(path, family):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoModelForCausalLM.from_config(_hf_config(family), attn_implementation="eager")
        with torch.no_grad():
            for n, p in hf.named_parameters():
                if "norm" in n:
                    p.add_(torch.randn_like(p) * 0.3)     # norm weights away from their init
                elif "bias" in n:
                    p.add_(torch.randn_like(p) * 0.2)     # Qwen2's q/k/v biases
                elif "q_proj" in n or "k_proj" in n:
                    p.mul_(8.0 if family == "gemma2" else 4.0)   # peaked patterns, scores in the cap's curve
                elif family == "gemma2" and ("lm_head" in n or "embed" in n):
                    p.mul_(8.0)      # logits past the final cap
        hf.save_pretrained(path)
    return hf


@pytest.fixture(scope="module", params=["gemma2", "mistral", "qwen2"])
def pair(request, tmp_path_factory):
    """(family, our model, TransformerLens model) with the same converted weights."""
    family = request.param
    path = tmp_path_factory.mktemp(family) / "tiny"
    hf = _save(path, family)
    m = mi.HookedTransformer.from_pretrained_no_processing(str(path))
    convert = {"gemma2": wc.convert_gemma_weights, "mistral": wc.convert_mistral_weights,
               "qwen2": wc.convert_qwen2_weights}[family]
    tl, _ = tl_twin(m, hf, convert, dtype=torch.float64)
    return family, m, tl


def assert_grads_close(cache, ref, what, keys=None):
    """assert_grads_match (1e-5 of each tensor's largest magnitude) on the ``*_grad`` entries
    ``keys`` (None: all of ref's), except that a norm's hook_scale gradient, -sum_i
    dnormalized_i normalized_i / scale per row, is held to 1e-5 of the largest of its terms'
    sums sum_i |dnormalized_i normalized_i| / scale: the sum cancels (to ~1e-2 of its terms
    for a logit difference at one position, where the tensor holds one nonzero number), so
    its own magnitude is no measure of float32 rounding."""
    keys = {k for k in ref if k.endswith("_grad")} if keys is None else set(keys)
    scale_keys = {k for k in keys if k.endswith("hook_scale_grad")}
    assert_grads_match({k: v for k, v in cache.items() if k in keys - scale_keys},
                       {k: ref[k] for k in keys - scale_keys}, what)
    for k in scale_keys:
        base = k[:-len("hook_scale_grad")]
        r, mine = ref[k].numpy(), np.asarray(cache[k])
        terms = (np.abs(ref[base + "hook_normalized_grad"].numpy() * ref[base + "hook_normalized"].numpy()).sum(-1)
                 / ref[base + "hook_scale"].numpy()[..., 0])
        bound = 1e-5 * max(np.abs(r).max(), terms.max(), 1e-30)
        assert np.abs(mine - r).max() < bound, (what, k, np.abs(mine - r).max() / bound * 1e-5)


RNG = np.random.default_rng(5)
TOKENS = RNG.integers(0, V, (3, T))
ANS, WRONG = RNG.integers(0, V, 3), RNG.integers(0, V, 3)
MASK = np.ones(TOKENS.shape, dtype=np.int64)
MASK[0, :4] = 0      # left padding
MASK[2, 11:] = 0     # right padding
POS = np.array([T - 1, T - 1, 10])   # the last real token of each row


def test_the_checkpoints_exercise_the_features(pair):
    """Windows shorter than the sequence cut keys off on the sliding layers; the scores
    and logits reach tanh's curved part; so the parity below covers every feature."""
    family, m, _ = pair
    _, cache = m.run_with_cache(TOKENS)
    i, j = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    local = [t == "local" for t in m.cfg.attn_types]
    assert m.cfg.use_local_attn and m.cfg.window_size == WINDOW and any(local)
    for l, is_local in enumerate(local):
        pat = cache[f"blocks.{l}.attn.hook_pattern"]
        assert (pat[..., j <= i - WINDOW] == 0).all() == is_local, (family, l)
    if family == "gemma2":
        assert not all(local) and m.cfg.use_normalization_before_and_after
        s = cache["blocks.0.attn.hook_attn_scores"]
        assert np.abs(s[np.isfinite(s)]).max() > 1.2            # cap 2
        assert np.abs(cache["unembed.hook_out"]).max() > 2.0    # cap 1.5


@pytest.mark.parametrize("padded", [False, True], ids=["no-mask", "padding-mask"])
@pytest.mark.parametrize("which", ["loss", "logit_diff"])
def test_every_gradient_matches_transformer_lens(pair, which, padded):
    family, m, tl = pair
    mask = MASK if padded else None
    if which == "loss":
        metric, ref_metric = "loss", tl_loss(TOKENS, mask)
    else:
        pos = POS if padded else -1
        metric, ref_metric = metrics.logit_diff(ANS, WRONG, pos=pos), tl_logit_diff(ANS, WRONG, pos)
    value, cache = m.run_with_cache(TOKENS, incl_bwd=True, metric=metric, attention_mask=mask)
    ref_value, ref = tl_run(tl, TOKENS, ref_metric, attention_mask=mask)
    assert abs(value - ref_value) < 1e-5 * max(1.0, abs(ref_value)), (value, ref_value)
    assert_grads_close(cache, ref, f"{family} {which} padded={padded}")
    if family == "gemma2":   # the new points are among those compared
        assert {"blocks.1.ln1_post.hook_scale_grad", "blocks.3.ln2_post.hook_normalized_grad",
                "blocks.0.attn.hook_attn_scores_grad"} <= set(cache.keys())


def _replace(grad, hook):
    return grad * 0.5 + 0.01


def _scale_pos(grad, hook):
    grad[:, 3] *= 2.5


@pytest.mark.parametrize("points", [
    [("blocks.2.ln2_post.hook_normalized", _replace), ("blocks.1.ln1_post.hook_scale", _replace)],
    [("blocks.1.attn.hook_attn_scores", _replace), ("unembed.hook_out", _replace)],
    [("blocks.0.attn.hook_attn_scores", _replace), ("blocks.2.attn.hook_pattern", _replace)],
], ids=["post-norms", "scores-and-logits", "local-scores"])
def test_backward_hooks_on_the_new_points_as_in_transformer_lens(pair, points):
    """A hook that replaces a gradient at a post norm, at the capped (and window-masked)
    scores or at the uncapped logits changes every upstream gradient as in TransformerLens
    (a replacement on a masked score stops at the mask in both)."""
    family, m, tl = pair
    if family != "gemma2":   # no post norms: the pre norms' points instead
        points = [(n.replace("_post.", "."), f) for n, f in points]

    metric = metrics.logit_diff(ANS, WRONG)
    with m.hooks(bwd_hooks=points):
        _, cache = m.run_with_cache(TOKENS, incl_bwd=True, metric=metric)
    _, ref = tl_run(tl, TOKENS, tl_logit_diff(ANS, WRONG), bwd_hooks=[(n, tl_hook(f)) for n, f in points])
    _, plain = m.run_with_cache(TOKENS, incl_bwd=True, metric=metric)
    assert not np.allclose(cache["hook_embed_grad"], plain["hook_embed_grad"])
    hooked = {n for n, _ in points}
    upstream = {k: v for k, v in ref.items() if k.endswith("_grad") and k[:-5] not in hooked}
    assert_grads_close(cache, ref, f"{family} bwd hooks", keys=upstream)


def test_parameter_gradients_equal_training_backward(pair):
    """The hooked pass's parameter gradients (post norms' weights included) are the
    training backward's for the loss (float32 sums in another order: 1e-5 of each norm)."""
    family, m, _ = pair
    assert_param_grads_equal_training(m, TOKENS, family)


def test_one_and_two_threads_bitwise(pair):
    _, m, _ = pair
    metric = metrics.logit_diff(ANS, WRONG, pos=POS)
    before, runs = mi.get_num_threads(), []
    for n in (1, 2):
        mi.set_num_threads(n)
        try:
            runs.append(m.run_with_cache(TOKENS, incl_bwd=True, metric=metric, attention_mask=MASK)[1])
        finally:
            mi.set_num_threads(before)
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=k)


@pytest.mark.parametrize("kw", [{}, dict(normalization_type="RMSPre"), dict(attn_only=True),
                                dict(use_attn_result=True)], ids=["gemma2", "RMSPre", "attn-only", "result"])
def test_transformer_lens_gemma2_config(kw):
    """TransformerLens's own Gemma 2 config (tests/test_gemma2.py: window 3 < 10 positions,
    caps 1.5 and 2.0, attention scale 3, learned positions), loss and logit difference,
    with a padding mask."""
    from test_gemma2 import GEMMA, make_pair, T as T2
    tl32, m = make_pair(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl = tl_mod.HookedTransformer(tl_mod.HookedTransformerConfig(**dict(GEMMA, **kw, dtype=torch.float64)))
    tl.load_state_dict({k: v.double() for k, v in tl32.state_dict().items()}, strict=False)
    toks = np.random.default_rng(2).integers(0, 50, (3, T2))
    mask = np.ones(toks.shape, dtype=np.int64)
    mask[0, :2] = 0
    ans, wrong = np.array([1, 2, 3]), np.array([4, 5, 6])
    for metric, ref_metric, am in [("loss", tl_loss(toks), None),
                                   (metrics.logit_diff(ans, wrong), tl_logit_diff(ans, wrong), mask)]:
        value, cache = m.run_with_cache(toks, incl_bwd=True, metric=metric, attention_mask=am)
        ref_value, ref = tl_run(tl, toks, ref_metric, attention_mask=am)
        assert abs(value - ref_value) < 1e-5 * max(1.0, abs(ref_value))
        assert_grads_close(cache, ref, f"TL gemma2 {kw}")
