"""The README's usage example runs as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_usage_example_runs(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    usage = readme.split("## Usage", 1)[1]
    code = re.search(r"```python\n(.*?)```", usage, re.S).group(1)
    monkeypatch.chdir(tmp_path)  # it saves digits.npz in the working directory
    exec(compile(code, "README.md usage", "exec"), {})
    out = capsys.readouterr().out
    assert "max abs err" in out and (tmp_path / "digits.npz").exists()
