"""``python -m mechinterp_c.demo_distributed`` (``make demo-distributed``): corpus statistics on Dask.

Starts a ``LocalCluster`` of 2 worker processes (1 thread each), and computes over a
generated corpus the mean activations (:class:`~mechinterp_c.stats.Moments`) and the
top-k activating token positions (:class:`~mechinterp_c.stats.TopK`) of a GPT-2-small
checkpoint: the real one when the Hugging Face cache has it, else a random-initialised
one of the same shape (:func:`mechinterp_c.checkpoints.load_or_create`). The corpus is
windows of ``--seq-len`` tokens drawn (seeded) from the package's English text. Prints
the dashboard link, a progress bar, the mean-activation norms per layer, the top
examples of a few MLP neurons in their context, and the throughput.
"""
import argparse
import time

import numpy as np

from . import checkpoints, stats
from .distributed import run_over_corpus


def generated_corpus(tokenizer, n_tokens, seq_len, seed=0):
    """``n_tokens // seq_len`` windows of ``seq_len`` tokens of the built-in English text."""
    ids = np.asarray(tokenizer.encode(checkpoints.english_text()), dtype=np.int64)
    starts = np.random.default_rng(seed).integers(0, len(ids) - seq_len, size=max(1, n_tokens // seq_len))
    return np.stack([ids[s:s + seq_len] for s in starts])


def main(argv=None):
    """Run the demo (see the module docstring); ``argv`` as for argparse."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096, help="corpus size in tokens")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=5)
    args = ap.parse_args(argv)

    from .transformers import AutoTokenizer
    ckpt = str(checkpoints.load_or_create("gpt2", small=False))
    tok = AutoTokenizer.from_pretrained(ckpt)
    corpus = generated_corpus(tok, args.tokens, args.seq_len)
    layers = (0, 5, 11)
    mlp = "blocks.6.mlp.hook_post"
    hooks = [f"blocks.{l}.hook_resid_post" for l in layers] + [mlp]
    print(f"corpus: {corpus.shape[0]} sequences of {args.seq_len} tokens; model: {ckpt}")
    t0 = time.perf_counter()
    result = run_over_corpus(ckpt, [corpus], [stats.Moments(), stats.TopK(args.top_k)], batch_size=8,
                             hook_names=hooks, n_workers=args.workers, n_partitions=4 * args.workers,
                             seq_len=args.seq_len)
    seconds = time.perf_counter() - t0
    for l in layers:
        m = result[f"blocks.{l}.hook_resid_post", "moments"]
        print(f"blocks.{l}.hook_resid_post: |mean| = {np.linalg.norm(m.mean):.4f}, "
              f"mean std = {np.sqrt(m.var).mean():.4f} over {m.count} tokens")
    top = result[mlp, "topk"]
    flat = corpus.reshape(-1)
    for neuron in range(3):
        print(f"{mlp} neuron {neuron}: mean {result[mlp, 'moments'].mean[neuron]:+.4f}, top examples:")
        for v, i in zip(top.values[neuron], top.index[neuron]):
            seq, pos = result.locate(i)
            lo = int(result.sequence_starts[seq])
            before = tok.decode(flat[max(lo, i - 8):i].tolist())
            print(f"  {v:+8.4f}  ...{before!r} [{tok.decode([int(flat[i])])!r}]")
    print(f"{result.n_tokens} tokens in {seconds:.1f} s ({result.n_tokens / seconds:.0f} tokens/s with "
          f"{args.workers} workers, cluster start and model loading included)")


if __name__ == "__main__":
    main()
