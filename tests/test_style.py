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


# -- structure (issue 12): rules a maintainer can rely on -------------------------------------

import ast  # noqa: E402

PKG = ROOT / "fastgrad"


def _modules():
    return sorted(PKG.rglob("*.py"))


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``from X import ...`` in ``path`` reads from."""
    if node.level == 0:
        return node.module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


def test_functional_is_a_package_with_an_explicit_all():
    assert (PKG / "functional" / "__init__.py").exists() and not (PKG / "functional.py").exists()
    import fastgrad.functional as F

    assert all(hasattr(F, name) for name in F.__all__)
    for op in ("dense", "activation", "conv", "lstm"):
        assert f"{op}_backward_into" in F.__all__
    assert not [name for name in F.__all__ if "Geometry" in name], "geometry types are internal"


def test_no_private_name_crosses_a_module_boundary():
    """``from .x import _y`` and ``x._y`` on a fastgrad module are refused: shared names are public."""
    problems = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        aliases = {}  # local name -> fastgrad module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = _resolve(path, node)
                for alias in node.names:
                    target = f"{source}.{alias.name}"
                    if source.startswith("fastgrad") and _is_module(target):
                        aliases[alias.asname or alias.name] = target
                    elif alias.name.startswith("_") and not alias.name.startswith("__") and source.startswith("fastgrad"):
                        problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports {alias.name} from {source}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("fastgrad") and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in aliases):
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: uses {node.value.id}.{node.attr}")
    assert not problems, "\n".join(problems)


def test_kernel_functions_take_at_most_ten_parameters():
    problems = []
    for path in sorted((PKG / "kernels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                count = len(node.args.args) + len(node.args.kwonlyargs)
                if count > 10:
                    problems.append(f"{path.name}:{node.lineno}: {node.name} takes {count} parameters")
    assert not problems, "\n".join(problems)


def test_one_statement_per_line():
    offenders = [str(p.relative_to(ROOT)) for p in _modules() if "noqa: E702" in p.read_text()]
    assert not offenders, offenders


def test_no_write_through_a_bundle_inside_a_parallel_loop():
    """numba issue 5872: inside a prange body, ``bundle.field[i] = v`` is silently lost.

    Kernels bind a bundle's arrays to local names before their parallel loops.
    """
    problems = []
    for path in sorted((PKG / "kernels").glob("*.py")):
        for loop in ast.walk(ast.parse(path.read_text())):
            is_prange = (isinstance(loop, ast.For) and isinstance(loop.iter, ast.Call)
                         and isinstance(loop.iter.func, ast.Name) and loop.iter.func.id == "prange")
            if not is_prange:
                continue
            for node in ast.walk(loop):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
                for target in targets:
                    if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Attribute):
                        problems.append(f"{path.name}:{node.lineno}: writes {ast.unparse(target)} inside prange")
    assert not problems, "\n".join(problems)


#: what only the product core may name: its register tile (MR rows, NR = 2 lanes columns),
#: the tile descriptor, the micro-kernel and the panel packers with their offset arithmetic
_CORE_INTERNALS = {"MR", "nr_of", "Tile", "micro_kernel", "pack_a_panel", "pack_b_panel", "_put_row", "_put_row_partial"}


def _core_internals_named(source: str) -> list:
    """(line, what) for every use of a product-core internal in a module's code (not its prose)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and node.id in _CORE_INTERNALS:
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute) and node.attr in _CORE_INTERNALS:
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.alias) and node.name in _CORE_INTERNALS:
            found.append((getattr(node, "lineno", 0), node.name))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            # NR written out as 2 * lanes(x)
            for side, other in ((node.left, node.right), (node.right, node.left)):
                if (isinstance(side, ast.Constant) and side.value == 2 and isinstance(other, ast.Call)
                        and getattr(other.func, "id", getattr(other.func, "attr", None)) == "lanes"):
                    found.append((node.lineno, "2 * lanes(...)"))
    return found


def test_the_scan_for_core_internals_finds_them():
    snippet = ("from .products import MR, Tile\n"
               "def f(ap, blk):\n"
               "    nrf = 2 * lanes(ap)\n"
               "    return products.MR * blk + nrf\n")
    assert sorted(what for _line, what in _core_internals_named(snippet)) == ["2 * lanes(...)", "MR", "MR", "Tile"]
    assert _core_internals_named("def f(rows):\n    return row_block_count(rows) * lanes(x)\n") == []


def test_no_module_outside_the_product_core_names_its_tile_or_panels():
    """Dense, LSTM, conv, the fused stack and the benchmarks go through products' entry points."""
    core = ROOT / "fastgrad" / "kernels" / "products.py"
    paths = [p for d in ("fastgrad", "benchmarks") for p in sorted((ROOT / d).rglob("*.py")) if p != core]
    assert len(paths) > 20
    offenders = [f"{p.relative_to(ROOT)}:{line}: {what}" for p in paths for line, what in _core_internals_named(p.read_text())]
    assert offenders == [], "\n".join(offenders)
