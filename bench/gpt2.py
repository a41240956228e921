"""Benchmark: mechinterp_c's GPT2LMHeadModel vs Hugging Face transformers (CPU, fp32).

    python3 bench/gpt2.py [--ckpt DIR] [--reps N] [--threads N]

Without --ckpt it saves a random-initialised GPT-2-small-shaped checkpoint
(12 x 768, vocab 50257) into a temporary directory first. Prints the median
time of each step for both libraries and the ratio transformers / mechinterp_c
(> 1: mechinterp_c is faster). Targets: load >= 20x (mmap), forward [8, 128]
>= 1.5x; the seed's pass with a forward hook on every layer's attn.c_attn.
"""
import argparse
import gc
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def timed(fn, reps):
    ts = []
    for _ in range(reps):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", help="a GPT-2 checkpoint directory (default: random GPT-2-small shape)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()

    import torch
    import transformers
    from mechinterp_c.transformers.modeling_gpt2 import GPT2LMHeadModel
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()

    tmp = None
    ckpt = args.ckpt
    if ckpt is None:
        tmp = tempfile.TemporaryDirectory()
        ckpt = tmp.name
        torch.manual_seed(0)
        cfg = transformers.GPT2Config()   # GPT-2 small: 12 layers, 768, vocab 50257
        transformers.GPT2LMHeadModel(cfg).save_pretrained(ckpt)

    rows = []

    def compare(name, f_hf, f_mi, reps=args.reps):
        t_hf, t_mi = timed(f_hf, reps), timed(f_mi, reps)
        rows.append((name, t_hf, t_mi))
        print(f"{name:34s} transformers {t_hf * 1e3:9.1f} ms   mechinterp_c {t_mi * 1e3:9.1f} ms"
              f"   ratio {t_hf / t_mi:6.2f}x", flush=True)

    compare("load (from_pretrained)",
            lambda: transformers.GPT2LMHeadModel.from_pretrained(ckpt).eval(),
            lambda: GPT2LMHeadModel.from_pretrained(ckpt))

    hf = transformers.GPT2LMHeadModel.from_pretrained(ckpt).eval()
    mi = GPT2LMHeadModel.from_pretrained(ckpt)
    V = hf.config.vocab_size
    ids = np.random.default_rng(0).integers(0, V, (args.batch, args.seq))
    tids = torch.tensor(ids)

    # correctness first: the timed numbers mean nothing if the outputs differ
    with torch.no_grad():
        ref = hf(tids[:1, :16]).logits.numpy()
    err = float(np.abs(mi(ids[:1, :16]).logits - ref).max())
    print(f"max |logits - HF| on [1, 16]: {err:.2e}")

    def hf_fwd():
        with torch.no_grad():
            hf(tids)

    compare(f"forward [{args.batch}, {args.seq}]", hf_fwd, lambda: mi(ids))

    # the seed: a forward hook on every layer's c_attn keeping output.detach()
    acts_hf, acts_mi = {}, {}

    def hook_into(store, l):
        def hook(module, input, output):
            store[l] = output.detach()
        return hook

    hs = [b.attn.c_attn.register_forward_hook(hook_into(acts_hf, l)) for l, b in enumerate(hf.transformer.h)]
    hm = [b.attn.c_attn.register_forward_hook(hook_into(acts_mi, l)) for l, b in enumerate(mi.transformer.h)]
    compare(f"forward + c_attn hooks [{args.batch}, {args.seq}]", hf_fwd, lambda: mi(ids))
    for h in hs + hm:
        h.remove()
    print("c_attn outputs kept:", len(acts_mi), "layers of", acts_mi[0].shape)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
