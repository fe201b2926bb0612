"""docs/custom-layers.md runs as written: its python blocks, in order, in one module namespace."""

import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import fastgrad as fg

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "custom-layers.md"


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_readme_links_the_guide():
    assert "docs/custom-layers.md" in (ROOT / "README.md").read_text()


@pytest.mark.slow
def test_custom_layer_guide_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(GUIDE)
    assert len(blocks) >= 6
    # a real module, as a user's own file would be: fg.load finds RMSNorm only in imported modules
    module = types.ModuleType("custom_layers_guide")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.chdir(tmp_path)  # the guide saves a model in the working directory
    for i, code in enumerate(blocks):
        exec(compile(code, f"{GUIDE.name} block {i + 1}", "exec"), module.__dict__)
    ns = module.__dict__
    out = capsys.readouterr().out
    # the check passed on the right layer, caught the forgetful backward, and left the layer as it was
    assert ns["report"].ok and [r.name for r in ns["report"].checks()] == ["x", "g", "accumulation"]
    assert "NO" in out and "directional check" in out
    assert "backward" not in vars(ns["layer"]) and ns["layer"].params["g"].dtype == np.float32
    # it trained: RMSNorm's gain moved and the digits are classified
    assert ns["history"]["val_accuracy"][-1] > 0.9
    assert not np.allclose(ns["model"].layers[1].params["g"], 1.0)
    # the file names the user class by module and name, and it loaded as that class
    with np.load(tmp_path / "rmsnorm-digits.npz") as data:
        assert '"custom_layers_guide:RMSNorm"' in str(data["__architecture__"])
    assert type(fg.load(tmp_path / "rmsnorm-digits.npz").layers[1]) is ns["RMSNorm"]
    # blocks: the child is in params and the check, and trained; the two-branch block round-tripped its children
    assert "1.inner.W" in ns["block_model"].params and "1.inner" in out
    assert ns["block_history"]["val_accuracy"][-1] > 0.8
    names = [r.name for r in ns["two_report"].checks()]
    assert names[:3] == ["x", "0.a", "0.branches.0.W"] and "0.branches.1.b" in names
    with np.load(tmp_path / "two-branch.npz") as data:
        assert '"__layer__"' in str(data["__architecture__"]) and "param/0.branches.1.W" in data.files
