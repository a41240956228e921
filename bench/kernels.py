"""Time the non-GEMM kernels: vectorised vs scalar reference, and vs torch (CPU).

Usage: python3 bench/kernels.py [--threads N] [--repeat R]

Prints, per kernel, the best (minimum) time of mechinterp_c with the best ISA, with
the scalar reference (force_isa('scalar')), and of the torch float32
equivalent, and the ratios scalar/fast and torch/fast (> 1 means mechinterp_c
is faster). Shapes are GPT-2-small-like activations: [4*128, 3072] MLP
hidden, [4*128, 768] residual, [4, 12, 128, 128] attention, [128, 50257]
logits. Attention goes through mi_sgemm, so its figure follows the GEMM.
"""
import argparse
import time

import numpy as np
import torch

import mechinterp_c as mi
from mechinterp_c import _core, _testing, ops


def best_time(fn, repeat):
    fn()   # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)   # min: the least disturbed run on a shared machine


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=mi.get_num_threads())
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    mi.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    hid = rng.standard_normal((512, 3072), dtype=np.float32)
    res = rng.standard_normal((512, 768), dtype=np.float32)
    w = rng.standard_normal(768, dtype=np.float32)
    scores = rng.standard_normal((4, 12, 128, 128), dtype=np.float32)
    causal = np.tril(np.ones((128, 128), bool))
    q, k, v = (rng.standard_normal((4, 128, 12, 64), dtype=np.float32) for _ in range(3))
    th, tr, tw, ts = (torch.from_numpy(a) for a in (hid, res, w, scores))
    tq, tk, tv = (torch.from_numpy(a).transpose(1, 2) for a in (q, k, v))
    tmask = torch.from_numpy(causal)
    logits = rng.standard_normal((128, 50257), dtype=np.float32)
    targets = rng.integers(0, 50257, 128)
    t_logits, t_targets = torch.from_numpy(logits), torch.from_numpy(targets)

    def torch_ce():
        lt = t_logits.clone().requires_grad_(True)
        with torch.enable_grad():
            torch.nn.functional.cross_entropy(lt, t_targets).backward()
        return lt.grad

    cases = [
        ("gelu exact [512,3072]", lambda: ops.gelu(hid), lambda: torch.nn.functional.gelu(th)),
        ("gelu tanh [512,3072]", lambda: ops.gelu(hid, approximate="tanh"),
         lambda: torch.nn.functional.gelu(th, approximate="tanh")),
        ("silu [512,3072]", lambda: ops.silu(hid), lambda: torch.nn.functional.silu(th)),
        ("relu [512,3072]", lambda: ops.relu(hid), lambda: torch.relu(th)),
        ("layer_norm [512,768]", lambda: ops.layer_norm(res, w, w),
         lambda: torch.nn.functional.layer_norm(tr, (768,), tw, tw)),
        ("rms_norm [512,768]", lambda: ops.rms_norm(res, w),
         lambda: torch.nn.functional.rms_norm(tr, (768,), tw, eps=1e-6)),
        ("softmax causal [4,12,128,128]", lambda: ops.softmax(scores, mask=causal),
         lambda: torch.softmax(ts.masked_fill(~tmask, -torch.inf), -1)),
        ("cross_entropy+grad [128,50257]", lambda: _testing._cross_entropy(logits, targets),
         torch_ce),
        ("attention causal B4 T128 H12 D64", lambda: ops.attention(q, k, v, causal=True),
         lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)),
    ]
    print(f"threads {args.threads}, best ISA {_core.force_isa('best')}, repeat {args.repeat}")
    print(f"{'kernel':34s} {'fast ms':>9s} {'scalar ms':>9s} {'torch ms':>9s} "
          f"{'scalar/fast':>11s} {'torch/fast':>10s}")
    with torch.no_grad():
        for name, ours, ref in cases:
            _core.force_isa("best")
            fast = best_time(ours, args.repeat)
            _core.force_isa("scalar")
            scalar = best_time(ours, args.repeat)
            _core.force_isa("best")
            tt = best_time(ref, args.repeat)
            print(f"{name:34s} {fast * 1e3:9.3f} {scalar * 1e3:9.3f} {tt * 1e3:9.3f} "
                  f"{scalar / fast:11.2f} {tt / fast:10.2f}")


if __name__ == "__main__":
    main()
