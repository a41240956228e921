"""Benchmark: the same workloads on two builds of mechinterp_c (before / after a change).

Each revision is checked out into a git worktree under build/revisions/ and built
there. The workloads then run in fresh subprocesses, one build after the other,
alternating (A, B, A, B, ...), so a load change on a shared machine hits both
alike; each subprocess reports the best of --inner calls, and the script prints
the median over --rounds per build and the ratio B / A of the times (< 1: B is
faster).

Workloads (random weights, 2 threads unless --threads):
  hooked_forward     HookedTransformer GPT-2-small shape, forward [4, 128]
  hooked_cache       the same, run_with_cache (every hook point)
  llama_forward      HookedTransformer Llama-shaped as bench/families.py (16 layers,
                     d_model 1024, 16 heads / 4 kv, SwiGLU d_mlp 2816, vocab 32000),
                     forward [4, 256]
  llama_cache        the same, run_with_cache (every hook point: a 1.8 GB cache)
  gpt2_forward       transformers.GPT2LMHeadModel GPT-2-small shape, forward [8, 128]
  train_step         the no-position recipe (2 layers, d_model 64, batch 256 x 50):
                     backward + clip + AdamW step

    python3 bench/compare_revisions.py REV_A [REV_B] [--rounds 5] [--only hooked_forward,...]

REV_B defaults to the working tree as it is (no checkout, built in place).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKLOAD = r'''
import json, sys, time
import numpy as np
import mechinterp_c as mi
name, inner, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
mi.set_num_threads(threads)
rng = np.random.default_rng(0)
if name in ("hooked_forward", "hooked_cache"):
    cfg = mi.HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072,
                                     d_vocab=50257, n_ctx=1024, act_fn="gelu_new")
    m = mi.HookedTransformer(cfg)
    m.init_weights()
    tokens = rng.integers(0, 50257, size=(4, 128))
    fn = (lambda: m(tokens)) if name == "hooked_forward" else (lambda: m.run_with_cache(tokens))
elif name in ("llama_forward", "llama_cache"):
    cfg = mi.HookedTransformerConfig(n_layers=16, d_model=1024, n_heads=16, d_head=64, d_mlp=2816,
                                     d_vocab=32000, n_ctx=2048, act_fn="silu", gated_mlp=True,
                                     normalization_type="RMS", positional_embedding_type="rotary",
                                     rotary_dim=64, n_key_value_heads=4)
    m = mi.HookedTransformer(cfg)
    m.init_weights()
    tokens = rng.integers(0, 32000, size=(4, 256))
    fn = (lambda: m(tokens)) if name == "llama_forward" else (lambda: m.run_with_cache(tokens))
elif name == "gpt2_forward":
    from mechinterp_c.transformers import GPT2Config, GPT2LMHeadModel
    m = GPT2LMHeadModel(GPT2Config())
    tokens = rng.integers(0, 50257, size=(8, 128))
    fn = lambda: m(tokens)
elif name == "train_step":
    cfg = mi.HookedTransformerConfig(n_layers=2, d_model=64, n_heads=1, d_head=64, d_mlp=256,
                                     d_vocab=300, n_ctx=50, act_fn="relu",
                                     positional_embedding_type="standard")
    m = mi.HookedTransformer(cfg)
    m.init_weights()
    opt = mi.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01)
    tokens = rng.integers(0, 300, size=(256, 50))
    targets = np.roll(tokens, 1, axis=1)
    def fn():
        opt.zero_grad()
        m.backward(tokens, targets)
        mi.optim.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
else:
    raise SystemExit(f"unknown workload {name}")
fn()
best = float("inf")
for _ in range(inner):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
print(json.dumps({"seconds": best}))
'''

WORKLOADS = {"hooked_forward": 3, "hooked_cache": 3, "llama_forward": 2, "llama_cache": 2,
             "gpt2_forward": 3, "train_step": 20}


def build(rev):
    """Path of a built checkout of ``rev`` (None: the working tree)."""
    if rev is None:
        path = ROOT
    else:
        sha = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", rev], check=True,
                             capture_output=True, text=True).stdout.strip()
        path = os.path.join(ROOT, "build", "revisions", sha)
        if not os.path.isdir(path):
            subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, sha], check=True,
                           capture_output=True)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=path, check=True,
                   capture_output=True)
    return path


def run(path, name, inner, threads):
    env = dict(os.environ, PYTHONPATH=path)
    out = subprocess.run([sys.executable, "-c", WORKLOAD, name, str(inner), str(threads)], env=env,
                         cwd=path, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev_a")
    ap.add_argument("rev_b", nargs="?", default=None, help="default: the working tree")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=",".join(WORKLOADS))
    args = ap.parse_args()
    names = args.only.split(",")
    for n in names:
        if n not in WORKLOADS:
            ap.error(f"--only: unknown workload {n!r} (have {', '.join(WORKLOADS)})")
    paths = [build(args.rev_a), build(args.rev_b)]
    labels = [args.rev_a, args.rev_b or "working tree"]
    print(f"A = {labels[0]}, B = {labels[1]}; {args.rounds} alternating rounds, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.2f}")
    for name in names:
        times = [[], []]
        for _ in range(args.rounds):
            for i in (0, 1):
                times[i].append(run(paths[i], name, WORKLOADS[name], args.threads))
        a, b = (statistics.median(t) for t in times)
        print(f"{name:16s} A {a * 1e3:9.2f} ms   B {b * 1e3:9.2f} ms   B/A {b / a:.3f}")


if __name__ == "__main__":
    main()
