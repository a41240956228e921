"""Benchmark: mechinterp_c.HookedTransformer vs transformer_lens.HookedTransformer.

GPT-2-small-shaped model (12 layers, d_model 768, 12 heads, d_mlp 3072,
d_vocab 50257, n_ctx 1024), random weights shared through state_dict,
tokens [4, 128]. Three tasks: plain forward, full run_with_cache, and
run_with_hooks with a (no-op) hook on every hook_q.

Time: best of --reps runs after one warm-up, the runs of the two libraries
interleaved, both using the same number of threads. Memory: each (library,
task) runs in a fresh subprocess (so neither allocator has memory left over
from earlier calls): build the model, warm the library up on a [1, 1] input,
then the task's added memory is VmHWM after resetting the peak (echo 5 >
/proc/self/clear_refs) minus VmRSS before the task; the task's result is held
until the peak is read, so a cache counts in full. The C arena size (exact
bytes of all activations of the call) is printed too, with the pass's GFLOP,
the GEMM floor at the measured FMA peak and one MI_PROFILE step breakdown of
the C forward. Targets: run_with_cache >= 3x faster than TL and <= 1/2 of its
added memory; forward >= 1.5x faster.

    python3 bench/hooked.py [--reps 3] [--layers 12] [--batch 4] [--seq 128] [--tiny]
"""
import argparse
import gc
import os
import time
import warnings

import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory import child_peak_mib, measure_memory  # noqa: E402


def best_times(fns, reps):
    """Best-of-reps seconds of each (fn, grad_mode) in fns, the reps interleaved
    (C, TL no_grad, TL autograd, C, ...) so a load change on a shared machine
    hits every library alike; one warm-up call each first."""
    import torch
    for fn, grad in fns:
        with torch.set_grad_enabled(grad):
            fn()
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for i, (fn, grad) in enumerate(fns):
            gc.collect()
            with torch.set_grad_enabled(grad):
                t0 = time.perf_counter()
                r = fn()
                best[i] = min(best[i], time.perf_counter() - t0)
                del r
    return best


def task_fns(m, tokens, lib):
    """name -> zero-argument function running that task on model m."""
    is_q = lambda name: name.endswith("hook_q")
    noop = lambda act, hook: None
    if lib.startswith("tl"):
        import torch
        tokens = torch.tensor(tokens)
    return {
        "forward": lambda: m(tokens),
        "run_with_cache": lambda: m.run_with_cache(tokens),
        "run_with_hooks(hook_q)": lambda: m.run_with_hooks(tokens, fwd_hooks=[(is_q, noop)]),
    }


def mem_child(args, cfg, tokens):
    """Subprocess: print the added peak RSS (MiB) of one task on a fresh model."""
    import torch
    lib, task = args.mem_child.split(":", 1)
    if lib.startswith("tl"):
        import transformer_lens as tl
        m = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg))
        m.eval()
        torch.set_grad_enabled(lib == "tl_grad")
    else:
        from mechinterp_c.hooked_transformer import HookedTransformer
        m = HookedTransformer(dict(cfg, init_weights=False))
    task_fns(m, tokens[:1, :1], lib)[task]()          # warm-up on [1, 1]
    result, mib = measure_memory(task_fns(m, tokens, lib)[task])
    print(f"{mib:.3f}")


def run_mem_child(args, lib, task):
    return child_peak_mib(os.path.abspath(__file__),
                          ["--mem-child", f"{lib}:{task}", "--layers", str(args.layers),
                           "--batch", str(args.batch), "--seq", str(args.seq)]
                          + ["--tiny"] * args.tiny)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--mem-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tiny", action="store_true",
                    help="d_model 64, d_vocab 1000: checks the script itself in seconds")
    args = ap.parse_args()

    import torch
    import transformer_lens as tl
    import mechinterp_c
    from mechinterp_c import _testing
    from mechinterp_c.hooked_transformer import HookedTransformer

    threads = mechinterp_c.get_num_threads()
    torch.set_num_threads(threads)
    cfg = dict(n_layers=args.layers, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
               n_ctx=1024, act_fn="gelu_new", normalization_type="LN", seed=0)
    if args.tiny:
        cfg.update(d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=1000)
    tokens = np.random.default_rng(0).integers(0, cfg["d_vocab"], (args.batch, args.seq))
    tt = torch.tensor(tokens)
    if args.mem_child:
        return mem_child(args, cfg, tokens)
    tm = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg))
    tm.eval()
    m = HookedTransformer(dict(cfg, init_weights=False))
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})

    ours, theirs = task_fns(m, tokens, "c"), task_fns(tm, tokens, "tl")
    tasks = {name: (ours[name], theirs[name]) for name in ours}
    # correctness guard: the benchmark compares equal computations
    with torch.no_grad():
        ref = tm(tt).numpy()
    torch.set_grad_enabled(True)
    ours = m(tokens)
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    print(f"threads={threads} isa={mechinterp_c.cpu_isa()} layers={args.layers} tokens={tokens.shape} "
          f"logits max rel err vs TL={err:.2e}")
    flags_all = bytes([1] * m._core.n_points)
    print(f"C arena: forward {m._core.arena_bytes(args.batch, args.seq, bytes(m._core.n_points)) / 2**20:.1f} MiB, "
          f"full cache {m._core.arena_bytes(args.batch, args.seq, flags_all) / 2**20:.1f} MiB")
    # The floor: multiply-adds of the pass (attention counted in full, as computed)
    # at the measured FMA peak of all threads.
    L, D, M, V, H, Dh = args.layers, cfg["d_model"], cfg["d_mlp"], cfg["d_vocab"], cfg["n_heads"], cfg["d_head"]
    BT, T = args.batch * args.seq, args.seq
    gflop = 2 * (L * (BT * D * 3 * H * Dh + BT * H * Dh * D + 2 * BT * D * M + 2 * args.batch * H * T * T * Dh)
                 + BT * D * V) / 1e9
    peak = _testing._fma_peak()
    print(f"forward: {gflop:.1f} GFLOP (unembedding {2 * BT * D * V / 1e9:.1f}); measured FMA peak "
          f"{peak:.0f} GFLOP/s -> floor {gflop / peak * 1e3:.0f} ms at 100% of peak, "
          f"{gflop / peak / 0.8 * 1e3:.0f} ms at 80%")
    os.environ["MI_PROFILE"] = "1"       # one pass with the C step timer (stderr)
    m(tokens)
    del os.environ["MI_PROFILE"]
    # TL is measured twice: under torch.no_grad() (its leanest) and as the notebook
    # notebooks call run_with_cache / run_with_hooks, with autograd on (the default).
    print("speedup = TL time / C time; mem ratio = C added MiB / TL added MiB")
    print(f"{'task':24s} {'C ms':>8s} {'TLng ms':>8s} {'TLgr ms':>8s} {'x(ng)':>6s} {'x(gr)':>6s} "
          f"{'C MiB':>7s} {'TLng MiB':>8s} {'TLgr MiB':>8s} {'r(ng)':>6s} {'r(gr)':>6s}")
    for name, (ours_fn, tl_fn) in tasks.items():
        t_c, t_ng, t_gr = best_times([(ours_fn, True), (tl_fn, False), (tl_fn, True)], args.reps)
        mem_c = run_mem_child(args, "c", name)
        mem_ng = run_mem_child(args, "tl", name)
        mem_gr = run_mem_child(args, "tl_grad", name)
        print(f"{name:24s} {t_c * 1e3:8.1f} {t_ng * 1e3:8.1f} {t_gr * 1e3:8.1f} {t_ng / t_c:5.2f}x "
              f"{t_gr / t_c:5.2f}x {mem_c:7.1f} {mem_ng:8.1f} {mem_gr:8.1f} "
              f"{mem_c / max(mem_ng, 1e-9):6.2f} {mem_c / max(mem_gr, 1e-9):6.2f}")


if __name__ == "__main__":
    main()
