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
   and greedy generate at batch 1 (16-token prompt, 64 new tokens), the three
   alternating, median of 3; model memory (weight bytes) and the peak RSS of a fresh
   process that loads the model and runs one forward. Targets: forward >= 1.5x our
   fp32, generate >= 1.7x our fp32 tokens/s, model memory half. Both sides generate
   on a key/value cache (a decode step is a batch-1 product with every weight).
3. --big: a Llama-2-7B-shaped checkpoint (32 layers, d_model 4096, 32 heads, no GQA,
   SwiGLU d_mlp 11008, vocab 32000, RMSNorm, rotary, untied lm_head: 6.74 G parameters,
   13.5 GB) written once as BF16 safetensors shards with model.safetensors.index.json
   (as Hugging Face ships it) into --big-dir (reused when complete): streamed tensor by
   tensor in 64 MiB pieces of random bfloat16 bit patterns (random sign, magnitudes in
   [2^-8, 2^-4): std ~0.03, no NaN, Inf or denormals; norm weights 1), never more than a
   piece in memory, no torch. Then, in a fresh child process:
   HookedTransformer.from_pretrained_no_processing(dir, dtype="bfloat16") (the embedding,
   o_proj, the MLP and lm_head read in place by mmap, q/k/v converted once:
   loading_from_pretrained.map_llama_weights), run_with_cache on a 32-token prompt with a
   names_filter, greedy generate of --big-new tokens at batch 1; load time, tokens/s and
   the peak RSS (VmHWM over the RSS after imports) against weight bytes + activations
   (the arena of the cached call and the generation's key/value cache), target <= 1.15x.
   --big-processed also loads it with from_pretrained(dtype="bfloat16") (TransformerLens's
   processing, streamed one layer at a time into the bfloat16 weights:
   loading_from_pretrained.stream_llama_weights_processed). --big-layers N writes and
   runs an N-layer model (its own directory) and prints the 32-layer peak estimated from
   it (the measured peak plus, per further layer, its weights and its KV cache). Run the full case only with > 16 GiB
   free memory and 14 GB of disk; --big-layers 2 (1.3 GB) is the smoke test.
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
BIG = dict(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=32,
           intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096)
BIG_PROMPT = 32
PROMPT, NEW = 16, 64


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


# ------------------------------------------------------------------- --big
def llama_names(cfg):
    """(name, shape) of every tensor of an untied Llama checkpoint of ``cfg``, in the
    order transformers' safetensors files list them (sorted by name)."""
    D, M, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    Dh = D // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * Dh
    out = [("lm_head.weight", (V, D)), ("model.embed_tokens.weight", (V, D)), ("model.norm.weight", (D,))]
    for l in range(cfg["num_hidden_layers"]):
        h = f"model.layers.{l}."
        out += [(h + "input_layernorm.weight", (D,)), (h + "mlp.down_proj.weight", (D, M)),
                (h + "mlp.gate_proj.weight", (M, D)), (h + "mlp.up_proj.weight", (M, D)),
                (h + "post_attention_layernorm.weight", (D,)), (h + "self_attn.k_proj.weight", (kv, D)),
                (h + "self_attn.o_proj.weight", (D, D)), (h + "self_attn.q_proj.weight", (D, D)),
                (h + "self_attn.v_proj.weight", (kv, D))]
    return sorted(out)


def random_bf16_bits(rng, n):
    """n random bfloat16 bit patterns: random sign, exponent 2^-8 .. 2^-5, random 7-bit
    mantissa (|w| in [2^-8, 2^-4), std ~0.03: a sane init scale, nothing special)."""
    r = rng.integers(0, 1 << 16, n, dtype=np.uint16)
    return (r & np.uint16(0x807F)) | ((np.uint16(119) + ((r >> np.uint16(7)) & np.uint16(3))) << np.uint16(7))


def write_llama_bf16(d, cfg, shard_bytes):
    """A BF16 Llama checkpoint in Hugging Face's sharded layout, streamed: each shard's
    header, then its tensors 64 MiB at a time (written under a temporary name and
    renamed; config.json last, so its presence marks a complete directory)."""
    rng = np.random.default_rng(0)
    names = llama_names(cfg)
    shards, cur, size = [], [], 0
    for n, s in names:
        nb = 2 * int(np.prod(s))
        if cur and size + nb > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append((n, s))
        size += nb
    shards.append(cur)
    weight_map, total = {}, 0
    piece = 32 << 20                                    # elements per write (64 MiB)
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for n, s in shard:
            nb = 2 * int(np.prod(s))
            header[n] = {"dtype": "BF16", "shape": list(s), "data_offsets": [off, off + nb]}
            off += nb
            weight_map[n] = fname
        total += off
        hb = json.dumps(header).encode()
        hb += b" " * (-len(hb) % 8)
        path = os.path.join(d, fname)
        with open(path + ".tmp", "wb") as f:
            f.write(len(hb).to_bytes(8, "little"))
            f.write(hb)
            for n, s in shard:
                count = int(np.prod(s))
                if n.endswith("norm.weight"):
                    f.write(np.full(count, 0x3F80, np.uint16).tobytes())    # 1.0
                    continue
                for j in range(0, count, piece):
                    f.write(random_bf16_bits(rng, min(piece, count - j)).tobytes())
        os.replace(path + ".tmp", path)
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    full = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu",
                rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1,
                eos_token_id=2, torch_dtype="bfloat16", attention_bias=False, mlp_bias=False)
    full.update(cfg)
    with open(os.path.join(d, "config.json.tmp"), "w") as f:
        json.dump(full, f, indent=1)
    os.replace(os.path.join(d, "config.json.tmp"), os.path.join(d, "config.json"))
    return total


def llama_bytes(cfg):
    return sum(2 * int(np.prod(s)) for _, s in llama_names(cfg))


def big_activation_bytes(ht, prompt, new):
    """(arena, kv) bytes a call holds besides the weights: the arena of the cached
    run_with_cache call (its names_filter's points) and generation's key/value cache
    (float32 K and V per layer for prompt + new positions)."""
    from mechinterp_c import _core
    c = ht.cfg
    flags = bytearray(ht._core.n_points)
    for n in big_names(c.n_layers):
        flags[ht.hook_dict[n].point_id] |= _core.HOOK_CACHE
    arena = ht._core.arena_bytes(1, prompt, bytes(flags))
    kv = 2 * c.n_layers * (c.n_key_value_heads or c.n_heads) * c.d_head * (prompt + new) * 4
    return arena, kv


def big_names(n_layer):
    return [f"blocks.{n_layer // 2}.hook_resid_post", f"blocks.{n_layer - 1}.attn.hook_pattern"]


def big_child(d, threads, new, mode="mapped"):
    """In a fresh process: load (``mapped``: from_pretrained_no_processing, read in place;
    ``processed``: from_pretrained, TransformerLens's processing streamed layer by layer),
    run_with_cache with a names_filter, generate; print one JSON line of the
    measurements."""
    from memory import rss_kib
    import mechinterp_c as mi
    from mechinterp_c import HookedTransformer
    mi.set_num_threads(threads)
    base = rss_kib("VmRSS")
    t0 = time.perf_counter()
    if mode == "mapped":
        ht = HookedTransformer.from_pretrained_no_processing(d, dtype="bfloat16")
    else:
        ht = HookedTransformer.from_pretrained(d, dtype="bfloat16")
    t_load = time.perf_counter() - t0
    rss_load = rss_kib("VmRSS") - base
    L = ht.cfg.n_layers
    prompt = np.random.default_rng(0).integers(3, ht.cfg.d_vocab, (1, BIG_PROMPT))
    names = big_names(L)
    t0 = time.perf_counter()
    logits, cache = ht.run_with_cache(prompt, names_filter=names)
    t_cache = time.perf_counter() - t0
    assert sorted(cache.keys()) == sorted(names) and np.isfinite(logits).all()
    shapes = {k: list(v.shape) for k, v in cache.items()}
    del logits, cache
    times = {}
    for n in (1, new):          # the prompt's pass + one token, then all: decode = the difference
        t0 = time.perf_counter()
        out = np.asarray(ht.generate(prompt, max_new_tokens=n, do_sample=False, stop_at_eos=False,
                                     verbose=False))
        times[n] = time.perf_counter() - t0
        assert out.shape == (1, BIG_PROMPT + n)
    t_gen, t_first = times[new], times[1]
    peak = (rss_kib("VmHWM") - base) * 1024.0
    core = ht._core
    raw = core.params()
    counted = {k: v for k, v in raw.items() if not (k == "unembed.W_U" and core.tied_unembed)}
    blob = raw["blocks.0.attn.b_O"].base            # the model's own memory
    arena, kv = big_activation_bytes(ht, BIG_PROMPT, new)
    print(json.dumps(dict(
        layers=L, load_s=t_load, rss_after_load=rss_load * 1024.0, cache_s=t_cache, gen_s=t_gen, first_s=t_first,
        new=new, peak=peak, weights=sum(v.nbytes for v in counted.values()),
        layer_weights=sum(v.nbytes for k, v in counted.items() if k.startswith("blocks.0.")),
        in_place=sum(v.nbytes for v in counted.values() if v.base is not blob),
        arena=arena, kv=kv, act=arena + kv, shapes=shapes, threads=threads, mode=mode)))


def run_big_child(d, threads, new, mode):
    res = subprocess.run([sys.executable, __file__, "--big-child", d, str(threads), str(new), mode],
                         capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"--big child ({mode}) failed:\n{res.stdout}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def print_big(r, title):
    G = 2.0 ** 30
    ratio = r["peak"] / (r["weights"] + r["act"])
    print(f" {title}")
    print(f"  weights {r['weights'] / G:.2f} GiB bf16 ({r['in_place'] / G:.2f} GiB read in place "
          f"from the mapped shards, the rest converted once); activations "
          f"{r['act'] / 2**20:.0f} MiB (arena {r['arena'] / 2**20:.0f} MiB + KV cache)")
    print(f"  load {r['load_s']:.2f} s (RSS after load {r['rss_after_load'] / G:.2f} GiB); "
          f"run_with_cache({BIG_PROMPT} tokens, names_filter {len(r['shapes'])} points) "
          f"{r['cache_s']:.2f} s {r['shapes']}")
    print(f"  generate {r['new']} tokens at batch 1: {r['gen_s']:.2f} s = "
          f"{r['new'] / r['gen_s']:.2f} tok/s with the {BIG_PROMPT}-token prompt's pass; decode "
          f"alone {(r['new'] - 1) / max(r['gen_s'] - r['first_s'], 1e-9):.2f} tok/s (the first "
          f"token, prompt included, {r['first_s']:.2f} s)")
    print(f"  peak RSS {r['peak'] / G:.2f} GiB = {ratio:.3f} x (weights + activations) "
          f"(target <= 1.15)")


def print_estimate(r, n_layer):
    """The 32-layer peak RSS estimated from an n_layer run."""
    G = 2.0 ** 30
    # the 32-layer model: each further layer adds what layer 0 holds (its weights are
    # all read by a pass, so all resident) and its share of the KV cache; the
    # embedding (only the prompt's rows are read), lm_head and the arena do not grow
    n_full = BIG["num_hidden_layers"]
    add = (n_full - n_layer) * (r["layer_weights"] + r["kv"] / n_layer)
    wfull = r["weights"] + (n_full - n_layer) * r["layer_weights"]
    afull = r["arena"] + r["kv"] * n_full / n_layer
    est = r["peak"] + add
    print(f"  estimate for 32 layers: the peak measured here + {n_full - n_layer} x (one "
          f"layer's weights {r['layer_weights'] / 2**20:.0f} MiB + its KV cache) = peak RSS "
          f"~{est / G:.2f} GiB = {est / (wfull + afull):.3f} x (weights {wfull / G:.2f} GiB + "
          f"activations {afull / 2**20:.0f} MiB; target <= 1.15); "
          f"{'fits' if est < 22 * G else 'does NOT fit'} in this machine's "
          f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / G:.0f} GiB")


def bench_big(d, threads, n_layer, new, shard_gb, processed=False):
    cfg = dict(BIG, num_hidden_layers=n_layer)
    if n_layer != BIG["num_hidden_layers"]:
        d = f"{d}-{n_layer}"
    os.makedirs(d, exist_ok=True)
    want = llama_bytes(cfg)
    if not os.path.exists(os.path.join(d, "config.json")):
        t0 = time.perf_counter()
        write_llama_bf16(d, cfg, int(shard_gb * 2**30))
        print(f"wrote {d} ({want / 1e9:.2f} GB, BF16 shards) in {time.perf_counter() - t0:.0f} s")
    else:
        print(f"reusing {d} ({want / 1e9:.2f} GB)")
    print(f"--big: Llama-2-7B shape, {n_layer} of 32 layers, threads {threads}")
    modes = [("mapped", "from_pretrained_no_processing(dtype='bfloat16'): read in place")]
    if processed:
        modes.append(("processed", "from_pretrained(dtype='bfloat16'): processed layer by layer"))
    for mode, title in modes:
        r = run_big_child(d, threads, new, mode)
        print_big(r, f"{title} (load average {os.getloadavg()[0]:.2f})")
        if n_layer != BIG["num_hidden_layers"]:
            print_estimate(r, n_layer)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--models", nargs="*", default=["small", "large"], choices=sorted(MODELS))
    ap.add_argument("--no-gemm", action="store_true")
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--big-dir", default=os.path.join(tempfile.gettempdir(), "mi_bf16_big"))
    ap.add_argument("--big-layers", type=int, default=BIG["num_hidden_layers"],
                    help="fewer layers: a smoke test of the --big path that fits a busy machine")
    ap.add_argument("--big-new", type=int, default=8, help="tokens --big generates")
    ap.add_argument("--shard-gb", type=float, default=1.0, help="--big's shard size (GiB)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--big-processed", action="store_true",
                    help="--big also loads with from_pretrained's processing (streamed)")
    ap.add_argument("--big-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    if args.big_child:
        return big_child(args.big_child[0], int(args.big_child[1]), int(args.big_child[2]),
                         args.big_child[3])
    if args.big:
        return bench_big(args.big_dir, args.threads, args.big_layers, args.big_new, args.shard_gb,
                         args.big_processed)
    if not args.no_gemm:
        bench_gemm(args.reps, args.threads)
    if args.models:
        bench_models(args.models, args.threads)


if __name__ == "__main__":
    main()
