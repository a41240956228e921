"""set_array_type("torch") reaches every API: TransformerLens hooks written with torch ops
run unchanged and edit the C pass's activations, outputs and caches are tensors sharing
the arena, weights and parameters are torch.nn.Parameter views of the C weights (leaves,
requires_grad honoured), and the Hugging Face adapters hand out tensors and Parameters.

Values are compared with TransformerLens / transformers on the same weights at the
forward-parity tolerance of test_hooked_transformer (TOL = 1e-5 of each tensor's scale:
the same float32 pass, summed in another order).
"""
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
einops = pytest.importorskip("einops")
tl = pytest.importorskip("transformer_lens")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

import mechinterp_c as mi  # noqa: E402
from test_hooked_transformer import assert_scaled_close, make_pair  # noqa: E402

TOKENS = np.random.default_rng(3).integers(0, 50, (3, 10))


@pytest.fixture
def torch_mode():
    mi.set_array_type("torch")
    try:
        yield
    finally:
        mi.set_array_type("numpy")


def tl_style_hook(z, hook):
    """A TransformerLens hook as researchers write it, with torch operations only."""
    z2 = z.clone()
    z2[:, :, 0] = torch.zeros_like(z2[:, :, 0])            # in-place index assignment
    flat = einops.rearrange(z2, "b p h d -> b p (h d)")
    flat[:, 1:] = flat[:, 1:] * 2.0
    return einops.rearrange(flat, "b p (h d) -> b p h d", h=z.shape[2])


def in_place_hook(pattern, hook):
    pattern[:, 1] = pattern[:, 1].mean(dim=-1, keepdim=True).expand_as(pattern[:, 1]).clone()


def test_torch_hooks_run_unchanged_and_edit_activations(torch_mode):
    tm, m = make_pair({})
    hooks = [("blocks.0.attn.hook_z", tl_style_hook), ("blocks.1.attn.hook_pattern", in_place_hook)]
    with torch.no_grad():
        ref = tm.run_with_hooks(torch.tensor(TOKENS), fwd_hooks=hooks)
        base = tm(torch.tensor(TOKENS))
    got = m.run_with_hooks(TOKENS, fwd_hooks=hooks)
    assert isinstance(got, torch.Tensor)
    assert_scaled_close(got.numpy(), ref.numpy(), "hooked logits")
    # the hooks changed the model's output (so the comparison above tests the edits)
    assert (ref - base).abs().max() > 1e-2

    seen = {}

    def look(q, hook):
        assert isinstance(q, torch.Tensor)
        seen[hook.name] = q
    _, cache = m.run_with_cache(TOKENS, names_filter=lambda n: n.endswith("hook_q"))
    m.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.attn.hook_q", look)])
    # hook_q is a strided view of the fused QKV buffer: the tensor has its strides
    assert seen["blocks.0.attn.hook_q"].shape == (3, 10, 4, 8)


def test_outputs_and_cache_are_tensors_sharing_the_arena(torch_mode):
    tm, m = make_pair({})
    logits, cache = m.run_with_cache(TOKENS)
    with torch.no_grad():
        tlogits, tcache = tm.run_with_cache(torch.tensor(TOKENS))
    assert isinstance(logits, torch.Tensor)
    assert_scaled_close(logits.numpy(), tlogits.numpy(), "logits")
    for k in tcache.keys():
        t = cache[k]
        assert isinstance(t, torch.Tensor), k
        assert t.data_ptr() == cache.cache_dict[k].__array_interface__["data"][0], k   # zero-copy
        assert_scaled_close(t.numpy(), tcache[k].numpy(), k)
    assert all(isinstance(v, torch.Tensor) for v in cache.values())
    # analysis methods return tensors too; loss is a 0-d tensor with .item()
    resid, labels = cache.accumulated_resid(return_labels=True)
    tresid, tlabels = tcache.accumulated_resid(return_labels=True)
    assert isinstance(resid, torch.Tensor) and labels == tlabels
    assert_scaled_close(resid.numpy(), tresid.numpy(), "accumulated_resid")
    loss = m(TOKENS, return_type="loss")
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0
    np.testing.assert_allclose(loss.item(), tm(torch.tensor(TOKENS), return_type="loss").item(),
                               rtol=1e-5)
    # the seed's own code on the outputs
    assert logits.argmax(dim=-1).shape == (3, 10)
    assert torch.allclose(logits.log_softmax(-1).exp().sum(-1), torch.ones(3, 10), atol=1e-5)


def test_weights_and_parameters_are_leaf_views(torch_mode):
    tm, m = make_pair({})
    W_pos = m.pos_embed.W_pos
    assert isinstance(W_pos, torch.nn.Parameter) and W_pos.is_leaf
    assert W_pos is m.W_pos is m.get_parameter("pos_embed.W_pos")    # one leaf per weight
    np.testing.assert_allclose(W_pos.norm().item(), tm.pos_embed.W_pos.norm().item(), rtol=1e-5)
    # shares the C memory: an edit through .data changes what the C core computes
    before = m(TOKENS).clone()
    with torch.no_grad():
        m.W_pos.data[:] = 0
        tm.pos_embed.W_pos.data[:] = 0
    after = m(TOKENS)
    assert (after - before).abs().max() > 1e-3
    with torch.no_grad():
        assert_scaled_close(after.numpy(), tm(torch.tensor(TOKENS)).numpy(), "logits, W_pos zeroed")
    # requires_grad on the tensor is the parameter's flag for training (and back)
    m.pos_embed.W_pos.requires_grad = False
    assert m._params["pos_embed.W_pos"].requires_grad is False
    names = dict(m.named_parameters())
    assert set(names) == {n for n, _ in tm.named_parameters()}
    assert names["pos_embed.W_pos"] is W_pos and not W_pos.requires_grad
    assert all(isinstance(p, torch.nn.Parameter) and p.is_leaf for p in m.parameters())
    m.get_parameter("pos_embed.W_pos").requires_grad_(True)
    assert m._params["pos_embed.W_pos"].requires_grad
    # a strided weight (W_Q is a view of the fused QKV weight) keeps its strides
    W_Q = m.blocks[0].attn.W_Q
    assert W_Q.data_ptr() == m._params["blocks.0.attn.W_Q"].__array_interface__["data"][0]
    np.testing.assert_array_equal(W_Q.detach().numpy(), tm.blocks[0].attn.W_Q.detach().numpy())
    assert isinstance(m.W_Q, torch.Tensor) and m.W_Q.shape == tm.W_Q.shape
    sd = m.state_dict()
    assert sd["embed.W_E"] is m.W_E
    # a torch optimizer takes the parameters (training through torch is the gradients issue)
    torch.optim.AdamW(m.parameters(), lr=1e-3)
    # the circuit views stay NumPy-backed FactoredMatrix objects, and right
    np.testing.assert_allclose(m.OV.AB, tm.OV.AB.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_numpy_stays_default_and_torch_is_not_imported():
    code = ("import sys, numpy as np, mechinterp_c as mi\n"
            "cfg = mi.HookedTransformerConfig(n_layers=1, d_model=16, d_head=4, n_heads=4, d_mlp=32, "
            "d_vocab=20, n_ctx=8, act_fn='relu')\n"
            "m = mi.HookedTransformer(cfg)\n"
            "l, c = m.run_with_cache(np.zeros((1, 4), dtype=np.int64))\n"
            "m.run_with_hooks(np.zeros((1, 4), dtype=np.int64), fwd_hooks=[('hook_embed', lambda a, hook: a * 2)])\n"
            "assert type(l) is np.ndarray and isinstance(c['embed'], np.ndarray)\n"
            "assert isinstance(m.W_pos, np.ndarray) and mi.get_array_type() == 'numpy'\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_hook_returning_bad_tensor_is_refused_and_model_stays_usable(torch_mode):
    _, m = make_pair({})
    with pytest.raises(ValueError, match="returned shape"):
        m.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x[:, :2])])
    assert isinstance(m(TOKENS), torch.Tensor)


def test_hf_adapter_tensors_and_parameters(tmp_path, torch_mode):
    from mechinterp_c.transformers import GPT2LMHeadModel
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4,
                                                              vocab_size=50, n_positions=16)).eval()
    hf.save_pretrained(tmp_path)
    m = GPT2LMHeadModel.from_pretrained(tmp_path)
    W = m.transformer.h[0].attn.c_attn.weight
    assert isinstance(W, torch.nn.Parameter) and W is m.transformer.h[0].attn.c_attn.weight
    assert m.lm_head.weight is m.transformer.wte.weight              # tied, one Parameter
    q, k, v = torch.split(W.T, 32, dim=0)                              # the REVE seed's idiom
    tq, tk, tv = torch.split(hf.transformer.h[0].attn.c_attn.weight.T, 32, dim=0)
    np.testing.assert_array_equal(q.detach().numpy(), tq.detach().numpy())
    names = [n for n, _ in m.named_parameters()]
    assert all(isinstance(p, torch.nn.Parameter) for p in m.parameters()) and "transformer.wte.weight" in names
    ids = torch.tensor(np.random.default_rng(1).integers(0, 50, (2, 9)))
    got = m(ids).logits
    with torch.no_grad():
        ref = hf(ids).logits
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=2e-4, rtol=0)


def test_hfarray_torch_methods_without_torch_mode(tmp_path):
    from mechinterp_c.transformers.modeling_utils import HFArray
    x = np.random.default_rng(0).standard_normal((2, 3, 7)).astype(np.float32).view(HFArray)
    t = torch.tensor(np.asarray(x))
    np.testing.assert_allclose(x.softmax(dim=-1), t.softmax(dim=-1).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(x.softmax(1), t.softmax(1).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(x.log_softmax(-1), t.log_softmax(-1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x.argmax(dim=-1), t.argmax(dim=-1).numpy())
    np.testing.assert_array_equal(x.argmax(dim=1, keepdim=True), t.argmax(dim=1, keepdim=True).numpy())
    assert x.argmax() == t.argmax().item() and x[0, 1:].shape == tuple(t[0, 1:].shape)
    with pytest.raises(AttributeError, match="set_array_type\\('torch'\\)"):
        x.topk(2)
