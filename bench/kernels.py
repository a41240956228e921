"""Time the non-GEMM kernels at every ISA present, and against torch (CPU).

Usage: python3 bench/kernels.py [--threads N] [--repeat R] [--clock wall|cpu]

Prints, per kernel, the best (minimum) time of mechinterp_c at each ISA the
CPU has (the scalar reference, AVX2+FMA, AVX-512: force_isa), the ratios
scalar/avx2 and scalar/avx512 (the vector path's speed-up over the scalar
reference), and the torch float32 equivalent's time over the best ISA's
(> 1 means mechinterp_c is faster). Shapes are GPT-2-small-like activations:
[4*128, 3072] MLP hidden, [4*128, 768] residual, [4, 12, 128, 128] attention,
[128, 50257] logits. Attention goes through mi_sgemm, so its figure follows
the GEMM. MI_FORCE_ISA=avx2 times an AVX-512 machine as an AVX2-only one.
On a loaded machine wall time counts the slices other processes took; --clock
cpu (the process's CPU time, best with --threads 1) counts only this one's.
"""
import argparse
import time

import numpy as np
import torch

import mechinterp_c as mi
from mechinterp_c import _core, _testing, ops


def best_times(runs, repeat, clock):
    """The best (minimum) time of each (isa, fn) in runs (isa None: leave it).
    Every round runs each once, interleaved, so a load spike on a shared
    machine hits all of them alike instead of one ISA's whole series."""
    times = [float("inf")] * len(runs)
    for r in range(repeat + 1):          # round 0: warm-up, not timed
        for k, (isa, fn) in enumerate(runs):
            if isa:
                _core.force_isa(isa)
            t0 = clock()
            fn()
            if r:
                times[k] = min(times[k], clock() - t0)
    _core.force_isa("best")
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=mi.get_num_threads())
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: time.perf_counter; cpu: time.process_time (this process only)")
    args = ap.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
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

    def torch_backward(fn, *tensors):
        """The gradient of (fn(*tensors) * dy).sum() for the first tensor."""
        leaf = tensors[0].clone().requires_grad_(True)
        with torch.enable_grad():
            out = fn(leaf, *tensors[1:])
            out.backward(torch.ones_like(out))
        return leaf.grad

    dres = rng.standard_normal((512, 768), dtype=np.float32)
    dhid = rng.standard_normal((512, 3072), dtype=np.float32)
    res_scale = ops.layer_norm(res, return_scale=True)[1].reshape(-1)
    probs = ops.softmax(scores, mask=causal)
    dprobs = rng.standard_normal(probs.shape, dtype=np.float32)
    tp = torch.from_numpy(probs)

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
        ("gelu exact backward [512,3072]", lambda: _testing._activation_backward("gelu", hid, dhid),
         lambda: torch_backward(torch.nn.functional.gelu, th)),
        ("layer_norm backward [512,768]",
         lambda: _testing._layer_norm_backward(dres, res, res_scale, w, bias=True),
         lambda: torch_backward(lambda a, b: torch.nn.functional.layer_norm(a, (768,), b, b),
                                tr, tw)),
        ("softmax backward [4,12,128,128]", lambda: _testing._softmax_backward(probs, dprobs),
         lambda: torch._softmax_backward_data(torch.from_numpy(dprobs), tp, -1, torch.float32)),
        ("cross_entropy+grad [128,50257]", lambda: _testing._cross_entropy(logits, targets),
         torch_ce),
        ("attention causal B4 T128 H12 D64", lambda: ops.attention(q, k, v, causal=True),
         lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)),
    ]
    best = _core.force_isa("best")
    isas = [i for i in ("scalar", "avx2", "avx512") if _core.force_isa(i) == i]
    _core.force_isa("best")
    print(f"threads {args.threads}, ISAs {', '.join(isas)} (best {best}), repeat {args.repeat}, "
          f"{args.clock} clock")
    ratios = [f"scalar/{i}" for i in isas[1:]]
    print(f"{'kernel':34s} " + " ".join(f"{i + ' ms':>10s}" for i in isas)
          + f" {'torch ms':>9s} " + " ".join(f"{r:>13s}" for r in ratios) + f" {'torch/' + best:>13s}")
    with torch.no_grad():
        for name, ours, ref in cases:
            *mine, tt = best_times([(i, ours) for i in isas] + [(None, ref)], args.repeat, clock)
            times = dict(zip(isas, mine))
            print(f"{name:34s} " + " ".join(f"{times[i] * 1e3:10.3f}" for i in isas)
                  + f" {tt * 1e3:9.3f} "
                  + " ".join(f"{times['scalar'] / times[i]:13.2f}" for i in isas[1:])
                  + f" {tt / times[best]:13.2f}")


if __name__ == "__main__":
    main()
