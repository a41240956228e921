"""``register_full_backward_hook`` / ``register_full_backward_pre_hook`` on the Hugging
Face drop-ins, fed by the C gradient pass through ``out.backward(metric=...)``, against
``transformers`` + torch autograd on the same random-initialised checkpoints: the
gradients each hook sees (``grad_input``, ``grad_output``, tuple structure included),
the order the hooks run in, a hook that replaces a gradient changing every upstream
gradient as in torch, bad hook returns, modules that refuse backward hooks.

Tolerance: 1e-5 of each tensor's largest magnitude (float32 on both sides, sums in
other orders; measured worst 1.1e-6)."""
import warnings

import numpy as np
import pytest

from mechinterp_c import metrics
from mechinterp_c import transformers as mt

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-5
V, T = 97, 12


def _config(kind):
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=V,
                 max_position_embeddings=64, intermediate_size=96)
    if kind == "gpt2":
        return transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=V, n_positions=64)
    if kind == "llama":
        return transformers.LlamaConfig(**small, num_key_value_heads=2)
    if kind == "mistral":
        return transformers.MistralConfig(**small, num_key_value_heads=2, sliding_window=5)
    if kind == "neox":
        return transformers.GPTNeoXConfig(**small, rotary_pct=0.5)
    return transformers.Gemma2Config(**small, num_key_value_heads=2, head_dim=16, sliding_window=5,
                                     query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
                                     final_logit_softcapping=3.0)


@pytest.fixture(scope="module", params=["gpt2", "llama", "mistral", "neox", "gemma2"])
def pair(request, tmp_path_factory):
    kind = request.param
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoModelForCausalLM.from_config(_config(kind), attn_implementation="eager").eval()
        with torch.no_grad():
            for n, p in hf.named_parameters():
                if "norm" in n or "ln" in n or n.endswith("bias"):
                    p.add_(torch.randn_like(p) * 0.2)
                elif "q_proj" in n or "k_proj" in n:
                    p.mul_(4.0)    # peaked patterns: Mistral's / Gemma's window shows
        path = tmp_path_factory.mktemp(kind) / "tiny"
        hf.save_pretrained(path)
    ours = mt.AutoModelForCausalLM.from_pretrained(str(path))
    for p in hf.parameters():
        p.requires_grad_(True)
    return kind, hf, ours


# modules every family has, by role; the Gemma 2 drop-in refuses those inside its post norms
ROLES = {
    "gpt2": ["transformer.wte", "transformer.h.0", "transformer.h.1", "transformer.h.0.attn",
             "transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj", "transformer.h.0.mlp",
             "transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.act", "transformer.h.1.mlp.c_proj",
             "transformer.ln_f", "lm_head"],
    "llama": ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.layers.0.self_attn",
              "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj",
              "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj", "model.layers.1.mlp",
              "model.layers.1.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj",
              "model.norm", "lm_head"],
    "neox": ["gpt_neox.embed_in", "gpt_neox.layers.0", "gpt_neox.layers.1", "gpt_neox.layers.1.attention.dense",
             "gpt_neox.layers.0.attention", "gpt_neox.layers.1.attention.query_key_value",
             "gpt_neox.layers.0.mlp", "gpt_neox.layers.0.mlp.dense_h_to_4h", "gpt_neox.layers.1.mlp.act",
             "gpt_neox.layers.1.mlp.dense_4h_to_h", "gpt_neox.final_layer_norm", "lm_head"],
    "gemma2": ["model.layers.0", "model.layers.1", "model.layers.1.self_attn.q_proj",
               "model.layers.0.self_attn", "model.layers.1.self_attn.o_proj", "model.layers.1.mlp",
               "model.layers.0.mlp.down_proj",
               "model.layers.0.self_attn.k_proj", "model.layers.0.mlp.gate_proj", "model.layers.1.mlp.up_proj",
               "model.layers.0.post_attention_layernorm", "model.layers.1.post_feedforward_layernorm",
               "model.norm", "lm_head"],
}
ROLES["mistral"] = ROLES["llama"]
PRE_ONLY = {"model.layers.0.post_attention_layernorm", "model.layers.1.post_feedforward_layernorm"}
# Gemma 2's modules inside the post norms: their output gradient is computed, not replaceable
FULL_ONLY = {"model.layers.0.self_attn", "model.layers.1.self_attn.o_proj", "model.layers.1.mlp",
             "model.layers.0.mlp.down_proj"}

RNG = np.random.default_rng(3)
IDS = RNG.integers(0, V, (2, T))
ANS, WRONG = RNG.integers(0, V, 2), RNG.integers(0, V, 2)


def _np(x):
    if x is None:
        return None
    return x.detach().numpy().copy() if isinstance(x, torch.Tensor) else np.array(x)


def _record(model, names, log, full=True, pre=True, gemma=False):
    """Register recording hooks; log gets (kind, name, [arrays or None]) in calling order."""
    handles = []
    for n in names:
        mod = model.get_submodule(n)
        if gemma and n in FULL_ONLY:
            if full:
                handles.append(mod.register_full_backward_hook(
                    lambda m, gi, go, n=n: log.append(("full", n, [_np(g) for g in gi], [_np(g) for g in go]))))
            continue
        if full and n not in PRE_ONLY:
            handles.append(mod.register_full_backward_hook(
                lambda m, gi, go, n=n: log.append(("full", n, [_np(g) for g in gi], [_np(g) for g in go]))))
        if pre:
            handles.append(mod.register_full_backward_pre_hook(
                lambda m, go, n=n: log.append(("pre", n, [_np(g) for g in go]))))
    return handles


def _torch_metric(which, ids, mask=None):
    def f(out):
        if which == "loss":
            return out.loss
        lg = out.logits
        b = torch.arange(lg.shape[0])
        return (lg[b, -1, torch.tensor(ANS)] - lg[b, -1, torch.tensor(WRONG)]).mean()
    return f


def _run_torch(hf, which, mask=None):
    ids = torch.tensor(IDS)
    kw = dict(labels=ids) if which == "loss" else {}
    if mask is not None:
        kw["attention_mask"] = torch.tensor(mask)
    out = hf(ids, **kw)
    value = _torch_metric(which, ids)(out)
    value.backward()
    hf.zero_grad()
    return value.item()


def _close(a, b, what):
    assert (a is None) == (b is None), what
    if a is None:
        return
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)
    assert err < TOL, (what, err)


def _compare_logs(mine, ref, what):
    # torch runs hooks of modules sharing one C point in module order, ours in registration
    # order (documented); compare per (kind, name), and the overall order of distinct points
    key = lambda e: (e[0], e[1])
    assert sorted(map(key, mine)) == sorted(map(key, ref)), (what, set(map(key, mine)) ^ set(map(key, ref)))
    r = {key(e): e for e in ref}
    for e in mine:
        f = r[key(e)]
        for i, (x, y) in enumerate(zip(e[2:], f[2:])):
            assert len(x) == len(y), (what, key(e), i, len(x), len(y))
            # grad_input past the first: gradients of the non-tensor arguments (None), or of
            # a mask tensor torch builds (zeros with eager attention); not ours to compare
            for j, (a, b) in enumerate(zip(x, y) if i == len(e) - 3 else zip(x[:1], y[:1])):
                _close(a, b, (what, key(e), i, j))


@pytest.mark.parametrize("which", ["loss", "logit_diff"])
def test_hooks_see_the_gradients_torch_sees(pair, which):
    kind, hf, ours = pair
    names = ROLES[kind]
    mine, ref = [], []
    hs = _record(ours, names, mine, gemma=kind == "gemma2") + _record(hf, names, ref, gemma=kind == "gemma2")
    try:
        ref_value = _run_torch(hf, which)
        out = ours(IDS)
        metric = "loss" if which == "loss" else metrics.logit_diff(ANS, WRONG)
        value = out.backward(metric=metric)
    finally:
        for h in hs:
            h.remove()
    assert abs(value - ref_value) < 1e-5 * max(1.0, abs(ref_value))
    _compare_logs(mine, ref, (kind, which))
    # blocks run in torch's order: the last block's hooks before the first's
    b0, b1 = [n for n in names if n.split(".")[-2:-1] in (["h"], ["layers"])]
    order = [e[1] for e in mine if e[1] in (b0, b1)]
    assert order.index(b1) < order.index(b0) and order[-1] == b0


def test_padding_mask_and_function_metric(pair):
    """With a padding mask (HF's positions), and a NumPy metric function with its gradient."""
    kind, hf, ours = pair
    mask = np.ones(IDS.shape, dtype=np.int64)
    mask[0, :3] = 0
    names = [n for n in ROLES[kind] if n.endswith(("layers.0", "h.0", "lm_head", "embed_tokens", "wte"))]
    mine, ref = [], []
    hs = _record(ours, names, mine, gemma=kind == "gemma2") + _record(hf, names, ref, gemma=kind == "gemma2")

    def fn(logits):     # the logit difference at the last position, by hand
        g = np.zeros(logits.shape, np.float32)
        b = np.arange(2)
        g[b, -1, ANS] += 0.5
        g[b, -1, WRONG] -= 0.5
        return float((logits[b, -1, ANS] - logits[b, -1, WRONG]).mean()), g
    try:
        _run_torch(hf, "logit_diff", mask)
        ours(IDS, attention_mask=mask).backward(metric=fn)
    finally:
        for h in hs:
            h.remove()
    _compare_logs(mine, ref, (kind, "padded"))


def _double(m, gi, go):
    return (gi[0] * 2.0,) + tuple(gi[1:])


def _shift(m, go):
    return (go[0] + 0.01,) + tuple(go[1:])


REPLACE = {
    "gpt2": [("full", "transformer.h.1", _double), ("pre", "transformer.h.0.mlp.c_proj", _shift),
             ("full", "transformer.h.1.attn.c_proj", _double), ("full", "lm_head", _double)],
    "llama": [("full", "model.layers.1", _double), ("pre", "model.layers.0.mlp.down_proj", _shift),
              ("full", "model.layers.1.self_attn.o_proj", _double), ("pre", "model.norm", _shift)],
    "neox": [("full", "gpt_neox.layers.1", _double), ("full", "gpt_neox.layers.0.mlp.act", _double),
             ("pre", "gpt_neox.layers.1.attention.dense", _shift), ("full", "gpt_neox.final_layer_norm", _double),
             ("pre", "gpt_neox.layers.1.attention.query_key_value", _shift)],
    "gemma2": [("full", "model.layers.1", _double), ("pre", "model.layers.0.post_feedforward_layernorm", _shift),
               ("pre", "lm_head", _shift), ("full", "model.layers.1.self_attn.o_proj", _double)],
}
REPLACE["mistral"] = REPLACE["llama"]


def test_a_replacing_hook_changes_upstream_gradients_as_in_torch(pair):
    kind, hf, ours = pair
    watch = [n for n in ROLES[kind] if n.endswith(("layers.0", "h.0", "embed_tokens", "wte", "embed_in"))
             or n.endswith(("layers.0.self_attn.v_proj", "h.0.attn"))]
    logs = []
    for model in (ours, hf):
        log = []
        hs = _record(model, watch, log, pre=False)
        for kind_, name, fn in REPLACE[kind]:
            mod = model.get_submodule(name)
            hs.append(mod.register_full_backward_hook(fn) if kind_ == "full"
                      else mod.register_full_backward_pre_hook(fn))
        try:
            if model is ours:
                ours(IDS).backward(metric="loss")
            else:
                _run_torch(hf, "loss")
        finally:
            for h in hs:
                h.remove()
        logs.append(log)
    _compare_logs(logs[0], logs[1], (kind, "replaced"))
    # and the replacements did change them
    plain = []
    hs = _record(ours, watch, plain, pre=False)
    ours(IDS).backward(metric="loss")
    for h in hs:
        h.remove()
    first = [e for e in plain if e[0] == "full"][-1]
    again = [e for e in logs[0] if e[1] == first[1]][-1]
    assert not np.allclose(first[3][0], again[3][0])


def test_bad_hooks_give_clear_errors_and_the_model_stays_usable(pair):
    kind, hf, ours = pair
    block = ours.get_submodule(ROLES[kind][1])
    before = ours(IDS).logits.copy()
    h = block.register_full_backward_hook(lambda m, gi, go: (np.zeros((3, 3), np.float32),))
    with pytest.raises(ValueError, match=r"backward hook on .*returned shape \(3, 3\)"):
        ours(IDS).backward(metric="loss")
    h.remove()
    h = block.register_full_backward_pre_hook(lambda m, go: go[0] * 2)
    with pytest.raises(TypeError, match=r"returns None or a tuple"):
        ours(IDS).backward(metric="loss")
    h.remove()

    def boom(m, gi, go):
        raise RuntimeError("hook failed")
    h = block.register_full_backward_hook(boom)
    with pytest.raises(RuntimeError, match="hook failed"):
        ours(IDS).backward(metric="loss")
    h.remove()
    with pytest.raises(ValueError, match="metric: the gradient has shape"):
        ours(IDS).backward(metric=lambda lg: (0.0, np.zeros((1, 2), np.float32)))
    # usable afterwards, nothing left registered
    np.testing.assert_array_equal(ours(IDS).logits, before)
    seen = []
    h = block.register_full_backward_pre_hook(lambda m, go: seen.append(1))
    ours(IDS).backward(metric="loss")
    h.remove()
    assert seen == [1]
    # a replacement of a gradient the pass cannot replace, modules without backward hooks
    norm = {"gpt2": "transformer.h.0.ln_1", "neox": "gpt_neox.layers.0.input_layernorm"}.get(
        kind, "model.layers.0.input_layernorm")
    with pytest.raises(NotImplementedError, match=norm.replace(".", r"\.") + ".*not available"):
        ours.get_submodule(norm).register_full_backward_hook(lambda m, gi, go: None)
    if kind == "gemma2":
        with pytest.raises(NotImplementedError, match=r"self_attn: a full backward pre-hook is not available"):
            ours.get_submodule("model.layers.0.self_attn").register_full_backward_pre_hook(lambda m, go: None)
        with pytest.raises(NotImplementedError, match=r"embed_tokens.*not available"):
            ours.get_submodule("model.embed_tokens").register_full_backward_hook(lambda m, gi, go: None)
    else:
        mlp = ours.get_submodule(ROLES[kind][1] + ".mlp")
        h = mlp.register_full_backward_hook(lambda m, gi, go: (gi[0] * 0,))
        with pytest.raises(NotImplementedError, match="replacing grad_input is not supported"):
            ours(IDS).backward(metric="loss")
        h.remove()
    with pytest.raises(RuntimeError, match="no pass to differentiate"):
        ours(IDS, use_cache=True).backward(metric="loss")
    # removed handles leave no hook behind in the C pass
    assert not any(hp._handles or hp._bwd_handles for hp in ours._ht.hook_dict.values())


def test_torch_mode_hooks_get_tensors_and_may_replace(pair):
    """After set_array_type("torch") the hooks get torch tensors and may return tensors."""
    import mechinterp_c as mi
    kind, hf, ours = pair
    got = []
    name = {"gpt2": "transformer.h.1.mlp.c_proj", "neox": "gpt_neox.layers.1.mlp.dense_4h_to_h",
            "gemma2": "model.layers.1"}.get(kind, "model.layers.1.mlp.down_proj")
    block0 = [n for n in ROLES[kind] if n.endswith((".h.0", "layers.0"))][0]
    mi.set_array_type("torch")
    try:
        hs = [ours.get_submodule(name).register_full_backward_hook(
                  lambda m, gi, go: got.append((type(gi[0]), type(go[0]))) or (gi[0] * 3.0,) + gi[1:]),
              ours.get_submodule(block0).register_full_backward_pre_hook(
                  lambda m, go: got.append(go[0].detach().numpy().copy()))]
        ours(IDS).backward(metric="loss")
    finally:
        mi.set_array_type("numpy")
        for h in hs:
            h.remove()
    assert got[0] == (torch.Tensor, torch.Tensor)
    ref = []
    hs = [hf.get_submodule(name).register_full_backward_hook(lambda m, gi, go: (gi[0] * 3.0,) + gi[1:]),
          hf.get_submodule(block0).register_full_backward_pre_hook(
              lambda m, go: ref.append(go[0].detach().numpy().copy()))]
    try:
        _run_torch(hf, "loss")
    finally:
        for h in hs:
            h.remove()
    _close(got[1], ref[0], "torch mode")
