"""Benchmark: the bfloat16-weight GEMM against our float32 GEMM and torch.matmul on bfloat16.

GPT-2-small's products at 1024 tokens (A [1024, K] float32 activations, weights
[K, N]): ours in bfloat16 (the best path on this CPU: AVX512-BF16 where present),
ours in float32 (mechinterp_c.ops.matmul), and torch.matmul on bfloat16 tensors,
the three interleaved per repetition, median of --reps, the same thread count
everywhere. Prints GFLOP/s, our bf16 / our fp32 ratio (target >= 1.7x at
1024x768x3072) and the share of the bfloat16 peak: vdpbf16ps does 32
multiply-adds per instruction where an fp32 FMA does 16, so the bf16 peak is
twice the measured fp32 FMA peak (_testing._fma_peak()).

    python3 bench/bf16.py [--reps 7] [--threads 2]
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SHAPES = [(1024, 768, 2304), (1024, 768, 768), (1024, 768, 3072), (1024, 3072, 768)]
TARGET = (1024, 768, 3072)


def median_times(fns, reps):
    for f in fns:
        f()
    times = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    import torch
    import mechinterp_c as mi
    from mechinterp_c import _core, _testing
    mi.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    peak32 = _testing._fma_peak()
    print(f"threads {args.threads}, bf16 path {_core._bgemm_best_path()!r}, measured fp32 FMA peak "
          f"{peak32:.0f} GFLOP/s (bf16 peak {2 * peak32:.0f}), load average {os.getloadavg()[0]:.2f}")
    print(f"{'M x K x N':>18s} {'ours bf16':>10s} {'ours fp32':>10s} {'torch bf16':>11s}   "
          f"{'bf16/fp32':>9s} {'bf16/torch':>10s} {'% bf16 peak':>11s}")
    rng = np.random.default_rng(0)
    for M, K, N in SHAPES:
        a = rng.standard_normal((M, K)).astype(np.float32)
        w = rng.standard_normal((K, N)).astype(np.float32) * 0.02
        wb = _core.to_bfloat16(w)
        ta, tw = torch.from_numpy(a).to(torch.bfloat16), torch.from_numpy(w).to(torch.bfloat16)
        t_b, t_f, t_t = median_times([lambda: _core._gemm_bf16(a, wb), lambda: mi.ops.matmul(a, w),
                                      lambda: torch.matmul(ta, tw)], args.reps)
        g = 2.0 * M * N * K / 1e9
        mark = "  <- target >= 1.7x" if (M, K, N) == TARGET else ""
        print(f"{f'{M}x{K}x{N}':>18s} {g / t_b:10.0f} {g / t_f:10.0f} {g / t_t:11.0f}   "
              f"{t_f / t_b:8.2f}x {t_t / t_b:9.2f}x {100 * g / t_b / (2 * peak32):10.0f}%{mark}")


if __name__ == "__main__":
    main()
