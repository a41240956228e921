"""Refuse, never ignore: a dtype (NotImplementedError) or device (ValueError) the C core
cannot honour (it runs on the CPU in float32), ``.cuda()``, ``.half()``, and unknown
keywords get an error naming them, in the TransformerLens and the Hugging Face API; the
model stays usable afterwards."""
import numpy as np
import pytest

from text_reference import make_checkpoint, torch

import mechinterp_c as mi
from mechinterp_c import HookedTransformer
from mechinterp_c.transformers import AutoModelForCausalLM, GPT2LMHeadModel

CFG = dict(n_layers=1, d_model=16, d_head=8, n_heads=2, d_mlp=32, d_vocab=30, n_ctx=8,
           act_fn="relu", seed=0)
TOKENS = np.array([[1, 2, 3, 4]])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("refusals")
    make_checkpoint(d, n_layer=1, n_embd=32, n_head=2, n_positions=16)
    return d


@pytest.mark.parametrize("dtype", ["float16", "float64", torch.float16])
def test_config_dtype_refused(dtype):
    with pytest.raises(NotImplementedError, match=str(dtype).replace("torch.", "")):
        HookedTransformer(dict(CFG, dtype=dtype))


def test_config_float32_cpu_accepted_and_transformer_lens_config():
    import transformer_lens as tl
    for dtype in ("float32", torch.float32, np.float32):
        HookedTransformer(dict(CFG, dtype=dtype, device="cpu"))
    with pytest.raises(ValueError, match="cuda"):
        HookedTransformer(dict(CFG, device="cuda"))
    # a TransformerLens config keeps its dtype: float16 is refused, not dropped, and
    # bfloat16 gives bfloat16 weights (tests/test_bf16_model.py)
    tl_cfg = tl.HookedTransformerConfig(**CFG, dtype=torch.float16, device="cpu")
    with pytest.raises(NotImplementedError, match="float16"):
        HookedTransformer(tl_cfg)
    assert HookedTransformer(tl.HookedTransformerConfig(**CFG, dtype=torch.bfloat16))._core.bf16
    HookedTransformer(tl.HookedTransformerConfig(**CFG, device="cpu"))


def _moves(model):
    return [lambda: model.cuda(), lambda: model.half(), lambda: model.bfloat16(),
            lambda: model.double(), lambda: model.mps(), lambda: model.to("cuda"),
            lambda: model.to(torch.float16), lambda: model.to("cpu", torch.bfloat16),
            lambda: model.to(dtype=torch.float64), lambda: model.to(device="cuda:0"),
            lambda: model.to(torch.device("meta"))]


def _stays(model):
    return [model.to("cpu"), model.to(torch.float32), model.to(torch.device("cpu")),
            model.to("cpu", dtype=torch.float32), model.cpu(), model.float()]


def test_hooked_transformer_moves_refused():
    m = HookedTransformer(CFG)
    before = np.array(m(TOKENS))
    for move in _moves(m):
        with pytest.raises((NotImplementedError, ValueError), match="CPU memory only|float32 only|not converted in place"):
            move()
    assert all(x is m for x in _stays(m))
    with pytest.raises(TypeError, match="colour"):
        m.to("cpu", colour="red")
    np.testing.assert_array_equal(m(TOKENS), before)


def test_hooked_transformer_unknown_keywords_named():
    m = HookedTransformer(CFG)
    with pytest.raises(TypeError, match="bogus"):
        HookedTransformer(CFG, bogus=1)
    with pytest.raises(TypeError, match="bogus"):
        m(TOKENS, bogus=1)
    with pytest.raises(TypeError, match="bogus"):
        m.run_with_cache(TOKENS, bogus=1)
    with pytest.raises(TypeError, match="bogus"):
        m.run_with_hooks(TOKENS, fwd_hooks=[], bogus=1)
    assert m(TOKENS).shape == (1, 4, 30)


def test_hooked_transformer_from_pretrained_refusals(ckpt):
    for kw, exc, word in ((dict(dtype="float64"), NotImplementedError, "float64"),
                          (dict(torch_dtype=torch.float16), NotImplementedError, "float16"),
                          (dict(device="cuda"), ValueError, "cuda")):
        with pytest.raises(exc, match=word):
            HookedTransformer.from_pretrained(ckpt, **kw)
    with pytest.raises(NotImplementedError, match="first_n_layers"):
        HookedTransformer.from_pretrained_no_processing(ckpt, first_n_layers=1)
    m = HookedTransformer.from_pretrained(ckpt, dtype="float32", device="cpu", move_to_device=True)
    assert m("the cat").shape[0] == 1


def test_hf_from_pretrained_refusals(ckpt):
    for load in (GPT2LMHeadModel.from_pretrained, AutoModelForCausalLM.from_pretrained):
        for kw, exc, word in ((dict(torch_dtype=torch.float64), NotImplementedError, "float64"),
                              (dict(dtype="float16"), NotImplementedError, "float16"),
                              (dict(device_map="cuda"), ValueError, "cuda"),
                              (dict(use_safetensors=False), NotImplementedError, "safetensors"),
                              (dict(output_scores=True), TypeError, "output_scores")):
            with pytest.raises(exc, match=word):
                load(ckpt, **kw)
        with pytest.raises(TypeError, match="positional"):
            load(ckpt, "extra")
        m = load(ckpt, torch_dtype=torch.float32, dtype="auto", device_map="cpu",
                 local_files_only=True, low_cpu_mem_usage=True)
        assert m(TOKENS).logits.shape == (1, 4, m.config.vocab_size)


def test_hf_moves_refused(ckpt):
    m = GPT2LMHeadModel.from_pretrained(ckpt)
    before = np.array(m(TOKENS).logits)
    for target in (m, m.transformer.h[0], m.lm_head):
        for move in _moves(target):
            with pytest.raises((NotImplementedError, ValueError), match="CPU memory only|float32 only|not converted in place"):
                move()
        assert all(x is target for x in _stays(target))
    with pytest.raises(NotImplementedError, match="inputs_embeds"):   # (labels now give a loss)
        m(TOKENS, inputs_embeds=TOKENS)
    assert np.isfinite(float(m(TOKENS, labels=TOKENS).loss))   # labels are supported now
    np.testing.assert_array_equal(m(TOKENS).logits, before)
    assert mi.devices.CPUFloat32.to.__doc__


def test_tokenizer_keywords_refused(ckpt):
    from mechinterp_c.transformers import GPT2Tokenizer
    tok = GPT2Tokenizer.from_pretrained(ckpt)
    for kw in (dict(stride=2), dict(return_token_type_ids=True)):   # offsets: supported now
        with pytest.raises(NotImplementedError, match=next(iter(kw))):
            tok("the cat", **kw)
        with pytest.raises(NotImplementedError, match=next(iter(kw))):
            tok.encode("the cat", **kw)
    with pytest.raises(TypeError, match="bogus"):
        GPT2Tokenizer.from_pretrained(ckpt, bogus=1)
    assert tok("the cat", verbose=False, return_token_type_ids=False)["input_ids"] == tok.encode("the cat")


def test_run_with_cache_device_refused():
    m = HookedTransformer(CFG)
    with pytest.raises(ValueError, match="cuda"):
        m.run_with_cache(TOKENS, device="cuda")
    assert m.run_with_cache(TOKENS, device="cpu")[0].shape == (1, 4, 30)
