"""Activation patching on rotary families: mechinterp_c.patching vs
transformer_lens.patching on checkpoints that ``transformers`` wrote.

GPT-NeoX (partial rotary, parallel residual, untied unembedding) and Llama
(RMSNorm, SwiGLU, rotary, grouped-query attention with 2 query heads per
key/value head), random-initialised and saved with ``save_pretrained``; ours
loads the directory with ``from_pretrained_no_processing``, TransformerLens's
model gets the same weights through its own converter
(``convert_neox_weights`` / ``convert_llama_weights``). Grids:
get_act_patch_resid_pre, get_act_patch_attn_head_out_by_pos and
get_act_patch_block_every, causal, with the built-in logit difference (rows read
in C, position skipping) and a NumPy metric.

Padding: TransformerLens's patching functions take no attention mask, so the
padded reference is TransformerLens's own loop (``run_with_hooks`` with the
attention mask, one forward pass per cell, rotary positions that skip the left
padding as TransformerLens computes them).

Tolerance as tests/test_patching.py: |ours - TL| <= 1e-5 x the largest |logit|
the metric reads in the corrupted run (float32 on both sides, different
summation orders; a logit difference carries the logits' absolute error).
"""
import warnings

import numpy as np
import pytest

import mechinterp_c as mi
from mechinterp_c import patching

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tl = pytest.importorskip("transformer_lens")
tlp = pytest.importorskip("transformer_lens.patching")
from transformer_lens.pretrained.weight_conversions import (  # noqa: E402
    convert_llama_weights, convert_neox_weights)
from tl_conversion import tl_twin  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOL = 1e-5
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=53,
             max_position_embeddings=32)
B, T = 3, 7
ANSWER, WRONG = np.array([1, 2, 3]), np.array([4, 5, 6])


def _family(name):
    T_ = transformers
    if name == "gpt_neox":
        return T_.GPTNeoXConfig(**SMALL, intermediate_size=64, rotary_pct=0.5), convert_neox_weights
    return (T_.LlamaConfig(**SMALL, num_key_value_heads=2, intermediate_size=48),
            convert_llama_weights)


@pytest.fixture(scope="module", params=["gpt_neox", "llama"])
def pair(request, tmp_path_factory):
    cfg, convert = _family(request.param)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
        with torch.no_grad():   # weights large enough that patches move the metric
            for n, p in hf.named_parameters():
                p.add_(torch.randn_like(p) * (0.2 if ("norm" in n or n.endswith("bias")) else 0.05))
        path = tmp_path_factory.mktemp(request.param)
        hf.save_pretrained(path)
        m = mi.HookedTransformer.from_pretrained_no_processing(str(path))
    tm, _ = tl_twin(m, hf, convert)
    tm.eval()
    rng = np.random.default_rng(3)
    clean = rng.integers(0, 53, (B, T))
    corrupt = clean.copy()
    corrupt[:, 2] = (clean[:, 2] + 7) % 53
    corrupt[:, 4] = (clean[:, 4] + 11) % 53
    return request.param, tm, m, clean, corrupt


def tl_logit_diff(logits):
    ar = torch.arange(B)
    return (logits[ar, -1, torch.tensor(ANSWER)] - logits[ar, -1, torch.tensor(WRONG)]).mean()


def np_logit_diff(logits):
    return (logits[np.arange(B), -1, ANSWER] - logits[np.arange(B), -1, WRONG]).mean()


def close(ours, ref, scale, what):
    ref = np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, what
    err = np.abs(ours.astype(np.float64) - ref).max()
    assert err <= TOL * scale, f"{what}: max error {err:.3g} > {TOL} x logit scale {scale:.3g}"


@pytest.mark.parametrize("fn", ["get_act_patch_resid_pre", "get_act_patch_attn_head_out_by_pos",
                                "get_act_patch_block_every"])
def test_rotary_parity_with_transformer_lens(pair, fn):
    name, tm, m, clean, corrupt = pair
    _, cc = m.run_with_cache(clean)
    with torch.no_grad():
        _, tcc = tm.run_with_cache(torch.tensor(clean))
        ref = getattr(tlp, fn)(tm, torch.tensor(corrupt), tcc, tl_logit_diff).numpy()
    scale = float(np.abs(m(corrupt)[:, -1]).max())
    ours = getattr(patching, fn)(m, corrupt, cc, patching.logit_diff(ANSWER, WRONG), progress=False)
    close(ours, ref, scale, f"{name} {fn} (built-in logit_diff)")
    if fn != "get_act_patch_block_every":
        ours_np = getattr(patching, fn)(m, corrupt, cc, np_logit_diff, progress=False)
        close(ours_np, ref, scale, f"{name} {fn} (NumPy metric)")
        # one cell per pass: every pass starts at its cell's position, the earlier
        # positions' keys (after the rotary embedding) read from the corrupted run
        one = getattr(patching, fn)(m, corrupt, cc, patching.logit_diff(ANSWER, WRONG), progress=False,
                                    pass_rows=1)
        close(one, ref, scale, f"{name} {fn} (position skipping, one cell per pass)")
    assert np.ptp(ref) > 100 * TOL * scale     # not flat: a wrong cell would show


def test_rotary_padding_mask(pair):
    name, tm, m, clean, corrupt = pair
    mask = np.ones((B, T), np.int64)
    mask[0, :2] = 0                  # left padding
    mask[1, :1] = 0
    tmask = torch.tensor(mask)
    _, cc = m.run_with_cache(clean, attention_mask=mask)
    with torch.no_grad():
        _, tcc = tm.run_with_cache(torch.tensor(clean), attention_mask=tmask)
    metric = patching.logit_diff(ANSWER, WRONG)
    ours = patching.get_act_patch_resid_pre(m, corrupt, cc, metric, attention_mask=mask, progress=False)
    heads = patching.get_act_patch_attn_head_out_by_pos(m, corrupt, cc, metric, attention_mask=mask,
                                                        progress=False)
    ref = np.zeros((2, T))
    ref_h = np.zeros((2, T, 4))
    with torch.no_grad():
        for l in range(2):
            for p in range(T):
                def put(act, hook, p=p, l=l):
                    act[:, p] = tcc[f"blocks.{l}.hook_resid_pre"][:, p]
                    return act
                lg = tm.run_with_hooks(torch.tensor(corrupt), attention_mask=tmask,
                                       fwd_hooks=[(f"blocks.{l}.hook_resid_pre", put)])
                ref[l, p] = tl_logit_diff(lg).item()
                for h in range(4):
                    def put_z(act, hook, p=p, l=l, h=h):
                        act[:, p, h] = tcc[f"blocks.{l}.attn.hook_z"][:, p, h]
                        return act
                    lg = tm.run_with_hooks(torch.tensor(corrupt), attention_mask=tmask,
                                           fwd_hooks=[(f"blocks.{l}.attn.hook_z", put_z)])
                    ref_h[l, p, h] = tl_logit_diff(lg).item()
    scale = float(np.abs(m(corrupt, attention_mask=mask)[:, -1]).max())
    close(ours, ref, scale, f"{name} resid_pre with padding")
    close(heads, ref_h, scale, f"{name} attn_head_out_by_pos with padding")
    assert np.ptp(ref) > 100 * TOL * scale
