"""Seed corpus for fuzz_safetensors: small valid files written by the
`safetensors` library (every dtype, metadata, scalars, empty tensors) and a few
hand-made edge cases. Usage: python3 fuzz_safetensors.seeds.py CORPUS_DIR"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save


def raw(header, data=b""):
    """A file from a header dict and data bytes, without any padding."""
    hdr = json.dumps(header).encode()
    return struct.pack("<Q", len(hdr)) + hdr + data


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    seeds = {
        "all_dtypes": save({
            "f64": rng.standard_normal(3), "f32": rng.standard_normal((2, 2)).astype(np.float32),
            "f16": np.ones(3, np.float16), "i64": np.arange(2), "i32": np.arange(3, dtype=np.int32),
            "i16": np.arange(2, dtype=np.int16), "i8": np.arange(2, dtype=np.int8),
            "u8": np.arange(4, dtype=np.uint8), "b": np.array([True, False])},
            metadata={"format": "np"}),
        "scalar_empty": save({"s": np.array(1.0, np.float32), "e": np.zeros((0, 3), np.float32)}),
        "nothing": save({}),
        "bf16": raw({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, b"\x80\x3f\x00\x40"),
        "unaligned": raw({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0\0\x80\x3f"),
        "config": b'{"n_embd": 768, "layer_norm_epsilon": 1e-05, "archs": ["GPT2"], "x": null}',
    }
    for name, blob in seeds.items():
        (out / name).write_bytes(blob)


if __name__ == "__main__":
    main(sys.argv[1])
