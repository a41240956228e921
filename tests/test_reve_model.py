"""The whole REVE model on the C core (mechinterp_c.transformers.modeling_reve) vs
the PyTorch reference (tests/reve_reference.py) with the same random weights.

The reference runs in float64 (the truth); the C model computes in float32.
Tolerances are relative to the largest magnitude of each reference tensor
(``err <= tol * max|ref|``), because the residual stream grows with depth:
  * patches, pos4: exact (copies).
  * front end (patch_emb, steps 3a/3b, pos_embed): 5e-5 abs, as tests/test_reve.py
    (a LayerNorm amplifies float32 rounding ~10x).
  * block activations (to_qkv, net steps, output): 2e-5 relative. Each block adds
    float32 rounding of dot products of length D or M (~sqrt(K) * 6e-8 ~ 2e-6
    relative) and the RMSNorms rescale it; measured ~1e-6 for 4 blocks, so 2e-5
    leaves ~10x slack without hiding a wrong formula (a mis-ordered QKV split,
    a swapped value/gate or a missing residual gives errors of order 1).
"""
import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reve_reference import random_reve, save_pretrained, seed_hooks  # noqa: E402

from mechinterp_c.transformers import AutoModel  # noqa: E402
from mechinterp_c.transformers import modeling_reve  # noqa: E402

BLOCK_TOL = 2e-5
FRONT_TOL = 5e-5
SEED_CHANNELS = ['Fp1', 'Fp2', 'F3', 'F4', 'F7', 'F8', 'T3', 'T4', 'C3', 'C4', 'T5', 'T6',
                 'P3', 'P4', 'O1', 'O2', 'Fz', 'Cz', 'Pz', 'A2']


def rel_err(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)


def make(tmp_path, name, **cfg):
    ref = random_reve(seed=3, **cfg)
    d = save_pretrained(ref, tmp_path / name)
    model = AutoModel.from_pretrained(str(d), trust_remote_code=True)
    return ref.double(), model


BASE = dict(embed_dim=512, depth=3, heads=8, head_dim=64, mlp_dim_ratio=2.66, freqs=4,
            patch_size=200, patch_overlap=20)
ODD = dict(embed_dim=96, depth=2, heads=3, head_dim=24, mlp_dim_ratio=2.66, freqs=4,
           patch_size=37, patch_overlap=5)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make(tmp_path_factory.mktemp("reve"), "reve-base-3l", **BASE)


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    return make(tmp_path_factory.mktemp("reve"), "reve-odd", **ODD)


def inputs(rng, B, C, T, pos_batch=None):
    eeg = rng.standard_normal((B, C, T)).astype(np.float32)
    pos = rng.uniform(-0.1, 0.1, (pos_batch or B, C, 3)).astype(np.float32)
    return eeg, pos


def run_seed_parity(ref, model, eeg, pos):
    """Seed steps 1-4 through the module tree, the seed hooks on both models, the
    final output: every comparison of the issue."""
    cfg = model.config
    L = cfg.depth
    te, tp = torch.from_numpy(eeg).double(), torch.from_numpy(pos).double()
    B, C = eeg.shape[:2]
    # Step 1: patches (the seed's X.unfold), patch embeddings
    from mechinterp_c import reve
    patches = reve.unfold(eeg, cfg.patch_size, cfg.patch_overlap)
    ref_patches = te.unfold(2, cfg.patch_size, cfg.patch_size - cfg.patch_overlap)
    assert rel_err(patches, ref_patches.numpy()) == 0.0
    P = patches.shape[2]
    emb = model.to_patch_embedding(patches).reshape(B, C * P, cfg.embed_dim)
    with torch.no_grad():
        e = ref.embed(te, tp.expand(B, C, 3))
        np.testing.assert_allclose(emb, e["patch_emb"].numpy(), atol=FRONT_TOL)
        # Step 2, 3a, 3b, final position embedding
        pos4 = model.fourier4d.add_time_patch(pos, patches.shape[2])
        np.testing.assert_array_equal(pos4, e["pos4"].numpy()[: pos.shape[0]].astype(np.float32))
        pos_expand = model.mlp4d(pos4)
        pos_fourier = model.fourier4d(pos4)
        pos_embed = model.ln(pos_expand + pos_fourier)
        Bp = pos.shape[0]
        np.testing.assert_allclose(pos_expand, e["pos_expand"].numpy()[:Bp], atol=FRONT_TOL)
        np.testing.assert_allclose(pos_fourier, e["pos_fourier"].numpy()[:Bp], atol=2e-6)
        np.testing.assert_allclose(pos_embed, e["pos_embed"].numpy()[:Bp], atol=FRONT_TOL)

    acts, handles = seed_hooks(model, L)
    Y = model(eeg, pos)
    for h in handles:
        h.remove()
    ref_acts, ref_handles = seed_hooks(ref, L)
    with torch.no_grad():
        Y_ref = ref(te, tp.expand(B, C, 3))
    for h in ref_handles:
        h.remove()
    assert set(acts) == set(ref_acts) and len(acts) == 5 * L
    worst = 0.0
    for k, v in ref_acts.items():
        r = v.numpy() if hasattr(v, "numpy") else v
        assert acts[k].shape == r.shape, k
        err = rel_err(acts[k], r)
        worst = max(worst, err)
        assert err <= BLOCK_TOL, (k, err)
    assert Y.shape == (B, C, P, cfg.embed_dim)
    assert rel_err(Y, Y_ref.numpy()) <= BLOCK_TOL
    return acts, Y, Y_ref.numpy(), worst


def test_reve_base_widths_parity(base, rng):
    """reve-base widths (D 512, 8 heads x 64, GEGLU 2.66, patch 200/20), 3 blocks, the
    seed's input shape per epoch [C=20, T=1000]."""
    ref, model = base
    eeg, pos = inputs(rng, 2, 20, 1000, pos_batch=1)
    acts, Y, Y_ref, worst = run_seed_parity(ref, model, eeg, pos)
    assert acts["at_0_qkv"].shape == (2, 100, 3 * 512)
    assert acts["ff_1_1"].shape == (2, 100, 2 * 1361)
    assert acts["ff_1_2"].shape == (2, 100, 1361)
    assert worst < BLOCK_TOL


def test_odd_config_partial_last_patch(odd, rng):
    """embed_dim 96, 3 heads of 24 (inner 72 != D), patch 37 / overlap 5, T = 140:
    windows at 0, 32, 64, 96 and a partial one at 128 that is dropped."""
    ref, model = odd
    eeg, pos = inputs(rng, 3, 5, 140)
    acts, Y, Y_ref, _ = run_seed_parity(ref, model, eeg, pos)
    assert Y.shape == (3, 5, 4, 96)
    assert acts["at_1_qkv"].shape == (3, 20, 3 * 72)
    assert model.config.mlp_dim == int(96 * 2.66) == 255


def test_return_output_and_backbone(odd, rng):
    """return_output=True: depth + 1 residual streams (input, then each block), as the
    published TransformerBackbone(return_out_layers=True)."""
    ref, model = odd
    eeg, pos = inputs(rng, 2, 5, 100)
    outs = model(eeg, pos, return_output=True)
    with torch.no_grad():
        e = ref.embed(torch.from_numpy(eeg).double(), torch.from_numpy(pos).double())
        x = e["x"]
        ref_outs = [x]
        for attn, ff in ref.transformer.layers:
            x = attn(x) + x
            x = ff(x) + x
            ref_outs.append(x)
    assert len(outs) == model.config.depth + 1
    for o, r in zip(outs, ref_outs):
        assert rel_err(o, r.numpy()) <= BLOCK_TOL
    # the backbone alone, on the reference's residual input
    again = model.transformer(e["x"].float().numpy())
    assert rel_err(again, ref_outs[-1].numpy()) <= BLOCK_TOL


def test_modules_callable_directly(odd, rng):
    """Each module called on arrays equals the torch module on the same input."""
    ref, model = odd
    x = rng.standard_normal((2, 7, 96)).astype(np.float32)
    tx = torch.from_numpy(x).double()
    with torch.no_grad():
        for i in range(model.config.depth):
            a, r = model.transformer.layers[i][0], ref.transformer.layers[i][0]
            assert rel_err(a(x), r(tx).numpy()) <= BLOCK_TOL
            assert rel_err(a.norm(x), r.norm(tx).numpy()) <= BLOCK_TOL
            assert rel_err(a.to_qkv(x), r.to_qkv(tx).numpy()) <= BLOCK_TOL
            f, rf = model.transformer.layers[i][1], ref.transformer.layers[i][1]
            assert rel_err(f(x), rf(tx).numpy()) <= BLOCK_TOL
            assert rel_err(f.net[1](x), rf.net[1](tx).numpy()) <= BLOCK_TOL
    # weights read as the seed reads them
    np.testing.assert_array_equal(model.transformer.layers[1][1].net[1].weight,
                                  ref.transformer.layers[1][1].net[1].weight.detach().float().numpy())
    np.testing.assert_array_equal(model.transformer.layers[1][0].to_qkv.weight,
                                  ref.transformer.layers[1][0].to_qkv.weight.detach().float().numpy())
    np.testing.assert_array_equal(model.to_patch_embedding[0].weight,
                                  ref.to_patch_embedding[0].weight.detach().float().numpy())
    with pytest.raises(ValueError, match="read-only"):
        model.transformer.layers[0][1].net[1].weight[0, 0] = 1.0


def test_geglu_demo_of_the_seed(odd):
    """The seed's GEGLU demo: net[2](x) on 2722 points == x1 * gelu(x2)."""
    _, model = odd
    N = 2722
    x = torch.linspace(-2, 2, N)
    x1, x2 = x[:N // 2], x[N // 2:]
    y_pt = model.transformer.layers[1][1].net[2](x)
    y_mn = x1 * F.gelu(x2)
    assert y_pt.shape == (N // 2,)
    np.testing.assert_allclose(y_pt, y_mn.numpy(), atol=2e-7)   # both float32, same erf GELU
    with pytest.raises(ValueError, match="even last axis"):
        model.transformer.layers[1][1].net[2](np.zeros(5, np.float32))


def test_hooks_that_edit(odd, rng):
    """Hooks returning or editing values change the pass as in torch: to_qkv output
    scaled, GEGLU gate half zeroed through net[1], net output replaced."""
    ref, model = odd
    eeg, pos = inputs(rng, 2, 5, 100)

    def half(module, inp, out):
        return out * 0.5

    def zero_gate(module, inp, out):
        out[..., out.shape[-1] // 2:] = 0.0   # gelu(0) = 0: the MLP of block 0 vanishes

    def negate(module, inp, out):
        return -out

    targets = lambda m: (m.transformer.layers[1][0].to_qkv, m.transformer.layers[0][1].net[1],
                         m.transformer.layers[1][1].net)
    hs = [mod.register_forward_hook(fn) for mod, fn in zip(targets(model), (half, zero_gate, negate))]
    y = model(eeg, pos)
    hr = [mod.register_forward_hook(fn) for mod, fn in zip(targets(ref), (half, zero_gate, negate))]
    with torch.no_grad():
        y_ref = ref(torch.from_numpy(eeg).double(), torch.from_numpy(pos).double())
    for h in hs + hr:
        h.remove()
    assert rel_err(y, y_ref.numpy()) <= BLOCK_TOL
    # removed hooks: back to the plain model
    with torch.no_grad():
        y_plain = ref(torch.from_numpy(eeg).double(), torch.from_numpy(pos).double())
    assert rel_err(model(eeg, pos), y_plain.numpy()) <= BLOCK_TOL
    assert rel_err(y_plain.numpy(), y_ref.numpy()) > 1e-2      # the edits did matter


def test_front_end_module_hooks(odd, rng):
    """A hook on a front-end module runs the seed's steps module by module."""
    ref, model = odd
    eeg, pos = inputs(rng, 2, 5, 100)
    seen = {}
    def look(module, inp, out):
        seen["mlp4d"] = out.shape

    h = model.mlp4d.register_forward_hook(look)
    h2 = model.to_patch_embedding.register_forward_hook(lambda m, i, o: o * 2.0)
    y = model(eeg, pos)
    h.remove()
    h2.remove()
    rh = ref.to_patch_embedding.register_forward_hook(lambda m, i, o: o * 2.0)
    with torch.no_grad():
        y_ref = ref(torch.from_numpy(eeg).double(), torch.from_numpy(pos).double())
    rh.remove()
    assert seen["mlp4d"] == (2, 10, 96)
    assert rel_err(y, y_ref.numpy()) <= BLOCK_TOL


def test_transformer_lens_api(odd, rng):
    """run_with_cache / run_with_hooks with TransformerLens names on the same model."""
    ref, model = odd
    eeg, pos = inputs(rng, 2, 5, 100)
    acts, handles = seed_hooks(model, 2)
    y = model(eeg, pos)
    for h in handles:
        h.remove()
    out, cache = model.run_with_cache(eeg, pos)
    np.testing.assert_array_equal(out, y)
    H, Dh = 3, 24
    for l in range(2):
        qkv = np.asarray(acts[f"at_{l}_qkv"])
        for i, c in enumerate("qkv"):
            np.testing.assert_array_equal(cache[f"blocks.{l}.attn.hook_{c}"],
                                          qkv[..., i * H * Dh:(i + 1) * H * Dh].reshape(2, 10, H, Dh))
        q = cache[f"blocks.{l}.attn.hook_q"].astype(np.float64)
        k = cache[f"blocks.{l}.attn.hook_k"].astype(np.float64)
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(Dh)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        np.testing.assert_allclose(cache[f"blocks.{l}.attn.hook_pattern"], p, atol=1e-6)
        # the seed's X1 is recomputed by ops.rms_norm (its own rounding): 1 ulp-level
        np.testing.assert_allclose(cache[f"blocks.{l}.ln2.hook_normalized"]
                                   * model.transformer.layers[l][1].net[0].weight,
                                   acts[f"ff_{l}_0"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(cache[f"blocks.{l}.mlp.hook_post"], acts[f"ff_{l}_2"], atol=1e-6)
        np.testing.assert_allclose(cache[f"blocks.{l}.hook_mlp_out"], acts[f"ff_{l}_3"], atol=1e-5)
    fe = model.hooked.frontend(eeg, pos, intermediates=True)
    np.testing.assert_array_equal(cache["hook_embed"], fe["patch_emb"])
    np.testing.assert_array_equal(cache["hook_pos_embed"], np.broadcast_to(fe["pos_embed"], (2, 10, 96)))
    assert "ln_final.hook_normalized" not in cache.cache_dict and "unembed.hook_out" not in cache.cache_dict
    _, c1 = model.run_with_cache(eeg, pos, names_filter="blocks.1.attn.hook_pattern")
    assert list(c1.cache_dict) == ["blocks.1.attn.hook_pattern"]

    # ablate head 1 of block 0 (its z) in both idioms vs torch
    def ablate(z, hook):
        z[:, :, 1] = 0.0

    y_abl = model.run_with_hooks(eeg, pos, fwd_hooks=[("blocks.0.attn.hook_z", ablate)])

    def ablate_ref(module, inp):
        z = inp[0].clone()
        z[..., Dh:2 * Dh] = 0.0
        return (z,)

    rh = ref.transformer.layers[0][0].to_out.register_forward_pre_hook(ablate_ref)
    with torch.no_grad():
        y_ref = ref(torch.from_numpy(eeg).double(), torch.from_numpy(pos).double())
    rh.remove()
    assert rel_err(y_abl, y_ref.numpy()) <= BLOCK_TOL
    np.testing.assert_array_equal(model(eeg, pos), y)   # hooks gone after run_with_hooks
    # no logits, so no metric to differentiate: backward hooks are refused, not ignored
    with pytest.raises(NotImplementedError, match="bwd_hooks"):
        model.hooked.run_with_hooks(eeg, pos, bwd_hooks=[("blocks.0.attn.hook_z", ablate)])
    np.testing.assert_array_equal(model(eeg, pos), y)
    # stop_at_layer: the residual stream entering block 1
    mid = model.hooked(eeg, pos, stop_at_layer=1)
    np.testing.assert_array_equal(mid, cache["blocks.1.hook_resid_pre"])


def test_bad_input_clear_errors_model_usable(odd, rng):
    _, model = odd
    eeg, pos = inputs(rng, 2, 5, 100)
    good = np.array(model(eeg, pos))
    with pytest.raises(ValueError, match="channel"):
        model(eeg, pos[:, :4])
    with pytest.raises(ValueError, match="shorter than one patch"):
        model(eeg[..., :30], pos)
    bad = eeg.copy()
    bad[1, 2, 7] = np.nan
    with pytest.raises(ValueError, match="eeg.*(NaN|non-finite)"):
        model(bad, pos)
    badp = pos.copy()
    badp[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="pos.*(inf|non-finite)"):
        model(eeg, badp)
    with pytest.raises(TypeError, match="eeg.*dtype int64"):
        model(eeg.astype(np.int64), pos)
    with pytest.raises(TypeError, match="pos.*dtype complex"):
        model(eeg, pos.astype(np.complex64))
    with pytest.raises(TypeError, match="eeg"):
        model("not an array", pos)
    with pytest.raises(ValueError, match="eeg.*3 dimensions"):
        model(eeg[0], pos)

    def boom(module, inp, out):
        raise RuntimeError("hook failed")

    h = model.transformer.layers[0][0].to_qkv.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="hook failed"):
        model(eeg, pos)
    h.remove()

    def wrong(module, inp, out):
        return np.zeros(3, np.float32)

    h = model.transformer.layers[1][1].net.register_forward_hook(wrong)
    with pytest.raises(ValueError, match="net.*shape"):
        model(eeg, pos)
    h.remove()
    np.testing.assert_array_equal(model(eeg, pos), good)
    # float64 and torch inputs are accepted (converted once)
    np.testing.assert_allclose(model(eeg.astype(np.float64), torch.from_numpy(pos)), good, atol=1e-6)


def test_from_pretrained_cache_bank_and_errors(tmp_path, rng, monkeypatch):
    """Hub ids through the Hugging Face cache layout, the position-bank repository, and
    corrupt or missing files."""
    from mechinterp_c import reve
    ref = random_reve(seed=5, **ODD)
    cache = tmp_path / "hub"
    snap = cache / "models--brain-bzh--reve-base" / "snapshots" / "abc123"
    save_pretrained(ref, snap)
    (cache / "models--brain-bzh--reve-base" / "refs").mkdir(parents=True)
    (cache / "models--brain-bzh--reve-base" / "refs" / "main").write_text("abc123")
    bank_snap = cache / "models--brain-bzh--reve-positions" / "snapshots" / "def456"
    bank_snap.mkdir(parents=True)
    (cache / "models--brain-bzh--reve-positions" / "refs").mkdir(parents=True)
    (cache / "models--brain-bzh--reve-positions" / "refs" / "main").write_text("def456")
    default = reve.default_position_bank()
    table = {n: [float(v) for v in default.position(n)] for n in default.names}
    (bank_snap / "positions.json").write_text(json.dumps(table))
    (bank_snap / "config.json").write_text(json.dumps({"model_type": "reve_position_bank"}))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    # the seed's two calls
    pos_bank = AutoModel.from_pretrained('brain-bzh/reve-positions', trust_remote_code=True)
    model = AutoModel.from_pretrained('brain-bzh/reve-base', trust_remote_code=True)
    model.eval()
    positions = pos_bank(SEED_CHANNELS).unsqueeze(0)
    assert positions.shape == (1, 20, 3)
    np.testing.assert_array_equal(positions[0, 3], np.float32(table["F4"]))
    with pytest.raises(KeyError, match="close matches"):
        pos_bank(["Fp1", "Cz3"])
    assert model.config.depth == 2 and model.config.embed_dim == 96
    eeg = rng.standard_normal((2, 20, 100)).astype(np.float32)
    with torch.no_grad():
        y_ref = ref.double()(torch.from_numpy(eeg).double(),
                             torch.from_numpy(np.asarray(positions)).double().expand(2, 20, 3))
    assert rel_err(model(eeg, positions), y_ref.numpy()) <= BLOCK_TOL

    with pytest.raises(FileNotFoundError, match="looked in"):
        AutoModel.from_pretrained("brain-bzh/reve-large")
    # corrupt / missing files in a local checkpoint
    d = save_pretrained(ref, tmp_path / "ckpt")
    sd = modeling_reve.ReveModel.from_pretrained(d).state_dict()
    assert rel_err(sd["transformer.layers.1.1.net.1.weight"],
                   ref.transformer.layers[1][1].net[1].weight.detach().numpy()) < 1e-7
    blob = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises((ValueError, OSError), match="model.safetensors"):
        AutoModel.from_pretrained(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        AutoModel.from_pretrained(d)
    from safetensors.torch import save_file
    state = {k: v.float() for k, v in ref.state_dict().items()}
    bad = dict(state)
    del bad["transformer.layers.1.0.to_out.weight"]
    save_file(bad, str(d / "model.safetensors"))
    with pytest.raises(KeyError, match="transformer.layers.1.0.to_out.weight"):
        AutoModel.from_pretrained(d)
    bad = dict(state)
    bad["transformer.layers.0.1.net.1.weight"] = torch.zeros(10, 96)
    save_file(bad, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=r"net.1.weight.*\(10, 96\)"):
        AutoModel.from_pretrained(d)
    # a published-style prefix and ignored head are accepted
    pref = {"reve." + k: v for k, v in state.items()}
    pref["reve.final_layer.weight"] = torch.zeros(3)
    save_file(pref, str(d / "model.safetensors"))
    m2 = AutoModel.from_pretrained(d)
    np.testing.assert_array_equal(m2(eeg, positions), model(eeg, positions))
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        AutoModel.from_pretrained(d)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="neither config.json nor positions.json"):
        AutoModel.from_pretrained(d)


def test_no_head_spec_refuses_training(odd):
    """The C spec without final norm/unembedding cannot be trained (clear error)."""
    _, model = odd
    ht = model.hooked
    assert "unembed.W_U" not in ht._raw and "ln_final.w" not in ht._raw
    with pytest.raises(Exception, match="no unembedding"):
        ht.backward(np.zeros((1, 4), np.int64), np.zeros((1, 4), np.int64))


def test_seed_hook_steps_served_from_the_pass(odd, rng, monkeypatch):
    """Inside a feed-forward hook, net[j](x) on the unchanged array the hook got is the
    C pass's own value (no recomputation: the expansion Linear never runs); an edited
    array is computed for real."""
    ref, model = odd
    eeg, pos = inputs(rng, 2, 5, 100)
    calls = []
    orig = modeling_reve.GegluIn.forward
    monkeypatch.setattr(modeling_reve.GegluIn, "forward",
                        lambda self, x: calls.append(1) or orig(self, x))
    acts, handles = seed_hooks(model, 2)
    model(eeg, pos)
    for h in handles:
        h.remove()
    assert calls == []
    assert acts["ff_1_1"].shape == (2, 10, 2 * 255)
    got = {}

    def edit(module, inp, out):
        X1 = module[0](inp[0])
        X1 *= 2.0                       # same array, new values: must be computed
        got["X2"] = np.array(module[1](X1))
        got["I"] = np.array(inp[0])

    h = model.transformer.layers[1][1].net.register_forward_hook(edit)
    model(eeg, pos)
    h.remove()
    assert calls == [1]
    with torch.no_grad():
        net = ref.transformer.layers[1][1].net
        want = net[1](2.0 * net[0](torch.from_numpy(got["I"]).double())).numpy()
    assert rel_err(got["X2"], want) <= BLOCK_TOL


def test_seed_hooks_with_torch_arrays(odd, rng):
    """With set_array_type('torch') the seed's hooks get torch tensors (sharing memory
    with the C buffers' copies) and the model accepts tensors, as the original notebook."""
    from mechinterp_c.transformers import set_array_type
    ref, model = odd
    eeg, pos = inputs(rng, 2, 5, 100)
    set_array_type("torch")
    try:
        acts, handles = seed_hooks(model, 2)
        y = model(torch.from_numpy(eeg), torch.from_numpy(pos))
        for h in handles:
            h.remove()
    finally:
        set_array_type("numpy")
    ref_acts, ref_handles = seed_hooks(ref, 2)
    with torch.no_grad():
        y_ref = ref(torch.from_numpy(eeg).double(), torch.from_numpy(pos).double())
    for h in ref_handles:
        h.remove()
    assert isinstance(y, torch.Tensor) and isinstance(acts["at_0_qkv"], torch.Tensor)
    for k, v in ref_acts.items():
        assert rel_err(np.asarray(acts[k]), np.asarray(v)) <= BLOCK_TOL, k
    assert rel_err(y.numpy(), y_ref.numpy()) <= BLOCK_TOL


def test_hooked_reve_standalone_front_end_hooks_and_threads(tmp_path, odd, rng):
    """HookedReve.from_pretrained, hook_embed / hook_pos_embed editing the front end,
    and bitwise-identical results for any thread count."""
    import mechinterp_c
    ref, model = odd
    d = save_pretrained(random_reve(seed=3, **ODD), tmp_path / "ckpt")
    ht = modeling_reve.HookedReve.from_pretrained(str(d))
    eeg, pos = inputs(rng, 2, 5, 100)
    np.testing.assert_array_equal(ht(eeg, pos), model(eeg, pos))
    with pytest.raises(NotImplementedError, match="fold_ln"):
        modeling_reve.HookedReve.from_pretrained(str(d), fold_ln=True)

    def double_embed(x, hook):
        return x * 2.0

    y = ht.run_with_hooks(eeg, pos, fwd_hooks=[("hook_embed", double_embed)])
    rh = ref.to_patch_embedding.register_forward_hook(lambda m, i, o: o * 2.0)
    with torch.no_grad():
        y_ref = ref(torch.from_numpy(eeg).double(), torch.from_numpy(pos).double())
    rh.remove()
    assert rel_err(y, y_ref.numpy()) <= BLOCK_TOL
    n = mechinterp_c.get_num_threads()
    try:
        mechinterp_c.set_num_threads(1)
        y1 = np.array(model(eeg, pos))
        mechinterp_c.set_num_threads(max(2, n))
        y2 = np.array(model(eeg, pos))
    finally:
        mechinterp_c.set_num_threads(n)
    np.testing.assert_array_equal(y1, y2)
