"""Models with bfloat16 weights (``dtype="bfloat16"``, HF ``torch_dtype=torch.bfloat16``).

Reference: the same model in float32 with every weight rounded to bfloat16 (exactly
the values the bf16 model stores), built from a random-initialised
``transformers.GPT2LMHeadModel`` saved with ``save_pretrained``. The two passes then
differ only in that the bf16 model rounds each product's activation operand to
bfloat16 (and sums in another order).

Tolerance on the logits, from bfloat16's 8 significant bits: rounding an operand to
nearest changes it by a relative u = 2^-8 at most, so one product's output moves
by at most u * (|x| @ |W|). A forward has P = 4 * n_layers + 1 products (qkv, W_O,
W_in, W_out per block, the unembedding); LayerNorm rescales the residual stream
before each product reads it, so to first order each rounding adds at most one such
relative error to what the unembedding sees: |logits - ref| <= P * u * (|x_f| @ |W_U|)
with x_f the final normalised residual stream (ln_final's output). The test holds
every logit to that bound.
"""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mechinterp_c import HookedTransformer, _core, io, patching  # noqa: E402
from mechinterp_c.loading_from_pretrained import convert_gpt2_weights  # noqa: E402
from mechinterp_c.metrics import logit_diff  # noqa: E402
from mechinterp_c.transformers import GPT2LMHeadModel  # noqa: E402
from bf16_checks import check_activation_grads  # noqa: E402

U = 2.0 ** -8
V, D, L, H, CTX = 512, 128, 3, 4, 64


def bf16(x):
    return _core.from_bfloat16(_core.to_bfloat16(np.asarray(x, np.float32)))


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=L, n_embd=D, n_head=H, vocab_size=V, n_positions=CTX,
                                  bos_token_id=0, eos_token_id=0)
    m = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("c_attn.weight"):
                p.mul_(6.0)             # attention far from uniform
            if n.endswith("wte.weight"):
                p.mul_(10.0)            # logits of a trained model's spread
    d32 = tmp_path_factory.mktemp("bf16-f32")
    m.save_pretrained(d32)
    d16 = tmp_path_factory.mktemp("bf16-bf16")
    m.to(torch.bfloat16).save_pretrained(d16)   # what transformers writes for torch_dtype=bfloat16
    return m.float(), d32, d16


def tl_cfg(hf_model, **kw):
    c = hf_model.config
    return dict(n_layers=c.n_layer, d_model=c.n_embd, n_ctx=c.n_positions, d_head=c.n_embd // c.n_head,
                n_heads=c.n_head, d_mlp=4 * c.n_embd, act_fn="gelu_new", d_vocab=c.vocab_size,
                eps=c.layer_norm_epsilon, normalization_type="LN", **kw)


@pytest.fixture(scope="module")
def models(hf):
    """(bf16 model, float32 model of the rounded weights, float32 model of the original weights)."""
    hf_model = hf[0]
    sd = convert_gpt2_weights(hf_model.state_dict(), hf_model.config)
    b = HookedTransformer(tl_cfg(hf_model, dtype="bfloat16"))
    b.load_state_dict(sd, strict=False)
    r = HookedTransformer(tl_cfg(hf_model))
    r.load_state_dict({k: bf16(v) for k, v in sd.items()}, strict=False)
    f = HookedTransformer(tl_cfg(hf_model))
    f.load_state_dict(sd, strict=False)
    return b, r, f


def tokens(seed=0, shape=(8, 64)):
    return np.random.default_rng(seed).integers(0, V, shape)


def test_weights_stored_as_bf16_half_the_memory(models):
    b, r, _ = models
    raw = b._core.params()
    stored = {k for k, v in raw.items() if v.dtype == np.uint16}
    assert stored == {"embed.W_E", "unembed.W_U"} | {f"blocks.{l}.{w}" for l in range(L)
                                                     for w in ("attn.W_qkv", "attn.W_O", "mlp.W_in", "mlp.W_out")}
    assert b._core.param_bytes < 0.55 * r._core.param_bytes
    # what the model hands out is float32 (read-only copies for the bf16 tensors),
    # equal to the rounded weights
    for k, v in b.state_dict().items():
        assert v.dtype == np.float32, k
        np.testing.assert_array_equal(v, r.state_dict()[k], err_msg=k)
    assert not b.W_Q.flags.writeable or b.W_Q.base is None
    with pytest.raises(ValueError, match="read-only"):
        b.blocks[0].attn.W_Q[...] = 0.0
    np.testing.assert_array_equal(b.W_Q, r.W_Q)
    np.testing.assert_array_equal(b.blocks[1].mlp.W_out, r.blocks[1].mlp.W_out)
    np.testing.assert_array_equal(_core.from_bfloat16(b.bf16_weight("blocks.0.attn.W_O")), r.W_O[0])
    with pytest.raises(ValueError, match="stored as float32"):
        b.bf16_weight("blocks.0.attn.b_O")


def test_logits_argmax_and_loss(models):
    b, r, f = models
    t = tokens()
    lb, cache = b.run_with_cache(t, names_filter="ln_final.hook_normalized")
    lr = r(t)
    xf = cache["ln_final.hook_normalized"] * r.ln_final.w + r.ln_final.b
    bound = (4 * L + 1) * U * (np.abs(xf.astype(np.float64)) @ np.abs(r.W_U.astype(np.float64)))
    err = np.abs(lb.astype(np.float64) - lr)
    assert (err <= bound).all(), f"worst err/bound {(err / bound).max():.2f}"
    agree = (lb.argmax(-1) == lr.argmax(-1)).mean()
    assert agree >= 0.99, agree
    loss_b, loss_f = float(b(t, return_type="loss")), float(f(t, return_type="loss"))
    assert abs(loss_b - loss_f) <= 0.01 * loss_f, (loss_b, loss_f)


def test_cache_hooks_and_generate(models):
    b, r, _ = models
    t = tokens(1, (2, 20))
    logits, cache = b.run_with_cache(t)
    assert all(v.dtype == np.float32 for v in cache.values())
    np.testing.assert_allclose(cache["blocks.1.hook_resid_pre"], r.run_with_cache(t)[1]["blocks.1.hook_resid_pre"],
                               rtol=0, atol=0.05 * np.abs(cache["blocks.1.hook_resid_pre"]).max())

    def ablate(act, hook):
        act[:, :, 1] = 0.0
    hooked = b.run_with_hooks(t, fwd_hooks=[("blocks.0.attn.hook_z", ablate)])
    ref = r.run_with_hooks(t, fwd_hooks=[("blocks.0.attn.hook_z", ablate)])
    assert not np.array_equal(hooked, logits)
    assert (hooked.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
    out = b.generate(t[:1, :5], max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)
    out = np.asarray(out)
    assert out.shape == (1, 11)
    np.testing.assert_array_equal(out[0, :5], t[0, :5])
    assert out[0, 5] == b(t[:1, :5])[0, -1].argmax()


def test_threads_bitwise(models):
    b = models[0]
    t = tokens(2, (4, 64))
    n = _core.get_num_threads()
    try:
        _core.set_num_threads(1)
        one = np.array(b(t))
        _core.set_num_threads(2)
        two = np.array(b(t))
    finally:
        _core.set_num_threads(n)
    assert np.array_equal(one.view(np.uint32), two.view(np.uint32))


def test_training_refused_and_model_usable(models):
    b = models[0]
    t = tokens(3, (2, 16))
    before = np.array(b(t))
    with pytest.raises(NotImplementedError, match="bfloat16 weights"):
        b.backward(t[:, :-1], t[:, 1:])
    with pytest.raises(NotImplementedError, match="bfloat16 weights"):
        list(b.parameters())
    np.testing.assert_array_equal(b(t), before)


@pytest.mark.parametrize("metric", ["loss", "logit_diff"])
def test_activation_gradients_match_the_float32_model(models, metric):
    """run_with_cache(incl_bwd=True) of the bf16 model: every gradient entry against the
    float32 model of the rounded weights (bf16_checks.check_activation_grads)."""
    b, r, _ = models
    t = tokens(7, (2, 24))
    if metric == "logit_diff":
        metric = logit_diff(t[:, 1], t[:, 2])
    # forward: qkv, W_O, W_in, W_out; backward: q, k, v, W_O, W_in, W_out; the unembedding twice
    check_activation_grads(b, r, t, metric, n_products=(4 + 6) * L + 2)


def test_attribution_patching_and_hf_backward_hooks(hf, models):
    """Attribution patching and Hugging Face backward hooks run on a bf16 model (the
    same gradient pass), close to the float32 model of the rounded weights."""
    b, r, _ = models
    clean, corrupt = tokens(8, (2, 16)), tokens(9, (2, 16))
    metric = logit_diff(clean[:, 1], clean[:, 2])
    sb = patching.attribution_patch(b, clean, corrupt, metric, ["blocks.1.hook_resid_pre"])
    sr = patching.attribution_patch(r, clean, corrupt, metric, ["blocks.1.hook_resid_pre"])
    ab, ar = np.asarray(sb["blocks.1.hook_resid_pre"]), np.asarray(sr["blocks.1.hook_resid_pre"])
    assert np.abs(ab - ar).max() <= 0.05 * np.abs(ar).max()

    m = GPT2LMHeadModel.from_pretrained(str(hf[2]), torch_dtype=torch.bfloat16)
    seen = []
    m.transformer.h[1].mlp.register_full_backward_hook(lambda mod, gi, go: seen.append(np.array(go[0])))
    out = m(torch.from_numpy(clean))
    out.backward(metric="loss", labels=clean)
    assert len(seen) == 1 and seen[0].shape == (2, 16, D) and np.isfinite(seen[0]).all()


def test_fold_ln_rebuild_keeps_the_weights(hf):
    hf_model = hf[0]
    sd = convert_gpt2_weights(hf_model.state_dict(), hf_model.config)
    b = HookedTransformer(tl_cfg(hf_model, dtype="bfloat16"))
    b.load_and_process_state_dict(sd)
    r = HookedTransformer(tl_cfg(hf_model))
    r.load_and_process_state_dict(sd)
    t = tokens(4, (2, 32))
    assert (b(t).argmax(-1) == r(t).argmax(-1)).mean() >= 0.95
    b.set_use_attn_result(True)        # same layout: shared weights
    assert (b(t).argmax(-1) == r(t).argmax(-1)).mean() >= 0.95


def test_from_pretrained_bf16(hf):
    _, d32, _ = hf
    b = HookedTransformer.from_pretrained(d32, dtype="bfloat16")
    r = HookedTransformer.from_pretrained(d32)
    assert b._core.bf16 and not r._core.bf16
    t = tokens(5, (2, 32))
    assert (b(t).argmax(-1) == r(t).argmax(-1)).mean() >= 0.95


def test_hf_bf16_checkpoint_is_mapped_in_place(hf):
    hf_model, _, d16 = hf
    m = GPT2LMHeadModel.from_pretrained(d16, torch_dtype=torch.bfloat16)
    core = m._ht._core
    assert core.bf16 and core.tied_unembed
    st = io.SafeTensors(d16 / "model.safetensors")
    assert st.dtype("transformer.wte.weight") == "BF16"

    def addr(a):
        return a.__array_interface__["data"][0]

    # the bfloat16 weights are the file's bytes, at the file's offsets
    m0, f0 = addr(m.transformer.wte.weight), addr(st.get_bfloat16("transformer.wte.weight"))
    for name, arr in m.state_dict().items():
        key = "transformer.wte.weight" if name == "lm_head.weight" else name
        if arr.dtype != np.uint16:
            np.testing.assert_array_equal(arr, _core.from_bfloat16(st.get_bfloat16(key)).reshape(arr.shape))
            continue
        assert not arr.flags.owndata, name
        np.testing.assert_array_equal(arr.reshape(-1), st.get_bfloat16(key).reshape(-1), err_msg=name)
        assert addr(arr) - m0 == addr(st.get_bfloat16(key)) - f0, name
    # the same logits as the float32 model of the same (bf16) weights, within the bound's spirit
    ref = GPT2LMHeadModel.from_pretrained(d16)
    t = tokens(6, (4, 64))
    lb, lr = m(t).logits, ref(t).logits
    assert (lb.argmax(-1) == lr.argmax(-1)).mean() >= 0.99
    # and an F32 checkpoint converted once gives the same model
    m32 = GPT2LMHeadModel.from_pretrained(hf[1], dtype="bfloat16")
    np.testing.assert_array_equal(m32(t).logits, lb)


def test_fallback_path_warns(hf, monkeypatch):
    prev = _core.cpu_isa()
    try:
        _core.force_isa("avx2")
        with pytest.warns(RuntimeWarning, match="no AVX512-BF16.*slower fp32 path"):
            b = HookedTransformer(tl_cfg(hf[0], dtype="bfloat16"))
        b.load_state_dict(convert_gpt2_weights(hf[0].state_dict(), hf[0].config), strict=False)
        slow = np.array(b(tokens(7, (2, 32))))
    finally:
        _core.force_isa(prev)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if _core._bgemm_best_path() == "bf16":
            HookedTransformer(tl_cfg(hf[0], dtype="bfloat16"))
    fast = np.array(b(tokens(7, (2, 32))))
    assert (slow.argmax(-1) == fast.argmax(-1)).mean() >= 0.99


@pytest.mark.parametrize("extra", [
    dict(normalization_type="RMS", act_fn="silu", gated_mlp=True, positional_embedding_type="rotary",
         n_key_value_heads=2, rotary_dim=16),
    dict(use_attn_result=True, use_split_qkv_input=True),
])
def test_families_and_hook_features_in_bf16(extra):
    """Llama's shape (RMSNorm, gated MLP, rotary, grouped-query attention) and the
    per-head products (hook_result, split q/k/v inputs): every product of the pass goes
    through the bf16 GEMM, against the float32 model of the rounded weights."""
    cfg = dict(dict(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=128, d_vocab=300, n_ctx=64,
                    act_fn="gelu_new", normalization_type="LN"), **extra)
    b = HookedTransformer(dict(cfg, dtype="bfloat16", seed=3))
    r = HookedTransformer(dict(cfg, seed=3))
    r.load_state_dict(b.state_dict())
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, r.state_dict()[k], err_msg=k)
    t = tokens(8, (4, 48)) % 300
    lb, cache = b.run_with_cache(t)
    lr, rcache = r.run_with_cache(t)
    assert set(cache.keys()) == set(rcache.keys())
    # the logits of a GPT-2-init model are tiny (std ~0.1): compare on their own scale
    np.testing.assert_allclose(lb, lr, rtol=0, atol=(4 * cfg["n_layers"] + 1) * U * np.abs(lr).max())
    assert (lb.argmax(-1) == lr.argmax(-1)).mean() >= 0.9


def test_hf_llama_bf16(tmp_path):
    """LlamaForCausalLM (through AutoModelForCausalLM) with torch_dtype=bfloat16: the
    projections stored as bfloat16 (weight views are the bit patterns), logits against
    transformers running the same model in float32 with the weights rounded to bfloat16."""
    from mechinterp_c import transformers as mt
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=97, max_position_embeddings=64,
                                   intermediate_size=96)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(p.to(torch.bfloat16).float())         # the rounded weights, in float32
            if p.dim() == 2:
                p.mul_(8.0)                                # logits spread out (exact in bf16)
    hf.save_pretrained(tmp_path)
    m = mt.AutoModelForCausalLM.from_pretrained(str(tmp_path), torch_dtype=torch.bfloat16)
    assert m._ht._core.bf16
    w = m.model.layers[0].self_attn.q_proj.weight
    assert w.dtype == np.uint16
    np.testing.assert_array_equal(_core.from_bfloat16(w), hf.model.layers[0].self_attn.q_proj.weight.detach().numpy())
    ids = tokens(9, (2, 40)) % 97
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids)).logits.numpy()
    ours = m(ids).logits
    np.testing.assert_allclose(ours, ref, rtol=0, atol=(4 * 2 + 1) * U * np.abs(ref).max())
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.95


def test_casts_of_a_bf16_model(models, hf):
    """``to(torch.bfloat16)`` / ``bfloat16()`` keep a bfloat16 model; ``float()`` and
    ``to(torch.float32)`` are refused (nothing is converted in place), as are the
    other dtypes, and the model stays usable."""
    b, r, _ = models
    assert b.to(torch.bfloat16) is b and b.bfloat16() is b and b.to("cpu", "bfloat16") is b
    for cast in (b.float, lambda: b.to(torch.float32), b.half, lambda: r.to(torch.bfloat16)):
        with pytest.raises(NotImplementedError, match="not converted in place|float32 only"):
            cast()
    m = GPT2LMHeadModel.from_pretrained(hf[2], torch_dtype=torch.bfloat16)
    assert m.to(torch.bfloat16) is m and m.transformer.h[0].bfloat16() is m.transformer.h[0]
    with pytest.raises(NotImplementedError, match="not converted in place"):
        m.float()
    assert b(tokens(10, (1, 8))).shape == (1, 8, V)
