"""Benchmark: run_with_cache(incl_bwd=True) with every hook point, mechinterp_c vs
transformer_lens, in the same run.

GPT-2-small-shaped model (12 layers, d_model 768, 12 heads, d_mlp 3072, d_vocab
50257), random weights shared through state_dict, tokens [8, 64], metric: the mean
next-token loss. TransformerLens: ``run_with_cache(tokens, incl_bwd=True,
return_type="loss")`` (its loss.backward() also fills the parameters' .grad, as its
users get it); mechinterp_c: ``run_with_cache(tokens, incl_bwd=True, metric="loss")``
(activation gradients only: no weight-gradient products).

Time: best of --reps after one warm-up each, the runs interleaved (C, TL, C, ...)
so load changes on a shared machine hit both alike. Memory: each library in a fresh
subprocess, added peak RSS of the call with its result held (bench/memory.py). The
pass's GFLOP (forward + activation backward: every product of the forward once
more, attention's four backward products) against the measured FMA peak. Targets:
>= 1.5x TransformerLens's speed, <= 0.6x its added memory, products >= 75% of peak.

    python3 bench/gradients.py [--reps 3] [--layers 12] [--batch 8] [--seq 64] [--tiny]
"""
import argparse
import gc
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore")
from memory import child_peak_mib, measure_memory  # noqa: E402


def config(args):
    cfg = dict(n_layers=args.layers, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
               n_ctx=1024, act_fn="gelu_new", normalization_type="LN", seed=0)
    if args.tiny:
        cfg.update(d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=1000)
    return cfg


def task(m, tokens, lib):
    if lib == "tl":
        import torch
        tt = torch.tensor(tokens)
        return lambda: m.run_with_cache(tt, incl_bwd=True, return_type="loss")
    return lambda: m.run_with_cache(tokens, incl_bwd=True, metric="loss")


def mem_child(args, cfg, tokens):
    lib = args.mem_child
    if lib == "tl":
        import transformer_lens as tl
        m = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg))
    else:
        from mechinterp_c.hooked_transformer import HookedTransformer
        m = HookedTransformer(dict(cfg, init_weights=False))
    task(m, tokens[:1, :2], lib)()             # warm-up on [1, 2]
    _, mib = measure_memory(task(m, tokens, lib))
    print(f"{mib:.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--tiny", action="store_true", help="d_model 64, d_vocab 1000: checks the script")
    ap.add_argument("--mem-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cfg = config(args)
    tokens = np.random.default_rng(0).integers(0, cfg["d_vocab"], (args.batch, args.seq))
    if args.mem_child:
        return mem_child(args, cfg, tokens)

    import torch
    import transformer_lens as tl
    import mechinterp_c
    from mechinterp_c import _testing
    from mechinterp_c.hooked_transformer import HookedTransformer

    threads = mechinterp_c.get_num_threads()
    torch.set_num_threads(threads)
    tm = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg))
    m = HookedTransformer(dict(cfg, init_weights=False))
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    ours, theirs = task(m, tokens, "c"), task(tm, tokens, "tl")

    # correctness guard: both compute the same gradients
    v, cache = ours()
    rv, rcache = theirs()
    tm.zero_grad(set_to_none=True)
    worst = max(np.abs(np.asarray(cache[k]) - rcache[k].numpy()).max() / max(np.abs(rcache[k].numpy()).max(), 1e-30)
                for k in rcache if k.endswith("_grad"))
    n_grad = sum(k.endswith("_grad") for k in cache)
    print(f"threads={threads} isa={mechinterp_c.cpu_isa()} layers={args.layers} tokens={tokens.shape} "
          f"loss {v:.6f} vs TL {rv.item():.6f}; {n_grad} gradients, worst max-relative diff {worst:.1e}")
    del cache, rcache

    L, D, M, V, H, Dh = args.layers, cfg["d_model"], cfg["d_mlp"], cfg["d_vocab"], cfg["n_heads"], cfg["d_head"]
    BT, T, B = args.batch * args.seq, args.seq, args.batch
    fwd = 2 * (L * (BT * D * 3 * H * Dh + BT * H * Dh * D + 2 * BT * D * M + 2 * B * H * T * T * Dh) + BT * D * V)
    bwd = 2 * (L * (BT * D * 3 * H * Dh + BT * H * Dh * D + 2 * BT * D * M + 4 * B * H * T * T * Dh) + BT * D * V)
    gflop = (fwd + bwd) / 1e9
    peak = _testing._fma_peak()

    best = [float("inf"), float("inf")]
    for _ in range(args.reps):
        for i, fn in enumerate((ours, theirs)):
            gc.collect()
            t0 = time.perf_counter()
            r = fn()
            best[i] = min(best[i], time.perf_counter() - t0)
            del r
            tm.zero_grad(set_to_none=True)
    t_c, t_tl = best
    script = os.path.abspath(__file__)
    extra = ["--layers", str(args.layers), "--batch", str(args.batch), "--seq", str(args.seq)] + ["--tiny"] * args.tiny
    mem_c = child_peak_mib(script, ["--mem-child", "c"] + extra)
    mem_tl = child_peak_mib(script, ["--mem-child", "tl"] + extra)
    print(f"pass: {gflop:.1f} GFLOP (forward {fwd / 1e9:.1f}, backward {bwd / 1e9:.1f}); FMA peak {peak:.0f} GFLOP/s")
    print(f"{'':28s} {'C':>9s} {'TL':>9s} {'ratio':>7s}")
    print(f"{'time (ms)':28s} {t_c * 1e3:9.1f} {t_tl * 1e3:9.1f} {t_tl / t_c:6.2f}x  (target >= 1.5x)")
    print(f"{'added memory (MiB)':28s} {mem_c:9.1f} {mem_tl:9.1f} {mem_c / max(mem_tl, 1e-9):6.2f}   (target <= 0.6)")
    print(f"{'share of FMA peak':28s} {gflop / t_c / peak:9.0%} {gflop / t_tl / peak:9.0%}"
          f"          (whole pass; target: products >= 75%)")


if __name__ == "__main__":
    main()
