"""REVE front end in C vs the PyTorch reference (tests/reve_reference.py), the
electrode position bank, and the error texts.

Tolerances (float32 C vs the float64 run of the same PyTorch model):
  * patches, pos4: exact (pure copies / integers).
  * patch_emb: 1e-5 abs + 1e-5 rel: a 200-term float32 dot product of O(1) terms
    rounds at ~sqrt(200) * 6e-8 * |terms| ~ 1e-6.
  * fourier: 2e-6 abs: phases are formed in double in C and cos/sin rounded once,
    so only the float32 rounding of the coordinates (t*0.1, +margin) and of the
    output (6e-8) remain.
  * mlp4d, pos_embed, x: 5e-5 abs: a LayerNorm divides float32 rounding of its
    input by the row's std (~0.1-1 here), amplifying it ~10x.
Against torch float32 the same tolerances are used with 4x slack for torch's own
float32 phases (|phase| up to ~40 rad, rounded at ~4e-6).
"""
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reve_reference import FourierEmb4D as TorchFourier  # noqa: E402
from reve_reference import random_reve  # noqa: E402

import mechinterp_c  # noqa: E402
from mechinterp_c import _core, reve  # noqa: E402

SEED_CHANNELS = ['Fp1', 'Fp2', 'F3', 'F4', 'F7', 'F8', 'T3', 'T4', 'C3', 'C4', 'T5', 'T6',
                 'P3', 'P4', 'O1', 'O2', 'Fz', 'Cz', 'Pz', 'A2']

TOL = {"patches": 0.0, "pos4": 0.0, "patch_emb": 1e-5, "fourier": 2e-6, "mlp4d": 5e-5,
       "pos_embed": 5e-5, "x": 5e-5}
REF_KEY = {"fourier": "pos_fourier", "mlp4d": "pos_expand"}


def _np(t):
    return t.detach().cpu().numpy()


def _reference(model, eeg, pos, double):
    """The reference's intermediates as NumPy float64 (double=True) or float32."""
    m = model.double() if double else model.float()
    dt = torch.float64 if double else torch.float32
    with torch.no_grad():
        out = m.embed(torch.as_tensor(eeg, dtype=dt), torch.as_tensor(pos, dtype=dt))
    model.float()
    return {k: _np(v) for k, v in out.items()}


def _check_parity(model, eeg, pos, fe):
    got = fe(eeg, pos, intermediates=True)
    assert set(got) == {"patches", "patch_emb", "pos4", "fourier", "mlp4d", "pos_embed", "x"}
    for double, slack in ((True, 1.0), (False, 4.0)):
        ref = _reference(model, eeg, pos, double)
        for k, v in got.items():
            r = ref[REF_KEY.get(k, k)]
            if k in ("pos4", "fourier", "mlp4d", "pos_embed"):
                # the reference keeps pos's batch; C too (batch 1 broadcasts in x only)
                assert v.shape == r.shape, k
            assert v.dtype == np.float32 and v.shape == r.shape, (k, v.shape, r.shape)
            tol = TOL[k] * slack
            rtol = 1e-5 if k == "patch_emb" else 0.0
            np.testing.assert_allclose(v, r, atol=tol, rtol=rtol, err_msg=f"{k} (double={double})")
    return got


@pytest.fixture(scope="module")
def base_model():
    # reve-base front-end shapes; one block keeps the reference cheap (blocks are not used here)
    return random_reve(seed=1, embed_dim=512, depth=1, freqs=4, patch_size=200, patch_overlap=20)


def test_base_config_parity(base_model, rng):
    eeg = rng.standard_normal((2, 20, 1000)).astype(np.float32)
    pos = np.broadcast_to(reve.default_position_bank()(SEED_CHANNELS), (2, 20, 3)).copy()
    pos[1] += rng.normal(0, 0.01, (20, 3)).astype(np.float32)  # a second, different montage
    fe = reve.ReveFrontEnd.from_torch(base_model)
    got = _check_parity(base_model, eeg, pos, fe)
    assert got["patches"].shape == (2, 20, 5, 200)
    assert got["x"].shape == (2, 100, 512)


def test_odd_config_partial_last_patch(rng):
    # D 96 (freqs^4 = 256 phases cut to 48), patch 37, step 32, T = 143: the last 10 samples
    # do not fill a patch and are dropped as torch.unfold drops them.
    model = random_reve(seed=2, embed_dim=96, depth=1, heads=3, head_dim=32, freqs=4,
                        patch_size=37, patch_overlap=5)
    fe = reve.ReveFrontEnd.from_torch(model)
    eeg = rng.standard_normal((3, 5, 143)).astype(np.float32) * 20.0
    pos = rng.uniform(-0.1, 0.1, (3, 5, 3)).astype(np.float32)
    got = _check_parity(model, eeg, pos, fe)
    assert got["patches"].shape == (3, 5, 4, 37) and fe.n_patches(143) == 4
    # freqs 3 (81 phases >= 48): the cut falls inside the t/z digits
    model3 = random_reve(seed=3, embed_dim=96, depth=1, heads=3, head_dim=32, freqs=3,
                         patch_size=37, patch_overlap=5)
    _check_parity(model3, eeg, pos, reve.ReveFrontEnd.from_torch(model3))


def test_one_montage_broadcast_over_batch(base_model, rng):
    # the seed calls model(X [10, C, T], positions [1, C, 3])
    fe = reve.ReveFrontEnd.from_torch(base_model)
    eeg = rng.standard_normal((3, 20, 400)).astype(np.float32)
    pos1 = reve.default_position_bank()(SEED_CHANNELS)[None]
    got = fe(eeg, pos1, intermediates=True)
    assert got["pos_embed"].shape == (1, 20 * 2, 512) and got["x"].shape == (3, 40, 512)
    full = fe(eeg, np.repeat(pos1, 3, axis=0))
    np.testing.assert_array_equal(got["x"], full)
    ref = _reference(base_model, eeg, pos1, True)
    np.testing.assert_allclose(got["x"], ref["x"], atol=TOL["x"])


def test_seed_step_by_step_matches_frontend(base_model, rng):
    """The seed's Part 2 walked with the module-like objects, vs the reference modules."""
    fe = reve.ReveFrontEnd.from_torch(base_model)
    X = rng.standard_normal((1, 20, 1000)).astype(np.float32)
    positions = reve.default_position_bank()(SEED_CHANNELS)[None]
    patches = fe.patches(X)
    patch_emb = fe.to_patch_embedding(patches).reshape(1, -1, 512)
    W = fe.to_patch_embedding[0].weight
    assert W.shape == (512, 200) and fe.to_patch_embedding[0].bias.shape == (512,)
    pos = fe.fourier4d.add_time_patch(positions, patches.shape[2])
    pos_expand = fe.mlp4d(pos)
    pos_fourier = fe.fourier4d(pos)
    pos_embed = fe.ln(pos_expand + pos_fourier)
    data = patch_emb + pos_embed
    with torch.no_grad():
        tX, tpos = torch.from_numpy(X).double(), torch.from_numpy(positions).double()
        m = base_model.double()
        tp = tX.unfold(2, 200, 180)
        t_emb = m.to_patch_embedding(tp).reshape(1, -1, 512)
        t_pos = m.fourier4d.add_time_patch(tpos, tp.shape[2])
        t_expand, t_fourier = m.mlp4d(t_pos), m.fourier4d(t_pos)
        t_embed = m.ln(t_expand + t_fourier)
        base_model.float()
    np.testing.assert_array_equal(patches, _np(tp).astype(np.float32))
    np.testing.assert_allclose(patch_emb, _np(t_emb), atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(pos, _np(t_pos).astype(np.float32))
    np.testing.assert_allclose(pos_expand, _np(t_expand), atol=5e-5)
    np.testing.assert_allclose(pos_fourier, _np(t_fourier), atol=2e-6)
    np.testing.assert_allclose(pos_embed, _np(t_embed), atol=5e-5)
    whole = fe(X, positions, intermediates=True)
    np.testing.assert_allclose(data, whole["x"], atol=1e-5)
    np.testing.assert_allclose(data, _np(t_embed + t_emb), atol=5e-5)


def test_fourier4d_alone_matches_reference(rng):
    pos4 = np.concatenate([rng.uniform(-0.5, 1.5, (7, 3)), np.arange(7)[:, None] * 3.0],
                          axis=1).astype(np.float32)
    for dim, freqs in ((512, 4), (96, 4), (10, 2), (162, 3)):
        ref = _np(TorchFourier(dim, freqs)(torch.from_numpy(pos4).double()))
        got = reve.FourierEmb4D(dim, freqs)(pos4)
        np.testing.assert_allclose(got, ref, atol=2e-6, err_msg=f"dim={dim} freqs={freqs}")
    # other increment_time / margin reach the kernel
    ref = _np(TorchFourier(16, 2, increment_time=0.5, margin=0.1)(torch.from_numpy(pos4).double()))
    np.testing.assert_allclose(_core.reve_fourier4d(pos4, 16, 2, 0.5, 0.1), ref, atol=2e-6)


def test_unfold_matches_torch_any_leading_shape(rng):
    x = rng.standard_normal((2, 3, 4, 50)).astype(np.float32)
    for size, overlap in ((50, 0), (7, 3), (10, 9), (1, 0)):
        ref = torch.from_numpy(x).unfold(-1, size, size - overlap).numpy()
        np.testing.assert_array_equal(reve.unfold(x, size, overlap), ref)


def test_thread_count_does_not_change_results(base_model, rng):
    fe = reve.ReveFrontEnd.from_torch(base_model)
    eeg = rng.standard_normal((2, 20, 1000)).astype(np.float32)
    pos = rng.uniform(-0.1, 0.1, (2, 20, 3)).astype(np.float32)
    n = mechinterp_c.get_num_threads()
    try:
        mechinterp_c.set_num_threads(1)
        one = fe(eeg, pos, intermediates=True)
        mechinterp_c.set_num_threads(max(2, n))
        many = fe(eeg, pos, intermediates=True)
    finally:
        mechinterp_c.set_num_threads(n)
    for k in one:
        np.testing.assert_array_equal(one[k], many[k], err_msg=k)


def test_default_weights_and_state_dict_roundtrip(rng):
    fe = reve.ReveFrontEnd(embed_dim=64, patch_size=20, patch_overlap=4, freqs=3, seed=5)
    fe2 = reve.ReveFrontEnd(embed_dim=64, patch_size=20, patch_overlap=4, freqs=3,
                            state_dict=fe.state_dict())
    eeg = rng.standard_normal((1, 2, 60)).astype(np.float32)
    pos = rng.uniform(-0.1, 0.1, (1, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(fe(eeg, pos), fe2(eeg, pos))
    assert fe(eeg, pos).shape == (1, 2 * 3, 64)
    with pytest.raises(KeyError, match=r"missing REVE front-end weights \['ln.bias'\]"):
        reve.ReveFrontEnd(64, 20, 4, 3, state_dict={k: v for k, v in fe.state_dict().items()
                                                     if k != "ln.bias"})
    bad = dict(fe.state_dict(), **{"mlp4d.0.weight": np.zeros((64, 3), np.float32)})
    with pytest.raises(ValueError, match=r"mlp4d.0.weight: expected shape \(64, 4\), got \(64, 3\)"):
        reve.ReveFrontEnd(64, 20, 4, 3, state_dict=bad)


# ---------------------------------------------------------------- errors

@pytest.fixture(scope="module")
def small():
    fe = reve.ReveFrontEnd(embed_dim=32, patch_size=10, patch_overlap=2, freqs=2, seed=0)
    return fe


def test_error_channel_mismatch(small):
    eeg = np.zeros((2, 4, 30), np.float32)
    with pytest.raises(ValueError, match=r"pos: has 3 channels but eeg has 4"):
        small(eeg, np.zeros((2, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"pos: batch 3 must be 1 .* or eeg's batch 2"):
        small(eeg, np.zeros((3, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"pos: expected \[B, C, 3\] electrode coordinates, "
                                         r"got shape \(2, 4, 2\)"):
        small(eeg, np.zeros((2, 4, 2), np.float32))


def test_error_signal_shorter_than_patch(small):
    with pytest.raises(ValueError, match=r"eeg: signal of 9 samples is shorter than one patch "
                                         r"\(patch_size=10\)"):
        small(np.zeros((1, 2, 9), np.float32), np.zeros((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match="shorter than one patch"):
        reve.unfold(np.zeros(5, np.float32), 6, 0)
    with pytest.raises(ValueError, match="shorter than one patch"):
        small.n_patches(3)


def test_error_non_finite(small):
    eeg = np.zeros((1, 2, 30), np.float32)
    eeg[0, 1, 7] = np.nan
    with pytest.raises(ValueError, match=r"eeg: non-finite value nan at flat index 37"):
        small(eeg, np.zeros((1, 2, 3), np.float32))
    pos = np.zeros((1, 2, 3), np.float32)
    pos[0, 0, 2] = np.inf
    with pytest.raises(ValueError, match=r"pos: non-finite value inf at flat index 2"):
        small(np.zeros((1, 2, 30), np.float32), pos)
    with pytest.raises(ValueError, match=r"pos4: non-finite"):
        small.fourier4d(np.full((2, 4), np.nan, np.float32))


def test_error_shapes_types_config(small):
    sd = small.state_dict()
    args = [np.zeros((1, 2, 30), np.float32), np.zeros((1, 2, 3), np.float32),
            sd["to_patch_embedding.0.weight"], sd["to_patch_embedding.0.bias"],
            sd["mlp4d.0.weight"], sd["mlp4d.2.weight"], sd["mlp4d.2.bias"], sd["ln.weight"],
            sd["ln.bias"]]
    with pytest.raises(ValueError, match=r"eeg: expected 3 dimensions, got shape \(2, 30\)"):
        _core.reve_frontend(np.zeros((2, 30), np.float32), *args[1:], 10, 2, 2)
    with pytest.raises(TypeError, match=r"eeg: expected a floating-point array, got dtype int64"):
        _core.reve_frontend(np.zeros((1, 2, 30), np.int64), *args[1:], 10, 2, 2)
    with pytest.raises(ValueError, match=r"patch_w: expected shape \(32, 12\), got \(32, 10\)"):
        _core.reve_frontend(*args, 12, 2, 2)
    bad = list(args)
    bad[7] = np.ones(31, np.float32)
    with pytest.raises(ValueError, match=r"ln_w: expected shape \(32,\), got \(31,\)"):
        _core.reve_frontend(*bad, 10, 2, 2)
    with pytest.raises(ValueError, match=r"freqs=1 gives freqs\^4 phases, fewer than "
                                         r"embed_dim/2=16"):
        _core.reve_frontend(*args, 10, 2, 1)
    with pytest.raises(ValueError, match=r"patch_overlap must be in \[0, patch_size=10\), got 10"):
        _core.reve_frontend(*args, 10, 10, 2)
    with pytest.raises(ValueError, match=r"patch_overlap: must be in \[0, patch_size=10\)"):
        reve.ReveFrontEnd(embed_dim=32, patch_size=10, patch_overlap=-1, freqs=2)
    with pytest.raises(ValueError, match=r"fourier4d: dim=33 needs an even dim"):
        _core.reve_fourier4d(np.zeros((1, 4), np.float32), 33, 4)
    with pytest.raises(ValueError, match=r"pos4: expected last dimension 4 \(x, y, z, t\), "
                                         r"got shape \(2, 3\)"):
        small.fourier4d(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"n_patches: must be positive, got 0"):
        small.fourier4d.add_time_patch(np.zeros((1, 2, 3), np.float32), 0)
    # the front end stays usable after errors
    assert small(*args[:2]).shape == (1, 2 * 3, 32)


# ---------------------------------------------------------------- position bank

def test_bank_seed_channels():
    bank = reve.default_position_bank()
    pos = bank(SEED_CHANNELS)
    assert pos.shape == (20, 3) and pos.dtype == np.float32
    assert len(np.unique(pos, axis=0)) == 20
    # torch-friendly, as the seed's pos_bank(...).unsqueeze(0)
    assert torch.from_numpy(pos).unsqueeze(0).shape == (1, 20, 3)
    meta = bank.metadata
    assert meta["unit"] == "meter" and "RAS" in meta["convention"]


def test_bank_geometry_follows_spherical_10_10():
    bank = reve.default_position_bank()
    r = bank.metadata["radius"]
    P = {n: bank.position(n).astype(np.float64) / r for n in bank.names}
    for n, p in P.items():  # all on the sphere (6-digit rounding of the file)
        assert abs(np.linalg.norm(p) - 1) < 2e-5, n

    def ang(a, b):
        return math.degrees(math.acos(np.clip(np.dot(P[a], P[b]), -1, 1)))

    # midline and coronal lines: 10% = 18 degrees of the half great circle
    for a, b, deg in (("Nz", "Fpz", 18), ("Fpz", "Fz", 36), ("Fz", "Cz", 36), ("Cz", "Pz", 36),
                      ("Pz", "Oz", 36), ("Oz", "Iz", 18), ("LPA", "T7", 18), ("T7", "C3", 36),
                      ("C3", "Cz", 36), ("Cz", "C4", 36), ("C4", "T8", 36), ("Fz", "FCz", 18)):
        assert abs(ang(a, b) - deg) < 1e-3, (a, b, ang(a, b))
    np.testing.assert_allclose(P["Cz"], [0, 0, 1], atol=1e-5)
    np.testing.assert_allclose(P["C3"], [-math.sin(math.radians(36)), 0,
                                         math.cos(math.radians(36))], atol=1e-5)
    # around the circumference ring: 10% steps of 18 degrees of azimuth
    ring = ["Fpz", "Fp1", "AF7", "F7", "FT7", "T7", "TP7", "P7", "PO7", "O1", "Oz"]
    for n, az in zip(ring, range(90, 271, 18)):
        assert abs(math.degrees(math.atan2(P[n][1], P[n][0])) % 360 - az) < 1e-3, n
        assert abs(P[n][2] - math.sin(math.radians(18))) < 1e-5, n
    # rows divide their arc in equal steps: equal chords F7-F5-F3-F1-Fz
    row = ["F7", "F5", "F3", "F1", "Fz", "F2", "F4", "F6", "F8"]
    chords = [np.linalg.norm(P[a] - P[b]) for a, b in zip(row, row[1:])]
    np.testing.assert_allclose(chords, chords[0], rtol=1e-4)
    # left/right mirror images, aliases
    for left, right in (("Fp1", "Fp2"), ("F3", "F4"), ("CP5", "CP6"), ("PO9", "PO10"),
                        ("A1", "A2")):
        np.testing.assert_allclose(P[left] * [-1, 1, 1], P[right], atol=2e-5)
    for old, new in (("T3", "T7"), ("T4", "T8"), ("T5", "P7"), ("T6", "P8")):
        np.testing.assert_array_equal(bank.position(old), bank.position(new))
    assert P["Fp1"][1] > 0 and P["O1"][1] < 0 and P["C4"][0] > 0  # +y anterior, +x right


def test_bank_lookup_errors_and_case():
    bank = reve.default_position_bank()
    np.testing.assert_array_equal(bank(["FP1", "cz"]), bank(["Fp1", "Cz"]))
    assert "fpz" in bank and "Xy9" not in bank
    with pytest.raises(KeyError, match=r"unknown electrode 'Fpx'; close matches: Fpz"):
        bank(["Fp1", "Fpx"])
    with pytest.raises(KeyError, match=r"unknown electrode 'Qq'") as ei:
        bank(["Qq"])
    assert "close matches" not in str(ei.value)
    with pytest.raises(TypeError, match="electrode name must be a str"):
        bank([3])


def test_bank_from_files(tmp_path):
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"E1": [0.1, 0.2, 0.3], "E2": [-1, 0, 2.5]}))
    bank = reve.PositionBank(flat)
    assert bank.names == ["E1", "E2"] and len(bank) == 2
    np.testing.assert_array_equal(bank(["E2", "E1"]), np.float32([[-1, 0, 2.5], [0.1, 0.2, 0.3]]))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"positions": {"E1": [0.1, 0.2]}}))
    with pytest.raises(ValueError, match=r"bad.json: position of 'E1' must be 3 finite numbers"):
        reve.PositionBank(bad)
    with pytest.raises(ValueError, match=r"must be 3 finite numbers"):
        reve.PositionBank.from_dict({"E1": "north"})
    broken = tmp_path / "broken.json"
    broken.write_text("{\"E1\": [0, 0,")
    with pytest.raises(ValueError):
        reve.PositionBank(broken)
    with pytest.raises(OSError):
        reve.PositionBank(tmp_path / "missing.json")


def test_bundled_file_is_what_the_tool_generates(tmp_path):
    """The shipped JSON is reproducible from tools/make_reve_positions.py."""
    import importlib.util
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("mkpos", os.path.join(root, "tools",
                                                                        "make_reve_positions.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with open(reve.DEFAULT_POSITIONS_PATH) as f:
        shipped = json.load(f)["positions"]
    assert shipped == mod.build()


# ---------------------------------------------------------------- the reference model itself

def test_reference_blocks_follow_design():
    """Checks of the test-only PyTorch REVE that the integration will compare against."""
    torch.manual_seed(0)
    m = random_reve(seed=4, embed_dim=64, depth=2, heads=4, head_dim=16, freqs=4,
                    patch_size=20, patch_overlap=4)
    assert m.mlp_dim == int(64 * 2.66)
    ff = m.transformer.layers[1][1].net
    assert ff[1].weight.shape == (2 * m.mlp_dim, 64) and ff[3].weight.shape == (64, m.mlp_dim)
    assert ff[0].eps == 1e-6 and m.transformer.layers[0][0].norm.eps == 1e-6
    # GEGLU as in the seed's demo: x1 * gelu(x2), (value, gate) order
    x = torch.linspace(-2, 2, 2722)
    torch.testing.assert_close(ff[2](x), x[:1361] * torch.nn.functional.gelu(x[1361:]))
    # attention equals torch's scaled_dot_product_attention (bidirectional)
    att = m.transformer.layers[0][0]
    h = torch.randn(2, 9, 64)
    with torch.no_grad():
        q, k, v = att.to_qkv(att.norm(h)).chunk(3, -1)
        sp = lambda t: t.view(2, 9, 4, 16).transpose(1, 2)  # noqa: E731
        o = torch.nn.functional.scaled_dot_product_attention(sp(q), sp(k), sp(v))
        torch.testing.assert_close(att(h), att.to_out(o.transpose(1, 2).reshape(2, 9, 64)))
    eeg, pos = torch.randn(2, 3, 52), torch.rand(2, 3, 3)
    with torch.no_grad():
        y = m(eeg, pos)
        x0 = m.embed(eeg, pos)["x"]
        for attn, f in m.transformer.layers:
            x0 = x0 + attn(x0)
            x0 = x0 + f(x0)
    assert y.shape == (2, 3, 3, 64)
    torch.testing.assert_close(y, x0.reshape(2, 3, 3, 64))


def test_from_pretrained_checkpoint(tmp_path, rng):
    """A checkpoint written by the reference (config.json + model.safetensors, published
    names) loads into the C front end and gives the reference's numbers."""
    from reve_reference import save_pretrained
    model = random_reve(seed=6, embed_dim=96, depth=2, heads=3, head_dim=32, freqs=4,
                        patch_size=37, patch_overlap=5)
    save_pretrained(model, tmp_path / "reve-tiny")
    fe = reve.ReveFrontEnd.from_pretrained(tmp_path / "reve-tiny")
    assert (fe.embed_dim, fe.patch_size, fe.patch_overlap, fe.freqs) == (96, 37, 5, 4)
    eeg = rng.standard_normal((2, 3, 100)).astype(np.float32)
    pos = rng.uniform(-0.1, 0.1, (2, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(fe(eeg, pos), _reference(model, eeg, pos, True)["x"],
                               atol=TOL["x"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"embed_dim": 96}))
    with pytest.raises(KeyError, match=r"missing required field\(s\) 'patch_size'"):
        reve.ReveFrontEnd.from_pretrained(tmp_path / "empty")
