"""Zero-copy GPT-2 loading: the C core reads the weights in place from the
copy-on-write mapping of the safetensors file, with the unembedding tied to wte.

Reference: random-initialised ``transformers.GPT2LMHeadModel``s saved with
``save_pretrained``; the file's bytes (sha256) for "writes never reach the file".
"""
import hashlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mechinterp_c import _core, io  # noqa: E402
from mechinterp_c.transformers.modeling_gpt2 import GPT2LMHeadModel  # noqa: E402

# fp32 on both sides, different summation orders: see tests/test_gpt2.py
ATOL = 2e-4
V, D, L = 120, 64, 3
N_TENSORS = 2 + 12 * L + 2      # wte, wpe, 12 per block, ln_f weight and bias


def _save(tmp_path_factory, name, dtype=None, **kw):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=L, n_embd=D, n_head=4, vocab_size=V, n_positions=40,
                                  bos_token_id=0, eos_token_id=0, **kw)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if n.endswith("c_attn.weight"):
                p.mul_(8.0)            # attention far from uniform
    d = tmp_path_factory.mktemp(name)
    if dtype is not None:
        hf = hf.to(dtype)
    hf.save_pretrained(d)
    return hf.float(), d


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    return _save(tmp_path_factory, "tied")


def _logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor(ids)).logits.numpy()


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ids(seed=0, shape=(2, 9)):
    return np.random.default_rng(seed).integers(0, V, shape)


def test_weights_are_read_in_place_from_the_mapping(tied):
    hf, d = tied
    m = GPT2LMHeadModel.from_pretrained(d)
    core = m._ht._core
    assert core.n_external == N_TENSORS and core.tied_unembed
    # every HF-layout parameter is a view (no copy) whose memory is the mapped file:
    # the same bytes a SafeTensors view of the file shows, at the same offset
    st = io.SafeTensors(d / "model.safetensors")

    def addr(a):
        return a.__array_interface__["data"][0]

    m0, f0 = addr(m.transformer.wte.weight), addr(st.get("transformer.wte.weight"))
    for name, arr in m.state_dict().items():
        key = "transformer.wte.weight" if name == "lm_head.weight" else name
        assert not arr.flags.owndata and arr.flags.writeable, name
        np.testing.assert_array_equal(arr, st.get(key), err_msg=name)
        assert addr(arr) - m0 == addr(st.get(key)) - f0, name
    # the tied lm_head IS wte (HF: lm_head.weight is transformer.wte.weight)
    assert m.lm_head.weight is m.transformer.wte.weight
    # the C unembedding view is wte transposed, the same memory
    W_U = m._ht._raw["unembed.W_U"]
    assert W_U.shape == (D, V) and np.shares_memory(W_U, m.transformer.wte.weight)
    np.testing.assert_allclose(m(_ids()).logits, _logits(hf, _ids()), atol=ATOL, rtol=0)


def test_edits_stay_in_the_process_copy_on_write(tied):
    hf, d = tied
    f = d / "model.safetensors"
    sha = _sha(f)
    m = GPT2LMHeadModel.from_pretrained(d)
    ids = _ids(1)
    before = m(ids).logits.copy()
    # an edit of wte reaches the tied unembedding, as in HF
    m.transformer.wte.weight[7] += 0.5
    m.transformer.h[1].mlp.c_fc.weight[:, :5] *= -1.0
    with torch.no_grad():
        hf.transformer.wte.weight[7] += 0.5
        hf.transformer.h[1].mlp.c_fc.weight[:, :5] *= -1.0
    try:
        after = m(ids).logits
        assert np.abs(after - before).max() > 1e-3
        np.testing.assert_allclose(after, _logits(hf, ids), atol=ATOL, rtol=0)
    finally:
        with torch.no_grad():
            hf.transformer.wte.weight[7] -= 0.5
            hf.transformer.h[1].mlp.c_fc.weight[:, :5] *= -1.0
    # the file is untouched and a new load of it sees the original weights
    assert _sha(f) == sha
    np.testing.assert_array_equal(GPT2LMHeadModel.from_pretrained(d)(ids).logits, before)


def test_mapping_outlives_everything_but_the_model(tied):
    import gc
    hf, d = tied
    m = GPT2LMHeadModel.from_pretrained(d)
    w = m.transformer.h[2].attn.c_proj.weight
    del w
    gc.collect()
    # nothing but the model holds the SafeTensors objects or their arrays now
    np.testing.assert_allclose(m(_ids(2)).logits, _logits(hf, _ids(2)), atol=ATOL, rtol=0)
    a = m.transformer.h[0].ln_1.weight.copy()
    wref = m.transformer.h[0].ln_1.weight
    del m
    gc.collect()
    np.testing.assert_array_equal(wref, a)      # a view keeps the mapping alive too


def test_untied_and_half_precision_checkpoints(tmp_path_factory):
    hf, d = _save(tmp_path_factory, "untied", tie_word_embeddings=False)
    with torch.no_grad():
        hf.lm_head.weight.mul_(-0.5)     # make the untied head really differ from wte
    hf.save_pretrained(d)
    m = GPT2LMHeadModel.from_pretrained(d)
    assert not m._ht._core.tied_unembed
    np.testing.assert_array_equal(m.lm_head.weight, hf.lm_head.weight.detach().numpy())
    assert not np.shares_memory(m.lm_head.weight, m.transformer.wte.weight)
    np.testing.assert_allclose(m(_ids(3)).logits, _logits(hf, _ids(3)), atol=ATOL, rtol=0)
    # F16 and BF16 files: converted to float32 once (exactly), then the same pass as HF
    # on those float32 weights
    for dt in (torch.float16, torch.bfloat16):
        hf16, d16 = _save(tmp_path_factory, f"half-{str(dt)[6:]}", dtype=dt)
        m16 = GPT2LMHeadModel.from_pretrained(d16)
        np.testing.assert_array_equal(m16.transformer.h[0].attn.c_attn.weight,
                                      hf16.transformer.h[0].attn.c_attn.weight.detach().numpy())
        np.testing.assert_allclose(m16(_ids(4)).logits, _logits(hf16, _ids(4)), atol=ATOL, rtol=0)


def test_training_needs_materialize(tied):
    hf, d = tied
    m = GPT2LMHeadModel.from_pretrained(d)
    ids = _ids(5)
    ref = m(ids).logits.copy()
    with pytest.raises(ValueError, match=r"read in place from a loaded checkpoint.*tied.*materialize"):
        _core.grad_blob(m._ht._core)
    with pytest.raises(ValueError, match="materialize"):
        m._ht.backward(ids[:, :-1], ids[:, 1:])
    m.materialize()
    core = m._ht._core
    assert core.n_external == 0 and not core.tied_unembed
    # the weights are now the model's own (the blob), the logits unchanged: W_U = W_E^T
    # is an exact copy, only the GEMM's B layout changes (same K order: 1e-5 is loose)
    w = m.transformer.h[0].attn.c_attn.weight
    assert np.shares_memory(w, m._ht._raw["blocks.0.attn.W_qkv"])
    np.testing.assert_allclose(m(ids).logits, ref, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(m._ht._raw["unembed.W_U"], m.transformer.wte.weight.T)
    loss = m._ht.backward(ids[:, :-1], ids[:, 1:])
    # HF's next-token loss on the same tokens: the backward's forward ran on the same
    # weights (a mean of fp32 log-softmaxes: 1e-4 covers the summation order)
    with torch.no_grad():
        hl = hf(torch.tensor(ids), labels=torch.tensor(ids)).loss.item()
    assert loss == pytest.approx(hl, abs=1e-4)


def test_set_param_errors_and_effect(tied):
    hf, d = tied
    m = GPT2LMHeadModel.from_pretrained(d)
    core = m._ht._core
    with pytest.raises(KeyError, match="no parameter 'blocks.9.ln1.w'"):
        core.set_param("blocks.9.ln1.w", np.ones(D, np.float32))
    with pytest.raises(TypeError, match="expected float32, got dtype float64"):
        core.set_param("ln_final.w", np.ones(D))
    with pytest.raises(TypeError, match="expected a numpy.ndarray, got list"):
        core.set_param("ln_final.w", [1.0] * D)
    with pytest.raises(ValueError, match=r"expected 64 elements \(64\), got shape \(65,\)"):
        core.set_param("ln_final.w", np.ones(65, np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        core.set_param("blocks.0.attn.W_O", np.ones((D, 2 * D), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="tied to embed.W_E"):
        core.set_param("unembed.W_U", np.ones((D, V), np.float32))
    ids = _ids(6)
    ref = m(ids).logits.copy()
    # ln_f weight doubled through a new array the model then reads in place (HF: the
    # same edit of its ln_f)
    w2 = np.ascontiguousarray(m.transformer.ln_f.weight * 2.0)
    core.set_param("ln_final.w", w2)
    with torch.no_grad():
        hf.transformer.ln_f.weight.mul_(2.0)
    try:
        np.testing.assert_allclose(m(ids).logits, _logits(hf, ids), atol=ATOL, rtol=0)
    finally:
        with torch.no_grad():
            hf.transformer.ln_f.weight.div_(2.0)
    w2 /= 2.0                                   # an edit of w2 is an edit of the model
    np.testing.assert_array_equal(m(ids).logits, ref)
    # weights cannot move under a running pass (a hook is inside one)

    def moves_weights(mod, inp, out):
        core.set_param("ln_final.w", np.ones(D, np.float32))

    h = m.transformer.h[0].attn.c_attn.register_forward_hook(moves_weights)
    with pytest.raises(RuntimeError, match=r"set_param\(ln_final.w\): a forward pass is running"):
        m(ids)
    h.remove()
    with pytest.raises(RuntimeError, match="materialize: a forward pass is running"):
        h = m.transformer.h[0].attn.c_attn.register_forward_hook(lambda *a: core.materialize())
        try:
            m(ids)
        finally:
            h.remove()
    np.testing.assert_array_equal(m(ids).logits, ref)     # the model is still usable
    assert core.n_external == N_TENSORS


def test_safetensors_writable_views(tied, tmp_path):
    _, d = tied
    f = d / "model.safetensors"
    sha = _sha(f)
    st = io.SafeTensors(f)
    assert st.writable()
    name = "transformer.h.0.ln_1.bias"
    ro = st.get_float32(name)
    assert not ro.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        ro[0] = 1.0
    rw = st.get_float32(name, writable=True)
    assert rw.flags.writeable and np.shares_memory(rw, ro)
    rw[:] = 42.0
    np.testing.assert_array_equal(ro, 42.0)       # one private mapping per SafeTensors object
    assert _sha(f) == sha                         # ... never written back to the file
    assert not np.any(io.SafeTensors(f).get(name) == 42.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'write'"):
        st.get_float32(name, write=True)
    with pytest.raises(TypeError, match="get_float32"):
        st.get_float32()


def test_lazy_transformer_lens_tree(tied):
    hf, d = tied
    m = GPT2LMHeadModel.from_pretrained(d)
    ht = m._ht
    assert "blocks" not in vars(ht)              # not built by from_pretrained
    np.testing.assert_array_equal(ht.blocks[1].attn.W_O, m.transformer.h[1].attn.c_proj.weight.reshape(4, 16, D))
    assert ht.blocks[1].attn.hook_z is ht.hook_dict["blocks.1.attn.hook_z"]
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        ht.nonsense


def test_set_param_on_some_tensors_of_a_blob_model():
    """Mixed models (a few tensors read from outside arrays, the rest in the blob): the
    forward looks every tensor up by its blob offset; each must land on its own array."""
    import mechinterp_c as mi
    cfg = mi.HookedTransformerConfig(n_layers=3, d_model=32, d_head=8, n_heads=4, d_mlp=64,
                                     d_vocab=50, n_ctx=16, act_fn="gelu_new", seed=3)
    ref_model = mi.HookedTransformer(cfg)
    model = mi.HookedTransformer(cfg)
    tokens = np.random.default_rng(0).integers(0, 50, (2, 7))
    rng = np.random.default_rng(1)
    outside = {}
    for name in ("blocks.1.mlp.W_in", "blocks.0.attn.W_qkv", "blocks.2.ln2.b", "unembed.W_U",
                 "embed.W_E"):
        raw = model._raw[name]
        outside[name] = (raw + rng.normal(0, 0.1, raw.shape)).astype(np.float32)
        model._core.set_param(name, outside[name])
        ref_model._raw[name][...] = outside[name]       # the same values, in the blob
    assert model._core.n_external == 5
    np.testing.assert_array_equal(model(tokens), ref_model(tokens))
    # params() now shows the outside arrays themselves
    for name, arr in outside.items():
        assert np.shares_memory(model._core.params()[name], arr)
    # replacing one again, and tying the unembedding to an outside W_E
    outside["blocks.2.ln2.b"] += 1.0
    ref_model._raw["blocks.2.ln2.b"][...] += 1.0
    np.testing.assert_array_equal(model(tokens), ref_model(tokens))
    model._core.tied_unembed = True
    assert model._core.n_external == 4                  # W_U is no longer read
    W_U = model._core.params()["unembed.W_U"]
    assert W_U.shape == (32, 50) and np.shares_memory(W_U, outside["embed.W_E"])
    ref_model._raw["unembed.W_U"][...] = outside["embed.W_E"].T
    # x @ W_E^T (trans_b GEMM) vs x @ copy(W_E^T): same products, K order may differ
    np.testing.assert_allclose(model(tokens), ref_model(tokens), atol=1e-5, rtol=0)
    model._core.tied_unembed = False                     # copies W_E^T into the blob's W_U
    np.testing.assert_array_equal(model._raw["unembed.W_U"], outside["embed.W_E"].T)
    np.testing.assert_allclose(model(tokens), ref_model(tokens), atol=1e-5, rtol=0)
    assert model._core.materialize() == 4 and model._core.n_external == 0
    np.testing.assert_allclose(model(tokens), ref_model(tokens), atol=1e-5, rtol=0)
    # d_vocab_out != d_vocab cannot tie
    cfg2 = mi.HookedTransformerConfig(n_layers=1, d_model=16, d_head=4, n_heads=4, d_mlp=32,
                                      d_vocab=20, d_vocab_out=10, n_ctx=8, act_fn="relu")
    with pytest.raises(ValueError, match="d_vocab_out == d_vocab, got 10 and 20"):
        mi.HookedTransformer(cfg2)._core.tied_unembed = True


def test_checkpoint_errors_name_the_tensor(tied, tmp_path):
    import json
    import shutil
    from safetensors.numpy import save_file
    _, d = tied
    sd = dict(io.load_safetensors(d / "model.safetensors"))

    def ckpt(name, tensors, **cfg_changes):
        out = tmp_path / name
        out.mkdir()
        shutil.copy(d / "config.json", out / "config.json")
        if cfg_changes:
            cfg = json.loads((out / "config.json").read_text())
            cfg.update(cfg_changes)
            (out / "config.json").write_text(json.dumps(cfg))
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out / "model.safetensors"))
        return out

    missing = {k: v for k, v in sd.items() if k != "transformer.h.1.mlp.c_fc.bias"}
    with pytest.raises(KeyError, match=r"missing.*no tensor 'h.1.mlp.c_fc.bias'"):
        GPT2LMHeadModel.from_pretrained(ckpt("missing", missing))
    bad = dict(sd, **{"transformer.h.2.attn.c_proj.weight": np.zeros((D, D + 1), np.float32)})
    with pytest.raises(ValueError, match=r"'h.2.attn.c_proj.weight' has shape \(64, 65\), the config "
                                         r"implies \(64, 64\)"):
        GPT2LMHeadModel.from_pretrained(ckpt("shape", bad))
    extra = dict(sd, **{"transformer.h.0.attn.extra": np.zeros(3, np.float32)})
    with pytest.raises(KeyError, match=r"unexpected tensor\(s\) \['h.0.attn.extra'\]"):
        GPT2LMHeadModel.from_pretrained(ckpt("extra", extra))
    with pytest.raises(KeyError, match="tie_word_embeddings is false but the checkpoint has no "
                                       "'lm_head.weight'"):
        GPT2LMHeadModel.from_pretrained(ckpt("untied", sd, tie_word_embeddings=False))
    head = dict(sd, **{"lm_head.weight": np.zeros((V + 1, D), np.float32)})
    with pytest.raises(ValueError, match=r"'lm_head.weight' has shape \(121, 64\), expected \(120, 64\)"):
        GPT2LMHeadModel.from_pretrained(ckpt("head", head))
