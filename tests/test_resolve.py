"""Model resolution in a local directory and in the Hugging Face cache layout,
single-file and sharded checkpoints written by transformers' save_pretrained,
every tensor compared with the `safetensors` library and torch."""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as st_load_numpy
from transformers import GPT2Config, GPT2LMHeadModel

from mechinterp_c import io as mio

REV = "0123456789abcdef0123456789abcdef01234567"


def tiny_gpt2(seed=0):
    """A random-initialised GPT-2 of the real architecture, small enough to be quick."""
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=101, n_positions=40)
    return GPT2LMHeadModel(cfg).eval()


def hf_cache_layout(cache, repo_id, src_dir, rev=REV, ref="main"):
    """Lay `src_dir`'s files out as huggingface_hub does: blobs named by hash,
    snapshots/REV/ holding symlinks to them, refs/<ref> holding REV."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    for f in sorted(Path(src_dir).iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(rev)
    return snap


@pytest.fixture(scope="module")
def saved_gpt2(tmp_path_factory):
    """(model, directory with a single model.safetensors, directory with shards)."""
    model = tiny_gpt2()
    single = tmp_path_factory.mktemp("single")
    model.save_pretrained(single)                      # safetensors by default
    sharded = tmp_path_factory.mktemp("sharded")
    model.save_pretrained(sharded, max_shard_size="40KB")
    return model, single, sharded


def assert_same_as_reference(got, files):
    """`got` has exactly the tensors of the safetensors files, bit for bit."""
    want = {}
    for f in files:
        want.update(st_load_numpy(str(f)))
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)   # exact: the same bytes


def test_local_directory_single_file(saved_gpt2):
    model, single, _ = saved_gpt2
    assert mio.resolve_pretrained(single) == single
    assert mio.resolve_pretrained(str(single), "config.json") == single / "config.json"
    got = mio.load_weights(single)
    assert_same_as_reference(got, [single / "model.safetensors"])
    # and against the live torch parameters (lm_head is tied to wte and not stored)
    sd = model.state_dict()
    for k, v in got.items():
        np.testing.assert_array_equal(v, sd[k].numpy(), err_msg=k)
    assert "lm_head.weight" not in got
    cfg = mio.load_config(single / "config.json", required=("n_embd", "n_layer", "n_head"))
    assert cfg == json.loads((single / "config.json").read_text())
    assert (cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"]) == (32, 2, 101)


def test_sharded_checkpoint(saved_gpt2):
    model, _, sharded = saved_gpt2
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1, "max_shard_size should have produced several shards"
    assert not (sharded / "model.safetensors").exists()
    got = mio.load_sharded(sharded)
    assert_same_as_reference(got, shards)
    got32 = mio.load_weights(sharded, float32=True)    # falls back to the index
    sd = model.state_dict()
    for k, v in got32.items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, sd[k].numpy(), err_msg=k)


@pytest.mark.parametrize("repo_id", ["gpt2", "openai-community/gpt2", "gpt2-large"])
def test_hf_cache_layout(tmp_path, monkeypatch, saved_gpt2, repo_id):
    _, single, _ = saved_gpt2
    cache = tmp_path / "hub"
    snap = hf_cache_layout(cache, repo_id, single)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert mio.hf_cache_dir() == cache
    assert mio.resolve_pretrained(repo_id) == snap
    assert mio.resolve_pretrained(repo_id, "model.safetensors").resolve().parent.name == "blobs"
    assert_same_as_reference(mio.load_weights(repo_id), [single / "model.safetensors"])
    assert mio.load_config(mio.resolve_pretrained(repo_id, "config.json"))["n_embd"] == 32
    # a commit hash works as the revision too
    assert mio.resolve_pretrained(repo_id, revision=REV) == snap


def test_sharded_in_hf_cache(tmp_path, monkeypatch, saved_gpt2):
    _, _, sharded = saved_gpt2
    cache = tmp_path / "hub"
    hf_cache_layout(cache, "org/big", sharded)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert_same_as_reference(mio.load_weights("org/big"), sorted(sharded.glob("model-*.safetensors")))


def test_cache_dir_environment_order(tmp_path, monkeypatch):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert mio.hf_cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mio.hf_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert mio.hf_cache_dir() == tmp_path / "hfhome" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hubcache"))
    assert mio.hf_cache_dir() == tmp_path / "hubcache"


def test_default_home_cache_used(tmp_path, monkeypatch, saved_gpt2):
    _, single, _ = saved_gpt2
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    snap = hf_cache_layout(tmp_path / ".cache" / "huggingface" / "hub", "gpt2", single)
    assert mio.resolve_pretrained("gpt2") == snap


def test_absent_model_lists_where_it_looked(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        mio.resolve_pretrained("openai-community/gpt2-xl")
    msg = str(e.value)
    assert "model 'openai-community/gpt2-xl' not found (revision 'main')" in msg
    assert "openai-community/gpt2-xl (not a local directory)" in msg
    assert f"{cache}/models--openai-community--gpt2-xl (no such directory)" in msg
    assert "no hub access" in msg
    with pytest.raises(FileNotFoundError, match=r"'\.\./x' is not a hub id"):
        mio.resolve_pretrained("../x")


def test_broken_cache_entries(tmp_path, monkeypatch, saved_gpt2):
    _, single, _ = saved_gpt2
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    snap = hf_cache_layout(cache, "gpt2", single)
    repo = cache / "models--gpt2"
    with pytest.raises(FileNotFoundError, match=rf"(?s){repo}/refs/v2 \(no such file\).*"
                                                rf"snapshots \(has {REV}\)"):
        mio.resolve_pretrained("gpt2", revision="v2")
    (repo / "refs" / "main").write_text("f" * 40)
    with pytest.raises(FileNotFoundError, match=rf"snapshots/{'f' * 40} \(named by .*refs/main, missing\)"):
        mio.resolve_pretrained("gpt2")
    (repo / "refs" / "main").write_text(REV + "\n")     # trailing newline is fine
    assert mio.resolve_pretrained("gpt2") == snap
    with pytest.raises(FileNotFoundError, match=r"'gpt2': no file 'tokenizer.json' in .* \(it has: "
                                                r"config.json, generation_config.json, model.safetensors\)"):
        mio.resolve_pretrained("gpt2", "tokenizer.json")


def test_sharded_index_errors(tmp_path, saved_gpt2):
    _, _, sharded = saved_gpt2
    d = tmp_path / "copy"
    d.mkdir()
    for f in sharded.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    index_path = d / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = sorted(d.glob("model-*.safetensors"))[0]

    bad = dict(index, weight_map=dict(index["weight_map"], **{"ghost.weight": shard.name}))
    index_path.write_text(json.dumps(bad))
    with pytest.raises(KeyError, match=rf"tensor 'ghost.weight' is mapped to '{shard.name}' "
                                       rf"but .*{shard.name} has no such tensor"):
        mio.load_sharded(d)

    bad = dict(index, weight_map=dict(index["weight_map"], **{"ghost.weight": "missing.safetensors"}))
    index_path.write_text(json.dumps(bad))
    with pytest.raises(FileNotFoundError, match=r"shard 'missing.safetensors' \(needed for tensor "
                                                r"'ghost.weight'\) not found"):
        mio.load_sharded(d)

    bad = dict(index, weight_map=dict(index["weight_map"], **{"ghost.weight": "../x.safetensors"}))
    index_path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"shard '\.\./x\.safetensors' is not a file name"):
        mio.load_sharded(d)

    index_path.write_text('{"metadata": {}}')
    with pytest.raises(ValueError, match=rf"{index_path}: missing 'weight_map' object"):
        mio.load_sharded(d)
    index_path.write_text('{"weight_map": {')
    with pytest.raises(ValueError, match=rf"{index_path}:1:\d+: invalid JSON"):
        mio.load_sharded(d)

    index_path.unlink()
    for f in d.glob("model-*.safetensors"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match=r"neither model.safetensors nor "
                                                r"model.safetensors.index.json \(it has: config.json"):
        mio.load_weights(d)
    (d / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match=r"pytorch_model.bin\); PyTorch pickles are not read"):
        mio.load_weights(d)
    with pytest.raises(ValueError, match=r"revision '\.\./\.\./x' is not a branch, tag or commit"):
        mio.resolve_pretrained("gpt2", revision="../../x")
