"""``mechinterp_c.transformers.AutoModelForCausalLM`` for Llama, Mistral and Qwen2
checkpoints written by ``transformers``: Hugging Face's module tree names, logits
and forward hooks on the same modules seeing the same tensors as on the
``transformers`` model (1e-5 relative to each tensor's largest magnitude; measured
below 2e-6), an edit made by a hook changing the rest of the pass as it does in
torch, and weights as views of the C model."""
import warnings

import numpy as np
import pytest

from mechinterp_c import transformers as mt

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=97, max_position_embeddings=64, intermediate_size=96)
MODULES = ["model.embed_tokens", "model.layers.0.input_layernorm", "model.layers.0.self_attn.q_proj",
           "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj",
           "model.layers.0.self_attn.o_proj", "model.layers.1.post_attention_layernorm",
           "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.1.mlp.down_proj",
           "model.layers.1.mlp", "model.layers.0", "model.norm", "lm_head", "model.layers.0.self_attn"]


def _save(kind, path):
    cfg = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config}[kind](**SMALL)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
        with torch.no_grad():
            for n, p in hf.named_parameters():
                if "norm" in n or n.endswith("bias"):
                    p.add_(torch.randn_like(p) * 0.2)
        hf.save_pretrained(path)
    return hf


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(a).max()


def _first(x):
    return x[0] if isinstance(x, tuple) else x


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2"])
def test_module_hooks_see_what_transformers_hooks_see(kind, tmp_path):
    hf = _save(kind, tmp_path)
    ours = mt.AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert type(ours).__name__ == type(hf).__name__
    hf_mods, our_mods = dict(hf.named_modules()), dict(ours.named_modules())
    seen_hf, seen_ours, handles = {}, {}, []
    for name in MODULES:
        handles.append(hf_mods[name].register_forward_hook(
            lambda m, i, o, name=name: seen_hf.__setitem__(name, _first(o).detach().numpy().copy())))
        handles.append(our_mods[name].register_forward_hook(
            lambda m, i, o, name=name: seen_ours.__setitem__(name, np.array(_first(o)))))
    toks = np.random.default_rng(0).integers(0, 97, (2, 12))
    with torch.no_grad():
        ref = hf(torch.tensor(toks)).logits.numpy()
    out = ours(toks).logits
    assert _rel(ref, out) < 1e-5
    for name in MODULES:
        assert seen_ours[name].shape == seen_hf[name].shape, name
        assert _rel(seen_hf[name], seen_ours[name]) < 1e-5, (name, _rel(seen_hf[name], seen_ours[name]))
    for h in handles:
        h.remove()
    # weights: HF names and layouts, views of the C model
    sd = dict(hf.named_parameters())
    for name, w in ours.named_parameters():
        np.testing.assert_array_equal(w, sd[name].detach().numpy(), err_msg=name)


def test_a_hook_edit_changes_the_pass_as_in_torch(tmp_path):
    hf = _save("llama", tmp_path)
    ours = mt.AutoModelForCausalLM.from_pretrained(str(tmp_path))

    def halve(m, i, o):
        return o * 0.5

    toks = np.arange(10)[None]
    hf.model.layers[0].self_attn.k_proj.register_forward_hook(halve)
    ours.model.layers[0].self_attn.k_proj.register_forward_hook(halve)
    hf.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, i: (i[0] * 2,))
    ours.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, i: (i[0] * 2,))
    # q_proj's input (shared with k_proj and v_proj): the same tensor, a read-only copy
    got = {}
    hf.model.layers[1].self_attn.q_proj.register_forward_pre_hook(
        lambda m, i: got.__setitem__("hf", i[0].detach().numpy().copy()))
    ours.model.layers[1].self_attn.q_proj.register_forward_pre_hook(
        lambda m, i: got.__setitem__("ours", np.array(i[0])))
    with torch.no_grad():
        ref = hf(torch.tensor(toks)).logits.numpy()
    assert _rel(ref, ours(toks).logits) < 1e-5
    assert _rel(got["hf"], got["ours"]) < 1e-5
    # padding: positions 0..T-1 and masked keys, as transformers
    mask = np.ones((2, 10), np.int64)
    mask[1, :3] = 0
    toks2 = np.concatenate([toks, toks])
    with torch.no_grad():
        ref = hf(torch.tensor(toks2), attention_mask=torch.tensor(mask)).logits.numpy()
    got = ours(toks2, attention_mask=mask).logits
    assert _rel(ref[mask == 1], got[mask == 1]) < 1e-5


def test_weight_edit_reaches_the_core(tmp_path):
    _save("qwen2", tmp_path)
    ours = mt.AutoModelForCausalLM.from_pretrained(str(tmp_path))
    toks = np.arange(8)[None]
    before = np.array(ours(toks).logits)
    ours.model.layers[0].self_attn.q_proj.bias[:] += 1.0
    assert not np.allclose(ours(toks).logits, before)


NEOX_MODULES = ["gpt_neox.embed_in", "gpt_neox.layers.0.input_layernorm",
                "gpt_neox.layers.1.post_attention_layernorm",
                "gpt_neox.layers.0.attention.query_key_value", "gpt_neox.layers.1.attention.dense",
                "gpt_neox.layers.0.attention", "gpt_neox.layers.0.mlp.dense_h_to_4h",
                "gpt_neox.layers.1.mlp.act", "gpt_neox.layers.1.mlp.dense_4h_to_h",
                "gpt_neox.layers.1", "gpt_neox.final_layer_norm", "lm_head"]


@pytest.mark.parametrize("parallel", [True, False])
def test_gpt_neox_hooks_and_edits_match_transformers(parallel, tmp_path):
    cfg = transformers.GPTNeoXConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     vocab_size=97, max_position_embeddings=64, intermediate_size=128,
                                     rotary_pct=0.25, use_parallel_residual=parallel)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
        with torch.no_grad():
            for n, p in hf.named_parameters():
                if "norm" in n or n.endswith("bias"):
                    p.add_(torch.randn_like(p) * 0.2)
        hf.save_pretrained(tmp_path)
    ours = mt.AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert type(ours).__name__ == "GPTNeoXForCausalLM"
    hf_mods, our_mods = dict(hf.named_modules()), dict(ours.named_modules())
    seen_hf, seen_ours = {}, {}
    for name in NEOX_MODULES:
        hf_mods[name].register_forward_hook(
            lambda m, i, o, name=name: seen_hf.__setitem__(name, _first(o).detach().numpy().copy()))
        our_mods[name].register_forward_hook(
            lambda m, i, o, name=name: seen_ours.__setitem__(name, np.array(_first(o))))

    def edit(m, i, o):          # scale the keys of head 1 (NeoX's interleaved layout)
        o = o.clone() if hasattr(o, "clone") else o.copy()
        o[..., 1 * 48 + 16:1 * 48 + 32] *= 3.0
        return o

    hf_mods["gpt_neox.layers.0.attention.query_key_value"].register_forward_hook(edit)
    our_mods["gpt_neox.layers.0.attention.query_key_value"].register_forward_hook(edit)
    toks = np.random.default_rng(0).integers(0, 97, (2, 12))
    with torch.no_grad():
        ref = hf(torch.tensor(toks)).logits.numpy()
    assert _rel(ref, ours(toks).logits) < 1e-5
    for name in NEOX_MODULES:
        assert seen_ours[name].shape == seen_hf[name].shape, name
        assert _rel(seen_hf[name], seen_ours[name]) < 1e-5, name
    sd = dict(hf.named_parameters())
    for name, w in ours.named_parameters():
        np.testing.assert_array_equal(w, sd[name].detach().numpy(), err_msg=name)
