"""One small GPT-2 checkpoint with a byte-level BPE tokenizer, opened by transformers,
TransformerLens and mechinterp_c: the oracle of the text, padding and refusal tests.

The tokenizer is the fallback BPE of ``mechinterp_c.checkpoints`` (vocab.json +
merges.txt, ``<|endoftext|>`` as bos = eos, no pad token, as GPT-2's); the weights
are a random-initialised ``transformers.GPT2LMHeadModel`` saved with
``save_pretrained``. TransformerLens gets the same weights through its own GPT-2
converter and the ``transformers`` tokenizer of the same files.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mechinterp_c.checkpoints import write_tokenizer  # noqa: E402

PROMPTS = ["the cat sat on the mat", "hello", "a dog ran after the cat and the cat ran away",
           "once upon a time"]


def make_checkpoint(directory, n_layer=2, n_embd=64, n_head=4, n_positions=64, seed=0):
    """Write tokenizer files and a random GPT-2 into ``directory``; returns the HF model."""
    eos = write_tokenizer(directory)
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=eos + 1, n_positions=n_positions, n_embd=n_embd,
                                  n_layer=n_layer, n_head=n_head, bos_token_id=eos,
                                  eos_token_id=eos)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():       # sharper attention than the init: padding errors show
        for name, p in hf.named_parameters():
            if name.endswith("c_attn.weight"):
                p.mul_(6.0)
    hf.save_pretrained(directory)
    return hf


def tl_model(directory, hf, **kwargs):
    """A TransformerLens HookedTransformer with ``hf``'s weights (unprocessed) and the
    ``transformers`` tokenizer of ``directory``."""
    import transformer_lens as tl
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    c = hf.config
    cfg = tl.HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_ctx=c.n_positions, d_head=c.n_embd // c.n_head,
        n_heads=c.n_head, d_mlp=4 * c.n_embd, act_fn="gelu_new", d_vocab=c.vocab_size,
        eps=c.layer_norm_epsilon, normalization_type="LN", original_architecture="GPT2LMHeadModel",
        default_prepend_bos=True, positional_embedding_type="standard")
    tok = transformers.AutoTokenizer.from_pretrained(str(directory))
    m = tl.HookedTransformer(cfg, tokenizer=tok, **kwargs)
    m.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    return m.eval()


def as_np(x):
    """A torch tensor (or anything array-like) as a float64 NumPy array."""
    if hasattr(x, "detach"):
        x = x.detach().numpy()
    return np.asarray(x, dtype=np.float64)
