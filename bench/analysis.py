"""Benchmark mechinterp_c.analysis against the seeds' NumPy / SciPy / torch code.

Each case runs the seed notebook's own code (at the seed's sizes, random data
of the right shape and scale) and the mechinterp_c equivalent, checks that
they agree, and prints both times and the ratio (target >= 3x).

    python bench/analysis.py            # all cases, seed sizes
    python bench/analysis.py --quick    # fewer layers / heads (for a busy machine)

Timings are best-of-N wall clock; on a shared machine they are noisy.
"""
import argparse
import os
import sys
import time

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mechinterp_c import analysis as A  # noqa: E402


def best(fn, reps):
    """Best wall time of `reps` runs of fn() and its last result."""
    t_best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        t_best = min(t_best, time.perf_counter() - t)
    return t_best, out


def report(name, t_ref, t_ours, note=""):
    print(f"{name:58s} ref {t_ref * 1e3:9.1f} ms   ours {t_ours * 1e3:8.1f} ms   "
          f"ratio {t_ref / t_ours:6.1f}x {note}")


def bench_cosine(rng, reps):
    """gpt2_qkv_token_similarities: 3*768 Q/K/V units over 54 sentences' target tokens."""
    acts = rng.standard_normal((54, 3 * 768))

    def seed_cos():
        An = acts / np.linalg.norm(acts, axis=0, keepdims=True)
        return An.T @ An

    def seed_corr():
        An = acts - np.mean(acts, axis=0, keepdims=True)
        An = An / np.linalg.norm(An, axis=0, keepdims=True)
        return An.T @ An

    t1, r1 = best(seed_cos, reps)
    t2, r2 = best(lambda: A.column_cosine_similarity(acts), reps)
    report("cosine 2304x2304 over 54 tokens (seed recipe)", t1, t2,
           f"max|diff| {np.abs(r1 - r2).max():.1e}")
    t1, r1 = best(seed_corr, reps)
    t2, r2 = best(lambda: A.column_cosine_similarity(acts, center=True), reps)
    report("correlation 2304x2304 over 54 tokens (seed recipe)", t1, t2,
           f"max|diff| {np.abs(r1 - r2).max():.1e}")


def bench_qk(rng, reps, n_layers):
    """reve_eeg_exploration part 7: 8x8 head pairs of 10x100 tokens per layer, 3 histograms."""
    n_heads, head_dim, emb = 8, 64, 512
    sqrtD = np.sqrt(head_dim)
    histedges = np.linspace(-15, 15, 101)
    acts = [torch.from_numpy(rng.standard_normal((10, 100, 3 * emb)).astype(np.float32) * 0.6)
            for _ in range(n_layers)]

    def seed():
        layerHists = np.zeros((n_layers, 3, len(histedges) - 1))
        for layeri in range(n_layers):
            Q, K, V = torch.split(acts[layeri], emb, dim=-1)
            Qh = Q.reshape(10, 100, n_heads, head_dim).permute(0, 2, 1, 3)
            Kh = K.reshape(10, 100, n_heads, head_dim).permute(0, 2, 1, 3)
            withinhead_dp = np.array([])
            acrosshead_dp = np.array([])
            withinhead_sm = np.array([])
            for qi in range(n_heads):
                for ki in range(n_heads):
                    dp = (Qh[:, qi, :, :] @ Kh[:, ki, :, :].transpose(-2, -1)) / sqrtD
                    if qi == ki:
                        withinhead_dp = np.concatenate((withinhead_dp, dp.flatten()))
                        withinhead_sm = np.concatenate((withinhead_sm,
                                                        torch.softmax(dp, dim=-1).flatten()))
                    else:
                        acrosshead_dp = np.concatenate((acrosshead_dp, dp.flatten()))
            layerHists[layeri, 0] = np.histogram(acrosshead_dp, bins=histedges, density=True)[0]
            layerHists[layeri, 1] = np.histogram(withinhead_dp, bins=histedges, density=True)[0]
            layerHists[layeri, 2] = np.histogram(withinhead_sm, bins=np.linspace(0, 1, 101),
                                                 density=True)[0]
        return layerHists

    def ours():
        layerHists = np.zeros((n_layers, 3, len(histedges) - 1))
        db = np.diff(histedges)
        sm_edges = np.linspace(0, 1, 101)
        for layeri in range(n_layers):
            a = acts[layeri].numpy()
            q = a[..., :emb].reshape(10, 100, n_heads, head_dim)     # strided views, no copy
            k = a[..., emb:2 * emb].reshape(10, 100, n_heads, head_dim)
            across = A.qk_scores(q, k, pairs="across", histogram=(histedges, None))
            within = A.qk_scores(q, k, pairs="within", histogram=(histedges, None), softmax=True,
                                 softmax_histogram=(sm_edges, None))
            for j, (h, e) in enumerate([(across.hist, histedges), (within.hist, histedges),
                                        (within.softmax_hist, sm_edges)]):
                c = h.sum(0)
                layerHists[layeri, j] = c / np.diff(e) / c.sum()
        return layerHists

    t1, r1 = best(seed, 1)            # the seed's loop takes seconds per layer
    t2, r2 = best(ours, reps)
    report(f"QK^T 8x8 head pairs, 10x100 tokens, {n_layers} layers, 3 hists", t1, t2,
           f"max|density diff| {np.abs(r1 - r2).max():.1e}")


def bench_kde(rng, reps, n_heads):
    """reve_eeg_exploration part 8: KDE entropy of 100k softmax values per head."""
    q = torch.from_numpy(rng.standard_normal((10, n_heads, 100, 64)).astype(np.float32))
    k = torch.from_numpy(rng.standard_normal((10, n_heads, 100, 64)).astype(np.float32))
    sm = torch.softmax(q @ k.transpose(-2, -1) / 8.0, dim=-1)            # [10, H, 100, 100]
    sm_h = sm.permute(1, 0, 2, 3).reshape(n_heads, -1).numpy()           # [H, 100k]
    grid = np.linspace(0, 1, 100)

    def seed():
        ent = np.zeros(n_heads)
        for headi in range(n_heads):
            kde = scipy.stats.gaussian_kde(sm[:, headi].flatten())
            kde_y = kde(grid)
            kde_y /= kde_y.sum()
            ent[headi] = -np.sum(kde_y * np.log2(kde_y + 1e-10))
        return ent

    t1, r1 = best(seed, max(1, reps // 2))
    t2, r2 = best(lambda: A.kde_entropy(sm_h, grid, eps=1e-10), reps)
    report(f"KDE entropy, 100k softmax values x {n_heads} heads", t1, t2,
           f"max rel diff {np.max(np.abs(r1 - r2) / np.abs(r1)):.1e}")


def bench_hist(rng, reps, n_layers, n_tok):
    """gpt2_attention_breakdown: per-layer Q/K/V histograms (edges linspace(-5,5,101),
    density) and variances of gpt2-large (d_model 1280)."""
    d = 1280
    acts = [rng.standard_normal((1, n_tok, 3 * d)).astype(np.float32) for _ in range(n_layers)]
    binEdges = np.linspace(-5, 5, 101)

    def seed():
        H = np.zeros((n_layers, 3, 100))
        var = np.zeros((n_layers, 3))
        for layeri in range(n_layers):
            t = torch.from_numpy(acts[layeri])
            q, k, v = torch.split(t, d, dim=-1)
            for j, m in enumerate((q, k, v)):
                H[layeri, j] = np.histogram(m[0, 1:, :].flatten().numpy(), bins=binEdges,
                                            density=True)[0]
                var[layeri, j] = torch.var(m[0, 1:, :]).item()
        return H, var

    def ours():
        H = np.zeros((n_layers, 3, 100))
        var = np.zeros((n_layers, 3))
        for layeri in range(n_layers):
            a = acts[layeri][0, 1:].reshape(n_tok - 1, 3, d).transpose(1, 0, 2)   # [3, tok, d]
            H[layeri] = A.batched_histogram(a, binEdges, density=True)[0]
            var[layeri] = A.describe(a, axis=(1, 2), ddof=1).var
        return H, var

    t1, (h1, v1) = best(seed, min(reps, 2))
    t2, (h2, v2) = best(ours, reps)
    report(f"Q/K/V hists + var, gpt2-large {n_layers} layers x {n_tok} tokens", t1, t2,
           f"max|diff| {np.abs(h1 - h2).max():.1e} / var rel {np.max(np.abs(v1 / v2 - 1)):.1e}")

    # the REVE seed's 'fd' histogram of a weight matrix, and the autorange torch.histogram
    w = rng.standard_normal((512, 512)).astype(np.float32) * 0.05
    t1, r1 = best(lambda: np.histogram(w.flatten(), bins="fd"), reps)
    t2, r2 = best(lambda: A.histogram(w, bins="fd"), reps)
    report("np.histogram(bins='fd') of a 512x512 weight", t1, t2,
           f"identical {np.array_equal(r1[0], r2[0])}")
    x = acts[0].ravel()
    t1, r1 = best(lambda: np.histogram(x, bins=100), reps)
    t2, r2 = best(lambda: A.histogram(x, bins=100), reps)
    report(f"np.histogram(bins=100) of {x.size} values", t1, t2,
           f"identical {np.array_equal(r1[0], r2[0])}")
    t1, r1 = best(lambda: np.histogram(x, bins=binEdges), reps)
    t2, r2 = best(lambda: A.histogram(x, bins=binEdges), reps)
    report(f"np.histogram(bins=edges array) of {x.size} values", t1, t2,
           f"identical {np.array_equal(r1[0], r2[0])}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer layers/heads, fewer repeats")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    reps = 2 if args.quick else 5
    import mechinterp_c
    print(f"mechinterp_c: isa {mechinterp_c.cpu_isa()}, {mechinterp_c.get_num_threads()} threads; "
          f"the cosine and QK^T cases are bound by mi_sgemm (kernels/gemm.c)")
    bench_cosine(rng, reps)
    bench_qk(rng, reps, 4 if args.quick else 22)
    bench_kde(rng, reps, 2 if args.quick else 8)
    bench_hist(rng, reps, 6 if args.quick else 36, 256)


if __name__ == "__main__":
    main()
