"""``HookedTransformer.from_pretrained`` / ``from_pretrained_no_processing`` for Gemma 2
checkpoints that ``transformers`` itself wrote (random-initialised, tiny but real
shapes: four layers alternating sliding-window and global attention with the window
(5) shorter than the sequence (16), grouped-query attention with 2 query heads per
key/value head, query_pre_attn_scalar other than d_head, attention-score and final
logit soft-caps that bite, RMSNorm weights away from 0 so Gemma's 1 + w matters).

Checks: the converted state dict equals TransformerLens's own converter
(``convert_gemma_weights``, run offline on the same ``transformers`` model) exactly;
logits equal ``Gemma2ForCausalLM``'s within 1e-5 of their largest magnitude (float32
on both sides, sums in other orders; measured below 1e-6), processed or not (with a
logit soft-cap TransformerLens leaves the unembedding uncentred, so logits are
compared as they are); every TransformerLens cache entry of a TransformerLens model
holding the same weights, within 1e-5 relative. Corrupt or unsupported checkpoints
fail naming the file and the field or tensor.
"""
import json
import os
import shutil
import warnings

import numpy as np
import pytest

import mechinterp_c as mi
from mechinterp_c import io as mio

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tl = pytest.importorskip("transformer_lens")
from tl_conversion import tl_twin  # noqa: E402
from transformer_lens.pretrained.weight_conversions import convert_gemma_weights  # noqa: E402

TOL = 1e-5
T = 16


def _config(**kw):
    base = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                head_dim=16, intermediate_size=96, vocab_size=97, max_position_embeddings=64,
                sliding_window=5, query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
                final_logit_softcapping=1.0)
    return transformers.Gemma2Config(**dict(base, **kw))


def _save(path, **kw):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoModelForCausalLM.from_config(_config(**kw)).eval()
        with torch.no_grad():
            for n, p in hf.named_parameters():
                if "norm" in n:            # 1 + w away from 1
                    p.add_(torch.randn_like(p) * 0.3)
                elif "q_proj" in n or "k_proj" in n or "lm_head" in n or "embed" in n:
                    p.mul_(15.0)           # scores and logits reach their caps
        hf.save_pretrained(path)
    return hf


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma2") / "tiny"
    return _save(path), path


def _rel(ref, out):
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    fin = np.isfinite(ref)
    assert np.array_equal(fin, np.isfinite(out)) and np.array_equal(ref[~fin], out[~fin])
    return np.abs(ref[fin] - out[fin]).max() / np.abs(ref[fin]).max()


def _tokens():
    return np.random.default_rng(0).integers(0, 97, (2, T))


def _hf_logits(hf, toks):
    with torch.no_grad():
        return hf(torch.tensor(toks)).logits.numpy()


def test_logits_match_transformers(saved):
    hf, path = saved
    toks = _tokens()
    ref = _hf_logits(hf, toks)
    m = mi.HookedTransformer.from_pretrained_no_processing(str(path))
    assert _rel(ref, m(toks)) < TOL
    with pytest.warns(UserWarning, match="center_unembed=True is not possible with a logit soft-cap"):
        p = mi.HookedTransformer.from_pretrained(str(path))
    assert p.cfg.normalization_type == "RMSPre"
    assert _rel(ref, p(toks)) < TOL
    # the checkpoint exercises what it claims: a window shorter than the sequence on the
    # sliding layers only, scores and logits at their caps
    _, cache = m.run_with_cache(toks)
    i, j = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    for l in range(4):
        pat = cache[f"blocks.{l}.attn.hook_pattern"]
        assert (pat[..., j <= i - 5] == 0).all() == (l % 2 == 0), l
        assert (pat[..., j <= i - 5] > 0).any() == (l % 2 == 1), l
        s = cache[f"blocks.{l}.attn.hook_attn_scores"]
        assert np.abs(s[np.isfinite(s)]).max() > 1.0       # tanh's curved part (cap 2)
    assert np.abs(cache["unembed.hook_out"]).max() > 1.5   # raw logits past the cap of 1
    assert np.abs(ref).max() <= 1.0
    assert m.cfg.attn_scale == pytest.approx(24 ** 0.5)
    assert m.cfg.attn_types == ["local", "global"] * 2 and m.cfg.window_size == 5


def test_state_dict_and_every_cache_entry_match_transformer_lens(saved):
    hf, path = saved
    m = mi.HookedTransformer.from_pretrained_no_processing(str(path))
    tm, ref_sd = tl_twin(m, hf, convert_gemma_weights)
    ours = m.state_dict()
    assert sorted(ours) == sorted(ref_sd)
    for k, v in ref_sd.items():
        np.testing.assert_array_equal(ours[k], v, err_msg=k)   # same conversion, exactly
    toks = _tokens()
    lt, ct = tm.run_with_cache(torch.tensor(toks))
    lo, co = m.run_with_cache(toks)
    assert list(m.hook_dict) == list(tm.hook_dict)
    assert sorted(co.keys()) == sorted(ct.keys())
    for k in ct.keys():
        assert _rel(ct[k].numpy(), co[k]) < TOL, k
    assert _rel(lt.detach().numpy(), lo) < TOL


def test_hf_cache_layout_and_official_name(saved, tmp_path):
    hf, path = saved
    cache = tmp_path / "hub"
    repo = cache / "models--google--gemma-2-2b"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(path, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    ref = _hf_logits(hf, _tokens())
    for name in ("gemma-2-2b", "google/gemma-2-2b"):
        m = mi.HookedTransformer.from_pretrained_no_processing(name, cache_dir=str(cache))
        assert _rel(ref, m(_tokens())) < TOL


def test_global_only_and_uncapped_checkpoints(tmp_path):
    """Every layer global (layer_types) and no soft-caps (null): raw scores and logits."""
    hf = _save(tmp_path / "plain", layer_types=["full_attention"] * 4, attn_logit_softcapping=None,
               final_logit_softcapping=None)
    m = mi.HookedTransformer.from_pretrained_no_processing(str(tmp_path / "plain"))
    assert not m.cfg.use_local_attn and m.cfg.output_logits_soft_cap == -1.0
    assert _rel(_hf_logits(hf, _tokens()), m(_tokens())) < TOL


def _edit_config(path, **fields):
    cfg = json.loads((path / "config.json").read_text())
    for k, v in fields.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


def test_corrupt_and_unsupported_checkpoints_name_file_and_field(saved, tmp_path):
    _, src = saved
    bad = tmp_path / "missing"
    shutil.copytree(src, bad)
    st = {k: np.array(v) for k, v in mio.load_safetensors(bad / "model.safetensors", copy=True).items()
          if k != "model.layers.2.post_feedforward_layernorm.weight"}
    os.remove(bad / "model.safetensors")
    mio.save_safetensors(bad / "model.safetensors", st)
    with pytest.raises(KeyError, match=r"missing.*model\.layers\.2\.post_feedforward_layernorm\.weight"):
        mi.HookedTransformer.from_pretrained(str(bad))
    bad = tmp_path / "cfg"
    shutil.copytree(src, bad)
    _edit_config(bad, layer_types=["sliding_attention", "full_attention"])
    with pytest.raises(ValueError, match=r"cfg.*config\.json.*'layer_types'.*once per layer \(4\)"):
        mi.HookedTransformer.from_pretrained(str(bad))
    _edit_config(bad, layer_types=None, final_logit_softcapping="big")
    with pytest.raises(ValueError, match=r"config\.json.*'final_logit_softcapping'.*'big'"):
        mi.HookedTransformer.from_pretrained(str(bad))
    _edit_config(bad, final_logit_softcapping=None, use_bidirectional_attention=True)
    with pytest.raises(NotImplementedError, match=r"config\.json.*'use_bidirectional_attention'"):
        mi.HookedTransformer.from_pretrained(str(bad))
    _edit_config(bad, use_bidirectional_attention=None,
                 rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0})
    with pytest.raises(NotImplementedError, match=r"config\.json.*rope_parameters.*'yarn'"):
        mi.HookedTransformer.from_pretrained(str(bad))
    _edit_config(bad, rope_parameters={"rope_type": "spiral", "rope_theta": 10000.0})
    with pytest.raises(ValueError, match=r"config\.json.*rope_parameters.*unknown rope_type 'spiral'"):
        mi.HookedTransformer.from_pretrained(str(bad))
    _edit_config(bad, rope_parameters=None, hidden_activation="gelu_quick")
    with pytest.raises(NotImplementedError, match=r"config\.json.*'hidden_activation'.*'gelu_quick'"):
        mi.HookedTransformer.from_pretrained(str(bad))


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_mistral_and_qwen2_sliding_windows_shorter_than_the_sequence(tmp_path, family):
    """The same window rule on the Llama-shaped families: Mistral slides on every layer,
    Qwen2 from max_window_layers on; logits as transformers' (window 5 < 16 positions)."""
    T_ = transformers
    small = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=96, vocab_size=97, max_position_embeddings=64, sliding_window=5)
    cfg = (T_.MistralConfig(**small) if family == "mistral"
           else T_.Qwen2Config(**small, use_sliding_window=True, max_window_layers=1))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = T_.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
        with torch.no_grad():
            for n, p in hf.named_parameters():
                if "q_proj" in n or "k_proj" in n:
                    p.mul_(15.0)           # peaked patterns: the window's cut shows in the logits
        hf.save_pretrained(tmp_path / family)
    m = mi.HookedTransformer.from_pretrained_no_processing(str(tmp_path / family))
    want = ["local"] * 3 if family == "mistral" else ["global", "local", "local"]
    assert m.cfg.use_local_attn and m.cfg.window_size == 5 and m.cfg.attn_types == want
    toks = _tokens()
    ref = _hf_logits(hf, toks)
    assert _rel(ref, m(toks)) < TOL
    full = mi.HookedTransformer(dict(m.cfg.to_dict(), use_local_attn=False, attn_types=None,
                                     window_size=None))
    full.load_state_dict(m.state_dict())
    assert _rel(ref, full(toks)) > 1e-3      # without the window the logits differ
