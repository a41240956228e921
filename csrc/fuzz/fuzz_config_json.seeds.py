"""Seed corpus for fuzz_config_json: config.json files as Hugging Face writes them
(GPT-2, REVE), a sharded checkpoint's index, and JSON edge cases (escapes, UTF-8,
big and small numbers, a byte-order mark, nesting).
Usage: python3 fuzz_config_json.seeds.py CORPUS_DIR"""
import json
import sys
from pathlib import Path

GPT2 = {"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1, "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256,
        "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "gpt2",
        "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_inner": None, "n_layer": 12,
        "n_positions": 1024, "scale_attn_weights": True, "tie_word_embeddings": True,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "vocab_size": 50257}
REVE = {"model_type": "reve", "embed_dim": 512, "depth": 22, "heads": 8, "head_dim": 64,
        "mlp_dim_ratio": 2.66, "use_geglu": True, "freqs": 4, "patch_size": 200,
        "patch_overlap": 20}
INDEX = {"metadata": {"total_size": 497759232},
         "weight_map": {"transformer.h.0.attn.c_attn.weight": "model-00001-of-00002.safetensors",
                        "lm_head.weight": "model-00002-of-00002.safetensors"}}


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = {
        "gpt2": json.dumps(GPT2, indent=2).encode(),
        "reve": json.dumps(REVE).encode(),
        "index": json.dumps(INDEX, indent=2).encode(),
        "escapes": '{"a\\"b": "\\\\ \\/ \\b \\f \\n \\r \\t \\u00e9 \\ud83d\\ude00"}'.encode(),
        "utf8": '{"naïve": "中文 😀", "k": ["é", "\u2028"]}'.encode(),
        "numbers": b'[0, -0, 1e308, -1e-308, 123456789012345678901234567890, 1.5E+3, 0.1]',
        "bom": b'\xef\xbb\xbf{"x": 1}\n',
        "nested": b'{"a": [[[{"b": [true, false, null]}]]], "c": {}}',
    }
    for name, blob in seeds.items():
        (out / name).write_bytes(blob)


if __name__ == "__main__":
    main(sys.argv[1])
