"""The safetensors mmap reader: values against the `safetensors` library and
torch, zero-copy ownership, dtype conversion, and every kind of corrupt file."""
import gc
import json
import struct
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as st_load_numpy
from safetensors.numpy import save_file as st_save_numpy
from safetensors.torch import save_file as st_save_torch

import mechinterp_c as mi
from mechinterp_c import _core
from mechinterp_c import io as mio


def write_raw(path, header, data=b"", header_len=None, pad_to=None):
    """Write a safetensors file by hand: `header` is a dict (dumped as JSON) or
    raw bytes; `header_len` overrides the length field; `pad_to` pads the JSON
    with spaces to that many bytes."""
    hdr = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad_to is not None:
        hdr = hdr + b" " * (pad_to - len(hdr))
    n = len(hdr) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + hdr + data)
    return path


def all_dtype_tensors(rng):
    """One tensor of every dtype NumPy has, in awkward shapes (scalar, empty, 3-D)."""
    return {
        "f64": rng.standard_normal((3, 4)),
        "f32": rng.standard_normal((2, 3, 5)).astype(np.float32),
        "f16": rng.standard_normal(7).astype(np.float16),
        "i64": rng.integers(-2**62, 2**62, size=(4,), dtype=np.int64),
        "i32": rng.integers(-2**31, 2**31, size=(2, 2), dtype=np.int32),
        "i16": rng.integers(-2**15, 2**15, size=(5,), dtype=np.int16),
        "i8": rng.integers(-128, 128, size=(3,), dtype=np.int8),
        "u8": rng.integers(0, 256, size=(1, 9), dtype=np.uint8),
        "bool": rng.integers(0, 2, size=(6,)).astype(bool),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


def test_every_dtype_matches_safetensors_library(tmp_path, rng):
    tensors = all_dtype_tensors(rng)
    path = tmp_path / "all.safetensors"
    st_save_numpy(tensors, str(path), metadata={"format": "np", "note": "ünïcode"})
    ref = st_load_numpy(str(path))
    with mio.SafeTensors(path) as st:
        assert st.keys() == sorted(ref)
        assert len(st) == len(ref) and "f32" in st and "nope" not in st
        assert st.metadata == {"format": "np", "note": "ünïcode"}
        for name, want in ref.items():
            got = st.get(name)
            assert got.dtype == want.dtype, name
            assert got.shape == want.shape == st.shape(name), name
            np.testing.assert_array_equal(got, want)  # exact: same bytes
        assert [st.dtype(k) for k in ("f64", "f16", "bool", "u8", "i16")] == \
            ["F64", "F16", "BOOL", "U8", "I16"]
    assert st.closed


def test_get_float32_of_every_dtype(tmp_path, rng):
    tensors = all_dtype_tensors(rng)
    path = tmp_path / "all.safetensors"
    st_save_numpy(tensors, str(path))
    got = mio.load_safetensors(path, float32=True)
    for name, want in tensors.items():
        assert got[name].dtype == np.float32
        # exact: float32(x) is one correctly rounded cast in C and in NumPy
        np.testing.assert_array_equal(got[name], want.astype(np.float32), err_msg=name)


def test_f16_exhaustive_bitwise(tmp_path):
    """All 65536 half bit patterns (subnormals, inf, NaN payloads) against NumPy."""
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    half = bits.view(np.float16)
    path = tmp_path / "h.safetensors"
    st_save_numpy({"h": half.reshape(256, 256)}, str(path))
    got = mio.SafeTensors(path).get_float32("h").reshape(-1)
    want = half.astype(np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_bf16_against_torch(tmp_path, rng):
    # every finite/inf/NaN bf16 pattern, plus realistic weights
    all_bits = torch.from_numpy(np.arange(65536, dtype=np.int32).astype(np.int16)).view(torch.bfloat16)
    weights = torch.from_numpy(rng.standard_normal((64, 48)).astype(np.float32)).bfloat16()
    path = tmp_path / "b.safetensors"
    st_save_torch({"bits": all_bits.contiguous(), "w": weights}, str(path))
    st = mio.SafeTensors(path)
    assert st.dtype("w") == "BF16"
    for name, t in (("bits", all_bits), ("w", weights)):
        want = t.float().numpy()
        for got in (st.get(name), st.get_float32(name)):   # get() converts BF16 too
            assert got.dtype == np.float32 and got.shape == tuple(t.shape)
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_conversion_identical_for_any_thread_count(tmp_path, rng):
    big = rng.standard_normal(300_000).astype(np.float16)   # above the parallel threshold
    path = tmp_path / "big.safetensors"
    st_save_numpy({"x": big}, str(path))
    st = mio.SafeTensors(path)
    n = mi.get_num_threads()
    try:
        mi.set_num_threads(1)
        one = st.get_float32("x")
        mi.set_num_threads(2)
        two = st.get_float32("x")
    finally:
        mi.set_num_threads(n)
    np.testing.assert_array_equal(one.view(np.uint32), two.view(np.uint32))
    np.testing.assert_array_equal(one, big.astype(np.float32))


def test_zero_copy_read_only_and_outlives_object(tmp_path, rng):
    a = rng.standard_normal((16, 8)).astype(np.float32)
    path = tmp_path / "a.safetensors"
    st_save_numpy({"a": a}, str(path))
    st = mio.SafeTensors(path)
    x, y = st.get("a"), st.get_float32("a")
    assert type(x.base).__name__ == "Buffer"
    assert x.base is y.base                    # both views of the one mapping
    assert np.shares_memory(x, y)
    assert x.base.nbytes == path.stat().st_size
    assert not x.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        x[0, 0] = 1.0
    st.close()
    with pytest.raises(ValueError, match="a.safetensors: SafeTensors file is closed"):
        st.get("a")
    del st
    gc.collect()
    np.testing.assert_array_equal(x, a)        # mapping still alive through x.base
    v = x[3:5]
    del x, y
    gc.collect()
    np.testing.assert_array_equal(v, a[3:5])


def test_unaligned_data_area(tmp_path, rng):
    """A header length that is not a multiple of 4 puts float32 data off alignment."""
    a = rng.standard_normal(10).astype(np.float32)
    hdr = {"a": {"dtype": "F32", "shape": [10], "data_offsets": [0, 40]}}
    n = len(json.dumps(hdr))
    path = write_raw(tmp_path / "u.safetensors", hdr, a.tobytes(), pad_to=n + (1 - n) % 4)
    st = mio.SafeTensors(path)
    view = st.get("a")
    assert not view.flags.aligned
    np.testing.assert_array_equal(view, a)
    conv = st.get_float32("a")                 # a copy, aligned for the kernels
    assert conv.flags.aligned and conv.flags.writeable
    np.testing.assert_array_equal(conv, a)


def test_offsets_past_2_31(tmp_path):
    """Offsets above 2^31 (large models) through a sparse 3 GB file."""
    begin = 3 * 2**30 + 5
    hdr = {"small": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]},
           "far": {"dtype": "U8", "shape": [4], "data_offsets": [begin, begin + 4]}}
    path = write_raw(tmp_path / "far.safetensors", hdr, struct.pack("<ii", 7, -9))
    with open(path, "r+b") as f:
        hdr_end = 8 + len(json.dumps(hdr).encode())
        f.seek(hdr_end + begin)
        f.write(bytes([1, 2, 3, 250]))
    st = mio.SafeTensors(path)
    np.testing.assert_array_equal(st.get("far"), [1, 2, 3, 250])
    np.testing.assert_array_equal(st.get("small"), [7, -9])


def test_safetensors_library_padding_and_empty_file_of_tensors(tmp_path):
    path = tmp_path / "none.safetensors"
    st_save_numpy({}, str(path), metadata={"k": "v"})
    st = mio.SafeTensors(path)
    assert st.keys() == [] and st.metadata == {"k": "v"}


# ---------------------------------------------------------------- corrupt files

GOOD = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
DATA = np.arange(4, dtype=np.float32).tobytes()


def entry(dtype="F32", shape=(2, 2), offsets=(0, 16)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


CORRUPT = [
    # (id, header, data, header_len, expected message regex)
    ("header-not-object", b"[1, 2, 3]", b"", None, r"header is not a JSON object"),
    ("header-string", b'"hello"', b"", None, r"header is not a JSON object"),
    ("invalid-json", b'{"w": {"dtype": "F32",', b"", None,
     r"header is not valid JSON \(error near byte \d+ of 22\)"),
    ("trailing-garbage", b'{} xyz', b"", None, r"header has trailing bytes after the JSON value \(at byte 3 of 6\)"),
    ("entry-not-object", {"w": [1, 2]}, b"", None, r"tensor 'w': entry is not a JSON object"),
    ("unknown-dtype", {"w": entry(dtype="F8_E4M3")}, DATA, None,
     r"tensor 'w': unknown dtype 'F8_E4M3'"),
    ("dtype-not-string", {"w": {"dtype": 4, "shape": [], "data_offsets": [0, 4]}}, DATA, None,
     r"tensor 'w': 'dtype' is not a string"),
    ("missing-shape", {"w": {"dtype": "F32", "data_offsets": [0, 16]}}, DATA, None,
     r"tensor 'w': missing 'shape'"),
    ("missing-offsets", {"w": {"dtype": "F32", "shape": [4]}}, DATA, None,
     r"tensor 'w': missing 'data_offsets'"),
    ("offsets-three", {"w": entry(offsets=(0, 8, 16))}, DATA, None,
     r"tensor 'w': 'data_offsets' is not an array \[begin, end\]"),
    ("negative-shape", {"w": entry(shape=(-2, -2))}, DATA, None,
     r"tensor 'w': shape\[0\]: expected a non-negative integer, got -2"),
    ("fractional-shape", {"w": entry(shape=(2, 2.5))}, DATA, None,
     r"tensor 'w': shape\[1\]: expected a non-negative integer, got 2.5"),
    ("string-shape", {"w": entry(shape=("2", 2))}, DATA, None,
     r"tensor 'w': shape\[0\]: expected a non-negative integer, got a string"),
    ("huge-shape", {"w": entry(shape=(1e300, 1))}, DATA, None,
     r"tensor 'w': shape\[0\]: 1\.0\d*e\+300 is too large \(limit 2\^53\)"),
    ("overflowing-shape", {"w": entry(shape=(2**52, 2**52, 2**52))}, DATA, None,
     r"tensor 'w': shape has more than 2\^64 elements"),
    ("negative-offset", {"w": entry(offsets=(-16, 0))}, DATA, None,
     r"tensor 'w': data_offsets\[0\]: expected a non-negative integer, got -16"),
    ("end-before-begin", {"w": entry(offsets=(16, 0))}, DATA, None,
     r"tensor 'w': data_offsets \[16, 0\): end before begin"),
    ("shape-offsets-disagree", {"w": entry(shape=(2, 3))}, DATA, None,
     r"tensor 'w': shape \[2, 3\] of F32 needs 24 bytes but data_offsets \[0, 16\) hold 16"),
    ("out-of-range", {"w": entry(offsets=(16, 32))}, DATA, None,
     r"tensor 'w': data_offsets \[16, 32\) run past the end of the data area \(16 bytes"),
    ("overlap", {"a": entry(shape=(2,), offsets=(0, 8)), "b": entry(shape=(2,), offsets=(4, 12))},
     DATA, None, r"tensor 'b': data_offsets \[4, 12\) overlap tensor 'a' \[0, 8\)"),
    ("contained-overlap", {"a": entry(shape=(4,), offsets=(0, 16)),
                           "b": entry(shape=(1,), offsets=(8, 12))},
     DATA, None, r"tensor 'b': data_offsets \[8, 12\) overlap tensor 'a' \[0, 16\)"),
    ("duplicate-name", b'{"w": ' + json.dumps(entry()).encode() + b', "w": '
     + json.dumps(entry()).encode() + b"}", DATA, None, r"tensor 'w': appears twice"),
    ("metadata-not-string", {"__metadata__": {"n": 3}, **GOOD}, DATA, None,
     r"__metadata__\['n'\] is not a string"),
    ("metadata-not-object", {"__metadata__": [1], **GOOD}, DATA, None,
     r"__metadata__ is not a JSON object"),
    ("header-length-past-end", GOOD, DATA, 10**6,
     r"header length 1000000 runs past the end of the file \(\d+ bytes"),
    ("header-length-huge", GOOD, DATA, 2**64 - 1,
     r"header length 18446744073709551615 runs past the end of the file"),
]


@pytest.mark.parametrize("header,data,header_len,message",
                         [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
def test_corrupt_header(tmp_path, header, data, header_len, message):
    path = write_raw(tmp_path / "bad.safetensors", header, data, header_len)
    with pytest.raises(ValueError, match=str(path) + ": " + message):
        mio.SafeTensors(path)


def test_truncated_files(tmp_path, rng):
    a = rng.standard_normal((32, 8)).astype(np.float32)
    good = tmp_path / "good.safetensors"
    st_save_numpy({"a": a, "b": a[:4]}, str(good))
    raw = good.read_bytes()
    hlen = struct.unpack("<Q", raw[:8])[0]
    cut_data = tmp_path / "cut_data.safetensors"
    cut_data.write_bytes(raw[:-100])                  # data area short
    with pytest.raises(ValueError, match=rf"{cut_data}: tensor '\w': data_offsets .* run past "
                                         r"the end of the data area .*truncated"):
        mio.SafeTensors(cut_data)
    cut_header = tmp_path / "cut_header.safetensors"
    cut_header.write_bytes(raw[:8 + hlen // 2])       # header itself cut
    with pytest.raises(ValueError, match=rf"{cut_header}: header length {hlen} runs past the end"):
        mio.SafeTensors(cut_header)
    for n in (0, 5):
        short = tmp_path / f"short{n}.safetensors"
        short.write_bytes(raw[:n])
        with pytest.raises(ValueError, match=rf"{short}: file is {n} bytes, too short for the "
                                             r"8-byte header length"):
            mio.SafeTensors(short)


def test_missing_tensor_and_file(tmp_path):
    path = write_raw(tmp_path / "ok.safetensors", GOOD, DATA)
    st = mio.SafeTensors(path)
    with pytest.raises(KeyError, match=rf"{path}: no tensor named 'nope' \(the file has 1 tensors\)"):
        st.get("nope")
    for method in (st.get_float32, st.shape, st.dtype):
        with pytest.raises(KeyError, match="no tensor named 'nope'"):
            method("nope")
    with pytest.raises(TypeError, match="tensor name must be a str, got int"):
        st.get(3)
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(FileNotFoundError, match=rf"{missing}: cannot open: No such file"):
        mio.SafeTensors(missing)
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path}: not a regular file"):
        mio.SafeTensors(tmp_path)


def test_corrupt_files_also_rejected_by_reference(tmp_path):
    """Cross-check: the reference library refuses the same files we refuse
    (those our checks share with it), so we are not stricter by mistake."""
    from safetensors import safe_open
    shared = {"unknown-dtype", "shape-offsets-disagree", "out-of-range", "overlap",
              "header-length-past-end", "header-not-object", "invalid-json", "negative-shape"}
    for cid, header, data, header_len, _ in CORRUPT:
        if cid not in shared:
            continue
        path = write_raw(tmp_path / f"{cid}.safetensors", header, data, header_len)
        with pytest.raises(Exception):
            with safe_open(str(path), "np") as f:
                [f.get_tensor(k) for k in f.keys()]


def mapped(path):
    """Whether `path` is mmapped in this process right now (Linux /proc)."""
    with open("/proc/self/maps") as f:
        return any(line.rstrip().endswith(str(path)) for line in f)


def test_unmapped_when_last_user_goes(tmp_path, rng):
    a = rng.standard_normal(100).astype(np.float32)
    path = tmp_path / "m.safetensors"
    st_save_numpy({"a": a}, str(path))
    st = mio.SafeTensors(path)
    assert mapped(path)
    x = st.get("a")
    refs = sys.getrefcount(x.base)
    for _ in range(50):                          # no reference leak per get()
        st.get("a"), st.get_float32("a"), st.shape("a"), st.keys()
    after = sys.getrefcount(x.base)   # not inside assert: pytest's rewrite holds temporaries
    assert after == refs
    st.close()
    assert mapped(path)                          # x still needs the mapping
    del st
    gc.collect()
    assert mapped(path)
    del x
    gc.collect()
    assert not mapped(path)
    with mio.SafeTensors(path) as st2:           # no arrays taken: unmapped at close
        assert mapped(path)
    assert not mapped(path)
    del st2


def test_close_while_other_threads_convert(tmp_path, rng):
    """close() from one thread while others convert with the GIL released:
    each call either returns the right values or raises 'file is closed'."""
    import threading
    x = rng.standard_normal(200_000).astype(np.float16)
    path = tmp_path / "t.safetensors"
    st_save_numpy({"x": x}, str(path))
    want = x.astype(np.float32)
    for _ in range(5):
        st = mio.SafeTensors(path)
        results, errors = [], []

        def work():
            for _ in range(4):
                try:
                    results.append(st.get_float32("x"))
                except ValueError as e:
                    errors.append(str(e))

        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        st.close()
        for t in threads:
            t.join()
        assert len(results) + len(errors) == 12
        assert all(e.endswith("t.safetensors: SafeTensors file is closed") for e in errors)
        for r in results:
            np.testing.assert_array_equal(r, want)
