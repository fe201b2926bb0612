"""Lint and design rules, so the README's test command enforces them."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_flake8_clean():
    pytest.importorskip("flake8")
    targets = [str(ROOT / d) for d in ("fastgrad", "tests", "benchmarks") if (ROOT / d).exists()]
    result = subprocess.run([sys.executable, "-m", "flake8", *targets], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _kernel_sources():
    return sorted((ROOT / "fastgrad" / "kernels").glob("*.py"))


def test_kernels_use_no_blas():
    """The matmuls are the cheat sheet's index loops: no @, dot, matmul, einsum in kernels."""
    pattern = re.compile(r"np\.(dot|matmul|einsum|tensordot|inner|outer)\(|[\w\)\]] @ [\w\(]")
    for path in _kernel_sources():
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            assert not pattern.search(code), f"{path.name}:{i}: {line.strip()}"


def test_numba_options_only_in_jit_module():
    for path in (ROOT / "fastgrad").rglob("*.py"):
        if path.name == "_jit.py":
            continue
        text = path.read_text()
        assert "fastmath=True" not in text, path
        assert not re.search(r"^\s*@(numba\.)?(njit|jit)\b", text, re.M), path
        assert "numba.njit(" not in text, path
        assert "import pickle" not in text and "allow_pickle=True" not in text, path


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.endswith("-m pytest") and "pip install" in line)
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()
