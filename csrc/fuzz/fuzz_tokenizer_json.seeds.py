"""Seed corpus for fuzz_tokenizer_json: small tokenizer.json files of each supported style
(byte-level with each regex, SentencePiece-style with byte fallback, Metaspace), each
followed by a 0 byte and a text. Usage: python3 fuzz_tokenizer_json.seeds.py CORPUS_DIR"""
import json
import os
import sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
byte_chars = [chr(c) for c in range(33, 127)] + ["Ġ", "Ċ"]
bl_vocab = {c: i for i, c in enumerate(byte_chars)}
bl_vocab.update({"Ġt": len(bl_vocab), "he": len(bl_vocab) + 1, "Ġthe": len(bl_vocab) + 2})
bl_merges = ["Ġ t", "h e", "Ġt he"]
sp_vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
sp_vocab.update({f"<0x{i:02X}>": 3 + i for i in range(256)})
for c in "▁abcdefghijklmnopqrstuvwxyzH":
    sp_vocab[c] = len(sp_vocab)
sp_vocab.update({"▁t": len(sp_vocab), "he": len(sp_vocab) + 1, "▁the": len(sp_vocab) + 2})
sp_merges = [["▁", "t"], ["h", "e"], ["▁t", "he"]]
styles = {
    "bytelevel": {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
                  "decoder": {"type": "ByteLevel"}, "normalizer": {"type": "NFC"}},
    "llama3": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}, "decoder": {"type": "ByteLevel"}},
    "llama2": {"normalizer": {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}},
    "metaspace": {"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
                                    "split": True},
                  "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"}},
}
for name, extra in styles.items():
    byte_level = name in ("bytelevel", "llama3")
    model = {"type": "BPE", "vocab": bl_vocab if byte_level else sp_vocab,
             "merges": bl_merges if byte_level else sp_merges}
    if not byte_level:
        model.update(byte_fallback=True, unk_token="<unk>", fuse_unk=True)
    doc = {"version": "1.0", "added_tokens": [{"id": 1 if not byte_level else 0, "content": "<s>" if not byte_level
                                               else "!", "special": True}],
           "model": model, "post_processor": None, **extra}
    with open(os.path.join(out, f"seed_{name}"), "wb") as f:
        f.write(json.dumps(doc, ensure_ascii=False).encode() + b"\0" + "Hello the world! 日本 😀\n  x".encode())
