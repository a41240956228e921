"""What the README's "Guarantees" section says is safe to share between Python
threads: one model running forward passes and run_with_cache from several
threads at once, and one tokenizer encoding from several threads. Reference: the
same calls made one after another; results must be bitwise equal (each call has
its own activation memory and the pass is deterministic).
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mechinterp_c import HookedTransformer, HookedTransformerConfig


def test_one_model_many_threads():
    m = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=16, d_head=8,
                                                  n_heads=4, d_vocab=50, act_fn="gelu_new",
                                                  seed=0))
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 50, (2, 12)) for _ in range(16)]
    want = [np.array(m(b)) for b in batches]
    want_cache = [np.array(m.run_with_cache(b)[1]["blocks.1.attn.hook_pattern"]) for b in batches]

    def work(i):
        logits = np.array(m(batches[i]))
        _, cache = m.run_with_cache(batches[i])
        return logits, np.array(cache["blocks.1.attn.hook_pattern"])

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(work, range(len(batches))))
    for i, (logits, pattern) in enumerate(got):
        np.testing.assert_array_equal(logits, want[i])
        np.testing.assert_array_equal(pattern, want_cache[i])


def test_one_tokenizer_many_threads(tmp_path):
    import json

    from mechinterp_c.checkpoints import bytes_to_unicode
    from mechinterp_c.transformers import GPT2Tokenizer
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({"he": 256, "ll": 257, "hell": 258, "\u0120w": 259})
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nh e\nl l\nhe ll\n\u0120 w\n")
    tok = GPT2Tokenizer(tmp_path / "vocab.json", tmp_path / "merges.txt")
    rng = np.random.default_rng(1)
    words = ["hello", " world", " hell", "ll", "é", "😀", "  ", "\n"]
    texts = ["".join(rng.choice(words, 40)) for _ in range(64)]
    want = [tok.encode(t) for t in texts]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(tok.encode, texts))
    assert got == want
    assert any(258 in w for w in want)          # the merges were used
