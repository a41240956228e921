"""Benchmark: bfloat16 weights against float32, ours and torch's.

    python3 bench/bf16.py [--reps 7] [--threads 2] [--models small large] [--no-gemm]
    python3 bench/bf16.py --big [--big-dir DIR]        (not part of CI: ~13.5 GB)

1. GEMM: GPT-2-small's products at 1024 tokens (A [1024, K] float32 activations,
   weights [K, N]): ours in bfloat16 (the best path on this CPU: AVX512-BF16 where
   present), ours in float32 (mechinterp_c.ops.matmul), and torch.matmul on bfloat16
   tensors, interleaved per repetition, median of --reps, the same thread count
   everywhere. GFLOP/s, our bf16 / our fp32 (target >= 1.7x at 1024x768x3072) and
   the share of the bfloat16 peak (vdpbf16ps does 32 multiply-adds per instruction
   where an fp32 FMA does 16: twice the measured fp32 FMA peak, _testing._fma_peak()).
2. Models: GPT-2-small- and gpt2-large-shaped checkpoints of random weights (F32 and
   BF16 safetensors written once into a temporary directory), loaded three ways:
   ours float32 (GPT2LMHeadModel.from_pretrained of the F32 file, mapped in place),
   ours bfloat16 (torch_dtype=bfloat16 of the BF16 file, mapped in place) and
   transformers with torch_dtype=torch.bfloat16 (the BF16 file). Forward (batch 4 x 256 tokens small, 1 x 512 large)
   and greedy generate at batch 1 (16-token prompt, 16 new tokens), the three
   alternating, median of 3; model memory (weight bytes) and the peak RSS of a fresh
   process that loads the model and runs one forward. Targets: forward >= 1.5x our
   fp32, generate >= 1.7x our fp32 tokens/s, model memory half. Both sides generate
   on a key/value cache (a decode step is a batch-1 product with every weight).
3. --big: a Llama-2-7B-sized checkpoint (32 layers, d_model 4096, vocab 32000) written
   once as BF16 safetensors by this script, loaded by mmap (GPT2LMHeadModel,
   torch_dtype=bfloat16); run_with_cache with a names_filter (the HookedTransformer
   behind the HF model) and generate; load time, tokens/s and peak RSS against the
   weight bytes plus the activation arena (target <= 1.15x). The C core has no Llama
   family yet, so the model is GPT-2-style: MLP width 16512 (1.5 x 11008) gives the
   parameter count of Llama's three 4096 x 11008 MLP matrices with two; tied
   embedding, learned positions (n_ctx 4096). (The Llama family's checkpoints store
   q/k/v/o and the MLP as [out, in] Linear weights, which the C core converts into its
   fused [in, out] layout, so they cannot be mapped in place; GPT-2's Conv1D layouts are
   the C core's.) Run it only with > 18 GiB free; --big-layers 2 is a smoke test.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

GEMM_SHAPES = [(1024, 768, 2304), (1024, 768, 768), (1024, 768, 3072), (1024, 3072, 768)]
GEMM_TARGET = (1024, 768, 3072)
MODELS = {"small": dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),
          "large": dict(n_layer=36, n_embd=1280, n_head=20, vocab_size=50257, n_positions=1024)}
FORWARD_SHAPE = {"small": (4, 256), "large": (1, 512)}
BIG = dict(n_layer=32, n_embd=4096, n_head=32, vocab_size=32000, n_positions=4096, n_inner=16512)
PROMPT, NEW = 16, 16


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


# ------------------------------------------------------------------ checkpoints
def hf_names(cfg):
    """(name, shape) of every tensor of a tied GPT-2 checkpoint of `cfg`."""
    D, M = cfg["n_embd"], cfg.get("n_inner") or 4 * cfg["n_embd"]
    yield "transformer.wte.weight", (cfg["vocab_size"], D)
    yield "transformer.wpe.weight", (cfg["n_positions"], D)
    for l in range(cfg["n_layer"]):
        h = f"transformer.h.{l}."
        for n, s in (("ln_1.weight", (D,)), ("ln_1.bias", (D,)), ("attn.c_attn.weight", (D, 3 * D)),
                     ("attn.c_attn.bias", (3 * D,)), ("attn.c_proj.weight", (D, D)),
                     ("attn.c_proj.bias", (D,)), ("ln_2.weight", (D,)), ("ln_2.bias", (D,)),
                     ("mlp.c_fc.weight", (D, M)), ("mlp.c_fc.bias", (M,)),
                     ("mlp.c_proj.weight", (M, D)), ("mlp.c_proj.bias", (D,))):
            yield h + n, s
    yield "transformer.ln_f.weight", (D,)
    yield "transformer.ln_f.bias", (D,)


def random_tensor(rng, name, shape, std=0.02):
    if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
        return np.ones(shape, np.float32)
    if name.endswith("bias"):
        return np.zeros(shape, np.float32)
    return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)


def write_config(d, cfg):
    full = dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], activation_function="gelu_new",
                layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=0, tie_word_embeddings=True,
                n_inner=None, torch_dtype="float32")
    full.update(cfg)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(full, f)


def write_f32_checkpoint(d, cfg):
    from mechinterp_c import io
    rng = np.random.default_rng(0)
    io.save_safetensors(os.path.join(d, "model.safetensors"),
                        {n: random_tensor(rng, n, s) for n, s in hf_names(cfg)})
    write_config(d, cfg)


def write_bf16_checkpoint(d, cfg):
    """A BF16 safetensors file written tensor by tensor (never all in memory)."""
    from mechinterp_c import _core
    rng = np.random.default_rng(0)
    header, off = {}, 0
    for n, s in hf_names(cfg):
        nbytes = 2 * int(np.prod(s))
        header[n] = {"dtype": "BF16", "shape": list(s), "data_offsets": [off, off + nbytes]}
        off += nbytes
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    path = os.path.join(d, "model.safetensors")
    with open(path + ".tmp", "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for n, s in hf_names(cfg):
            rows = s[0]
            for r0 in range(0, rows, 1024):      # a slab at a time
                sub = (min(1024, rows - r0),) + tuple(s[1:])
                f.write(_core.to_bfloat16(random_tensor(rng, n, sub)).tobytes())
    os.replace(path + ".tmp", path)
    write_config(d, dict(cfg, torch_dtype="bfloat16"))
    return off


# ----------------------------------------------------------------------- models
def ours_bytes(m):
    """Bytes of the weights the C model reads (the tied W_U is W_E: counted once)."""
    core = m._ht._core
    return sum(v.nbytes for k, v in core.params().items() if not (k == "unembed.W_U" and core.tied_unembed))


def load(kind, d):
    if kind == "torch":
        import torch
        import transformers
        return transformers.GPT2LMHeadModel.from_pretrained(d, torch_dtype=torch.bfloat16).eval()
    from mechinterp_c.transformers import GPT2LMHeadModel
    return GPT2LMHeadModel.from_pretrained(d, torch_dtype="bfloat16" if kind == "bf16" else None)


def child(kind, d, shape):
    """In a fresh process: load, one forward; print the peak RSS (MiB) over the
    baseline after imports."""
    from memory import rss_kib
    import mechinterp_c  # noqa: F401
    if kind == "torch":
        import torch
        import transformers  # noqa: F401
    base = rss_kib("VmRSS")
    m = load(kind, d)
    B, T = FORWARD_SHAPE[shape]
    ids = np.random.default_rng(0).integers(0, 1000, (B, T))
    if kind == "torch":
        with torch.no_grad():
            m(torch.from_numpy(ids))
    else:
        m(ids)
    print((rss_kib("VmHWM") - base) / 1024.0)


def bench_models(names, threads):
    import torch
    import mechinterp_c as mi
    mi.set_num_threads(threads)
    torch.set_num_threads(threads)
    print(f"\nmodels (threads {threads}; forward: median of 3, generate: batch 1, {PROMPT}-token "
          f"prompt + {NEW} greedy tokens)")
    print(f"{'model':>6s} {'':>10s} {'weights MiB':>11s} {'peak RSS MiB':>12s} {'forward s':>10s} "
          f"{'gen tok/s':>10s}")
    for name in names:
        with tempfile.TemporaryDirectory() as d32, tempfile.TemporaryDirectory() as d16:
            write_f32_checkpoint(d32, MODELS[name])
            write_bf16_checkpoint(d16, MODELS[name])
            dirs = {"fp32": d32, "bf16": d16, "torch": d16}
            peaks = {k: float(subprocess.run([sys.executable, __file__, "--child", k, dirs[k], name],
                                             capture_output=True, text=True, check=True)
                              .stdout.strip().splitlines()[-1]) for k in ("fp32", "bf16", "torch")}
            models = {k: load(k, dirs[k]) for k in ("fp32", "bf16", "torch")}
            wbytes = {"fp32": ours_bytes(models["fp32"]), "bf16": ours_bytes(models["bf16"]),
                      "torch": sum(p.numel() * p.element_size() for p in models["torch"].parameters())}
            B, T = FORWARD_SHAPE[name]
            ids = np.random.default_rng(1).integers(0, 1000, (B, T))
            tids = torch.from_numpy(ids)
            prompt = ids[:1, :PROMPT]

            def fwd(k):
                if k == "torch":
                    def f():
                        with torch.no_grad():
                            models[k](tids)
                    return f
                return lambda: models[k](ids)

            def gen(k):
                if k == "torch":
                    def g():
                        with torch.no_grad():
                            models[k].generate(torch.from_numpy(prompt), max_new_tokens=NEW,
                                               min_new_tokens=NEW, do_sample=False, use_cache=True,
                                               pad_token_id=0)
                    return g
                return lambda: models[k].generate(prompt, max_new_tokens=NEW, do_sample=False)

            kinds = ("fp32", "bf16", "torch")
            tf = dict(zip(kinds, median_times([fwd(k) for k in kinds], 3)))
            tg = dict(zip(kinds, median_times([gen(k) for k in kinds], 3)))
            labels = {"fp32": "ours fp32", "bf16": "ours bf16", "torch": "torch bf16"}
            for k in kinds:
                print(f"{name:>6s} {labels[k]:>10s} {wbytes[k] / 2**20:11.0f} {peaks[k]:12.0f} "
                      f"{tf[k]:10.3f} {NEW / tg[k]:10.1f}")
            print(f"{name:>6s} bf16 vs our fp32: forward {tf['fp32'] / tf['bf16']:.2f}x (target >= 1.5x), "
                  f"generate {tg['fp32'] / tg['bf16']:.2f}x (target >= 1.7x), weights "
                  f"{wbytes['bf16'] / wbytes['fp32']:.2f} of fp32 (target 0.5), peak RSS "
                  f"{peaks['bf16'] / peaks['fp32']:.2f} of fp32; vs torch bf16: forward "
                  f"{tf['torch'] / tf['bf16']:.2f}x, generate {tg['torch'] / tg['bf16']:.2f}x")
            del models


def bench_gemm(reps, threads):
    import torch
    import mechinterp_c as mi
    from mechinterp_c import _core, _testing
    mi.set_num_threads(threads)
    torch.set_num_threads(threads)
    peak32 = _testing._fma_peak()
    print(f"threads {threads}, bf16 path {_core._bgemm_best_path()!r}, measured fp32 FMA peak "
          f"{peak32:.0f} GFLOP/s (bf16 peak {2 * peak32:.0f}), load average {os.getloadavg()[0]:.2f}")
    print(f"{'M x K x N':>18s} {'ours bf16':>10s} {'ours fp32':>10s} {'torch bf16':>11s}   "
          f"{'bf16/fp32':>9s} {'bf16/torch':>10s} {'% bf16 peak':>11s}")
    rng = np.random.default_rng(0)
    for M, K, N in GEMM_SHAPES:
        a = rng.standard_normal((M, K)).astype(np.float32)
        w = rng.standard_normal((K, N)).astype(np.float32) * 0.02
        wb = _core.to_bfloat16(w)
        ta, tw = torch.from_numpy(a).to(torch.bfloat16), torch.from_numpy(w).to(torch.bfloat16)
        t_b, t_f, t_t = median_times([lambda: _core._gemm_bf16(a, wb), lambda: mi.ops.matmul(a, w),
                                      lambda: torch.matmul(ta, tw)], reps)
        g = 2.0 * M * N * K / 1e9
        mark = "  <- target >= 1.7x" if (M, K, N) == GEMM_TARGET else ""
        print(f"{f'{M}x{K}x{N}':>18s} {g / t_b:10.0f} {g / t_f:10.0f} {g / t_t:11.0f}   "
              f"{t_f / t_b:8.2f}x {t_t / t_b:9.2f}x {100 * g / t_b / (2 * peak32):10.0f}%{mark}")


def bench_big(d, threads, n_layer):
    import mechinterp_c as mi
    from memory import rss_kib
    mi.set_num_threads(threads)
    cfg = dict(BIG, n_layer=n_layer)
    if n_layer != BIG["n_layer"]:
        d = f"{d}-{n_layer}"
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model.safetensors")
    want = sum(2 * int(np.prod(s)) for _, s in hf_names(cfg))
    if not os.path.exists(path) or os.path.getsize(path) != want + 8 + int.from_bytes(
            open(path, "rb").read(8), "little"):
        t0 = time.perf_counter()
        write_bf16_checkpoint(d, cfg)
        print(f"wrote {path} ({want / 1e9:.1f} GB) in {time.perf_counter() - t0:.0f} s")
    base = rss_kib("VmRSS")
    t0 = time.perf_counter()
    m = load("bf16", d)
    t_load = time.perf_counter() - t0
    ht = m._ht
    prompt = np.random.default_rng(0).integers(0, 32000, (1, 32))
    t0 = time.perf_counter()
    names = [f"blocks.{n_layer // 2}.hook_resid_post", f"blocks.{n_layer - 1}.attn.hook_pattern"]
    _, cache = ht.run_with_cache(prompt, names_filter=names)
    t_cache = time.perf_counter() - t0
    arena = max(v.base.nbytes if hasattr(v.base, "nbytes") else v.nbytes for v in cache.values())
    new = 8
    t0 = time.perf_counter()
    out = m.generate(prompt[:, :8], max_new_tokens=new, do_sample=False)
    t_gen = time.perf_counter() - t0
    peak = (rss_kib("VmHWM") - base) * 1024.0
    wbytes = ours_bytes(m)
    act = ht._core.arena_bytes(1, 32, bytes(ht._core.n_points))
    print(f"--big (GPT-2-style, Llama-2-7B-sized, {n_layer} layers): weights {wbytes / 2**30:.2f} GiB bf16, load "
          f"{t_load:.2f} s (mmap), run_with_cache(names_filter, 32 tokens) {t_cache:.2f} s, "
          f"generate 8 + {new} tokens: {new / t_gen:.2f} tok/s; peak RSS {peak / 2**30:.2f} GiB = "
          f"{peak / (wbytes + act):.3f} x (weights + arena {act / 2**20:.0f} MiB) (target <= 1.15); "
          f"cache {sorted(cache)} shapes {[v.shape for v in cache.values()]}, out {np.asarray(out).shape}, "
          f"largest cache base {arena / 2**20:.0f} MiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--models", nargs="*", default=["small", "large"], choices=sorted(MODELS))
    ap.add_argument("--no-gemm", action="store_true")
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--big-dir", default=os.path.join(tempfile.gettempdir(), "mi_bf16_big"))
    ap.add_argument("--big-layers", type=int, default=BIG["n_layer"],
                    help="fewer layers: a smoke test of the --big path that fits a busy machine")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    if args.big:
        return bench_big(args.big_dir, args.threads, args.big_layers)
    if not args.no_gemm:
        bench_gemm(args.reps, args.threads)
    if args.models:
        bench_models(args.models, args.threads)


if __name__ == "__main__":
    main()
