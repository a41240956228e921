"""The four ported notebooks execute top to bottom, and their key numbers match the
same computation done independently here with PyTorch / transformers /
TransformerLens / NumPy float64 on the same checkpoints.

Each notebook runs in a fresh ``python3`` kernel (nbclient) with
``MI_NOTEBOOK_SMALL=1`` (small fallback checkpoints, short training),
``MI_NOTEBOOK_FALLBACK=1`` and an empty HF cache (the random-initialised stand-ins,
whatever this machine has cached), its figures in a temporary directory and its key
numbers in a JSON file (``MI_NOTEBOOK_OUT``).
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from mechinterp_c.demo import scoped_environ

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT = 300


@pytest.fixture(scope="module", autouse=True)
def _torch_one_thread():
    # the references are small; on a shared 2-core machine torch's spinning OpenMP
    # workers slow them 10x, one thread does not
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("notebooks")
    vals = {
        "MI_NOTEBOOK_SMALL": "1",
        "MI_NOTEBOOK_FALLBACK": "1",
        "MI_NOTEBOOK_STEPS": "150",          # the small default, whatever the caller set
        "MI_CHECKPOINT_DIR": str(base / "checkpoints"),
        "HF_HUB_CACHE": str(base / "empty-hf-cache"),
        "PYTHONPATH": os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]]
                                                     if os.environ.get("PYTHONPATH") else [])),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        # the kernel shares 2 cores with pytest and other jobs: spinning OpenMP
        # workers make every parallel region wait for descheduled threads
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    return base, vals


def _execute(env, name):
    """Run notebooks/NAME.ipynb; return (results dict, executed notebook, figure dir)."""
    base, vals = env
    figdir = base / f"figs-{name}"
    out = base / f"{name}.json"
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        f"{name}.ipynb is committed with outputs"
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "import torch" not in src and "from torch" not in src and "plotly" not in src
    with scoped_environ({**vals, "MI_NOTEBOOK_FIGDIR": str(figdir), "MI_NOTEBOOK_OUT": str(out)}):
        client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                         resources={"metadata": {"path": str(NOTEBOOKS)}})
        client.execute()
    return json.loads(out.read_text()), nb, figdir


def _stdout(nb):
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")


def _n_images(nb):
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))


def _arr(x):
    return np.array(x, dtype=np.float64)


def test_notebook_sources_are_in_sync():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "make_notebooks.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- similarities
def test_gpt2_qkv_token_similarities(env):
    res, nb, figdir = _execute(env, "gpt2_qkv_token_similarities")
    assert "random-initialised gpt2-shaped checkpoint" in _stdout(nb)
    assert len(list(figdir.glob("*.png"))) == 7 and _n_images(nb) == 7   # every seed figure

    d = res["model_path"]
    hf = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
    tok = transformers.GPT2Tokenizer.from_pretrained(d)
    tok.pad_token = tok.eos_token
    sentences = nb.cells[[i for i, c in enumerate(nb.cells) if "sentences = [" in c.source][0]].source
    ns = {}
    exec(sentences.split("print(")[0], ns)
    tokens = tok(ns["sentences"], padding=True, return_tensors="pt")
    np.testing.assert_array_equal(tokens["input_ids"].numpy(), res["input_ids"])

    # the seed's code, verbatim apart from the layer's activations coming from torch
    acts = {}
    layeri = res["layer"]
    hf.transformer.h[layeri].attn.c_attn.register_forward_hook(
        lambda m, i, o: acts.__setitem__("qvk", o.detach().numpy()))
    with torch.no_grad():
        hf(**tokens)
    target_token = tok.encode(" her")[0]
    assert target_token == res["target_token"]
    n, nEmb = len(ns["sentences"]), hf.config.n_embd
    trg, non = np.zeros((n, 3 * nEmb)), np.zeros((n, 3 * nEmb))
    for s in range(n):
        t = tokens["input_ids"][s].tolist().index(target_token)
        trg[s], non[s] = acts["qvk"][s, t], acts["qvk"][s, t - 1]
    assert [tokens["input_ids"][s].tolist().index(target_token) for s in range(n)] == res["target_positions"]

    def cos(a, center):
        if center:
            a = a - a.mean(axis=0, keepdims=True)
        a = a / np.linalg.norm(a, axis=0, keepdims=True)
        return a.T @ a

    # float32 activations (torch vs C: ~1e-6 apart) and float32 similarity products on
    # 54 samples: entries agree to ~1e-6; 2e-5 is a safe bound that still catches any
    # wrong row, sentence or normalisation
    ref = {"cossim_trg": cos(trg, False), "cossim_non": cos(non, False),
           "corr_trg": cos(trg, True), "corr_non": cos(non, True)}
    for k, m in ref.items():
        np.testing.assert_allclose(_arr(res[k + "_corner"]), m[:8, :8], atol=2e-5, err_msg=k)
    np.testing.assert_allclose(_arr(res["cossim_trg_rowsum"]), ref["cossim_trg"].sum(1), atol=5e-3)

    # the seed's mask selection of the correlation matrices, group means
    vm = np.concatenate([np.full(nEmb, 1), np.full(nEmb, 2), np.full(nEmb, 3)])
    mask = np.triu(vm[:, None] @ vm[None, :], 1)
    codes = {"QQ": 1, "KK": 4, "VV": 9, "QK": 2, "QV": 3, "KV": 6}
    for cat, m in (("trg", ref["corr_trg"]), ("non", ref["corr_non"])):
        for g, code in codes.items():
            sel = m[mask == code]
            assert res["group_size"][g] == sel.size
            assert abs(res[f"group_mean_{cat}"][g] - np.nanmean(sel)) < 1e-5, (cat, g)
    # histograms: np.histogram on the float64 reference; a value within float32 noise of a
    # bin edge may land in the neighbouring bin, so allow a few moved values
    edges = np.linspace(-1, 1, 101)
    for g, code in codes.items():
        sel = ref["corr_trg"][mask == code]
        y = np.histogram(sel, bins=edges, density=True)[0]
        moved = np.abs(_arr(res["hist_trg"][g]) - y).sum() * 0.02 * sel.size / 2
        assert moved <= 3, (g, moved)
    np.testing.assert_allclose(_arr(res["unit_means_trg"]), trg.mean(0), atol=1e-5)


# --------------------------------------------------------------------------- attention breakdown
def test_gpt2_attention_breakdown(env):
    res, nb, figdir = _execute(env, "gpt2_attention_breakdown")
    out = _stdout(nb)
    assert "random-initialised gpt2-large-shaped checkpoint" in out
    assert "byte-level BPE tokenizer" in out
    assert len(list(figdir.glob("*.png"))) == 8 and _n_images(nb) == 8

    ck = Path(env[1]["MI_CHECKPOINT_DIR"])
    hf = transformers.GPT2LMHeadModel.from_pretrained(ck / "gpt2-large-small-v1").eval()
    tok = transformers.GPT2Tokenizer.from_pretrained(ck / "gpt2-small-v1")
    txt = """Be who you are and say what you feel,
      because those who mind don't matter and those who matter don't mind"""
    tokens = tok.encode(txt, return_tensors="pt")
    np.testing.assert_array_equal(tokens[0].numpy(), res["tokens"])
    L, D, H = hf.config.n_layer, hf.config.n_embd, hf.config.n_head
    n_tokens, head_dim = tokens.shape[1], D // H
    sqrtD = torch.sqrt(torch.tensor(head_dim))

    acts = {}
    handles = [hf.transformer.h[l].attn.c_attn.register_forward_hook(
        lambda m, i, o, l=l: acts.__setitem__(l, o.detach())) for l in range(L)]
    with torch.no_grad():
        hf(tokens)
    for h in handles:
        h.remove()
    variances, meenz, stdz = np.zeros((L, 3)), np.zeros(L), np.zeros(L)
    for l in range(L):
        q, k, v = torch.split(acts[l], D, dim=-1)
        variances[l] = [torch.var(x[0, 1:, :]).item() for x in (q, k, v)]
        attn = q[0, 1:, :] @ k[0, 1:, :].transpose(-2, -1) / sqrtD
        meenz[l], stdz[l] = attn.mean().item(), attn.std().item()
    # float32 activations from two implementations (~1e-6 relative); statistics in float64
    # on our side, float32 in torch: 1e-4 relative covers both
    np.testing.assert_allclose(_arr(res["variances"]), variances, rtol=1e-4)
    np.testing.assert_allclose(_arr(res["qkt_mean"]), meenz, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(_arr(res["qkt_std"]), stdz, rtol=1e-4)

    # the seed's lesion loop, verbatim (torch)
    import torch.nn.functional as F
    with torch.no_grad():
        clean = F.log_softmax(hf(tokens).logits[0, -2, :], dim=-1)[tokens[0, -1]].item()
    ablation = np.zeros(L)
    for layeri in range(L):
        def hook2ablate(module, input):
            head_tensor = input[0].view(1, n_tokens, H, head_dim)
            head_tensor[:, -2, 4, :] = 0
            head_tensor = head_tensor.view(1, n_tokens, D)
            return tuple(head_tensor, *input[1:])
        h = hf.transformer.h[layeri].attn.c_proj.register_forward_pre_hook(hook2ablate)
        with torch.no_grad():
            lp = F.log_softmax(hf(tokens).logits[0, -2, :], dim=-1)
        h.remove()
        ablation[layeri] = lp[tokens[0, -1]]
    # log-probabilities ~ -8 through 10 float32 layers: agree to ~1e-5
    assert abs(res["clean_logprob"] - clean) < 1e-4
    np.testing.assert_allclose(_arr(res["ablation_logprobs"]), ablation, atol=1e-4)
    assert np.any(np.abs(ablation - clean) > 1e-6)     # the lesion changes something


# --------------------------------------------------------------------------- exercise
def test_gpt2_qkv_activation_characteristics(env):
    res, nb, figdir = _execute(env, "gpt2_qkv_activation_characteristics")
    assert "random-initialised gpt2-large-shaped checkpoint" in _stdout(nb)
    assert len(list(figdir.glob("*.png"))) == 8 and _n_images(nb) == 8

    from mechinterp_c.checkpoints import english_text
    ck = Path(env[1]["MI_CHECKPOINT_DIR"])
    hf = transformers.GPT2LMHeadModel.from_pretrained(ck / "gpt2-large-small-v1").eval()
    tok = transformers.GPT2Tokenizer.from_pretrained(ck / "gpt2-small-v1")
    tokens = np.array(tok.encode(english_text()))
    target = tok.encode(" her")[0]
    idx = np.where(tokens == target)[0]
    idx = idx[idx >= 10][:48]
    batch = np.stack([tokens[i - 10:i + 1] for i in idx])
    np.testing.assert_array_equal(batch, res["batch"])
    assert np.all(batch[:, -1] == target) and len(batch) >= 20

    L, D, H = hf.config.n_layer, hf.config.n_embd, hf.config.n_head
    acts = {}
    for l in range(L):
        hf.transformer.h[l].attn.c_attn.register_forward_hook(
            lambda m, i, o, l=l: acts.__setitem__(l, o.detach()))
    with torch.no_grad():
        hf(torch.tensor(batch))
    desc = np.zeros((L, 3, 3, 2))
    head_sd = np.zeros((L, 3))
    for l in range(L):
        for m, X in enumerate(torch.split(acts[l], D, dim=-1)):
            for c, Y in enumerate((X[:, -1, :], X[:, :-1, :])):
                desc[l, m, :, c] = [Y.double().mean(), Y.double().abs().mean(), Y.double().var()]
            head_sd[l, m] = X.reshape(len(batch), 11, H, D // H).double().std(dim=1).mean()
    # float32 activations of two implementations (~1e-6 relative), statistics in float64
    np.testing.assert_allclose(_arr(res["descriptives"]), desc, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_arr(res["head_stdevs"]), head_sd, rtol=1e-4)
    # layer 0 histograms: np.histogram of the torch activations (a value within float32
    # noise of a bin edge may move to the next bin: allow 3 moved values per histogram)
    edges = np.linspace(-4, 4, 101)
    for m, X in enumerate(torch.split(acts[0], D, dim=-1)):
        for c, Y in enumerate((X[:, -1, :], X[:, :-1, :])):
            y = np.histogram(Y.numpy().ravel(), edges, density=True)[0]
            got = _arr(res["histograms_layer0"])[m, :, c]
            assert np.abs(got - y).sum() * 0.08 * Y.numel() / 2 <= 3, (m, c)


# --------------------------------------------------------------------------- no position
def test_no_position_experiment_via_demo(env, capsys):
    import einops
    import torch.nn.functional as F  # noqa: F401
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    # executed through the demo (`make demo` = python -m mechinterp_c.demo), small size
    from mechinterp_c import demo
    out_dir = env[0] / "demo_out"
    with scoped_environ(env[1]):
        res = demo.run(out_dir, small=True, timeout=CELL_TIMEOUT)
    printed = capsys.readouterr().out
    assert f"executed notebook: {out_dir / 'no_position_experiment.ipynb'}" in printed
    assert "training time:" in printed and "150 steps of batch 64" in printed
    nb = nbformat.read(out_dir / "no_position_experiment.ipynb", as_version=4)
    assert len(list((out_dir / "figures").glob("*.png"))) == 17 and _n_images(nb) == 17
    assert "Epoch 100: Loss" in _stdout(nb)
    arrays = np.load(out_dir / "no_position_experiment.npz")
    losses = _arr(res["train_losses"])
    assert len(losses) == res["num_epochs"] == 150 and res["batch_size"] == 64
    assert res["W_pos_norm"] == 0.0
    assert losses[-10:].mean() < losses[:10].mean() - 0.1      # it learns

    cfg = HookedTransformerConfig(n_layers=2, d_model=64, d_head=64, n_heads=1, d_mlp=256,
                                  d_vocab=300, n_ctx=50, act_fn="relu", normalization_type="LN")
    tl = HookedTransformer(cfg)

    def load(prefix):
        sd = {k[len(prefix):]: torch.tensor(arrays[k]) for k in arrays.files if k.startswith(prefix)}
        missing, unexpected = tl.load_state_dict(sd, strict=False)
        assert not unexpected and all(k.endswith(("mask", "IGNORE")) for k in missing)

    def loss_fn(logits, tokens):
        lp = logits[:, 1:].log_softmax(-1)
        return -lp.gather(-1, tokens[:, :-1, None])[..., 0].mean()

    # the seed's training loop from the notebook's initial weights, on the same batches:
    # the first 15 steps (float32 in both; the drift over 15 Adam steps stays < 1e-4)
    load("init.")
    tl.pos_embed.W_pos.requires_grad = False
    opt = torch.optim.AdamW([p for p in tl.parameters() if p.requires_grad], lr=1e-4,
                            betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(i / 100, 1.0))
    rng = np.random.default_rng(123)
    for step in range(15):
        x = rng.integers(1, 300, (64, 50))
        x[:, 0] = 0
        x = torch.tensor(x)
        loss = loss_fn(tl(x), x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tl.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        sched.step()
        assert abs(loss.item() - losses[step]) < 1e-4 * (1 + step), (step, loss.item(), losses[step])

    # the trained model: analysis-batch loss, attention patterns, mean-ablation table
    load("final.")
    big = torch.tensor(arrays["big_tokens"])
    new = torch.tensor(arrays["new_token_batch"])
    with torch.no_grad():
        logits, cache = tl.run_with_cache(big)
        # fp32 logits from two implementations, loss in float64 on our side: 1e-5 relative
        assert abs(loss_fn(logits, big).item() - res["big_loss"]) < 1e-5 * res["big_loss"] + 1e-6
        assert abs(res["folded_loss"] - res["big_loss"]) < 1e-4
        for l in range(2):
            np.testing.assert_allclose(_arr(res["mean_pattern"][l]),
                                       cache["attn", l].mean([0, 1]).numpy(), atol=1e-5)
        baseline = loss_fn(tl(new), new).item()
        assert abs(baseline - res["baseline_loss"]) < 1e-5 * baseline + 1e-6
        ref = {}
        for hook_name in list(tl.hook_dict.keys()):
            if hook_name in cache and hook_name != "hook_pos_embed" and "result" not in hook_name:
                average_act = cache[hook_name].mean(0)

                def replacing_with_average_act(activation, hook):
                    activation[:] = einops.repeat(average_act, "... -> batch ...",
                                                  batch=new.size(0))
                    return activation

                out = tl.run_with_hooks(new, fwd_hooks=[(hook_name, replacing_with_average_act)])
                ref[hook_name] = loss_fn(out, new).item()
    assert list(res["ablation"]) == list(ref)
    # each ablated loss: fp32 forward passes of two implementations; 1e-4 relative
    for k, v in ref.items():
        assert abs(res["ablation"][k] - v) < 1e-4 * max(1.0, v), (k, res["ablation"][k], v)
