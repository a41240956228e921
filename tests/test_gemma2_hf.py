"""``Gemma2ForCausalLM`` drop-in against transformers' on a tiny random Gemma 2 saved by
transformers (GQA 2, soft-caps on, a sliding window of 4 shorter than the sequence,
perturbed norm weights): logits, forward hooks on every module kind (Gemma's extra
norms included) seeing the same tensors, an edit through a hook changing the pass as in
torch, generate token for token, labels -> loss, save_pretrained loaded back.
Tolerance 1e-5 relative to each tensor's largest magnitude (fp32 sums in another order)."""
import warnings

import numpy as np
import pytest

from mechinterp_c import transformers as mt

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V = 97
MODULES = ["model.embed_tokens", "model.layers.0.input_layernorm", "model.layers.0.self_attn.q_proj",
           "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj",
           "model.layers.0.self_attn.o_proj", "model.layers.0.self_attn",
           "model.layers.0.post_attention_layernorm", "model.layers.1.pre_feedforward_layernorm",
           "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.1.mlp.down_proj",
           "model.layers.1.mlp", "model.layers.1.post_feedforward_layernorm", "model.layers.0",
           "model.layers.1", "model.norm", "lm_head"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    cfg = transformers.Gemma2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=16, vocab_size=V,
                                    intermediate_size=96, max_position_embeddings=64, sliding_window=4,
                                    query_pre_attn_scalar=16, attn_logit_softcapping=5.0,
                                    final_logit_softcapping=3.0, bos_token_id=1, eos_token_id=2,
                                    pad_token_id=0, attn_implementation="eager")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
        with torch.no_grad():
            for n, p in hf.named_parameters():
                if "norm" in n:
                    p.add_(torch.randn_like(p) * 0.2)
                else:
                    p.mul_(4.0)
        d = tmp_path_factory.mktemp("gemma2")
        hf.save_pretrained(d)
    return hf, mt.AutoModelForCausalLM.from_pretrained(str(d))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(a).max()


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def test_module_hooks_see_what_transformers_hooks_see(pair):
    hf, m = pair
    assert type(m).__name__ == "Gemma2ForCausalLM"
    hf_mods, our_mods = dict(hf.named_modules()), dict(m.named_modules())
    seen_hf, seen, handles = {}, {}, []
    for name in MODULES:
        handles.append(hf_mods[name].register_forward_hook(
            lambda mod, i, o, name=name: seen_hf.__setitem__(name, _first(o).detach().numpy().copy())))
        handles.append(our_mods[name].register_forward_hook(
            lambda mod, i, o, name=name: seen.__setitem__(name, np.array(_first(o)))))
    toks = np.random.default_rng(0).integers(0, V, (2, 10))
    with torch.no_grad():
        ref = hf(torch.tensor(toks)).logits.numpy()
    out = m(toks).logits
    for h in handles:
        h.remove()
    assert _rel(ref, out) < 1e-5
    for name in MODULES:
        assert seen[name].shape == seen_hf[name].shape, name
        assert _rel(seen_hf[name], seen[name]) < 1e-5, (name, _rel(seen_hf[name], seen[name]))
    sd = hf.state_dict()     # lm_head.weight included (tied to the embedding)
    for name, w in m.named_parameters():
        np.testing.assert_allclose(w, sd[name].detach().numpy(), rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", ["model.layers.0.self_attn.o_proj", "model.layers.0.mlp",
                                  "model.layers.0.input_layernorm", "model.embed_tokens"])
def test_a_hook_edit_changes_the_pass_as_in_torch(pair, name):
    hf, m = pair
    toks = np.random.default_rng(1).integers(0, V, (1, 9))

    def edit(mod, i, o):
        x = _first(o)
        x = x * 1.5 + 0.3
        return (x,) + tuple(o[1:]) if isinstance(o, tuple) else x

    h1 = hf.get_submodule(name).register_forward_hook(edit)
    h2 = m.get_submodule(name).register_forward_hook(edit)
    try:
        with torch.no_grad():
            ref = hf(torch.tensor(toks)).logits.numpy()
        out = np.array(m(toks).logits)
    finally:
        h1.remove()
        h2.remove()
    assert _rel(ref, out) < 1e-5
    with torch.no_grad():
        assert _rel(ref, hf(torch.tensor(toks)).logits.numpy()) > 1e-3   # the edit mattered


def test_generate_loss_and_save(pair, tmp_path):
    hf, m = pair
    kw = dict(max_new_tokens=10, do_sample=False, eos_token_id=None)
    ids = np.zeros((2, 7), np.int64)
    ids[0] = np.random.default_rng(2).integers(3, V, 7)
    ids[1, 3:] = np.random.default_rng(3).integers(3, V, 4)
    mask = (np.arange(7)[None] >= np.array([[0], [3]])).astype(np.int64)
    for use_cache in (True, False):
        ours = m.generate(ids, attention_mask=mask, use_cache=use_cache, **kw)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **kw).numpy()
        np.testing.assert_array_equal(ours, ref)
    labels = ids.copy()
    labels[1, :3] = -100
    with torch.no_grad():
        ref = hf(torch.tensor(ids), labels=torch.tensor(labels)).loss.item()
    assert abs(float(m(ids, labels=labels).loss) - ref) < 1e-5 * ref
    m.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    sd = dict(back.named_parameters())
    for n, p in hf.named_parameters():
        np.testing.assert_allclose(sd[n].detach().numpy(), p.detach().numpy(), rtol=1e-6, atol=1e-6,
                                   err_msg=n)


def test_pre_hooks_see_what_transformers_pre_hooks_see(pair):
    hf, m = pair
    names = ["model.layers.0.self_attn.o_proj", "model.layers.1.mlp.down_proj", "model.layers.0.mlp",
             "model.layers.1.pre_feedforward_layernorm", "model.layers.1", "lm_head"]
    seen_hf, seen, handles = {}, {}, []
    for name in names:
        handles.append(hf.get_submodule(name).register_forward_pre_hook(
            lambda mod, i, name=name: seen_hf.__setitem__(name, i[0].detach().numpy().copy())))
        handles.append(m.get_submodule(name).register_forward_pre_hook(
            lambda mod, i, name=name: seen.__setitem__(name, np.array(i[0]))))
    toks = np.random.default_rng(4).integers(0, V, (2, 8))
    try:
        with torch.no_grad():
            hf(torch.tensor(toks))
        m(toks)
    finally:
        for h in handles:
            h.remove()
    for name in names:
        assert _rel(seen_hf[name], seen[name]) < 1e-5, name
    with pytest.raises(NotImplementedError, match="post_attention_layernorm"):
        m.get_submodule("model.layers.0.post_attention_layernorm").register_forward_pre_hook(lambda *a: None)
