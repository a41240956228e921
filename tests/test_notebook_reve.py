"""Execute notebooks/reve_eeg_exploration.ipynb (MI_NOTEBOOK_SMALL=1: a 4-layer
random-initialised reve-base-width checkpoint written by the notebook, synthetic
EEG) with nbclient, then recompute the key numbers it writes to $MI_NOTEBOOK_OUT
with the PyTorch reference (tests/reve_reference.py, float64) loaded from the
same checkpoint, following the original seed's torch code:

  * model output Y [10, 20, 5, 512]: mean and std, 1e-5 relative (float32 C pass
    vs float64; see tests/test_reve_model.py for the per-block bound);
  * Q/K/V activation mean and (unbiased) std per layer: 1e-5 abs on the means
    (values O(1), averaged over 500k float32 numbers), 1e-5 relative on the stds;
  * feed-forward step means per layer (the seed's net hook): 1e-5 abs;
  * attention entropies per layer and head (softmax -> scipy gaussian_kde on
    [0, 1] -> -sum p log2(p + 1e-10)): 1e-3 abs, since the KDE of ~100k softmax
    values moves by ~1e-6 relative with float32 scores and the entropy is a
    smooth function of it.
"""
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reve_reference import Reve, seed_hooks  # noqa: E402
from mechinterp_c.demo import scoped_environ  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB = os.path.join(ROOT, "notebooks", "reve_eeg_exploration.ipynb")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    tmp = tmp_path_factory.mktemp("nb_reve")
    out = tmp / "summary.json"
    env = {"MI_NOTEBOOK_SMALL": "1", "MI_NOTEBOOK_OUT": str(out),
           "MI_NOTEBOOK_CKPT_DIR": str(tmp / "ckpt")}
    env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    with scoped_environ(env):
        nb = nbformat.read(NB, as_version=4)
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp)}}).execute()
    summary = json.loads(out.read_text())
    inputs = np.load(tmp / "summary_inputs.npz")
    return nb, summary, inputs


def test_notebook_has_no_torch_and_shows_notes(executed):
    nb, summary, _ = executed
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "import torch" not in src and "from torch" not in src
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert "RANDOM-INITIALISED checkpoint" in text          # the visible note
    assert "brain-bzh/reve-base" in src and "brain-bzh/reve-positions" in src
    n_figures = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                    if "image/png" in o.get("data", {}))
    assert n_figures >= 20          # every figure of the seed (21 plt.show() calls)
    assert summary["hook_q_equal"] is True
    assert summary["Y_shape"] == [10, 20, 5, 512]
    assert summary["n_within"] == 8 * 100 * 100 and summary["n_across"] == 56 * 100 * 100


def test_notebook_numbers_match_torch_reference(executed):
    from safetensors.torch import load_file
    from scipy.stats import gaussian_kde
    _, summary, inputs = executed
    cfg = json.load(open(os.path.join(summary["ckpt_dir"], "config.json")))
    ref = Reve(embed_dim=cfg["embed_dim"], depth=cfg["depth"], heads=cfg["heads"],
               head_dim=cfg["head_dim"], mlp_dim_ratio=cfg["mlp_dim_ratio"], freqs=cfg["freqs"],
               patch_size=cfg["patch_size"], patch_overlap=cfg["patch_overlap"])
    ref.load_state_dict(load_file(os.path.join(summary["ckpt_dir"], "model.safetensors")))
    ref = ref.double().eval()
    L, H, Dh, D = cfg["depth"], cfg["heads"], cfg["head_dim"], cfg["embed_dim"]
    acts, hs = seed_hooks(ref, L)      # the seed's to_qkv and net hooks
    X = torch.from_numpy(inputs["X"]).double()
    pos = torch.from_numpy(inputs["positions"]).double().expand(X.shape[0], -1, -1)
    with torch.no_grad():
        Y = ref(X, pos)
    for h in hs:
        h.remove()
    assert abs(summary["Y_mean"] - Y.mean().item()) <= 1e-5 * Y.abs().max().item()
    assert abs(summary["Y_std"] - Y.std(unbiased=False).item()) <= 1e-5 * Y.std().item()
    desc = np.asarray(summary["descriptives"])
    for l in range(L):
        for i, M in enumerate(torch.split(acts[f"at_{l}_qkv"], D, dim=-1)):
            assert abs(desc[l, i, 0] - M.mean().item()) <= 1e-5, (l, i)
            assert abs(desc[l, i, 1] - M.std().item()) <= 1e-5 * M.std().item(), (l, i)
        for j in range(4):
            assert abs(summary["ff_means"][l][j] - acts[f"ff_{l}_{j}"].mean()) <= 1e-5, (l, j)
    ent = np.asarray(summary["entropies"])
    grid = np.linspace(0, 1, 100)
    for l in (0, L - 1):     # first and last layer: scipy's KDE is the slow part
        Q, K, _ = torch.split(acts[f"at_{l}_qkv"], D, dim=-1)
        Qh = Q.view(10, 100, H, Dh).permute(0, 2, 1, 3)
        Kh = K.view(10, 100, H, Dh).permute(0, 2, 1, 3)
        for h in range(H):
            sm = torch.softmax((Qh[:, h] @ Kh[:, h].transpose(-2, -1)) / Dh ** .5, dim=-1)
            kde_y = gaussian_kde(sm.flatten().numpy())(grid)
            kde_y /= kde_y.sum()
            e = -np.sum(kde_y * np.log2(kde_y + 1e-10))
            assert abs(ent[l, h] - e) <= 1e-3, (l, h, ent[l, h], e)
