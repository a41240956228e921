"""Tokenizer throughput: mechinterp_c's C GPT-2 BPE vs transformers' GPT2Tokenizer(Fast).

Builds a ~5 MB multi-script text from the test corpus (tests/test_tokenizer.py), trains a
byte-level BPE on it with `tokenizers`, loads both tokenizers from the saved files, checks
that the ids are identical, then times:
  * one long document      tokenizer.encode(text)
  * a batch of lines       tokenizer(lines)["input_ids"]
  * decode of the ids      tokenizer.decode(ids)
and prints MB/s for each side and the ratio (ours / HF; > 1 means we are faster).

Usage: python3 bench/tokenizer.py [--mb 5] [--repeat 3] [--vocab 8000]
"""
import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def best_time(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=5.0, help="size of the text in MB (default 5)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions, best kept (default 3)")
    ap.add_argument("--vocab", type=int, default=8000, help="BPE vocabulary size to train (default 8000)")
    args = ap.parse_args()

    from test_tokenizer import corpus_text
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Tokenizer as HFTokenizer

    from mechinterp_c.transformers import GPT2Tokenizer

    base = corpus_text(n_lines=20000, seed=1)
    text = (base + "\n") * max(1, int(args.mb * 1e6 / len(base.encode())) + 1)
    text = text[: int(args.mb * 1e6)]
    nbytes = len(text.encode())
    lines = text.split("\n")
    with tempfile.TemporaryDirectory() as d:
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator([base], vocab_size=args.vocab, special_tokens=["<|endoftext|>"])
        bpe.save_model(d)
        hf = HFTokenizer.from_pretrained(d)
        hf.model_max_length = 10 ** 12          # silence the "sequence too long" warning
        ours = GPT2Tokenizer.from_pretrained(d)

    print(f"text: {nbytes / 1e6:.2f} MB, {len(lines)} lines, vocab {len(ours)}, "
          f"HF class {type(hf).__module__}.{type(hf).__name__}")
    rows = []
    t_hf, ids_hf = best_time(lambda: hf.encode(text), args.repeat)
    t_us, ids_us = best_time(lambda: ours.encode(text), args.repeat)
    assert ids_us == ids_hf, "ids differ from transformers on the long document"
    rows.append(("encode(long text)", t_us, t_hf))
    t_hf, b_hf = best_time(lambda: hf(lines)["input_ids"], args.repeat)
    t_us, b_us = best_time(lambda: ours(lines)["input_ids"], args.repeat)
    assert b_us == b_hf, "ids differ from transformers on the batch of lines"
    rows.append((f"__call__({len(lines)} lines)", t_us, t_hf))
    t_hf, s_hf = best_time(lambda: hf.decode(ids_hf), args.repeat)
    t_us, s_us = best_time(lambda: ours.decode(ids_us), args.repeat)
    assert s_us == s_hf == text, "decode differs"
    rows.append(("decode(all ids)", t_us, t_hf))

    print(f"{'operation':<28}{'ours MB/s':>12}{'HF MB/s':>12}{'ratio':>9}")
    for name, t_us, t_hf in rows:
        print(f"{name:<28}{nbytes / 1e6 / t_us:>12.1f}{nbytes / 1e6 / t_hf:>12.1f}{t_hf / t_us:>8.2f}x")
    print(f"({len(ids_us)} tokens; best of {args.repeat}; ratio = HF time / our time)")


if __name__ == "__main__":
    main()
