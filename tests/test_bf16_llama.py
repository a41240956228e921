"""bfloat16 models of the Llama family (Llama, Qwen2, Mistral) from BF16 checkpoints.

Checkpoints: tiny random-initialised models saved by ``transformers`` in bfloat16
(``model.to(torch.bfloat16).save_pretrained``, what a Llama release ships) and in
float32. Reference: our float32 model of the same config holding the bf16 model's
weights (the float32 copies it hands out: exactly the bfloat16 values it stores), so
the two passes differ only in the bf16 model rounding each product's activation
operand to bfloat16 (and summing in another order).

Tolerance on the logits, derived as in test_bf16_model.py from bfloat16's 8
significant bits (u = 2^-8): one rounded operand moves a product's output by at
most u * (|x| @ |W|); a Llama block has five products (the fused q/k/v, W_O,
W_gate, W_in, W_out), so P = 5 * n_layers + 1 with the unembedding, and RMSNorm
rescales the residual stream before each product reads it, so to first order
|logits - ref| <= P * u * (|x_f| @ |W_U|), x_f the final normalised stream. The
argmax agrees on >= 99% of positions and the loss is within 1% of the float32
model of the original float32 weights.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mechinterp_c import HookedTransformer, _core, io  # noqa: E402
from mechinterp_c import transformers as mt  # noqa: E402
from bf16_checks import check_activation_grads  # noqa: E402

U = 2.0 ** -8
V, D, L, H, KV, M, CTX = 257, 128, 3, 4, 2, 192, 96

FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),     # q/k/v biases
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": None}),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def ckpt(request, tmp_path_factory):
    """(family, float32 checkpoint dir, bf16 checkpoint dir)."""
    config_cls, model_cls, extra = FAMILIES[request.param]
    cfg = config_cls(hidden_size=D, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=KV,
                     vocab_size=V, max_position_embeddings=CTX, intermediate_size=M,
                     tie_word_embeddings=False, **extra)
    torch.manual_seed(0)
    m = model_cls(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() == 2:
                p.mul_(4.0)          # attention far from uniform, logits spread out
            elif n.endswith("bias"):
                p.normal_(0.0, 0.5)  # Qwen2's q/k/v biases are not zero in a trained model
    d32 = tmp_path_factory.mktemp(f"{request.param}-f32")
    m.save_pretrained(d32)
    d16 = tmp_path_factory.mktemp(f"{request.param}-bf16")
    m.to(torch.bfloat16).save_pretrained(d16)
    assert io.SafeTensors(d16 / "model.safetensors").dtype("lm_head.weight") == "BF16"
    return request.param, d32, d16


def tokens(seed=0, shape=(8, 64)):
    return np.random.default_rng(seed).integers(0, V, shape)


def rounded_fp32_twin(b):
    """Our float32 model of b's config holding b's (bfloat16) weights."""
    cfg = dict(b.cfg.to_dict(), dtype="float32")
    r = HookedTransformer(cfg)
    r.load_state_dict(b.state_dict())
    return r


def check_logits(b, r, t):
    lb, cache = b.run_with_cache(t, names_filter="ln_final.hook_normalized")
    lr = r(t)
    xf = cache["ln_final.hook_normalized"].astype(np.float64)
    if "ln_final.w" in r.state_dict():
        xf = xf * r.ln_final.w
    bound = (5 * L + 1) * U * (np.abs(xf) @ np.abs(r.W_U.astype(np.float64)))
    err = np.abs(lb.astype(np.float64) - lr)
    assert (err <= bound).all(), f"worst err/bound {(err / bound).max():.2f}"
    assert (lb.argmax(-1) == lr.argmax(-1)).mean() >= 0.99
    return lb


@pytest.mark.parametrize("processing", [True, False])
def test_logits_argmax_loss_of_from_pretrained(ckpt, processing):
    family, d32, d16 = ckpt
    load = HookedTransformer.from_pretrained if processing else HookedTransformer.from_pretrained_no_processing
    b = load(str(d16), dtype="bfloat16")
    assert b._core.bf16
    assert b.cfg.normalization_type == ("RMSPre" if processing else "RMS")
    r = rounded_fp32_twin(b)
    t = tokens()
    check_logits(b, r, t)
    f = load(str(d32))
    loss_b, loss_f = float(b(t, return_type="loss")), float(f(t, return_type="loss"))
    assert abs(loss_b - loss_f) <= 0.01 * loss_f, (family, loss_b, loss_f)


def test_generate_and_run_with_cache_names_filter(ckpt):
    _, _, d16 = ckpt
    b = HookedTransformer.from_pretrained_no_processing(str(d16), dtype="bfloat16")
    r = rounded_fp32_twin(b)
    t = tokens(1, (2, 24))
    names = ["blocks.1.hook_resid_post", f"blocks.{L - 1}.attn.hook_pattern", "blocks.0.mlp.hook_post"]
    logits, cache = b.run_with_cache(t, names_filter=names)
    assert sorted(cache.keys()) == sorted(names)
    assert all(v.dtype == np.float32 for v in cache.values())
    _, rcache = r.run_with_cache(t, names_filter=names)
    for n in names:
        # first-order bf16 rounding of the few products upstream (<= 5 per layer, u each)
        # on the activation's own scale; patterns are probabilities
        scale = np.abs(rcache[n]).max()
        np.testing.assert_allclose(cache[n], rcache[n], rtol=0, atol=(5 * L + 1) * U * scale, err_msg=n)
    np.testing.assert_array_equal(logits, b(t))
    out = np.asarray(b.generate(t[:1, :6], max_new_tokens=5, do_sample=False, stop_at_eos=False,
                                verbose=False))
    assert out.shape == (1, 11)
    np.testing.assert_array_equal(out[0, :6], t[0, :6])
    assert out[0, 6] == b(t[:1, :6])[0, -1].argmax()
    # each greedy token is the argmax of the full forward of what came before (the KV
    # cache path and the full pass agree)
    for i in range(6, 11):
        assert out[0, i] == b(out[:, :i])[0, -1].argmax()


def addr(a):
    return a.__array_interface__["data"][0]


def test_bf16_checkpoint_read_in_place(ckpt):
    """The embedding, o_proj, the MLP and lm_head are the file's bytes (read transposed
    where HF's [out, in] is the C core's [in, out]); q/k/v are converted once into the
    model's memory; the result is the same model, bit for bit, as the one converted from
    the state dict, before and after materialize()."""
    family, _, d16 = ckpt
    st = io.SafeTensors(d16 / "model.safetensors")
    m = mt.AutoModelForCausalLM.from_pretrained(str(d16), torch_dtype=torch.bfloat16)
    b = HookedTransformer.from_pretrained_no_processing(str(d16), dtype="bfloat16")
    for core in (m._ht._core, b._core):
        raw = core.params()
        assert core.bf16 and not core.tied_unembed
        in_file = {"embed.W_E": "model.embed_tokens.weight", "unembed.W_U": "lm_head.weight"}
        for l in range(L):
            for ours, hf in (("attn.W_O", "self_attn.o_proj"), ("mlp.W_in", "mlp.up_proj"),
                             ("mlp.W_gate", "mlp.gate_proj"), ("mlp.W_out", "mlp.down_proj")):
                in_file[f"blocks.{l}.{ours}"] = f"model.layers.{l}.{hf}.weight"
        for ours, hf in in_file.items():
            a, f = raw[ours], st.get_bfloat16(hf)
            assert a.dtype == np.uint16 and not a.flags.owndata, ours
            # the same bytes: the file's offsets (st maps the file again elsewhere)
            assert addr(a) - addr(raw["embed.W_E"]) == addr(f) - addr(st.get_bfloat16("model.embed_tokens.weight")), ours
            want = f if ours == "embed.W_E" else f.T
            np.testing.assert_array_equal(a.reshape(want.shape), want, err_msg=ours)
        # q/k/v: the blob's own memory (inside the blob, not the mapping)
        qkv = raw["blocks.0.attn.W_qkv"]
        assert abs(addr(qkv) - addr(raw["blocks.0.ln1.w"])) < core.param_bytes
        np.testing.assert_array_equal(qkv.reshape(D, -1)[:, :D].T, st.get_bfloat16("model.layers.0.self_attn.q_proj.weight"))
    hf_w = m.model.layers[1].mlp.down_proj.weight
    assert hf_w.shape == (D, M) and hf_w.dtype == np.uint16
    np.testing.assert_array_equal(hf_w, st.get_bfloat16("model.layers.1.mlp.down_proj.weight"))
    # the same model as the state-dict conversion: bit for bit on a prompt (the packed
    # GEMM sums each element in the same k order from either layout); a one-row decode
    # step takes the small-row kernel, whose transposed form sums in another float32
    # order: equal to a few float32 roundings of the sums (K * 2^-24 relative, K <= 192)
    from mechinterp_c.loading_from_pretrained import get_pretrained_state_dict
    conv = type(m)(m.config, get_pretrained_state_dict(str(d16), m.config), _bf16=True)
    t = tokens(2, (2, 40))
    lm = m(t).logits
    np.testing.assert_array_equal(lm, conv(t).logits)
    one, one_c = m(t[:1, :1]).logits, conv(t[:1, :1]).logits
    np.testing.assert_allclose(one, one_c, rtol=0, atol=(5 * L + 1) * M * 2.0 ** -24 * np.abs(one_c).max() * 4)
    assert (one.argmax(-1) == one_c.argmax(-1)).all()
    np.testing.assert_array_equal(b(t), lm)
    # materialize: the weights copied (transposed back) into the model's own memory
    assert b._core.materialize() == 4 * L + 2
    b._rebind()
    assert b._raw["blocks.0.mlp.W_in"].flags.c_contiguous
    np.testing.assert_array_equal(b(t), lm)
    np.testing.assert_array_equal(b._raw["blocks.2.mlp.W_out"], conv._ht._raw["blocks.2.mlp.W_out"])


def test_transposed_refused_where_the_layout_does_not_allow(ckpt):
    _, _, d16 = ckpt
    b = HookedTransformer.from_pretrained_no_processing(str(d16), dtype="bfloat16")
    t = tokens(3, (1, 16))
    before = np.array(b(t))
    raw = b._core.params()
    for name in ("blocks.0.attn.W_qkv", "embed.W_E"):
        with pytest.raises(ValueError, match="read transposed"):
            b._core.set_param(name, raw[name].copy(), transposed=True)
    f = HookedTransformer.from_pretrained_no_processing(str(d16))
    with pytest.raises(ValueError, match="read transposed"):
        f._core.set_param("blocks.0.mlp.W_in", f._core.params()["blocks.0.mlp.W_in"].copy(), transposed=True)
    np.testing.assert_array_equal(b(t), before)


def test_tied_embedding_reads_w_e_transposed(tmp_path):
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                   vocab_size=V, max_position_embeddings=32, intermediate_size=96,
                                   tie_word_embeddings=True)
    torch.manual_seed(1)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.to(torch.bfloat16).save_pretrained(tmp_path)
    m = mt.LlamaForCausalLM.from_pretrained(str(tmp_path), torch_dtype="bfloat16")
    assert m._ht._core.tied_unembed
    conv = mt.LlamaForCausalLM.from_pretrained(str(tmp_path))
    t = tokens(4, (2, 20))
    with torch.no_grad():
        ref = hf.float()(torch.from_numpy(t)).logits.numpy()
    ours = m(t).logits
    # one block: P = 5 + 1 products, on the logits' own scale
    np.testing.assert_allclose(ours, ref, rtol=0, atol=6 * U * np.abs(ref).max())
    assert (ours.argmax(-1) == conv(t).logits.argmax(-1)).mean() >= 0.99


@pytest.mark.parametrize("steps", [dict(), dict(fold_ln=False), dict(center_unembed=False, fold_value_biases=False)])
def test_processed_load_streams_layer_by_layer_same_model(ckpt, steps):
    """from_pretrained(dtype="bfloat16") processes one layer at a time: the same weights,
    bit for bit, as processing the whole float32 state dict and rounding it."""
    from mechinterp_c import loading_from_pretrained as loading
    _, _, d16 = ckpt
    b = HookedTransformer.from_pretrained(str(d16), dtype="bfloat16", **steps)
    hf_cfg, tl_cfg = loading.get_pretrained_model_config(str(d16))
    whole = HookedTransformer(dict(tl_cfg, dtype="bfloat16"))
    kw = dict(dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True), **steps)
    whole.load_and_process_state_dict(loading.get_pretrained_state_dict(str(d16), hf_cfg), **kw)
    assert b.cfg.normalization_type == whole.cfg.normalization_type
    sb, sw = b.state_dict(), whole.state_dict()
    assert sorted(sb) == sorted(sw)
    for k in sb:
        np.testing.assert_array_equal(sb[k], sw[k], err_msg=k)
    # the embedding (unchanged by RMS processing) is the file's bytes
    assert not b._raw["embed.W_E"].flags.owndata and b._raw["embed.W_E"].base is not b._raw["blocks.0.attn.W_qkv"].base
    t = tokens(5, (2, 32))
    np.testing.assert_array_equal(b(t), whole(t))


@pytest.mark.parametrize("metric", ["loss", "logit_diff"])
def test_activation_gradients_match_the_float32_model(ckpt, metric):
    """Gradients with respect to activations of a bf16 model read in place (the weights
    transposed, products through the bfloat16 GEMM) agree with the float32 model of the
    same weights."""
    _, _, d16 = ckpt
    b = HookedTransformer.from_pretrained_no_processing(str(d16), dtype="bfloat16")
    r = rounded_fp32_twin(b)
    t = tokens(6, (2, 24))
    if metric == "logit_diff":
        from mechinterp_c.metrics import logit_diff
        metric = logit_diff(t[:, 1], t[:, 2])
    # forward: qkv, W_O, gate, in, out; backward: q, k, v, W_O, gate, in, out; the unembedding twice
    check_activation_grads(b, r, t, metric, n_products=(5 + 7) * L + 2)


def test_parameter_gradients_refused_clearly_and_model_usable(ckpt):
    """A bf16 model does not train: parameter gradients are refused with a clear error
    naming the bfloat16 weights; the model stays usable and its activation gradients work."""
    _, _, d16 = ckpt
    b = HookedTransformer.from_pretrained_no_processing(str(d16), dtype="bfloat16")
    t = tokens(6, (1, 12))
    before = np.array(b(t))
    with pytest.raises(NotImplementedError, match="bfloat16 weights"):
        b.backward(t[:, :-1], t[:, 1:])
    np.testing.assert_array_equal(b(t), before)
    _, cache = b.run_with_cache(t, incl_bwd=True, metric="loss")
    assert np.isfinite(cache["blocks.0.hook_resid_pre_grad"]).all()


def test_save_pretrained_of_a_bf16_model_round_trips(ckpt, tmp_path):
    """save_pretrained writes a bfloat16 model's weights as their float32 values (not the
    uint16 bit patterns as numbers): transformers reads back the checkpoint's weights."""
    family, _, d16 = ckpt
    m = mt.AutoModelForCausalLM.from_pretrained(str(d16), torch_dtype=torch.bfloat16)
    m.save_pretrained(tmp_path)
    model_cls = FAMILIES[family][1]
    a = model_cls.from_pretrained(str(d16), torch_dtype=torch.float32)
    b = model_cls.from_pretrained(str(tmp_path), torch_dtype=torch.float32)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert sorted(pa) == sorted(pb)
    for n in pa:
        assert torch.equal(pa[n], pb[n]), n
