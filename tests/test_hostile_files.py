"""Hostile and careless files: every one refused with an exception that names it,
never a crash (SIGBUS), a hang (a FIFO) or a silently changed result.

References: the safetensors reference reader (``safetensors.numpy``) for which
headers are refused; transformers' tokenizer for ``max_length``; a tiny
``transformers.GPT2LMHeadModel`` saved by ``save_pretrained`` for the mapped
checkpoints. Logits are compared bitwise (the same C pass on the same weights).
Tests that could kill or block the process run in a child with a time limit, so
a regression fails the test instead of the whole run.
"""
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mechinterp_c import _core, io

ROOT = Path(__file__).resolve().parents[1]


def _run_child(code, timeout=120):
    """Run ``code`` in a fresh interpreter importing this checkout; its stdout."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=timeout, env=env, cwd=str(ROOT))
    assert r.returncode == 0, (f"child died (return code {r.returncode}; -7 is SIGBUS)\n"
                               f"stdout:\n{r.stdout}\nstderr:\n{r.stderr[-3000:]}")
    return r.stdout


def _safetensors_bytes(header, data=b""):
    blob = json.dumps(header).encode("utf-8") if isinstance(header, dict) else header
    return struct.pack("<Q", len(blob)) + blob + data


# ------------------------------------------------------------------ strings
def test_non_utf8_path_gives_file_not_found(tmp_path):
    bad = os.fsencode(tmp_path) + b"/w\xff\xfe.safetensors"
    for opener in (lambda: io.SafeTensors(bad), lambda: _core.parse_json_file(bad)):
        with pytest.raises(FileNotFoundError, match=r"w\\xff\\xfe\.safetensors: cannot open: No such"):
            opener()
    with pytest.raises(OSError, match=r"w\\xff\\xfe\.safetensors: cannot open"):
        _core.BPETokenizer(bad, bad)


@pytest.mark.parametrize("text, what", [
    (b'{"a\\u0000b": 1}', r"1:4: a NUL character \(\\u0000\) inside a string or key"),
    (b'{"a": "x\\u0000y"}', r"1:9: a NUL character \(\\u0000\) inside a string or key"),
    (b'{"a": "x\x00y"}', r"1:9: a NUL byte inside a string or key"),
    (b'{"a":\n "\xc3\x28"}', r"2:3: invalid UTF-8 in a string or key"),
    (b'{"a": "\xed\xa0\x80"}', r"1:8: invalid UTF-8 in a string or key"),     # a surrogate
    (b'{"a": "\xc0\xaf"}', r"1:8: invalid UTF-8 in a string or key"),         # overlong '/'
])
def test_json_nul_and_bad_utf8_refused(tmp_path, text, what):
    path = tmp_path / "config.json"
    path.write_bytes(text)
    with pytest.raises(ValueError, match=rf"{path}:{what}"):
        io.load_config(path)
    with pytest.raises(ValueError, match=what):
        io.parse_json(text)
    # an escaped backslash before "u0000" is not a NUL, and valid text still parses
    assert io.parse_json(b'{"a\\\\u0000": "\xc3\xa9"}') == {"a\\u0000": "\u00e9"}


def _header(name):
    return {name: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}


@pytest.mark.parametrize("raw_name, offset, what", [
    (b"w\\u0000x", 3, r"a NUL character \(\\u0000\)"),
    (b"w\xffx", 3, r"invalid UTF-8"),
    (b"w\xed\xa0\x80", 3, r"invalid UTF-8"),
])
def test_safetensors_names_validated_like_the_reference(tmp_path, raw_name, offset, what):
    blob = b'{"' + raw_name + b'": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_safetensors_bytes(blob, b"\0" * 4))
    # refused on open, naming the file and the byte offset (8 bytes of length first)
    with pytest.raises(ValueError, match=rf"{path}: header has {what}.* at byte {8 + offset} "
                                         rf"of the file \(byte {offset} of the header\)"):
        io.SafeTensors(path)
    if b"\\u0000" not in raw_name:          # the reference reader refuses invalid UTF-8 too
        st_numpy = pytest.importorskip("safetensors.numpy")
        with pytest.raises(Exception):
            st_numpy.load_file(str(path))
    # a valid non-ASCII name round-trips and is usable
    good = tmp_path / "good.safetensors"
    io.save_safetensors(good, {"w\u00e9\u4e2d": np.ones(3, np.float32)})
    with io.SafeTensors(good) as st:
        assert st.keys() == ["w\u00e9\u4e2d"]
        np.testing.assert_array_equal(st.get("w\u00e9\u4e2d"), np.ones(3, np.float32))


# ------------------------------------------------------- FIFOs and symlinks
def test_fifo_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    cfg = tmp_path / "config.json"
    os.mkfifo(cfg)
    os.mkfifo(tmp_path / "tokenizer_config.json")
    # a child with a time limit: a regression blocks in open() and times out here
    out = _run_child(f"""
        from mechinterp_c import _core, io
        from mechinterp_c.transformers import GPT2Tokenizer
        for f in (lambda: io.SafeTensors({str(fifo)!r}), lambda: io.load_config({str(tmp_path)!r}),
                  lambda: _core.BPETokenizer({str(cfg)!r}, {str(cfg)!r}),
                  lambda: io.open_checkpoint({str(tmp_path)!r}),
                  lambda: GPT2Tokenizer.from_pretrained({str(tmp_path)!r})):
            try:
                f()
                print("accepted")
            except OSError as e:
                print(type(e).__name__, e)
    """, timeout=60)
    lines = out.strip().splitlines()
    assert len(lines) == 5, out
    assert lines[0] == f"OSError [Errno 22] {fifo}: not a regular file (a FIFO (named pipe))"
    assert lines[1] == f"OSError [Errno 22] {cfg}: not a regular file (a FIFO (named pipe))"
    assert lines[2] == f"OSError {cfg}: not a regular file (a FIFO (named pipe))"
    assert lines[3] == lines[0]
    assert lines[4] == (f"OSError [Errno 22] {tmp_path / 'tokenizer_config.json'}: not a regular "
                        f"file (a FIFO (named pipe))")


def test_directory_and_device_refused(tmp_path):
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path}: not a regular file \(a directory\)"):
        io.SafeTensors(tmp_path)
    with pytest.raises(OSError, match=r"/dev/null: not a regular file \(a character device\)"):
        io.load_config("/dev/null")


def test_symlink_loop_and_dangling_link_named(tmp_path):
    (tmp_path / "config.json").write_text('{"n_layer": 1, "n_embd": 8, "n_head": 2}')
    os.symlink("model.safetensors", tmp_path / "model.safetensors")     # points at itself
    with pytest.raises(OSError, match=r"model\.safetensors: cannot open: symlink loop"):
        io.SafeTensors(tmp_path / "model.safetensors")
    # the directory loader says the same, not "no model.safetensors (it has: model.safetensors)"
    with pytest.raises(OSError, match=r"model\.safetensors: cannot open: symlink loop"):
        io.open_checkpoint(tmp_path)
    assert io.resolve_pretrained(tmp_path, "model.safetensors") == tmp_path / "model.safetensors"
    (tmp_path / "model.safetensors").unlink()
    os.symlink(tmp_path / "blobs" / "missing", tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"cannot open: dangling symlink"):
        io.open_checkpoint(tmp_path)


# -------------------------------------------------------------- max_length
def test_negative_max_length_refused(tmp_path):
    from mechinterp_c.checkpoints import bytes_to_unicode
    from mechinterp_c.transformers import GPT2Tokenizer
    chars = list(bytes_to_unicode().values())
    (tmp_path / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(chars)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = GPT2Tokenizer(tmp_path / "vocab.json", tmp_path / "merges.txt")
    ids = tok("hello")["input_ids"]
    assert len(ids) == 5
    # transformers refuses a negative limit too (OverflowError from its Rust core);
    # before, ids[:-1] silently dropped the last token
    for kw in (dict(max_length=-1, truncation=True), dict(max_length=-1)):
        with pytest.raises(ValueError, match=r"max_length must be >= 0, got -1"):
            tok("hello", **kw)
    with pytest.raises(TypeError, match=r"max_length must be an int, got 2\.5"):
        tok("hello", max_length=2.5, truncation=True)
    with pytest.raises(ValueError, match=r"pad_to_multiple_of must be a positive int, got 0"):
        tok("hello", padding=True, pad_to_multiple_of=0)
    assert tok("hello", max_length=0, truncation=True)["input_ids"] == []
    assert tok("hello", max_length=3, truncation=True)["input_ids"] == ids[:3]
    assert tok("hello")["input_ids"] == ids                 # still usable


# ------------------------------------------------------- the mmap contract
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    d = tmp_path_factory.mktemp("gpt2")
    transformers.GPT2LMHeadModel(cfg).save_pretrained(d)
    return d


_MMAP_CHILD = """
    import os, shutil, numpy as np
    from mechinterp_c import io
    from mechinterp_c.transformers.modeling_gpt2 import GPT2LMHeadModel
    from mechinterp_c import HookedTransformer
    d = {d!r}
    f = os.path.join(d, "model.safetensors")
    ids = np.array([[1, 2, 3, 4, 5]])
    mapped = GPT2LMHeadModel.from_pretrained(d)
    copied = GPT2LMHeadModel.from_pretrained(d, copy=True)
    materialized = GPT2LMHeadModel.from_pretrained(d)
    materialized.materialize()
    hooked = HookedTransformer.from_pretrained_no_processing(d)
    assert mapped._ht._core.n_external > 0 and copied._ht._core.n_external > 0
    want = np.array(mapped(ids).logits)
    want_tl = np.array(hooked(ids))
    st = io.SafeTensors(f)
    st_copy = io.SafeTensors(f, copy=True)
    view = st_copy.get("transformer.wte.weight").copy()
    {action}
    try:
        mapped(ids)
        print("mapped: no error")
    except OSError as e:
        print("mapped: OSError:", e)
    try:
        st.check()
        print("check: ok")
    except OSError as e:
        print("check: OSError")
    st_copy.check()
    assert np.array_equal(st_copy.get("transformer.wte.weight"), view)
    for name, m in (("copied", copied), ("materialized", materialized)):
        assert np.array_equal(np.array(m(ids).logits), want), name
    assert np.array_equal(np.array(hooked(ids)), want_tl)
    print("copies: same logits")
"""


def _mmap_child(d, action):
    return _run_child(_MMAP_CHILD.format(d=str(d), action=action)).strip().splitlines()


def test_truncated_checkpoint_is_an_error_not_sigbus(checkpoint, tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    for f in checkpoint.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    out = _mmap_child(d, "os.truncate(f, 1000)")
    assert out[0].startswith(f"mapped: OSError: {d / 'model.safetensors'}: the file shrank from ")
    assert "to 1000 bytes since it was mapped" in out[0] and "copy=True" in out[0]
    assert out[1:] == ["check: OSError", "copies: same logits"]


def test_overwritten_checkpoint_is_an_error_not_a_silent_change(checkpoint, tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    for f in checkpoint.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    # same size, other weights, written in place (what safetensors' save_file does)
    action = """
    import time
    time.sleep(0.05)                    # past the file system's timestamp granularity
    sd = {k: v * 2 for k, v in io.load_safetensors(f, copy=True).items()}
    io.save_safetensors(f + ".new", sd)
    with open(f, "r+b") as fh:
        fh.write(open(f + ".new", "rb").read())
    """
    out = _mmap_child(d, action)
    assert out[0].startswith(f"mapped: OSError: {d / 'model.safetensors'}: the file was modified "
                             f"in place since it was mapped")
    assert out[1:] == ["check: OSError", "copies: same logits"]


def test_checkpoint_replaced_by_rename_keeps_the_old_weights(checkpoint, tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    for f in checkpoint.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    action = """
    sd = {k: v * 2 for k, v in io.load_safetensors(f, copy=True).items()}
    io.save_safetensors(f, sd)          # a temporary file renamed into place
    assert np.array_equal(np.array(mapped(ids).logits), want)
    """
    out = _mmap_child(d, action)
    assert out == ["mapped: no error", "check: ok", "copies: same logits"]


def test_reve_front_end_keeps_no_view_of_the_file(tmp_path):
    from mechinterp_c.reve import ReveFrontEnd
    fe = ReveFrontEnd(embed_dim=16, patch_size=10, patch_overlap=2, freqs=2, seed=0)
    io.save_safetensors(tmp_path / "model.safetensors",
                        {k: np.ascontiguousarray(v) for k, v in fe.state_dict().items()})
    (tmp_path / "config.json").write_text(json.dumps(
        dict(embed_dim=16, patch_size=10, patch_overlap=2, freqs=2)))
    out = _run_child(f"""
        import os, numpy as np
        from mechinterp_c.reve import ReveFrontEnd
        fe = ReveFrontEnd.from_pretrained({str(tmp_path)!r})
        rng = np.random.default_rng(0)
        eeg = rng.standard_normal((1, 2, 30)).astype(np.float32)
        pos = rng.uniform(-0.1, 0.1, (1, 2, 3)).astype(np.float32)
        want = np.array(fe(eeg, pos))
        os.truncate({str(tmp_path / "model.safetensors")!r}, 0)
        assert np.array_equal(np.array(fe(eeg, pos)), want)
        print("ok")
    """)
    assert out.strip() == "ok"
