"""Benchmark: greedy generation, mechinterp_c against transformers and TransformerLens.

    python3 bench/generate.py [--shape small|tiny] [--prompt 32] [--new 128]
                              [--batch 1 8] [--threads N] [--reps 3]

A random-initialised GPT-2 checkpoint of the chosen shape (small: 12 x 768, vocab
50257) is saved into a temporary directory; the same weights run in
  mechinterp_c      GPT2LMHeadModel.generate and HookedTransformer.generate,
  transformers      GPT2LMHeadModel.generate(do_sample=False, use_cache=True),
  TransformerLens   HookedTransformer.generate(do_sample=False, use_past_kv_cache=True).
Each row prints new tokens per second (median of --reps; the sides alternate, so a
slow spell of a shared machine hits all of them), our speed-up over transformers and
TransformerLens (ours: the faster of our two APIs' rates is not taken, the TL ratio
uses HookedTransformer.generate, the transformers ratio GPT2LMHeadModel.generate),
and the memory-bandwidth floor: the tokens per second at which reading every weight
once per step (the layers, the tied unembedding W_E, one row of W_pos) would take all
the bandwidth a streaming-read probe measures here: NumPy's sum over a 512 MiB
float64 array, the best of 3, measured right before each batch size ("floor x" is our
step time over the floor's; 1.0 is the bound). Batch B reads the weights once for B
tokens.

Both sides of every comparison decode over a KV cache (ours: the C core's, filled by
the prompt in one pass, then one token a step). The generated tokens are checked
against transformers before anything is timed.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

SHAPES = {"small": dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),
          "tiny": dict(n_layer=2, n_embd=128, n_head=4, vocab_size=1000, n_positions=256)}


def stream_read_gbps(mib=512, reps=3):
    """Streaming-read bandwidth (GB/s): the best of `reps` sums over a buffer larger than
    the caches (one read of every byte; the additions are far below the read cost)."""
    a = np.ones(mib * (1 << 20) // 8, np.float64)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best / 1e9


def timed(fn, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    import torch
    import transformers
    import transformer_lens as tl
    import mechinterp_c
    from mechinterp_c import HookedTransformer
    from mechinterp_c.transformers import GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    mechinterp_c.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(**SHAPES[args.shape], bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    tmp = tempfile.TemporaryDirectory()
    hf.save_pretrained(tmp.name)
    ours = GPT2LMHeadModel.from_pretrained(tmp.name)
    ht = HookedTransformer.from_pretrained_no_processing(tmp.name)
    tm = tl.HookedTransformer(tl.HookedTransformerConfig(**{
        k: getattr(ht.cfg, k) for k in ("n_layers", "d_model", "n_ctx", "d_head", "n_heads",
                                        "d_mlp", "d_vocab", "act_fn", "normalization_type")}))
    tm.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in ht.state_dict().items()},
                       strict=False)
    # bytes a decode step reads: every weight but W_pos, of which one row
    wpe = hf.transformer.wpe.weight
    weight_bytes = (sum(p.numel() for p in hf.parameters()) - wpe.numel() + wpe.shape[1]) * 4
    print(f"shape {args.shape}, prompt {args.prompt}, {args.new} new tokens, greedy, "
          f"{args.threads} threads; weights read per step {weight_bytes / 2**20:.0f} MiB")
    print(f"{'batch':>5} {'stream GB/s':>11} {'floor tok/s':>11} {'ours HF':>8} {'ours TL':>8} "
          f"{'transformers':>12} {'TransformerLens':>15} {'xHF':>5} {'xTL':>5} {'floor x':>7}")
    for B in args.batch:
        ids = np.random.default_rng(B).integers(1, cfg.vocab_size, (B, args.prompt))
        kw = dict(max_new_tokens=args.new, do_sample=False)

        def run_hf():
            with torch.no_grad():
                return hf.generate(torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                                   use_cache=True, eos_token_id=None, pad_token_id=0, **kw).numpy()

        def run_ours():
            return ours.generate(ids, eos_token_id=None, **kw)

        def run_ht():
            return ht.generate(ids, stop_at_eos=False, verbose=False, **kw)

        def run_tl():
            with torch.no_grad():
                return tm.generate(torch.tensor(ids), stop_at_eos=False, use_past_kv_cache=True,
                                   verbose=False, **kw)

        ref = run_hf()
        if not np.array_equal(run_ours(), ref):
            print(f"  batch {B}: tokens differ from transformers (near-tied logits?)")
        if not np.array_equal(run_ht(), ref):
            print(f"  batch {B}: HookedTransformer tokens differ from transformers")
        t = {k: [] for k in ("ours", "ht", "hf", "tl")}
        for _ in range(args.reps):
            for k, fn in (("ours", run_ours), ("ht", run_ht), ("hf", run_hf), ("tl", run_tl)):
                t[k].append(timed(fn, 1))
        rate = {k: B * args.new / statistics.median(v) for k, v in t.items()}
        gbps = stream_read_gbps()
        floor = B * gbps * 1e9 / weight_bytes
        print(f"{B:>5} {gbps:>11.1f} {floor:>11.1f} {rate['ours']:>8.1f} {rate['ht']:>8.1f} "
              f"{rate['hf']:>12.1f} {rate['tl']:>15.1f} {rate['ours'] / rate['hf']:>5.2f} "
              f"{rate['ht'] / rate['tl']:>5.2f} {floor / rate['ours']:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
