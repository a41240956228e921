"""Benchmark: mechinterp_c.patching vs transformer_lens.patching.

GPT-2-small-shaped model (12 layers, d_model 768, 12 heads, d_mlp 3072,
d_vocab 50257), random weights shared through state_dict; an IOI-style task:
8 prompt pairs of 16 tokens (clean and corrupted differ at two name
positions), metric the mean logit difference of two answer tokens at the last
position. Three grids: get_act_patch_resid_pre [12, 16],
get_act_patch_attn_head_out_by_pos [12, 16, 12] and get_act_patch_block_every
[3, 12, 16]. Extra rows: path_patch (every sender head [12, 12] into three
heads' queries, against the two-pass TransformerLens hook recipe) and
head_ablation_sweep (every head zeroed, against TransformerLens run_with_hooks).

TransformerLens runs one full forward pass per cell, so its time is linear in
the cells: it is timed on --tl-cells cells of each grid (index_df, the same
cells for both libraries, checked equal) and scaled to the grid. Ours runs
the whole grid with the built-in logit_diff (rows read in C). The runs of
the two libraries alternate, best of --reps. Printed: seconds, cells per
second, the speed ratio, and the average share of one full forward pass
(same model, same [8, 16] input) that a cell costs. Targets: >= 5x
TransformerLens for resid_pre and by-head.

    python3 bench/patching.py [--reps 2] [--tl-cells 24] [--layers 12] [--no-extra]
"""
import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
warnings.filterwarnings("ignore")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--tl-cells", type=int, default=24)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--grids", default="resid_pre,head_by_pos,block_every")
    ap.add_argument("--no-extra", dest="extra", action="store_false",
                    help="skip the path_patch and head_ablation_sweep rows")
    args = ap.parse_args()

    import pandas as pd
    import torch
    import transformer_lens as tl
    import transformer_lens.patching as tlp

    from mechinterp_c import _core, patching
    from mechinterp_c.config import HookedTransformerConfig
    from mechinterp_c.hooked_transformer import HookedTransformer

    torch.set_num_threads(_core.get_num_threads())
    cfg = dict(n_layers=args.layers, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
               n_ctx=1024, act_fn="gelu_new", normalization_type="LN", seed=0)
    tm = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg))
    tm.eval()
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    m = HookedTransformer(HookedTransformerConfig(**cfg))
    m.load_state_dict(sd)

    B, T = 8, 16
    rng = np.random.default_rng(0)
    names = rng.integers(1000, 2000, (B, 2))
    clean = rng.integers(0, 50257, (B, T))
    clean[:, 3], clean[:, 6], clean[:, 12] = names[:, 0], names[:, 1], names[:, 0]
    corrupt = clean.copy()
    corrupt[:, 3], corrupt[:, 6] = names[:, 1], names[:, 0]      # the names swapped
    answer, wrong = names[:, 1], names[:, 0]
    metric = patching.logit_diff(answer, wrong, pos=-1)
    ar = torch.arange(B)
    ta, tw = torch.tensor(answer), torch.tensor(wrong)

    def tl_metric(logits):
        return (logits[ar, -1, ta] - logits[ar, -1, tw]).mean()

    _, cc = m.run_with_cache(clean)
    with torch.no_grad():
        _, tcc = tm.run_with_cache(torch.tensor(clean))
    tcorrupt = torch.tensor(corrupt)

    # one full forward pass of the same input (the unit of "share of a forward")
    def best(fn, reps):
        t = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            t = min(t, time.perf_counter() - t0)
        return t
    m.forward(corrupt)
    t_fwd = best(lambda: m.forward(corrupt), 5)
    with torch.no_grad():
        tm(tcorrupt)
        t_fwd_tl = best(lambda: tm(tcorrupt), 3)
    print(f"GPT-2-small shape, {args.layers} layers, tokens [{B}, {T}], threads {_core.get_num_threads()}")
    print(f"one full forward: ours {t_fwd * 1e3:.1f} ms, TransformerLens {t_fwd_tl * 1e3:.1f} ms")

    grids = {
        "resid_pre": ("get_act_patch_resid_pre", ["layer", "pos"], (args.layers, T), "resid_pre",
                      patching.layer_pos_patch_setter, tlp.layer_pos_patch_setter),
        "head_by_pos": ("get_act_patch_attn_head_out_by_pos", ["layer", "pos", "head"],
                        (args.layers, T, 12), "z", patching.layer_pos_head_vector_patch_setter,
                        tlp.layer_pos_head_vector_patch_setter),
    }
    print(f"{'grid':<14}{'cells':>7}{'ours s':>9}{'TL s (scaled)':>15}{'ratio':>8}{'cell / forward':>16}")
    for g in [g for g in args.grids.split(",") if g]:
        if g == "block_every":
            fn_name, n_cells = "get_act_patch_block_every", 3 * args.layers * T
            # TransformerLens's three sub-grids all cost one full pass a cell
            sub = grids["resid_pre"]
            sample = _sample(sub[2], sub[1], args.tl_cells, rng)
            with torch.no_grad():
                t_tl_sample = best(lambda: tlp.generic_activation_patch(
                    tm, tcorrupt, tcc, tl_metric, sub[5], sub[3], index_df=pd.DataFrame(sample, columns=sub[1])),
                    args.reps)
            t_tl = t_tl_sample / len(sample) * n_cells
            t_ours = best(lambda: patching.get_act_patch_block_every(m, corrupt, cc, metric, progress=False),
                          args.reps)
        else:
            fn_name, axes, shape, act, setter, tl_setter = grids[g]
            n_cells = int(np.prod(shape))
            sample = _sample(shape, axes, args.tl_cells, rng)
            df = pd.DataFrame(sample, columns=axes)
            ours_s = patching.generic_activation_patch(m, corrupt, cc, metric, setter, act, index_df=df,
                                                       progress=False)
            t_tl_sample = float("inf")
            t_ours = float("inf")
            for _ in range(args.reps):   # alternate the libraries
                with torch.no_grad():
                    t0 = time.perf_counter()
                    ref = tlp.generic_activation_patch(tm, tcorrupt, tcc, tl_metric, tl_setter, act, index_df=df)
                    t_tl_sample = min(t_tl_sample, time.perf_counter() - t0)
                t0 = time.perf_counter()
                getattr(patching, fn_name)(m, corrupt, cc, metric, progress=False)
                t_ours = min(t_ours, time.perf_counter() - t0)
            err = np.abs(ours_s - ref.numpy()).max()
            assert err < 1e-3, f"{g}: our cells differ from TransformerLens's by {err}"
            t_tl = t_tl_sample / len(sample) * n_cells
        share = t_ours / n_cells / t_fwd
        print(f"{g:<14}{n_cells:>7}{t_ours:>9.2f}{t_tl:>15.2f}{t_tl / t_ours:>7.1f}x{share:>15.3f}")
    if args.extra:
        _extra_rows(args, m, tm, clean, corrupt, metric, tl_metric, t_fwd, best, rng)


def _tl_path_patch_cell(tm, tcorrupt, tck, tcc, l, h, receivers, tl_metric):
    """One cell of path patching with TransformerLens hooks (the two-pass recipe:
    heads frozen to the corrupted run, sender head clean, receivers' q recorded;
    then the corrupted run with the receivers' q patched)."""
    hooks = []
    for i in range(tm.cfg.n_layers):
        def freeze(z, hook, i=i):
            z[...] = tck[f"blocks.{i}.attn.hook_z"]
            return z
        hooks.append((f"blocks.{i}.attn.hook_z", freeze))

    def put(z, hook):
        z[:, :, h] = tcc[f"blocks.{l}.attn.hook_z"][:, :, h]
        return z
    hooks.append((f"blocks.{l}.attn.hook_z", put))
    rec = {}
    for rl, _, w in receivers:
        def grab(a, hook, n=f"blocks.{rl}.attn.hook_{w}"):
            rec[n] = a.clone()
        hooks.append((f"blocks.{rl}.attn.hook_{w}", grab))
    tm.run_with_hooks(tcorrupt, fwd_hooks=hooks)
    hooks = []
    for rl, rh, w in receivers:
        def put_r(a, hook, n=f"blocks.{rl}.attn.hook_{w}", rh=rh):
            a[:, :, rh] = rec[n][:, :, rh]
            return a
        hooks.append((f"blocks.{rl}.attn.hook_{w}", put_r))
    return tl_metric(tm.run_with_hooks(tcorrupt, fwd_hooks=hooks)).item()


def _tl_head_ablation_cell(tm, ttokens, l, h, tpos):
    """One cell of the head-ablation sweep with TransformerLens hooks: zero head h's
    hook_z at every position, log-probabilities of the next tokens at tpos."""
    def zero(z, hook):
        z[:, :, h] = 0.0
        return z
    lg = tm.run_with_hooks(ttokens, fwd_hooks=[(f"blocks.{l}.attn.hook_z", zero)])
    lp = torch_log_softmax(lg[:, tpos])
    return lp.gather(-1, ttokens[:, [t + 1 for t in tpos]][..., None])[..., 0]


def torch_log_softmax(x):
    import torch
    return torch.log_softmax(x, -1)


def _extra_rows(args, m, tm, clean, corrupt, metric, tl_metric, t_fwd, best, rng):
    """path_patch (every sender head into three name-mover-style receivers' queries)
    and head_ablation_sweep (every head zeroed, next-token log-probs at the last two
    targets), ours on the whole grid, TransformerLens's hook recipe on --tl-cells
    cells scaled to the grid."""
    import torch

    from mechinterp_c import patching
    from mechinterp_c.ablation import head_ablation_sweep
    L, H = args.layers, 12
    B, T = corrupt.shape
    tcorrupt, tclean = torch.tensor(corrupt), torch.tensor(clean)
    with torch.no_grad():
        _, tck = tm.run_with_cache(tcorrupt)
        _, tcc = tm.run_with_cache(tclean)
    receivers = [(L - 3, 9, "q"), (L - 3, 6, "q"), (L - 2, 0, "q")]
    # senders that reach a receiver (layers before the first receiver's)
    sample = _sample((L - 3, H), ["layer", "head"], max(2, args.tl_cells // 4), rng)
    t_tl = t_ours = float("inf")
    for _ in range(args.reps):
        with torch.no_grad():
            t0 = time.perf_counter()
            ref = [_tl_path_patch_cell(tm, tcorrupt, tck, tcc, int(l), int(h), receivers, tl_metric)
                   for l, h in sample]
            t_tl = min(t_tl, time.perf_counter() - t0)
        t0 = time.perf_counter()
        ours = patching.path_patch(m, clean, corrupt, "heads", receivers, metric, progress=False)
        t_ours = min(t_ours, time.perf_counter() - t0)
    err = max(abs(ours[int(l), int(h)] - r) for (l, h), r in zip(sample, ref))
    assert err < 1e-3, f"path_patch: our cells differ from the TransformerLens recipe's by {err}"
    n = L * H
    t_tl = t_tl / len(sample) * n
    print(f"{'path_patch':<14}{n:>7}{t_ours:>9.2f}{t_tl:>15.2f}{t_tl / t_ours:>7.1f}x"
          f"{t_ours / n / t_fwd:>15.3f}")
    tpos = [T - 3, T - 2]
    t_tl = t_ours = float("inf")
    sample = _sample((L, H), ["layer", "head"], max(2, args.tl_cells // 2), rng)
    for _ in range(args.reps):
        with torch.no_grad():
            t0 = time.perf_counter()
            ref = [_tl_head_ablation_cell(tm, tcorrupt, int(l), int(h), tpos).numpy() for l, h in sample]
            t_tl = min(t_tl, time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = head_ablation_sweep(m, corrupt, target_positions=tpos)
        t_ours = min(t_ours, time.perf_counter() - t0)
    err = max(np.abs(res.logprobs[int(l), int(h)] - r).max() for (l, h), r in zip(sample, ref))
    assert err < 1e-3, f"head_ablation_sweep: differs from TransformerLens hooks by {err}"
    t_tl = t_tl / len(sample) * n
    print(f"{'head_ablation':<14}{n:>7}{t_ours:>9.2f}{t_tl:>15.2f}{t_tl / t_ours:>7.1f}x"
          f"{t_ours / n / t_fwd:>15.3f}")


def _sample(shape, axes, k, rng):
    """k cells of the grid, spread over it (every layer), as an int array [k, len(shape)]."""
    n = int(np.prod(shape))
    flat = np.sort(rng.choice(n, size=min(k, n), replace=False))
    return np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64)


if __name__ == "__main__":
    main()
