"""config.json through cJSON: same Python objects as the json module
(ints stay ints, floats floats), and errors that name the file and line:col."""
import json

import pytest
from transformers import GPT2Config

from mechinterp_c import _core
from mechinterp_c import io as mio


def same_json(a, b):
    """Equal values AND equal types all the way down (1 == 1.0 == True in Python)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    return a == b


def test_gpt2_config_matches_json_module(tmp_path):
    cfg = GPT2Config(n_layer=3, n_embd=48, n_head=4, vocab_size=1000, layer_norm_epsilon=1e-5)
    cfg.save_pretrained(tmp_path)
    want = json.loads((tmp_path / "config.json").read_text())
    got = mio.load_config(tmp_path / "config.json")
    assert same_json(got, want)
    assert type(got["n_embd"]) is int and type(got["layer_norm_epsilon"]) is float
    assert same_json(mio.load_config(tmp_path), want)        # a directory works too
    # and the round trip back into transformers gives the same config
    assert GPT2Config.from_dict(got).to_dict() == cfg.to_dict()


TRICKY = r'''
{
  "ints": [0, -0, 7, -12, 123456789012345678901234567890, 9007199254740993],
  "floats": [0.0, -0.0, 1.5, 1e-05, 2E3, -3.25e-300, 1e400, 0.1, 1.0000000000000002],
  "strings": ["", "a\"b\\c\/d", "\u00e9\u4e2d\ud83d\ude00", "tab\tnew\nline", "digits 123 -4.5e6"],
  "nested": {"a": {"b": [[], {}, [null, true, false]]}},
  "dup": 1, "dup": 2.5,
  "unicode keys \u00fc": "ü"
}
'''


def test_tricky_json_matches_json_module(tmp_path):
    path = tmp_path / "tricky.json"
    path.write_text(TRICKY, encoding="utf-8")
    want = json.loads(TRICKY)
    got = _core.parse_json_file(path)
    assert same_json(got, want), (got, want)
    assert same_json(_core.parse_json(TRICKY), want)
    assert same_json(_core.parse_json(TRICKY.encode()), want)
    # a top-level scalar and a BOM are accepted as Python's json (utf-8-sig) accepts them
    assert same_json(_core.parse_json("  42 "), 42)
    assert same_json(_core.parse_json(b"\xef\xbb\xbf{\"a\": 1}"), {"a": 1})


@pytest.mark.parametrize("text,line,col,what", [
    ('{"a": 1,\n "b": , "c": 2}', 2, 7, "syntax error here"),
    ('{"a": [1, 2\n', 2, 1, "unexpected end of file"),
    ('{"a": 1} {"b": 2}', 1, 10, "extra data after the JSON value"),
    ('{\n\n  "a": tru }', 3, 8, "syntax error here"),
    ("", 1, 1, "the file is empty"),
    ("  \n ", 2, 2, "the file is empty"),
    ("{'a': 1}", 1, 3, "syntax error here"),    # cJSON points one past the '{'
    ('{"a": 1', 1, 7, r"syntax error at the end of the file \(incomplete JSON\?\)"),
    ('{"a": 1]  ', 1, 8, r"syntax error at the end of the file \(incomplete JSON\?\)"),
])
def test_invalid_json_names_file_line_col(tmp_path, text, line, col, what):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)                       # the reference agrees it is invalid
    with pytest.raises(ValueError, match=rf"^{path}:{line}:{col}: invalid JSON: {what}$"):
        mio.load_config(path)


def test_config_missing_field_and_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"n_embd": 64, "n_head": 4}')
    assert mio.load_config(path, required=("n_embd", "n_head")) == {"n_embd": 64, "n_head": 4}
    with pytest.raises(KeyError, match=rf"{path}: missing required field\(s\) 'n_layer', 'vocab_size'"):
        mio.load_config(path, required=("n_embd", "n_layer", "vocab_size"))
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'nope.json'}: cannot open"):
        mio.load_config(tmp_path / "nope.json")
    (tmp_path / "sub").mkdir()
    with pytest.raises(FileNotFoundError, match=r"sub/config.json: cannot open"):
        mio.load_config(tmp_path / "sub")
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"{path}: expected a JSON object at the top level, got list"):
        mio.load_config(path)


def test_invalid_utf8_string_named(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"name": "ab\xff\xfecd"}')
    with pytest.raises(ValueError, match=rf"{path}:1:13: invalid UTF-8 in a string"):
        mio.load_config(path)
