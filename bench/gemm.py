"""SGEMM benchmark: mechinterp_c ops.matmul vs numpy @ vs torch.matmul.

Usage:  python3 bench/gemm.py [--threads 2] [--repeats 3] [--rounds 3] [--markdown] [--quick]

For each shape (GPT-2 small / large projections, REVE-base, 2048^3) prints the
best-of-N GFLOP/s of each library in the same process (all limited to the same
thread count), the ratios ops/numpy and ops/torch, and ops.matmul's share of
the FMA peak measured by _testing._fma_peak() on the same threads.

Each library's thread pool is allowed to go idle (a short sleep) before the
next one is timed: OpenBLAS and OpenMP workers spin after a call and would
otherwise steal the cores the next library runs on.
"""
import argparse
import os
import sys
import time

import numpy as np

SHAPES = [  # (label, M, K, N): [M, K] @ [K, N]
    ("gpt2-small qkv", 1024, 768, 2304),
    ("gpt2-small mlp_in", 1024, 768, 3072),
    ("gpt2-small mlp_out", 1024, 3072, 768),
    ("gpt2-large qkv", 1024, 1280, 3840),
    ("gpt2-large mlp_in", 1024, 1280, 5120),
    ("reve-base qkv", 1000, 512, 1536),
    ("reve-base mlp_in", 1000, 512, 2722),
    ("square 2048", 2048, 2048, 2048),
]


def best_time(fn, repeats):
    """Best wall time of `repeats` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per shape")
    ap.add_argument("--markdown", action="store_true", help="print a README table")
    ap.add_argument("--quick", action="store_true", help="first and last shape only")
    args = ap.parse_args()
    # Thread counts of the BLAS libraries must be fixed before they load.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch
    from mechinterp_c import _core, _testing, ops

    torch.set_num_threads(args.threads)
    _core.set_num_threads(args.threads)
    def probe():
        time.sleep(0.3)     # torch / OpenBLAS workers spin after a call: let them sleep first
        return max(_testing._fma_peak() for _ in range(3))

    peak = probe()
    shapes = [SHAPES[0], SHAPES[-1]] if args.quick else SHAPES
    rng = np.random.default_rng(0)
    rows = []
    for label, M, K, N in shapes:
        a = rng.standard_normal((M, K), dtype=np.float32)
        b = rng.standard_normal((K, N), dtype=np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        flops = 2.0 * M * N * K
        res = {"ops": 0.0, "numpy": 0.0, "torch": 0.0}
        # Interleaved rounds: a burst of load from elsewhere then hits every
        # library alike instead of whichever happened to be running.
        for _ in range(args.rounds):
            for name, fn in (("ops", lambda: ops.matmul(a, b)), ("numpy", lambda: a @ b),
                             ("torch", lambda: torch.matmul(ta, tb))):
                time.sleep(0.2)     # let the previous library's spinning workers sleep
                res[name] = max(res[name], flops / best_time(fn, args.repeats) * 1e-9)
        err = np.abs(ops.matmul(a, b) - a @ b).max() / (np.abs(a @ b).max() + 1e-30)
        assert err < 1e-4, f"{label}: ops.matmul disagrees with numpy (rel err {err:.2g})"
        rows.append((label, M, K, N, res["ops"], res["numpy"], res["torch"]))
        # Probe again after every shape and keep the best: on a shared machine
        # one probe taken during a burst of load would understate the peak.
        peak = max(peak, probe())

    hdr = ("shape", "M x K @ K x N", "ops GF/s", "numpy GF/s", "torch GF/s",
           "ops/numpy", "ops/torch", "ops/peak")
    fmt_rows = [(lab, f"{M}x{K} @ {K}x{N}", f"{o:.1f}", f"{n:.1f}", f"{t:.1f}",
                 f"{o / n:.2f}", f"{o / t:.2f}", f"{100 * o / peak:.0f}%")
                for lab, M, K, N, o, n, t in rows]
    title = (f"SGEMM, {args.threads} threads, best of {args.rounds}x{args.repeats}; "
             f"measured FMA peak {peak:.0f} GFLOP/s (ISA {_core.cpu_isa()})")
    if args.markdown:
        print(title + "\n")
        print("| " + " | ".join(hdr) + " |")
        print("|" + "|".join("---" for _ in hdr) + "|")
        for r in fmt_rows:
            print("| " + " | ".join(r) + " |")
    else:
        print(title)
        widths = [max(len(h), *(len(r[i]) for r in fmt_rows)) for i, h in enumerate(hdr)]
        print("  ".join(h.rjust(w) for h, w in zip(hdr, widths)))
        for r in fmt_rows:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
