"""Hugging Face completeness of GPT2LMHeadModel, against transformers on the same
checkpoint: labels -> loss, save_pretrained (loaded back by transformers), submodules
called on arrays and get_submodule, hooks on the root module and on model.transformer,
register_forward_hook(with_kwargs=True), .device / .dtype / .to("cpu"), and the
tokenizer's return_offsets_mapping against transformers' fast tokenizer.

Tolerances: logits and module outputs 2e-4 absolute (test_gpt2's ATOL: the same
float32 pass, other summation order, logits of size ~10); the loss 1e-5 relative
(float64 log-softmax here, float32 in transformers).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mechinterp_c as mi  # noqa: E402
from mechinterp_c.transformers import GPT2LMHeadModel, GPT2Tokenizer  # noqa: E402

ATOL = 2e-4
V, D, H, L, T = 90, 48, 4, 2, 12


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=L, n_embd=D, n_head=H, vocab_size=V, n_positions=32, bos_token_id=0,
        eos_token_id=0)).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "ln_" in n or n.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))       # non-trivial LayerNorms and biases
    d = tmp_path_factory.mktemp("hfc")
    hf.save_pretrained(d)
    return hf, d


def _ids(shape, seed=0):
    return np.random.default_rng(seed).integers(0, V, shape)


def test_labels_give_hf_loss(ckpt):
    hf, d = ckpt
    m = GPT2LMHeadModel.from_pretrained(d)
    ids = _ids((3, T))
    labels = ids.copy()
    labels[0, :4] = -100                 # ignored, as HF
    labels[2, 7:] = -100
    with torch.no_grad():
        ref = hf(torch.tensor(ids), labels=torch.tensor(labels))
    out = m(ids, labels=labels)
    assert list(out.keys())[:2] == ["loss", "logits"] and out[0] is out.loss
    np.testing.assert_allclose(float(out.loss), ref.loss.item(), rtol=1e-5)
    np.testing.assert_allclose(out.logits, ref.logits.numpy(), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="labels"):
        m(ids, labels=np.full_like(ids, V))
    assert np.isfinite(m(ids, labels=ids).loss)        # the model stays usable
    mi.set_array_type("torch")
    try:
        loss = m(torch.tensor(ids), labels=torch.tensor(labels)).loss
        assert isinstance(loss, torch.Tensor) and loss.ndim == 0
    finally:
        mi.set_array_type("numpy")


def test_save_pretrained_loads_in_transformers(ckpt, tmp_path):
    hf, d = ckpt
    m = GPT2LMHeadModel.from_pretrained(d, copy=True)
    m.transformer.h[1].mlp.c_fc.weight[:3] *= 2.0          # an edit that must be saved
    m.save_pretrained(tmp_path / "saved")
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "saved").eval()
    ids = _ids((2, T), seed=1)
    with torch.no_grad():
        ref = back(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(m(ids).logits, ref, atol=ATOL, rtol=0)
    np.testing.assert_array_equal(back.transformer.h[1].mlp.c_fc.weight.detach().numpy(),
                                  m.transformer.h[1].mlp.c_fc.weight)
    again = GPT2LMHeadModel.from_pretrained(tmp_path / "saved")
    np.testing.assert_array_equal(again(ids).logits, m(ids).logits)
    with pytest.raises(NotImplementedError, match="safe_serialization"):
        m.save_pretrained(tmp_path / "x", safe_serialization=False)
    with pytest.raises(TypeError, match="push_to_hub"):
        m.save_pretrained(tmp_path / "x", push_to_hub=True)


def test_submodules_callable_on_arrays(ckpt):
    hf, d = ckpt
    m = GPT2LMHeadModel.from_pretrained(d)
    x = np.random.default_rng(2).standard_normal((2, T, D)).astype(np.float32)
    xt = torch.tensor(x)
    with torch.no_grad():
        pairs = [
            (m.transformer.h[0](x), hf.transformer.h[0](xt)),
            (m.transformer.h[1].attn(x)[0], hf.transformer.h[1].attn(xt)[0]),
            (m.transformer.h[0].attn.c_attn(x), hf.transformer.h[0].attn.c_attn(xt)),
            (m.transformer.h[0].mlp(x), hf.transformer.h[0].mlp(xt)),
            (m.transformer.h[0].ln_1(x), hf.transformer.h[0].ln_1(xt)),
            (m.transformer.ln_f(x), hf.transformer.ln_f(xt)),
            (m.lm_head(x), hf.lm_head(xt)),
            (m.transformer.wte(_ids((2, T))), hf.transformer.wte(torch.tensor(_ids((2, T))))),
        ]
    for i, (ours, ref) in enumerate(pairs):
        ref = ref[0] if isinstance(ref, tuple) else ref
        np.testing.assert_allclose(np.asarray(ours), ref.numpy(), atol=ATOL, rtol=0, err_msg=str(i))
    sub = m.get_submodule("transformer.h.1.attn.c_proj")
    assert sub is m.transformer.h[1].attn.c_proj
    assert m.get_submodule("") is m
    with pytest.raises(AttributeError, match="transformer.h.9"):
        m.get_submodule("transformer.h.9")
    with pytest.raises(TypeError, match="float"):
        m.transformer.h[0](np.zeros((1, 2, D), dtype=np.int64))
    mi.set_array_type("torch")
    try:
        y = m.transformer.h[0](xt)
        assert isinstance(y, torch.Tensor)
    finally:
        mi.set_array_type("numpy")


def test_root_and_transformer_hooks_and_with_kwargs(ckpt):
    hf, d = ckpt
    m = GPT2LMHeadModel.from_pretrained(d)
    ids = _ids((2, T), seed=3)
    results = []
    for model, to_in, conv in ((hf, torch.tensor, lambda a: a.detach().numpy()), (m, np.asarray, np.asarray)):
        seen = {}

        def root_pre(mod, args, kwargs):
            seen["pre_kwargs"] = sorted(kwargs)
            return args, kwargs

        def tr_hook(mod, args, output):
            seen["hidden"] = conv(output.last_hidden_state).copy()
            return None

        def root_fwd(mod, args, output):
            seen["logits"] = conv(output.logits).copy()
            output["logits"] = output.logits * 0.5      # a replacement the caller gets
            return output

        def attn_kw(mod, args, kwargs, output):
            seen["attn_kwargs_type"] = type(kwargs)
            return None

        def shift_ids(mod, args):
            return (args[0] % (V - 1) + 1,)

        hs = [model.register_forward_pre_hook(root_pre, with_kwargs=True),
              model.transformer.register_forward_pre_hook(shift_ids),
              model.transformer.register_forward_hook(tr_hook),
              model.register_forward_hook(root_fwd),
              model.transformer.h[0].attn.register_forward_hook(attn_kw, with_kwargs=True)]
        with torch.no_grad():
            out = model(to_in(ids))
        for h in hs:
            h.remove()
        seen["out"] = conv(out.logits).copy()
        assert seen["attn_kwargs_type"] is dict
        results.append(seen)
        with torch.no_grad():
            plain = conv(model(to_in(ids)).logits)
        seen["plain"] = plain.copy()
    ref, ours = results
    np.testing.assert_allclose(ours["hidden"], ref["hidden"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(ours["logits"], ref["logits"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(ours["out"], ref["out"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(ours["plain"], ref["plain"], atol=ATOL, rtol=0)   # hooks removed
    assert not np.allclose(ours["plain"], ours["logits"])     # the pre-hook changed the ids

    # a transformer forward hook that replaces last_hidden_state changes the logits, as in HF
    def zero_hidden(mod, args, output):
        output["last_hidden_state"] = output.last_hidden_state * 0
        return output
    for model in (hf, m):
        h = model.transformer.register_forward_hook(zero_hidden)
        with torch.no_grad():
            lg = model(torch.tensor(ids) if model is hf else ids).logits
        h.remove()
        assert np.abs(np.asarray(lg.detach() if model is hf else lg)).max() < 1e-5


def test_device_dtype_to(ckpt):
    _, d = ckpt
    m = GPT2LMHeadModel.from_pretrained(d)
    assert m.device == torch.device("cpu") and m.dtype == torch.float32
    assert m.transformer.h[0].device == torch.device("cpu")
    assert m.to("cpu") is m and m.to(torch.float32) is m and m.to(m.device) is m
    ids = torch.tensor(_ids((1, 4))).to(m.device)
    assert m(ids).logits.shape == (1, 4, V)
    with pytest.raises(ValueError, match="cuda"):
        m.to("cuda")


def test_offsets_mapping_like_fast_tokenizer(tmp_path):
    from tokenizers import ByteLevelBPETokenizer
    from test_tokenizer import ADVERSARIAL, CORPUS_LINES, corpus_text
    corpus = tmp_path / "c.txt"
    corpus.write_text(corpus_text(300), encoding="utf-8")
    bpe = ByteLevelBPETokenizer()
    bpe.train([str(corpus)], vocab_size=800, min_frequency=1, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(tmp_path))
    ref = transformers.GPT2TokenizerFast.from_pretrained(str(tmp_path))
    ours = GPT2Tokenizer.from_pretrained(str(tmp_path))
    texts = ADVERSARIAL + CORPUS_LINES + ["a\n\n b<|endoftext|>c", "日本語 κα x", "end   "]
    for s in texts:
        e, g = ref(s, return_offsets_mapping=True), ours(s, return_offsets_mapping=True)
        assert g["input_ids"] == e["input_ids"], s
        assert [tuple(o) for o in g["offset_mapping"]] == [tuple(o) for o in e["offset_mapping"]], s
    ref.pad_token, ours.pad_token = ref.eos_token, ours.eos_token
    for side in ("right", "left"):
        ref.padding_side = ours.padding_side = side
        kw = dict(return_offsets_mapping=True, padding=True, truncation=True, max_length=12)
        e, g = ref(texts[:6], **kw), ours(texts[:6], **kw)
        assert g["input_ids"] == e["input_ids"]
        assert [[tuple(o) for o in r] for r in g["offset_mapping"]] == \
            [[tuple(o) for o in r] for r in e["offset_mapping"]]
    g = ours(texts[:2], return_offsets_mapping=True, padding=True, return_tensors="pt")
    e = ref(texts[:2], return_offsets_mapping=True, padding=True, return_tensors="pt")
    assert torch.equal(g["offset_mapping"], e["offset_mapping"])
