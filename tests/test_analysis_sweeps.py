"""Ablation sweeps (analysis.mean_ablation_sweep / head_ablation_sweep) against the seeds'
loops written with the reference libraries on the same weights.

- mean_ablation_sweep vs the no-position seed's loop in TransformerLens + torch
  (``cache[name].mean(0)`` written in by ``run_with_hooks``, the seed's
  previous-token ``loss_fn``). Tolerance 1e-5 relative on the losses: both sides
  run float32 forwards that differ only in summation order (observed ~1e-7
  relative on losses ~6 after 2 layers); a wrong mean axis, hook or skipped
  point changes the loss by >= 1e-3.
- vs our own plain ``run_with_hooks`` loop: the sweep's shortcut (start each pass
  at the ablated layer from the cached residual stream) must be exact, so
  start_at_layer=True and False are compared bitwise, and the plain loop with a
  float64 NumPy loss within 1e-6 relative (float32 vs float64 loss arithmetic).
- head_ablation_sweep vs the GPT-2 seed's loop in Hugging Face transformers (a
  forward pre-hook on ``h[i].attn.c_proj`` zeroing one head at one position,
  ``log_softmax(logits[0, -2])[tokens[0, -1]]``), atol 2e-4 on log-probs as in
  test_gpt2 (float32, different GEMM orders over 3 layers); and vs our own
  ``hook_z`` run_with_hooks loop (same C forward) within 1e-5.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
tl = pytest.importorskip("transformer_lens")
transformers = pytest.importorskip("transformers")

from mechinterp_c import analysis as A  # noqa: E402
from mechinterp_c.transformers.modeling_gpt2 import GPT2LMHeadModel  # noqa: E402
from sweep_reference import seed_loss_fn, seed_mean_ablation, tl_pair  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# the no-position seed's model shape, smaller context
NOPOS = dict(n_layers=2, d_model=64, d_head=64, n_heads=1, d_mlp=256, d_vocab=300, n_ctx=20,
             act_fn="relu", normalization_type="LN", seed=1)


def _np_loss(shift):
    def loss(logits, tokens):
        lg = np.asarray(logits, dtype=np.float64)
        if shift > 0:
            lg, tg = lg[:, :-1], tokens[:, 1:]
        else:
            lg, tg = lg[:, 1:], tokens[:, :-1]
        mx = lg.max(-1, keepdims=True)
        lse = np.log(np.exp(lg - mx).sum(-1)) + mx[..., 0]
        return float(-(np.take_along_axis(lg, tg[..., None], -1)[..., 0] - lse).mean())
    return loss


@pytest.fixture(scope="module")
def nopos():
    return tl_pair(NOPOS)


def test_mean_ablation_sweep_matches_transformer_lens_seed_loop(nopos):
    tm, m = nopos
    rng = np.random.default_rng(3)
    tokens, mean_tokens = rng.integers(1, 300, (12, 20)), rng.integers(1, 300, (16, 20))
    res = A.mean_ablation_sweep(m, tokens, loss_fn="previous_token", mean_tokens=mean_tokens)

    # the seed's cell (tests/sweep_reference.py)
    losses, labels = seed_mean_ablation(tm, mean_tokens, tokens)
    with torch.no_grad():
        baseline = seed_loss_fn(tm(torch.tensor(tokens)), torch.tensor(tokens)).item()
    assert res.names == labels
    assert len(res) == len(labels) > 30
    np.testing.assert_allclose(res.losses, losses, rtol=1e-5)
    np.testing.assert_allclose(res.baseline, baseline, rtol=1e-5)
    # the ablations matter (so the comparison can fail): the spread is far above 1e-5
    assert np.ptp(res.losses) > 1e-2
    assert res["hook_embed"] == res.losses[0]
    t = res.table()
    np.testing.assert_array_equal(t["delta"], res.losses - res.baseline)


def test_mean_ablation_start_at_layer_is_exact_and_matches_plain_loop(nopos):
    _, m = nopos
    tokens = np.random.default_rng(4).integers(0, 300, (8, 20))
    fast = A.mean_ablation_sweep(m, tokens)
    slow = A.mean_ablation_sweep(m, tokens, start_at_layer=False)
    np.testing.assert_array_equal(fast.losses, slow.losses)       # same forward: bitwise
    assert fast.baseline == pytest.approx(float(m(tokens, return_type="loss")), rel=1e-6)
    # the plain loop: run_with_hooks with the mean over the batch of the cached activation
    _, cache = m.run_with_cache(tokens)
    loss = _np_loss(+1)
    for name, got in fast:
        avg = cache[name].mean(0, dtype=np.float64).astype(np.float32)

        def put(act, hook, avg=avg):
            act[...] = avg
        logits = m.run_with_hooks(tokens, fwd_hooks=[(name, put)])
        assert got == pytest.approx(loss(logits, tokens), rel=1e-6), name


def test_mean_ablation_names_filters_and_loss_callables(nopos):
    _, m = nopos
    tokens = np.random.default_rng(5).integers(0, 300, (6, 20))
    names = ["blocks.1.hook_resid_pre", "hook_embed", "ln_final.hook_normalized"]
    r = A.mean_ablation_sweep(m, tokens, hook_names=names, loss_fn=_np_loss(-1))
    ref = A.mean_ablation_sweep(m, tokens, hook_names=names, loss_fn="previous_token")
    assert r.names == names
    np.testing.assert_allclose(r.losses, ref.losses, rtol=1e-6)
    f = A.mean_ablation_sweep(m, tokens, hook_names=lambda n: n.endswith("hook_q"))
    assert f.names == ["blocks.0.attn.hook_q", "blocks.1.attn.hook_q"]
    one = A.mean_ablation_sweep(m, tokens, hook_names="blocks.0.attn.hook_q")
    assert one.losses[0] == f.losses[0]
    # torch-returning loss callables work (the seed's loss_fn on tensors)
    t = A.mean_ablation_sweep(m, tokens, hook_names=names[:1],
                              loss_fn=lambda lg, tk: seed_loss_fn(torch.tensor(lg), torch.tensor(tk)))
    assert t.losses[0] == pytest.approx(ref.losses[0], rel=1e-5)
    # passes in chunks of 4 sequences (uneven last chunk): per-row results, so the same
    # losses up to the float64 order of the per-chunk sums; a callable loss sees the
    # whole batch's logits reassembled
    for lf in ("previous_token", _np_loss(-1)):
        chunked = A.mean_ablation_sweep(m, tokens, hook_names=names, loss_fn=lf, batch_size=4,
                                        mean_tokens=tokens[::-1])
        whole = A.mean_ablation_sweep(m, tokens, hook_names=names, loss_fn=lf, batch_size=6,
                                      mean_tokens=tokens[::-1])
        np.testing.assert_allclose(chunked.losses, whole.losses, rtol=1e-6)
        np.testing.assert_allclose(chunked.baseline, whole.baseline, rtol=1e-6)
    # means are the float64 batch means of the activations
    _, cache = m.run_with_cache(tokens)
    np.testing.assert_allclose(r.means["hook_embed"], cache["hook_embed"].mean(0, dtype=np.float64),
                               rtol=1e-6, atol=1e-7)


def test_mean_ablation_sweep_errors(nopos):
    _, m = nopos
    tokens = np.random.default_rng(6).integers(0, 300, (4, 10))
    with pytest.raises(KeyError, match="unknown hook point 'blocks.9.hook_z'"):
        A.mean_ablation_sweep(m, tokens, hook_names=["blocks.9.hook_z"])
    with pytest.raises(ValueError, match="hook_result.*never fires"):
        A.mean_ablation_sweep(m, tokens, hook_names=["blocks.0.attn.hook_result"])
    with pytest.raises(ValueError, match="mean_tokens.*10 positions"):
        A.mean_ablation_sweep(m, tokens, mean_tokens=tokens[:, :5])
    with pytest.raises(ValueError, match="loss_fn"):
        A.mean_ablation_sweep(m, tokens, loss_fn="bogus")
    with pytest.raises(TypeError, match="loss_fn"):
        A.mean_ablation_sweep(m, tokens, loss_fn=3)
    with pytest.raises(TypeError, match="scalar loss"):
        A.mean_ablation_sweep(m, tokens, hook_names="hook_embed", loss_fn=lambda lg, tk: "x")
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        A.mean_ablation_sweep(m, tokens, batch_size=0)
    with pytest.raises(TypeError, match="model must be"):
        A.mean_ablation_sweep(object(), tokens)
    with pytest.raises(ValueError, match="at least 2 positions"):
        A.mean_ablation_sweep(m, tokens[:, :1])
    with pytest.raises(IndexError, match="id 300"):
        A.mean_ablation_sweep(m, np.full((2, 5), 300))
    # the model stays usable, with no hooks left behind
    assert not any(hp._handles for hp in m.hook_dict.values())
    assert np.isfinite(m(tokens)).all()


# ----------------------------------------------------------------------- head ablation

@pytest.fixture(scope="module")
def gpt2_tiny(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=3, n_embd=64, n_head=4, vocab_size=120,
                                  n_positions=40, bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if n.endswith("c_attn.weight"):
                p.mul_(8.0)          # attention far from uniform: a zeroed head matters
    d = tmp_path_factory.mktemp("gpt2_sweep")
    hf.save_pretrained(d)
    return hf, GPT2LMHeadModel.from_pretrained(str(d))


def test_head_ablation_matches_hf_seed_loop(gpt2_tiny):
    hf, m = gpt2_tiny
    tokens = torch.tensor(np.random.default_rng(7).integers(0, 120, (1, 15)))
    n_layers, n_heads, n_tokens = 3, 4, tokens.shape[1]
    n_embd, head_dim = 64, 16
    ref = np.zeros((n_layers, n_heads))
    for head in range(n_heads):
        for layeri in range(n_layers):       # the seed's cell, for every head
            def hook2ablate(module, input, head=head):
                head_tensor = input[0].view(1, n_tokens, n_heads, head_dim)
                head_tensor[:, -2, head, :] = 0
                head_tensor = head_tensor.view(1, n_tokens, n_embd)
                return tuple([head_tensor, *input[1:]])
            h = hf.transformer.h[layeri].attn.c_proj.register_forward_pre_hook(hook2ablate)
            with torch.no_grad():
                out = hf(tokens)
            h.remove()
            ref[layeri, head] = torch.log_softmax(out.logits[0, -2, :], -1)[tokens[0, -1]]
    with torch.no_grad():
        clean = torch.log_softmax(hf(tokens).logits[0, -2], -1)[tokens[0, -1]].item()
    res = A.head_ablation_sweep(m, tokens.numpy(), positions=-2, target_positions=-2)
    assert res.logprobs.shape == (3, 4, 1, 1)
    np.testing.assert_allclose(res.logprobs[:, :, 0, 0], ref, atol=2e-4, rtol=0)
    np.testing.assert_allclose(res.clean_logprobs[0, 0], clean, atol=2e-4, rtol=0)
    assert np.abs(res.delta).max() > 1e-2       # the ablations change something
    # the seed's exact call: one head, all layers
    one = A.head_ablation_sweep(m, tokens.numpy(), heads=[1], positions=-2, target_positions=-2)
    np.testing.assert_array_equal(one.logprobs[:, 0], res.logprobs[:, 1])
    with torch.no_grad():
        lg = hf(tokens).logits[0, -2, tokens[0, -1]].item()
    np.testing.assert_allclose(res.clean_logits[0, 0], lg, atol=2e-4)
    # a model built from the config and a state dict (no checkpoint file) has the same
    # tied unembedding: the sweep's NumPy unembedding once read a stale zero W_U there
    built = GPT2LMHeadModel(hf.config.to_dict())
    built.load_state_dict({k: v.detach().numpy() for k, v in hf.state_dict().items()})
    again = A.head_ablation_sweep(built, tokens.numpy(), positions=-2, target_positions=-2)
    np.testing.assert_array_equal(again.logprobs, res.logprobs)


def test_head_ablation_matches_hook_z_loop_all_positions_batched(gpt2_tiny):
    _, m = gpt2_tiny
    ht = m._ht
    tokens = np.random.default_rng(8).integers(0, 120, (3, 12))
    # max_rows=40: at most one copy of the 36-row batch per pass (forces the chunking)
    for max_rows in (40, 4096):
        res = A.head_ablation_sweep(m, tokens, layers=[2, 0], positions=[1, 5, -1],
                                    max_rows=max_rows)
        assert res.layers == [2, 0] and res.heads == [0, 1, 2, 3]
        assert res.logprobs.shape == (2, 4, 3, 11)
        for li, l in enumerate(res.layers):
            for h in res.heads:
                def zero(z, hook, h=h):
                    z[:, [1, 5, 11], h] = 0.0
                logits = ht.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{l}.attn.hook_z", zero)])
                lg = logits[:, :-1].astype(np.float64)
                mx = lg.max(-1, keepdims=True)
                lse = np.log(np.exp(lg - mx).sum(-1)) + mx[..., 0]
                picked = np.take_along_axis(lg, tokens[:, 1:, None], -1)[..., 0]
                np.testing.assert_allclose(res.logprobs[li, h], picked - lse, atol=1e-5, rtol=0)
                np.testing.assert_allclose(res.logits[li, h], picked, atol=1e-5, rtol=0)
    # a HookedTransformer directly gives the same table
    direct = A.head_ablation_sweep(ht, tokens, layers=[2, 0], positions=[1, 5, -1])
    np.testing.assert_array_equal(direct.logprobs, res.logprobs)


def test_head_ablation_errors(gpt2_tiny):
    _, m = gpt2_tiny
    tokens = np.random.default_rng(9).integers(0, 120, (1, 8))
    with pytest.raises(IndexError, match="layers: 3 is out of range for 3"):
        A.head_ablation_sweep(m, tokens, layers=[3])
    with pytest.raises(IndexError, match="heads: -5"):
        A.head_ablation_sweep(m, tokens, heads=-5)
    with pytest.raises(IndexError, match="positions: 8"):
        A.head_ablation_sweep(m, tokens, positions=8)
    with pytest.raises(ValueError, match="last position .7. has no next token"):
        A.head_ablation_sweep(m, tokens, target_positions=-1)
    with pytest.raises(TypeError, match="heads: expected integers"):
        A.head_ablation_sweep(m, tokens, heads=[1.5])
    with pytest.raises(ValueError, match="at least 2 positions"):
        A.head_ablation_sweep(m, tokens[:, :1])
    with pytest.raises(ValueError, match="layers: empty"):
        A.head_ablation_sweep(m, tokens, layers=[])
    assert not any(hp._handles for hp in m._ht.hook_dict.values())


def test_head_ablation_target_rows_path_matches_full_pass(gpt2_tiny):
    _, m = gpt2_tiny
    tokens = np.random.default_rng(10).integers(0, 120, (2, 10))
    full = A.head_ablation_sweep(m, tokens, positions=4)          # every target: full logits
    some = A.head_ablation_sweep(m, tokens, positions=4, target_positions=[3, -2])
    # the target rows' final norm + unembedding in NumPy vs in the C pass: float32 rounding
    np.testing.assert_allclose(some.logprobs, full.logprobs[..., [3, 8]], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(some.logits, full.logits[..., [3, 8]], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(some.clean_logprobs, full.clean_logprobs[:, [3, 8]])
    # a user's hook on the final norm must see every pass: then the full pass runs
    calls = []
    m._ht.add_hook("ln_final.hook_normalized", lambda a, hook: calls.append(a.shape))
    try:
        hooked = A.head_ablation_sweep(m, tokens, positions=4, target_positions=[3, -2])
    finally:
        m._ht.reset_hooks()
    assert len(calls) == 1 + 3 and calls[0] == (2, 10, 64)        # clean pass + 3 layers
    np.testing.assert_allclose(hooked.logprobs, some.logprobs, rtol=1e-5, atol=1e-5)
    assert not any(hp._handles for hp in m._ht.hook_dict.values())


def test_head_ablation_after_the_target_changes_nothing(gpt2_tiny):
    # causal: zeroing a head at positions after the last target cannot move it (the
    # passes stop at the target); before it, it does
    _, m = gpt2_tiny
    tokens = np.random.default_rng(11).integers(0, 120, (2, 9))
    after = A.head_ablation_sweep(m, tokens, positions=[5, 7], target_positions=[1, 4])
    np.testing.assert_allclose(after.logprobs, np.broadcast_to(after.clean_logprobs,
                                                               after.logprobs.shape), atol=1e-5)
    before = A.head_ablation_sweep(m, tokens, positions=[1], target_positions=[1, 4])
    assert np.abs(before.delta).max() > 1e-3


@pytest.mark.parametrize("attn", ["causal", "bidirectional", "rotary"])
def test_head_ablation_engine_matches_transformer_lens_hooks(attn):
    # the sweep runs on the patching engine (heads stacked along the batch, causal
    # passes recomputing only positions from the first ablated one); the reference is
    # TransformerLens's run_with_hooks zeroing hook_z. atol 1e-5 on log-probs: float32
    # passes in different summation orders over 2 layers (observed ~1e-6)
    cfg = dict(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=60, n_ctx=16,
               act_fn="gelu_new", seed=2)
    if attn == "rotary":      # the skipped positions' keys are read after the rotary embedding
        cfg.update(positional_embedding_type="rotary", rotary_dim=4)
    else:
        cfg["attention_dir"] = attn
    tm, m = tl_pair(cfg, perturb=0.3)
    if attn == "rotary":      # tl_pair perturbs every float buffer: restore the rotary tables
        fresh = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg)).state_dict()
        tm.load_state_dict({k: fresh[k] if "rotary" in k else v for k, v in tm.state_dict().items()})
    tokens = np.random.default_rng(12).integers(0, 60, (2, 9))
    for positions, targets in ((None, None), ([3, 5], [2, 4, 6]), (-3, [1, 6])):
        res = A.head_ablation_sweep(m, tokens, positions=positions, target_positions=targets)
        tp = res.target_positions
        sel = list(range(9)) if positions is None else list(np.atleast_1d(positions) % 9)
        for l in range(2):
            for h in range(4):
                def zero(z, hook, h=h):
                    z[:, sel, h] = 0.0
                    return z
                with torch.no_grad():
                    lg = tm.run_with_hooks(torch.tensor(tokens),
                                           fwd_hooks=[(f"blocks.{l}.attn.hook_z", zero)])
                lp = torch.log_softmax(lg.double(), -1)
                nxt = torch.tensor(tokens[:, np.asarray(tp) + 1])
                ref = lp[:, tp].gather(-1, nxt[..., None])[..., 0].numpy()
                np.testing.assert_allclose(res.logprobs[l, h], ref, atol=1e-5, rtol=0)
        assert np.abs(res.delta).max() > 1e-3
