"""The original seed notebooks run on mechinterp_c with only their import lines changed.

Each notebook's code cells (``seed_notebooks.code_cells``) run twice in fresh namespaces:
once as written against transformers / TransformerLens (the reference), once with the
imports swapped to mechinterp_c plus ``set_array_type("torch")``. What else differs is
the same for both runs and stated per notebook: hub names become local checkpoints built
in a tmp dir (the hub is out of reach), plotly (not installed) is a stub module that
draws nothing, and cells that cannot run here are skipped with the reason. The key
numbers of both runs are then compared; tolerances are stated where they are used.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tl = pytest.importorskip("transformer_lens")
pytest.importorskip("einops")
matplotlib = pytest.importorskip("matplotlib")
pytestmark = pytest.mark.filterwarnings("ignore")

import mechinterp_c as mi  # noqa: E402
from mechinterp_c import checkpoints  # noqa: E402
from seed_notebooks import SEEDS, code_cells, run, stub_module, swap_imports  # noqa: E402

if not SEEDS.is_dir():
    pytest.skip(f"the seed notebooks are not at {SEEDS}", allow_module_level=True)

TORCH_MODE = "set_array_type('torch')"


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch):
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # plotly is not installed here: both runs get the same stub, which draws nothing
    px = stub_module("plotly.express")
    pio = stub_module("plotly.io", renderers=type("R", (), {"default": None})())
    monkeypatch.setitem(sys.modules, "plotly", stub_module("plotly", express=px, io=pio))
    monkeypatch.setitem(sys.modules, "plotly.express", px)
    monkeypatch.setitem(sys.modules, "plotly.io", pio)
    n = torch.get_num_threads()
    torch.set_num_threads(1)     # the references are small; spinning threads slow a shared machine
    yield
    torch.set_num_threads(n)
    mi.set_array_type("numpy")
    plt.close("all")


def _both(name, swaps, skip=(), subs=None, after=None):
    """Run notebook ``name`` as written (the reference) and with ``swaps`` (ours), each in a
    fresh namespace; return the two namespaces."""
    cells = code_cells(name)
    ref_ns = {"__name__": "__seed__"}
    ran_ref = run(cells, ref_ns, skip, subs, after)
    ours_cells = [swap_imports(c, swaps) for c in cells]
    assert sum(TORCH_MODE in c for c in ours_cells) == 1, "the torch switch goes in one import swap"
    ours_ns = {"__name__": "__seed__"}
    try:
        ran = run(ours_cells, ours_ns, skip, subs, after)
    finally:
        mi.set_array_type("numpy")
    assert ran == ran_ref and len(ran) == len(cells) - len(skip)
    return ref_ns, ours_ns


def _np(x):
    if hasattr(x, "detach"):
        x = x.detach().numpy()
    return np.asarray(x, dtype=np.float64)


def _close(ours, ref, name, rtol, atol):
    np.testing.assert_allclose(_np(ours), _np(ref), rtol=rtol, atol=atol, err_msg=name)


def _gpt2_dir(tmp_path_factory, tag, **cfg):
    """A random GPT-2 checkpoint saved by transformers, with the locally trained BPE
    tokenizer of mechinterp_c.checkpoints (dense vocabulary, <|endoftext|> last)."""
    d = tmp_path_factory.mktemp(tag)
    checkpoints.create_checkpoint("gpt2", d, small=True, tokenizer_only=True)
    vocab = len(json.loads((d / "vocab.json").read_text()))
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=vocab, bos_token_id=vocab - 1, eos_token_id=vocab - 1, **cfg))
    with torch.no_grad():           # attention far from uniform, as in a trained model
        for n, p in hf.named_parameters():
            if n.endswith("c_attn.weight"):
                p.mul_(6.0)
    hf.save_pretrained(d)
    return d


# ----------------------------------------------------------------- no_position_experiment
def test_no_position_experiment():
    """TransformerLens notebook, every cell. The training loop (cell 7: ``loss.backward()``
    through torch autograd into the C backward, torch.optim.AdamW, clip_grad_norm_,
    LambdaLR) runs as written for 30 epochs instead of 4000 (cell 6's ``num_epochs``,
    both runs) to keep the test short; the reference gets our initial weights right after
    the model's cell, so both runs train the same model on the same batches (the data
    generator is torch-seeded) and analyse the trained models."""
    swaps = {
        "from transformer_lens import HookedTransformer, HookedTransformerConfig":
            f"from mechinterp_c import HookedTransformer, HookedTransformerConfig, set_array_type\n{TORCH_MODE}",
        "from transformer_lens.utils import to_numpy": "from mechinterp_c.utils import to_numpy",
    }
    skip = {}
    # the analysis batch: 200 sequences instead of 4000 (both runs), to keep the reference
    # TransformerLens run of the 38-point mean-ablation loop short on a shared machine
    subs = {6: [("num_epochs = 4000", "num_epochs = 30")],
            10: [("make_data_generator(cfg, 4000)", "make_data_generator(cfg, 200)")]}
    cells = code_cells("no_position_experiment")
    ours_ns = {"__name__": "__seed__"}
    init, trained = {}, {}

    def save_init(ns):
        init.update({k: torch.tensor(np.array(v.detach())) for k, v in ns["model"].state_dict().items()})

    def save_losses(key):
        def after(ns):
            trained[key] = list(ns["losses"])       # the later mean-ablation cell reuses the name
        return after

    ran = run([swap_imports(c, swaps) for c in cells], ours_ns, skip, subs,
              after={2: save_init, 7: save_losses("ours")})
    mi.set_array_type("numpy")
    assert len(ran) == len(cells) == 32
    model = ours_ns["model"]
    assert isinstance(model, mi.HookedTransformer)
    assert len(trained["ours"]) == 30 and trained["ours"][-1] < trained["ours"][0]

    def load_ours(ns):
        ns["model"].load_state_dict(init, strict=False)

    ref_ns = {"__name__": "__seed__"}
    run(cells, ref_ns, skip, subs, after={2: load_ours, 7: save_losses("ref")})
    assert isinstance(ref_ns["model"], tl.HookedTransformer)
    # the training trajectories: the 1e-4 per step (float32 sums in another order)
    _close(trained["ours"], trained["ref"], "training losses", 0, 1e-4)
    # float32 passes over [4000, 50] batches in another summation order: losses agree to
    # 1e-5 relative; products of weight matrices exactly up to float32 rounding (1e-5)
    _close(ours_ns["baseline_loss"], ref_ns["baseline_loss"], "baseline_loss", 1e-5, 0)
    assert ours_ns["loss_labels"] == ref_ns["loss_labels"] and len(ours_ns["losses"]) > 30
    _close(ours_ns["losses"], ref_ns["losses"], "mean-ablation losses", 1e-5, 0)
    for k in ("QK", "OV", "QK_layer1", "OV_layer1"):
        _close(ours_ns[k], ref_ns[k], k, 1e-4, 1e-5)
    _close(ours_ns["logit_components"], ref_ns["logit_components"], "logit_components", 1e-4, 1e-4)
    _close(ours_ns["resid_stack"], ref_ns["resid_stack"], "resid_stack", 1e-4, 1e-4)
    assert not np.any(np.asarray(ours_ns["model"].pos_embed.W_pos))
    assert not ours_ns["model"].pos_embed.W_pos.requires_grad


# ----------------------------------------------------------------- gpt2_attention_breakdown
HF_SWAPS = {
    "from transformers import GPT2Tokenizer":
        f"from mechinterp_c.transformers import GPT2Tokenizer, set_array_type\n{TORCH_MODE}",
    "from transformers import AutoModelForCausalLM, GPT2Tokenizer":
        "from mechinterp_c.transformers import AutoModelForCausalLM, GPT2Tokenizer",
}


def test_gpt2_attention_breakdown(tmp_path_factory):
    """gpt2-large stand-in: 10 layers (the notebook reads layers 5 and 9), 20 heads (it
    ablates head 4), width 320; 'gpt2' (the tokenizer) is the same checkpoint."""
    d = _gpt2_dir(tmp_path_factory, "large", n_layer=10, n_embd=320, n_head=20, n_positions=128)
    subs = {2: [("'gpt2-large'", repr(str(d))), ("'gpt2'", repr(str(d)))]}
    ref_ns, ours_ns = _both("gpt2_attention_breakdown", HF_SWAPS, subs=subs)
    assert type(ours_ns["model"]).__module__.startswith("mechinterp_c")
    # float32 activations of the same pass: 2e-4 absolute on values of order 1-10
    for k in ("variances", "meenz", "stdz", "ablation_logits"):
        _close(ours_ns[k], ref_ns[k], k, 1e-4, 2e-4)
    for k in ("Qhist", "Khist", "Vhist"):     # densities; a value on a bin edge may move
        assert np.abs(_np(ours_ns[k]) - _np(ref_ns[k])).sum(axis=1).max() < 0.05, k
    _close(ours_ns["log_smax_clean"], ref_ns["log_smax_clean"], "log_smax_clean", 0, 2e-4)
    assert not np.allclose(ours_ns["ablation_logits"], _np(ref_ns["log_smax_clean"])[
        int(ref_ns["tokens"][0, -1])]), "the head ablation changed nothing"


# ----------------------------------------------------------------- gpt2_qkv_token_similarities
def test_gpt2_qkv_token_similarities(tmp_path_factory):
    """gpt2 stand-in: 7 layers (the notebook reads layer 6), width 256 (it plots Q unit
    700 of the 3 x width units); the shuffled baseline's permutation is seeded the same
    in both runs (np.random.seed(0) before that cell)."""
    d = _gpt2_dir(tmp_path_factory, "small", n_layer=7, n_embd=256, n_head=4, n_positions=64)
    assert code_cells("gpt2_qkv_token_similarities")[1].count("'gpt2'") == 2
    subs = {1: [("'gpt2'", repr(str(d)))]}
    swaps = {"from transformers import AutoModelForCausalLM, GPT2Tokenizer":
             f"from mechinterp_c.transformers import AutoModelForCausalLM, GPT2Tokenizer, set_array_type\n"
             f"{TORCH_MODE}"}
    ref_ns, ours_ns = _both("gpt2_qkv_token_similarities", swaps, subs=subs,
                            after={10: lambda ns: np.random.seed(0)})
    assert type(ours_ns["model"]).__module__.startswith("mechinterp_c")
    assert ours_ns["target_token"] == ref_ns["target_token"]
    # activations: the forward-parity tolerance, 1e-5 of their scale (float32 pass, other
    # summation order, 7 layers); cosine similarities in [-1, 1] of 54 such samples: 1e-4
    for k in ("actsAll_trg", "actsAll_non"):
        _close(ours_ns[k], ref_ns[k], k, 0, 1e-5 * np.abs(ref_ns[k]).max())
    for k in ("cossim_trg", "cossim_non", "QQcs_trg", "QKcs_non", "randcs_trg"):
        _close(ours_ns[k], ref_ns[k], k, 0, 1e-4)


# ----------------------------------------------- gpt2_large_qkv_activation_characteristics
def test_gpt2_large_qkv_exercise_fails_where_transformers_fails(tmp_path_factory):
    """The exercise notebook has blanks (``torch.mean,`` without arguments, undefined
    ``target_idx``), so most of its cells fail as written on transformers too. Every cell
    must do on mechinterp_c what it does on transformers: run, or raise the same exception
    type. The book it downloads (``requests.get(url).text``) is replaced by the English
    text mechinterp_c's fallback tokenizer is trained on, in both runs."""
    d = _gpt2_dir(tmp_path_factory, "large_ex", n_layer=8, n_embd=160, n_head=20, n_positions=128)
    subs = {2: [("'gpt2-large'", repr(str(d))), ("'gpt2'", repr(str(d)))],
            4: [("requests.get(url).text", "_synthetic_text")]}
    swaps = {"from transformers import AutoModelForCausalLM, GPT2Tokenizer":
             f"from mechinterp_c.transformers import AutoModelForCausalLM, GPT2Tokenizer, set_array_type\n"
             f"{TORCH_MODE}"}
    cells = code_cells("gpt2_large_qkv_activation_characteristics_exercise")
    text = checkpoints.english_text()[:20000]
    ref_ns = {"__name__": "__seed__", "_synthetic_text": text}
    ref = run(cells, ref_ns, {}, subs, record_errors=True)
    ours_ns = {"__name__": "__seed__", "_synthetic_text": text}
    try:
        ours = run([swap_imports(c, swaps) for c in cells], ours_ns, {}, subs, record_errors=True)
    finally:
        mi.set_array_type("numpy")
    assert ours == ref
    assert sum(v is None for v in ref.values()) >= 10          # the cells without blanks run
    assert type(ours_ns["model"]).__module__.startswith("mechinterp_c")
    np.testing.assert_array_equal(ours_ns["tokens"], ref_ns["tokens"])


# ----------------------------------------------------------------- reve_eeg_exploration
def test_reve_eeg_exploration(tmp_path):
    """REVE notebook, every cell on mechinterp_c with its imports swapped. The hub's
    remote code and dataset are out of reach, so: 'brain-bzh/reve-base' is a random
    checkpoint of reve-base's width with 12 layers (the notebook reads layer 10) written
    from the PyTorch reference (tests/reve_reference.py), 'brain-bzh/reve-positions' a
    positions.json of mechinterp_c's 10-10 electrode table, load_dataset a synthetic EEG
    dataset (12 epochs x 20 channels x 1000 samples; datasets.Dataset), and huggingface_hub's
    login a no-op. The reference run is the PyTorch reference model driven by the
    notebook's own hook code (reve_reference.seed_hooks) on the same inputs."""
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("sklearn")
    pytest.importorskip("scipy")
    import reve_reference as rr
    base, posdir = tmp_path / "reve-base", tmp_path / "reve-positions"
    ref_model = rr.random_reve(seed=0, embed_dim=512, depth=12, heads=8, head_dim=64,
                               mlp_dim_ratio=2.66, freqs=4, patch_size=200, patch_overlap=20)
    rr.save_pretrained(ref_model, base)
    posdir.mkdir()
    table = json.loads((Path(mi.__file__).parent / "data" / "reve_positions.json").read_text())
    (posdir / "positions.json").write_text(json.dumps(table["positions"]))
    eeg = np.random.default_rng(0).standard_normal((12, 20, 1000)).astype(np.float32)
    dataset = datasets.Dataset.from_dict({"data": eeg, "labels": [0, 1] * 6})
    swaps = {
        "from transformers import AutoModel":
            f"from mechinterp_c.transformers import AutoModel, set_array_type\n{TORCH_MODE}",
        "from datasets import load_dataset": "load_dataset = lambda *a, **k: _synthetic_dataset",
        "from huggingface_hub import login": "login = lambda token=None: None",
    }
    subs = {4: [("'brain-bzh/reve-positions'", repr(str(posdir))), ("'brain-bzh/reve-base'", repr(str(base)))]}
    cells = code_cells("reve_eeg_exploration")
    ns = {"__name__": "__seed__", "_synthetic_dataset": dataset}
    try:
        ran = run([swap_imports(c, swaps) for c in cells], ns, {}, subs)
    finally:
        mi.set_array_type("numpy")
    assert len(ran) == len(cells) == 45
    assert type(ns["model"]).__module__.startswith("mechinterp_c")
    assert isinstance(ns["Y"], torch.Tensor) and tuple(ns["Y"].shape) == (10, 20, 5, 512)

    # the reference: the same 10 epochs and electrode positions through the PyTorch model,
    # with the notebook's hooks (float64: the C pass is float32, 12 layers)
    X = torch.tensor(eeg[:10], dtype=torch.float64)
    pos = torch.as_tensor(np.asarray(ns["positions"]), dtype=torch.float64).expand(10, -1, -1)
    ref = ref_model.double()
    acts, handles = rr.seed_hooks(ref, 12)
    with torch.no_grad():
        Y = ref(X, pos)
    for h in handles:
        h.remove()
    # 1e-4 of each tensor's scale: float32 through 12 blocks against float64
    scale = float(Y.abs().max())
    _close(ns["Y"], Y, "Y", 0, 1e-4 * scale)
    for k in ("at_0_qkv", "at_10_qkv", "ff_10_1", "ff_11_3"):
        ref_k = _np(acts[k])
        _close(ns["activations"][k], ref_k, k, 0, 1e-4 * np.abs(ref_k).max())
    # weight statistics of the notebook (cell 26) from the checkpoint's tensors
    for l in (0, 10):
        w = ref.transformer.layers[l][1].net[1].weight.detach().float()
        _close(ns["distchars"][l, :, 0], [w.mean().item(), w.var().item()], f"distchars {l}", 1e-5, 1e-9)
