"""``HookedTransformer.from_pretrained`` / ``from_pretrained_no_processing`` for GPT-NeoX
(Pythia), Llama, Mistral and Qwen2 checkpoints that ``transformers`` itself wrote
(random-initialised, tiny but real shapes: several layers and heads, grouped-query
attention with 2 query heads per key/value head, partial rotary for NeoX, Llama 3
rope scaling), from a local directory, the Hugging Face cache layout and sharded
safetensors.

Checks: the converted state dict equals TransformerLens's own converter
(``transformer_lens.pretrained.weight_conversions.convert_*_weights``, run offline on
the same ``transformers`` model) exactly; logits equal the ``transformers`` model's
within 1e-5 relative to their largest magnitude (measured below 1e-6; processed
weights change logits by a per-position constant, so centred logits are compared);
every TransformerLens cache entry of a TransformerLens model holding the same
weights, within 1e-5 relative (measured below 2e-6). Corrupt checkpoints and
unsupported architectures fail naming the file and the field or tensor.
"""
import json
import os
import shutil
import warnings

import numpy as np
import pytest

import mechinterp_c as mi
from mechinterp_c import io as mio
from mechinterp_c import loading_from_pretrained as loading

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tl = pytest.importorskip("transformer_lens")
from tl_conversion import tl_twin  # noqa: E402
from transformer_lens.pretrained.weight_conversions import (  # noqa: E402
    convert_llama_weights, convert_mistral_weights, convert_neox_weights, convert_qwen2_weights)

TOL = 1e-5
SMALL = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, vocab_size=97,
             max_position_embeddings=64)


def _families():
    T = transformers
    return {
        "gpt_neox": (T.GPTNeoXConfig(**SMALL, intermediate_size=128, rotary_pct=0.25,
                                     hidden_act="gelu"), convert_neox_weights),
        "gpt_neox_serial": (T.GPTNeoXConfig(**SMALL, intermediate_size=128, rotary_pct=0.5,
                                            use_parallel_residual=False), convert_neox_weights),
        "llama": (T.LlamaConfig(**SMALL, num_key_value_heads=2, intermediate_size=96,
                                rope_theta=500000.0,
                                rope_scaling={"rope_type": "llama3", "factor": 4.0,
                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 16}),
                  convert_llama_weights),
        "mistral": (T.MistralConfig(**SMALL, num_key_value_heads=2, intermediate_size=96,
                                    sliding_window=None), convert_mistral_weights),
        "qwen2": (T.Qwen2Config(**SMALL, num_key_value_heads=2, intermediate_size=96),
                  convert_qwen2_weights),
    }


FAMILIES = list(_families())


def _save(name, path, **save_kw):
    """A random transformers model of family `name` saved in `path`; returns it."""
    cfg, _ = _families()[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
        with torch.no_grad():   # norms and biases away from 1 and 0: every term is tested
            for n, p in hf.named_parameters():
                if "norm" in n or n.endswith("bias"):
                    p.add_(torch.randn_like(p) * 0.2)
        hf.save_pretrained(path, **save_kw)
    return hf


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: (_save(name, root / name), root / name) for name in FAMILIES}


def _rel(ref, out):
    """Largest difference over the reference's largest magnitude (masked scores: the
    -inf entries must be the same ones)."""
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    fin = np.isfinite(ref)
    assert np.array_equal(fin, np.isfinite(out)) and np.array_equal(ref[~fin], out[~fin])
    return np.abs(ref[fin] - out[fin]).max() / np.abs(ref[fin]).max()


def _tokens():
    return np.random.default_rng(0).integers(0, 97, (2, 16))


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_match_transformers(saved, name):
    hf, path = saved[name]
    toks = _tokens()
    with torch.no_grad():
        ref = hf(torch.tensor(toks)).logits.numpy()
    m = mi.HookedTransformer.from_pretrained_no_processing(str(path))
    assert _rel(ref, m(toks)) < TOL
    p = mi.HookedTransformer.from_pretrained(str(path))
    assert p.cfg.normalization_type in ("LNPre", "RMSPre")
    centred = ref - ref.mean(-1, keepdims=True)
    out = p(toks)
    assert _rel(centred, out - out.mean(-1, keepdims=True)) < TOL


@pytest.mark.parametrize("name", FAMILIES)
def test_state_dict_and_every_cache_entry_match_transformer_lens(saved, name):
    hf, path = saved[name]
    m = mi.HookedTransformer.from_pretrained_no_processing(str(path))
    tm, ref_sd = tl_twin(m, hf, _families()[name][1])
    ours = m.state_dict()
    assert sorted(ours) == sorted(ref_sd)
    for k, v in ref_sd.items():
        np.testing.assert_array_equal(ours[k], v, err_msg=k)   # same conversion, exactly
    toks = _tokens()
    _, ct = tm.run_with_cache(torch.tensor(toks))
    _, co = m.run_with_cache(toks)
    assert list(m.hook_dict) == list(tm.hook_dict)
    assert sorted(co.keys()) == sorted(ct.keys())
    for k in ct.keys():
        assert _rel(ct[k].numpy(), co[k]) < TOL, k


def _hf_cache(tmp_path, src, repo_id):
    """src copied into a Hugging Face cache layout under tmp_path/hub."""
    cache = tmp_path / "hub"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(src, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return cache


def test_hf_cache_layout_and_official_name(saved, tmp_path):
    hf, path = saved["gpt_neox"]
    cache = _hf_cache(tmp_path, path, "EleutherAI/pythia-70m")
    toks = _tokens()
    with torch.no_grad():
        ref = hf(torch.tensor(toks)).logits.numpy()
    for name in ("pythia-70m", "EleutherAI/pythia-70m"):
        m = mi.HookedTransformer.from_pretrained_no_processing(name, cache_dir=str(cache))
        assert _rel(ref, m(toks)) < TOL
    with pytest.raises(FileNotFoundError, match="pythia-160m"):
        mi.HookedTransformer.from_pretrained("pythia-160m", cache_dir=str(cache))


def test_sharded_safetensors(tmp_path):
    hf = _save("llama", tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    toks = _tokens()
    with torch.no_grad():
        ref = hf(torch.tensor(toks)).logits.numpy()
    m = mi.HookedTransformer.from_pretrained_no_processing(str(tmp_path / "sharded"))
    assert _rel(ref, m(toks)) < TOL


def _rewrite(path, drop=None, reshape=None):
    st = mio.load_safetensors(path / "model.safetensors", copy=True)
    st = {k: np.array(v) for k, v in st.items() if k != drop}
    if reshape:
        st[reshape] = st[reshape][:-1]
    os.remove(path / "model.safetensors")
    mio.save_safetensors(path / "model.safetensors", st)


def _edit_config(path, **fields):
    cfg = json.loads((path / "config.json").read_text())
    for k, v in fields.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


def test_corrupt_checkpoints_name_file_and_field(saved, tmp_path):
    _, src = saved["llama"]
    bad = tmp_path / "missing"
    shutil.copytree(src, bad)
    _rewrite(bad, drop="model.layers.1.self_attn.k_proj.weight")
    with pytest.raises(KeyError, match=r"missing.*model\.layers\.1\.self_attn\.k_proj\.weight"):
        mi.HookedTransformer.from_pretrained(str(bad))
    bad = tmp_path / "shape"
    shutil.copytree(src, bad)
    _rewrite(bad, reshape="model.layers.0.mlp.up_proj.weight")
    with pytest.raises(ValueError, match=r"shape.*up_proj\.weight.*\(95, 64\).*\(96, 64\)"):
        mi.HookedTransformer.from_pretrained(str(bad))
    bad = tmp_path / "rope"
    shutil.copytree(src, bad)
    _edit_config(bad, rope_parameters={"rope_type": "spiral", "rope_theta": 10000.0})
    with pytest.raises(ValueError, match=r"rope.*config\.json.*rope_parameters.*'spiral'"):
        mi.HookedTransformer.from_pretrained(str(bad))
    _edit_config(bad, rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0})
    with pytest.raises(NotImplementedError, match=r"config\.json.*rope_parameters.*'yarn'"):
        mi.HookedTransformer.from_pretrained(str(bad))
    _edit_config(bad, num_key_value_heads=3, rope_parameters=None)
    with pytest.raises(ValueError, match=r"config\.json.*num_key_value_heads=3"):
        mi.HookedTransformer.from_pretrained(str(bad))
    _edit_config(bad, num_key_value_heads="two")
    with pytest.raises(TypeError, match=r"config\.json.*'num_key_value_heads'"):
        mi.HookedTransformer.from_pretrained(str(bad))
    # the loader and a model built afterwards still work
    m = mi.HookedTransformer.from_pretrained(str(src))
    assert np.isfinite(m(_tokens())).all()


@pytest.mark.parametrize("fields, feature", [
    (dict(model_type="mixtral", num_local_experts=4), "mixture of experts"),
    (dict(num_experts=8), "mixture of experts"),
    (dict(alibi=True), "ALiBi"),
    (dict(model_type="bloom"), "ALiBi"),
    (dict(vision_config={"hidden_size": 8}), "multimodal"),
])
def test_unsupported_architectures_are_refused_naming_feature_and_file(saved, tmp_path, fields, feature):
    _, src = saved["mistral"]
    bad = tmp_path / "arch"
    shutil.copytree(src, bad)
    _edit_config(bad, **fields)
    with pytest.raises(NotImplementedError, match=rf"config\.json.*{feature}|{feature}.*config\.json"):
        mi.HookedTransformer.from_pretrained(str(bad))


def test_training_a_loaded_llama_matches_autograd(saved):
    """The backward on a converted checkpoint (GQA, rotary with Llama 3 scaling, gated
    MLP): loss and every gradient against torch autograd on the transformers model."""
    hf, path = saved["llama"]
    m = mi.HookedTransformer.from_pretrained_no_processing(str(path))
    toks = _tokens()
    targets = np.roll(toks, -1, axis=1)
    targets[:, -1] = -100
    m.zero_grad()
    loss = m.backward(toks, targets)
    hf.zero_grad()
    out = hf(torch.tensor(toks), labels=None).logits
    tloss = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]),
                                              torch.tensor(targets).reshape(-1), ignore_index=-100)
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-5)
    g = dict(m.named_parameters())
    D, Dh = 64, 16
    q = hf.model.layers[1].self_attn.q_proj.weight.grad.numpy()   # [H*Dh, D]
    assert _rel(q.reshape(4, Dh, D).transpose(0, 2, 1), g["blocks.1.attn.W_Q"].grad) < 1e-4
    k = hf.model.layers[0].self_attn.k_proj.weight.grad.numpy()
    assert _rel(k.reshape(2, Dh, D).transpose(0, 2, 1), g["blocks.0.attn._W_K"].grad) < 1e-4
    up = hf.model.layers[2].mlp.up_proj.weight.grad.numpy()
    assert _rel(up.T, g["blocks.2.mlp.W_in"].grad) < 1e-4
    assert _rel(hf.model.embed_tokens.weight.grad.numpy(), g["embed.W_E"].grad) < 1e-4


def test_tokenizer_json_is_attached(saved, tmp_path):
    """A checkpoint with a tokenizer.json (BPE built by the tokenizers library) gets it
    attached: text in, the same ids as the tokenizers library."""
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    _, src = saved["qwen2"]
    d = tmp_path / "with_tok"
    shutil.copytree(src, d)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(["hello world", "the cat sat on the mat", "hello cat"] * 20,
                            trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<pad>"]))
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
    m = mi.HookedTransformer.from_pretrained(str(d))
    assert m.tokenizer is not None
    ids = m.to_tokens("hello cat sat", prepend_bos=False)[0]
    assert list(ids) == tok.encode("hello cat sat").ids
    assert np.isfinite(m("hello cat sat")).all()
    assert loading.resolve_official_name("pythia-70m") == "EleutherAI/pythia-70m"
