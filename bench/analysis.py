"""Benchmark mechinterp_c.analysis against the notebooks' NumPy / SciPy / torch code.

Each case runs the original notebook's own code (at the notebook's sizes, random data
of the right shape and scale) and the mechinterp_c equivalent, checks that
they agree, and prints both times and the ratio (target >= 3x).

    python bench/analysis.py            # all cases, seed sizes
    python bench/analysis.py --quick    # fewer layers / heads / smaller batches
    python bench/analysis.py --only cosine,sweeps   # some groups (cosine qk kde hist sweeps)
    python bench/analysis.py --single   # one thread on every side, CPU time (busy machine)

Timings are best-of-N wall clock; on a shared machine they are noisy. The
REVE weight-cosine case is one GEMM: it also prints GFLOP/s of both sides
against the machine's FMA peak (_testing._fma_peak()), since no code can beat a
GEMM that already runs near peak by 3x.
"""
import argparse
import os
import sys
import time

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
from mechinterp_c import analysis as A  # noqa: E402
from sweep_reference import seed_mean_ablation, tl_pair  # noqa: E402


# --single: one thread everywhere and process CPU time, which a busy machine
# disturbs far less than it disturbs the wall clock of two-thread runs
_clock = time.process_time if os.environ.get("MI_BENCH_SINGLE") == "1" else time.perf_counter


def best(fn, reps):
    """Best time of `reps` runs of fn() and its last result. Starts after a pause:
    OpenBLAS (NumPy), torch and OpenMP keep their worker threads spinning for a
    while after a call, and on two cores those threads would steal the cores from
    whichever library is timed next."""
    time.sleep(0.3)
    t_best, out = float("inf"), None
    for _ in range(reps):
        t = _clock()
        out = fn()
        t_best = min(t_best, _clock() - t)
    return t_best, out


def report(name, t_ref, t_ours, note=""):
    print(f"{name:58s} ref {t_ref * 1e3:9.1f} ms   ours {t_ours * 1e3:8.1f} ms   "
          f"ratio {t_ref / t_ours:6.1f}x {note}")


def bench_cosine(rng, reps):
    """gpt2_qkv_token_similarities: 3*768 Q/K/V units over 54 sentences' target tokens
    (float64, as the notebook's np.zeros buffers), the shuffled baseline and np.corrcoef;
    reve_eeg_exploration: sklearn cosine_similarity of the layer-10 GEGLU weights."""
    from sklearn.metrics.pairwise import cosine_similarity as sk_cosine
    from mechinterp_c import _testing
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
    t1, r1 = best(lambda: np.corrcoef(acts, rowvar=False), reps)
    t2, r2 = best(lambda: A.corrcoef(acts, rowvar=False), reps)
    report("np.corrcoef(rowvar=False) 2304 vars x 54 obs", t1, t2,
           f"max|diff| {np.abs(r1 - r2).max():.1e}")
    shuffled = acts.flatten()[rng.permutation(acts.size)].reshape(acts.shape)

    def seed_rand():
        An = shuffled / np.linalg.norm(shuffled, axis=0, keepdims=True)
        cs = An.T @ An
        return cs[np.nonzero(np.triu(cs, 1))]

    def ours_rand():
        cs = A.column_cosine_similarity(shuffled)
        return A.upper_triangle(cs)
    t1, r1 = best(seed_rand, reps)
    t2, r2 = best(ours_rand, reps)
    report("shuffled baseline: cosine + upper triangle (seed)", t1, t2,
           f"max|diff| {np.abs(r1 - r2).max():.1e}")

    peak = max(_testing._fma_peak() for _ in range(3))
    for name, shape in (("expand", (2722, 512)), ("contract", (512, 1361))):
        W = (0.05 * rng.standard_normal(shape)).astype(np.float32)
        t1, r1 = best(lambda: sk_cosine(W, W), reps)
        t2, r2 = best(lambda: A.cosine_similarity(W, W), reps)
        gf = shape[0] ** 2 * shape[1] / 1e9          # symmetric: half of 2*n*n*k
        report(f"sklearn cosine_similarity, REVE {name} {shape[0]}x{shape[1]}", t1, t2,
               f"max|diff| {np.abs(r1 - r2).max():.1e}; GEMM-bound: sklearn "
               f"{gf / t1:.0f} / ours {gf / t2:.0f} GFLOP/s of {peak:.0f} peak")


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

    t1, r1 = best(seed, 1)            # the notebook's loop takes seconds per layer
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

    # the REVE notebook's 'fd' histogram of a weight matrix, and the autorange torch.histogram
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


def bench_mean_sweep(rng, batch):
    """no_position_experiment step 7: mean-ablate every hook point, previous-token loss.
    The notebook's model (2 layers, d_model 64, 1 head, d_vocab 300, n_ctx 50); the notebook's
    batch is 4000 sequences (--quick: fewer)."""
    cfg = dict(n_layers=2, d_model=64, d_head=64, n_heads=1, d_mlp=256, d_vocab=300, n_ctx=50,
               act_fn="relu", normalization_type="LN", seed=1)
    tm, m = tl_pair(cfg)
    big_tokens = rng.integers(1, 300, (batch, 50))
    new_tokens = rng.integers(1, 300, (batch, 50))

    def seed():     # the notebook's cell on TransformerLens (tests/sweep_reference.py)
        return np.array(seed_mean_ablation(tm, big_tokens, new_tokens)[0])

    def ours_loop():      # the same loop on mechinterp_c's run_with_hooks
        _, cache = m.run_with_cache(big_tokens)
        names = [n for n in m.hook_dict if n in cache and n != "hook_pos_embed" and "result" not in n]
        losses = []
        for n in names:
            avg = cache[n].mean(0)

            def put(act, hook, avg=avg):
                act[...] = avg
            logits = m.run_with_hooks(new_tokens, fwd_hooks=[(n, put)])
            losses.append(A._core._token_losses(
                np.ascontiguousarray(logits[:, 1:]).reshape(-1, 300),
                np.ascontiguousarray(new_tokens[:, :-1]).reshape(-1))[0])
        return np.array(losses)

    def ours():
        return A.mean_ablation_sweep(m, new_tokens, loss_fn="previous_token",
                                     mean_tokens=big_tokens).losses

    t1, r1 = best(seed, 1)
    t0, r0 = best(ours_loop, 1)
    t2, r2 = best(ours, 2)
    report(f"mean_ablation_sweep, {len(r2)} hook points, batch {batch}x50 vs TL loop", t1, t2,
           f"max|loss diff| {np.abs(r1 - r2).max():.1e}; the loop on mechinterp_c: "
           f"{t0 * 1e3:.0f} ms")


def bench_head_sweep(rng, large, all_heads):
    """gpt2_attention_breakdown demo 3: zero head 4 at the penultimate token through a
    c_proj pre-hook, layer by layer, log-prob of the last token. Random weights of the
    real shapes (gpt2-large with --large, else gpt2-small), Hugging Face transformers
    vs mechinterp_c.transformers, ~25 tokens as the notebook's sentence."""
    import transformers
    from mechinterp_c.transformers import GPT2LMHeadModel
    shape = dict(n_layer=36, n_embd=1280, n_head=20) if large else \
        dict(n_layer=12, n_embd=768, n_head=12)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=1024, **shape)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    m = GPT2LMHeadModel(cfg.to_dict())
    m.load_state_dict({k: v.detach().numpy() for k, v in hf.state_dict().items()})
    n_layers, n_heads, n_embd = shape["n_layer"], shape["n_head"], shape["n_embd"]
    head_dim = n_embd // n_heads
    tokens = torch.tensor(rng.integers(0, 50257, (1, 25)))
    n_tokens = tokens.shape[1]

    def seed(heads):
        out = np.zeros((n_layers, len(heads)))
        for hi, head in enumerate(heads):
            for layeri in range(n_layers):
                def hook2ablate(module, input, head=head):
                    head_tensor = input[0].view(1, n_tokens, n_heads, head_dim)
                    head_tensor[:, -2, head, :] = 0
                    head_tensor = head_tensor.view(1, n_tokens, n_embd)
                    return tuple([head_tensor, *input[1:]])
                h = hf.transformer.h[layeri].attn.c_proj.register_forward_pre_hook(hook2ablate)
                with torch.no_grad():
                    outputs_ablated = hf(tokens)
                h.remove()
                log_smax = torch.log_softmax(outputs_ablated.logits[0, -2, :], dim=-1)
                out[layeri, hi] = log_smax[tokens[0, -1]]
        return out

    def ours(heads):
        return A.head_ablation_sweep(m, tokens.numpy(), heads=heads, positions=-2,
                                     target_positions=-2).logprobs[:, :, 0, 0]

    name = "gpt2-large" if large else "gpt2-small"
    t1, r1 = best(lambda: seed([4]), 1)
    t2, r2 = best(lambda: ours([4]), 2)
    report(f"head_ablation_sweep, {name} head 4 x {n_layers} layers vs HF loop", t1, t2,
           f"max|logprob diff| {np.abs(r1 - r2).max():.1e}")
    if all_heads:
        heads = list(range(n_heads))
        t1, r1 = best(lambda: seed(heads), 1)
        t2, r2 = best(lambda: ours(heads), 1)
        report(f"head_ablation_sweep, {name} all {n_heads} heads x {n_layers} layers", t1, t2,
               f"max|logprob diff| {np.abs(r1 - r2).max():.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer layers/heads, fewer repeats")
    ap.add_argument("--only", default="cosine,qk,kde,hist,sweeps",
                    help="comma-separated groups: cosine qk kde hist sweeps")
    ap.add_argument("--single", action="store_true", help="one thread for mechinterp_c, "
                    "torch and OpenBLAS, timed in process CPU time")
    ap.add_argument("--large", action="store_true", help="head sweep on gpt2-large's shape "
                    "(36 layers x 1280, as the notebook; needs ~7 GB and minutes)")
    args = ap.parse_args()
    if args.single and os.environ.get("MI_BENCH_SINGLE") != "1":
        # thread counts of OpenBLAS/OpenMP are fixed at import: restart with them set
        env = dict(os.environ, MI_BENCH_SINGLE="1", OPENBLAS_NUM_THREADS="1",
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    groups = set(args.only.split(","))
    rng = np.random.default_rng(0)
    reps = 2 if args.quick else 5
    import mechinterp_c
    if args.single:
        mechinterp_c.set_num_threads(1)
    torch.set_num_threads(mechinterp_c.get_num_threads())
    print(f"mechinterp_c: isa {mechinterp_c.cpu_isa()}, {mechinterp_c.get_num_threads()} threads, "
          f"{'CPU time' if args.single else 'wall clock'} "
          f"(torch {torch.get_num_threads()}); the cosine and QK^T cases are bound by mi_sgemm "
          f"(kernels/gemm.c)")
    if "cosine" in groups:
        bench_cosine(rng, reps)
    if "qk" in groups:
        bench_qk(rng, reps, 4 if args.quick else 22)
    if "kde" in groups:
        bench_kde(rng, reps, 2 if args.quick else 8)
    if "hist" in groups:
        bench_hist(rng, reps, 6 if args.quick else 36, 256)
    if "sweeps" in groups:
        bench_mean_sweep(rng, 200 if args.quick else 4000)
        bench_head_sweep(rng, args.large, not args.quick)


if __name__ == "__main__":
    main()
