"""The README's "Using it" examples run as written (each ```python block of that section,
in order, in one namespace), and the torch example does what its comments say."""
import re
from pathlib import Path

import numpy as np
import pytest

import mechinterp_c as mi

README = Path(__file__).resolve().parents[1] / "README.md"


def _using_it_blocks():
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_using_it_examples_run(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("einops")
    monkeypatch.setenv("MI_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.setenv("MI_NOTEBOOK_FALLBACK", "1")        # the stand-in, whatever is cached
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.chdir(tmp_path)
    blocks = _using_it_blocks()
    assert blocks, "no python example under 'Using it'"
    ns = {"__name__": "__readme__"}
    try:
        for code in blocks:
            exec(compile(code, "README.md", "exec"), ns)
    finally:
        mi.set_array_type("numpy")
    import torch
    assert isinstance(ns["logits"], torch.Tensor) and isinstance(ns["top"], torch.Tensor)
    assert isinstance(ns["W_pos_norm"], torch.Tensor)
    base = ns["model"](ns["tokens"])
    assert not np.allclose(ns["logits"].numpy(), base)      # the torch hook edited the pass
    assert ns["last"].shape == (2, ns["gpt2"].cfg.d_vocab_out)
    assert "".join(ns["str_tokens"][1:]) == "The cat"
    assert isinstance(ns["OV"], mi.FactoredMatrix)
