"""Benchmark: REVE on mechinterp_c vs the PyTorch reference (tests/reve_reference.py).

reve-base shapes (22 layers, embed_dim 512, 8 heads x 64, mlp_dim_ratio 2.66,
GEGLU, patch 200 / overlap 20), random weights shared through a checkpoint
written by the reference, input [10, 20, 1000] (the original notebook's 10 epochs
of 20 channels x 1000 samples) with the notebook's 20 electrode positions. Tasks:

  * "seed hooks": the original notebook's Part 5 verbatim on both models, a forward
    hook on every ``to_qkv`` (stores the output) and on every feed-forward
    ``net`` (re-runs ``module[0..3]`` on the input and stores the four arrays),
    then ``model(X, positions)``; the activations are kept, as in the notebook.
  * "forward": ``model(X, positions)`` without hooks.

Time: best of --reps after one warm-up, both libraries with the same number of
threads; torch is timed as the notebook runs it (autograd on: "gr") and under
torch.no_grad() ("ng"). Memory: each (library, task) in a fresh subprocess
that loads the model and warms up on a small input; the task's added memory is
VmHWM after resetting the peak (echo 5 > /proc/self/clear_refs) minus VmRSS
before it, the task's result (output and stored activations) held until the
peak is read. Target: seed hooks >= 1.5x faster than torch, less peak memory.

    python3 bench/reve.py [--reps 3] [--layers 22] [--batch 10] [--tiny] [--task "seed hooks"]
"""
import argparse
import gc
import os
import sys
import tempfile
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory import child_peak_mib, measure_memory  # noqa: E402

SEED_CHANNELS = ['Fp1', 'Fp2', 'F3', 'F4', 'F7', 'F8', 'T3', 'T4', 'C3', 'C4', 'T5', 'T6',
                 'P3', 'P4', 'O1', 'O2', 'Fz', 'Cz', 'Pz', 'A2']


def best_time(fn, reps):
    fn()                                 # warm-up
    times = []
    for _ in range(reps):
        gc.collect()
        t0 = time.perf_counter()
        r = fn()
        times.append(time.perf_counter() - t0)
        del r
    return min(times)


def seed_hooked_forward(model, X, positions, n_layers):
    """The notebook's Part 5 (hooks, forward, removal); returns (Y, activations)."""
    from reve_reference import seed_hooks
    activations, handles = seed_hooks(model, n_layers)
    Y = model(X, positions)
    for h in handles:
        h.remove()
    return Y, activations


def model_cfg(args):
    if args.tiny:
        return dict(embed_dim=64, depth=2, heads=2, head_dim=32, mlp_dim_ratio=2.66, freqs=4,
                    patch_size=200, patch_overlap=20)
    return dict(embed_dim=512, depth=args.layers, heads=8, head_dim=64, mlp_dim_ratio=2.66,
                freqs=4, patch_size=200, patch_overlap=20)


def load(lib, ckpt, cfg):
    if lib == "c":
        from mechinterp_c.transformers import AutoModel
        return AutoModel.from_pretrained(ckpt, trust_remote_code=True).eval()
    from reve_reference import random_reve
    return random_reve(seed=0, **cfg)


def inputs(args, lib):
    from mechinterp_c import reve
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((args.batch, 20, 1000)) * 0.5).astype(np.float32)
    positions = reve.default_position_bank()(SEED_CHANNELS)[None]
    if lib != "c":
        import torch
        X, positions = torch.from_numpy(X), torch.from_numpy(positions).expand(args.batch, 20, 3)
    return X, positions


def task_fns(m, X, positions, n_layers):
    return {"seed hooks": lambda: seed_hooked_forward(m, X, positions, n_layers),
            "forward": lambda: m(X, positions)}


def mem_child(args):
    import torch
    lib, task = args.mem_child.split(":", 1)
    torch.set_grad_enabled(lib != "torch_ng")
    cfg = model_cfg(args)
    m = load(lib, args.ckpt, cfg)
    X, positions = inputs(args, lib)
    task_fns(m, X[:1, :, :400], positions[:1], cfg["depth"])[task]()   # warm-up
    result, mib = measure_memory(task_fns(m, X, positions, cfg["depth"])[task])
    print(f"{mib:.3f}")


def run_mem_child(args, lib, task):
    return child_peak_mib(os.path.abspath(__file__),
                          ["--mem-child", f"{lib}:{task}", "--ckpt", args.ckpt, "--layers",
                           str(args.layers), "--batch", str(args.batch)] + ["--tiny"] * args.tiny)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--tiny", action="store_true", help="D 64, 2 layers: checks the script in seconds")
    ap.add_argument("--task", default=None, help="only this task ('seed hooks' or 'forward')")
    ap.add_argument("--mem-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mem_child:
        return mem_child(args)

    import torch
    import mechinterp_c
    from reve_reference import save_pretrained

    threads = mechinterp_c.get_num_threads()
    torch.set_num_threads(threads)
    cfg = model_cfg(args)
    tmp = tempfile.TemporaryDirectory()
    tm = load("torch", None, cfg)
    args.ckpt = str(save_pretrained(tm, os.path.join(tmp.name, "reve")))
    m = load("c", args.ckpt, cfg)
    X, pos = inputs(args, "c")
    tX, tpos = inputs(args, "torch")

    # correctness guard: equal computations, and equal stored activations
    Y, acts = seed_hooked_forward(m, X, pos, cfg["depth"])
    with torch.no_grad():
        tY, tacts = seed_hooked_forward(tm, tX, tpos, cfg["depth"])
    err = np.abs(Y - tY.numpy()).max() / np.abs(tY.numpy()).max()
    aerr = max(np.abs(np.asarray(acts[k]) - np.asarray(v)).max() / np.abs(np.asarray(v)).max()
               for k, v in tacts.items())
    print(f"threads={threads} isa={mechinterp_c.cpu_isa()} layers={cfg['depth']} "
          f"D={cfg['embed_dim']} input={list(X.shape)} tokens/epoch={Y.shape[1] * Y.shape[2]}")
    print(f"max rel err vs torch float32: output {err:.2e}, stored activations {aerr:.2e}")
    del Y, acts, tY, tacts
    print("speedup = torch time / C time; mem ratio = C added MiB / torch added MiB")
    print(f"{'task':12s} {'C ms':>8s} {'T-gr ms':>8s} {'T-ng ms':>8s} {'x(gr)':>6s} {'x(ng)':>6s} "
          f"{'C MiB':>7s} {'T-gr MiB':>8s} {'T-ng MiB':>8s} {'r(gr)':>6s} {'r(ng)':>6s}")
    ours, theirs = task_fns(m, X, pos, cfg["depth"]), task_fns(tm, tX, tpos, cfg["depth"])
    for name in ours:
        if args.task and name != args.task:
            continue
        t_c = best_time(ours[name], args.reps)
        t_gr = best_time(theirs[name], args.reps)
        with torch.no_grad():
            t_ng = best_time(theirs[name], args.reps)
        mem_c = run_mem_child(args, "c", name)
        mem_gr = run_mem_child(args, "torch", name)
        mem_ng = run_mem_child(args, "torch_ng", name)
        print(f"{name:12s} {t_c * 1e3:8.1f} {t_gr * 1e3:8.1f} {t_ng * 1e3:8.1f} {t_gr / t_c:5.2f}x "
              f"{t_ng / t_c:5.2f}x {mem_c:7.1f} {mem_gr:8.1f} {mem_ng:8.1f} "
              f"{mem_c / max(mem_gr, 1e-9):6.2f} {mem_c / max(mem_ng, 1e-9):6.2f}")


if __name__ == "__main__":
    main()
