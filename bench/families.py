"""Benchmark: rotary model families on the C core vs transformers and TransformerLens.

Two random-initialised checkpoints written by ``transformers`` (``save_pretrained``
into a temporary directory):

  llama     Llama-shaped: 16 layers, d_model 1024, 16 heads, 4 key/value heads,
            SwiGLU d_mlp 2816, vocab 32000 (rotary on every head dimension).
  pythia    Pythia-160m-shaped: GPT-NeoX, 12 layers, d_model 768, 12 heads, d_mlp
            3072, vocab 50304, rotary on a quarter of each head, parallel attention
            and MLP.

mechinterp_c loads each with ``HookedTransformer.from_pretrained_no_processing``
(the same weights as the transformers model), TransformerLens gets the same
TransformerLens state dict. Rows (tokens [batch, seq], default [4, 256]; median of
--reps, the libraries alternating so a slow spell of a shared machine hits all):

  forward           logits; transformers in eval() under no_grad, TransformerLens
                    under no_grad.
  run_with_cache    every hook point cached (ours, TransformerLens); transformers:
                    output_hidden_states and output_attentions (its closest).

It prints each time, the ratios (> 1: ours faster) and the share of the measured
FMA peak (``_testing._fma_peak``): the whole forward's matrix-product FLOPs over its
wall time, and over the time of the GEMM steps alone (MI_PROFILE's qkv / W_O / W_in
/ W_out / unembed steps of one forward).

    python3 bench/families.py [--family llama pythia] [--batch 4 --seq 256] [--reps 5]
                              [--layers N] [--threads N]
"""
import argparse
import gc
import os
import re
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
warnings.filterwarnings("ignore")


def _configs(layers):
    import transformers
    llama = transformers.LlamaConfig(hidden_size=1024, num_hidden_layers=layers or 16,
                                     num_attention_heads=16, num_key_value_heads=4,
                                     intermediate_size=2816, vocab_size=32000,
                                     max_position_embeddings=2048)
    pythia = transformers.GPTNeoXConfig(hidden_size=768, num_hidden_layers=layers or 12,
                                        num_attention_heads=12, intermediate_size=3072,
                                        vocab_size=50304, max_position_embeddings=2048,
                                        rotary_pct=0.25, use_parallel_residual=True)
    return {"llama": llama, "pythia": pythia}


def gemm_flops(cfg, B, T):
    """Matrix-product FLOPs of one forward (2 per multiply-add): projections, MLP,
    unembedding, and the attention products q k^T and pattern v (causal: half)."""
    D, L, H = cfg.d_model, cfg.n_layers, cfg.n_heads
    kv = cfg.n_key_value_heads or H
    Dh, M, V = cfg.d_head, cfg.d_mlp, cfg.d_vocab_out
    BT = B * T
    per_layer = D * (H + 2 * kv) * Dh + H * Dh * D + (3 if cfg.gated_mlp else 2) * D * M
    attn = 2 * B * H * T * T * Dh / 2
    return 2 * BT * (L * per_layer + D * V) + 2 * L * attn


def median_times(fns, reps):
    """Median seconds of each fn, the calls alternating; one warm-up call each."""
    for f in fns:
        f()
    ts = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            gc.collect()
            t0 = time.perf_counter()
            r = f()
            ts[i].append(time.perf_counter() - t0)
            del r
    return [statistics.median(t) for t in ts]


def profile_gemm_seconds(model, tokens):
    """Seconds of the GEMM steps of one forward, read from MI_PROFILE's report."""
    fd, path = tempfile.mkstemp()
    saved = os.dup(2)
    os.environ["MI_PROFILE"] = "1"
    try:
        os.dup2(fd, 2)
        model(tokens)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
        del os.environ["MI_PROFILE"]
    text = open(path).read()
    os.remove(path)
    steps = dict((k.strip(), float(v)) for k, v in re.findall(r"([\w ]+?) ([\d.]+);", text))
    gemm = sum(v for k, v in steps.items() if "gemm" in k)
    return gemm / 1e3, text.strip()


def run(name, hf_cfg, args):
    import torch
    import transformers
    import transformer_lens as tl
    import mechinterp_c as mi
    from mechinterp_c import _testing
    from transformer_lens.pretrained.weight_conversions import (convert_llama_weights,
                                                                convert_neox_weights)

    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = mi.HookedTransformer.from_pretrained_no_processing(d)
    tcfg = {k: v for k, v in ours.cfg.to_dict().items()
            if k not in ("extra", "n_params", "dtype", "device", "tokenizer_prepends_bos")}
    tcfg = tl.HookedTransformerConfig(**tcfg)
    conv = convert_llama_weights if name == "llama" else convert_neox_weights
    tm = tl.HookedTransformer(tcfg)
    tm.load_state_dict(conv(hf, tcfg), strict=False)
    tm.eval()
    B, T = args.batch, args.seq
    toks = np.random.default_rng(0).integers(0, hf_cfg.vocab_size, (B, T))
    tt = torch.tensor(toks)
    with torch.no_grad():
        ref = hf(tt).logits.numpy()
    err = np.abs(ours(toks) - ref).max() / np.abs(ref).max()

    def hf_fwd():
        with torch.no_grad():
            return hf(tt).logits

    def hf_all():
        with torch.no_grad():
            return hf(tt, output_hidden_states=True, output_attentions=True)

    def tl_fwd():
        with torch.no_grad():
            return tm(tt)

    def tl_cache():
        with torch.no_grad():
            return tm.run_with_cache(tt)

    fwd = median_times([lambda: ours(toks), hf_fwd, tl_fwd], args.reps)
    cache = median_times([lambda: ours.run_with_cache(toks), hf_all, tl_cache], args.reps)
    peak = _testing._fma_peak()
    flops = gemm_flops(ours.cfg, B, T)
    gemm_s, prof = profile_gemm_seconds(ours, toks)
    L = ours.cfg.n_layers
    print(f"\n{name}: {L} layers, d_model {ours.cfg.d_model}, {ours.cfg.n_heads} heads "
          f"({ours.cfg.n_key_value_heads or ours.cfg.n_heads} kv), d_mlp {ours.cfg.d_mlp}, "
          f"vocab {ours.cfg.d_vocab}; tokens [{B}, {T}]; logits vs transformers {err:.1e} rel")
    print(f"  {'':16s} {'ours':>9s} {'transformers':>13s} {'TL':>9s} {'HF/ours':>8s} {'TL/ours':>8s}")
    for row, (a, b, c) in (("forward", fwd), ("run_with_cache", cache)):
        print(f"  {row:16s} {a * 1e3:7.0f}ms {b * 1e3:11.0f}ms {c * 1e3:7.0f}ms {b / a:7.2f}x {c / a:7.2f}x")
    print(f"  matrix products {flops / 1e9:.1f} GFLOP; measured FMA peak {peak:.0f} GFLOP/s: "
          f"forward at {flops / fwd[0] / 1e9 / peak * 100:.0f}% of peak, its GEMM steps "
          f"({gemm_s * 1e3:.0f} ms in the profiled pass) at "
          f"{(flops - 2 * L * 2 * B * ours.cfg.n_heads * T * T * ours.cfg.d_head / 2) / gemm_s / 1e9 / peak * 100:.0f}%")
    print("  " + prof)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", nargs="+", default=["llama", "pythia"], choices=["llama", "pythia"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--layers", type=int, default=0, help="override the layer count (0: the shape's)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    import torch
    import mechinterp_c as mi
    if args.threads:
        torch.set_num_threads(args.threads)
        mi.set_num_threads(args.threads)
    print(f"threads: torch {torch.get_num_threads()}, mechinterp_c {mi.get_num_threads()}")
    cfgs = _configs(args.layers)
    for name in args.family:
        run(name, cfgs[name], args)


if __name__ == "__main__":
    main()
