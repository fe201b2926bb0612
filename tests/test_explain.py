"""``python -m fastgrad explain OP``: every printed ``path:line`` is that line of that file, every equation has kernel lines."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fastgrad
from fastgrad import cli, explain

ROOT = Path(fastgrad.__file__).resolve().parents[1]
#: a printed source row: "    fastgrad/kernels/dense.py:96 | y[s, k] = act(z[s, k], code)"
ROW = re.compile(r"^ +(?P<path>.+?\.py):(?P<line>\d+) +\| (?P<text>.*)$")


def source_rows(text):
    return [m.groupdict() for m in map(ROW.match, text.splitlines()) if m]


def assert_rows_are_the_source(text, cwd=None):
    """Each row's text is line `line` of file `path`, character for character after a common indentation."""
    rows = source_rows(text)
    assert rows, "no path:line rows printed"
    files = {}
    for row in rows:
        path = Path(row["path"])
        if not path.is_absolute():
            path = (ROOT if row["path"].startswith("fastgrad/") else Path(cwd or Path.cwd())) / path
        lines = files.setdefault(path, path.read_text(encoding="utf-8").splitlines())
        line = lines[int(row["line"]) - 1]
        cut = len(line) - len(row["text"])
        assert cut >= 0 and line[cut:] == row["text"] and not line[:cut].strip(), (row, line)
    return rows


@pytest.mark.parametrize("op", sorted(explain.OPS))
def test_printed_lines_are_the_named_lines_of_the_named_files(op):
    text = explain.explain(op, check=False)
    rows = assert_rows_are_the_source(text)
    assert all(r["path"].startswith("fastgrad/kernels/") for r in rows)
    # an equation line, then for each kernel: "  module.function: ...", its def line, its lines
    for equation in explain.OPS[op].equations:
        for eq_line in equation.lines:
            assert eq_line in text.splitlines()


@pytest.mark.parametrize("op", sorted(explain.OPS))
def test_every_equation_has_kernel_lines_that_contain_its_anchors(op):
    for equation in explain.OPS[op].equations:
        assert equation.sources, equation.lines
        block = "\n".join(explain.equation_block(equation))
        rows = source_rows(block)
        for source in equation.sources:
            func = explain.kernel_function(source.function)
            shown = explain.anchored_lines(func, source.anchors)
            # the def line of the named function comes first, then lines beyond it
            assert shown[0].text.lstrip().startswith(f"def {source.function.split('.')[1]}(")
            assert len(shown) > 1
            for anchor in source.anchors:
                assert any(anchor in line.text for line in shown[1:]), anchor
            assert {(line.path, str(line.lineno)) for line in shown} <= {(r["path"], r["line"]) for r in rows}


def test_loop_and_branch_headers_around_an_anchor_are_shown_in_file_order():
    func = explain.kernel_function("products.dot_rows_reference")
    texts = [line.text.strip() for line in explain.anchored_lines(func, ("acc += W[k, j] * x[s, j]",))]
    assert texts[1:] == ["for s in range(s_lo, s_hi):", "for k in range(W.shape[0]):", "for j in range(x.shape[1]):",
                         "acc += W[k, j] * x[s, j]"]
    store = explain.kernel_function("products.store")
    # "z[s, k] = acc" is in two lines: "z[s, k] = acc + b[k]" in the elif branch and the bare one in the else
    texts = [line.text.strip() for line in explain.anchored_lines(store, ("z[s, k] = acc",))]
    assert texts[1:] == ["if add:", "elif b.shape[0] == z.shape[1]:", "z[s, k] = acc + b[k]", "else:", "z[s, k] = acc"]


def test_a_missing_kernel_line_or_function_fails_loudly():
    func = explain.kernel_function("dense.dense_backward")
    with pytest.raises(explain.AnchorError, match="no such line"):
        explain.anchored_lines(func, ("db[k] += dz[s, k]", "no such line"))
    # docstrings are not code: this phrase is in the file, but only in dense_backward's docstring
    assert "computed before this kernel by" in (explain.KERNEL_DIR / "dense.py").read_text()
    with pytest.raises(explain.AnchorError, match="computed before this kernel by"):
        explain.anchored_lines(func, ("computed before this kernel by",))
    with pytest.raises(explain.AnchorError, match="no function dense_gone"):
        explain.kernel_function("dense.dense_gone")
    with pytest.raises(explain.AnchorError, match="no kernel module"):
        explain.kernel_function("gone.dense_forward")


def test_listed_kernels_are_the_ones_the_functional_layer_calls():
    functional = "\n".join(p.read_text() for p in (ROOT / "fastgrad" / "functional").glob("*.py"))
    for op in explain.OPS.values():
        for name in op.runs:
            explain.kernel_function(name)
            assert re.search(rf"\.{name.split('.')[1]}\b", functional), name


@pytest.mark.parametrize("op", sorted(explain.OPS))
def test_gradcheck_table_of_a_tiny_instance(op):
    result = explain.explanation(op)
    assert result.ok
    cases = explain.OPS[op].cases(np.random.default_rng(0))
    tables = result.text.split("\ngradient check of ")[1:]
    assert len(tables) == len(cases)
    for table, (layer, x) in zip(tables, cases):
        assert table.startswith(f"{explain.describe(layer)} on a random x of shape {x.shape}, float64:")
        rows = {line.split()[0]: line.split()[-1] for line in table.splitlines()[3:] if line.strip()}
        expected = {"x", *layer.params} | ({"accumulation"} if layer.params else set())
        assert rows == {name: "yes" for name in expected}


def test_unknown_op_exits_2_with_the_choices():
    result = subprocess.run([sys.executable, "-m", "fastgrad", "explain", "densse"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and result.stdout == ""
    message = result.stderr.strip()
    assert "unknown op 'densse'" in message and "dense, conv, pool, lstm, softmax" in message and "module:Class" in message
    assert len(message) < 300 and "Traceback" not in message


def test_cli_prints_the_explanation(capsys):
    assert cli.main(["explain", "softmax", "--no-check"]) == 0
    out = capsys.readouterr().out
    assert "y_k = e^{x_k} / Σ_j e^{x_j}" in out and "gradient check" not in out
    assert_rows_are_the_source(out)


USER_MODULE = '''
import numpy as np
import fastgrad as fg


class Scale(fg.Layer):
    """y_sk = g_k x_sk;  dL/dg_k = sum_s dL/dy_sk x_sk;  dL/dx_sk = g_k dL/dy_sk."""

    def __init__(self, n, dtype=np.float32):
        super().__init__(dtype)
        self.n = n
        self.add_param("g", np.linspace(0.5, 1.5, n))

    def forward(self, x):
        x = np.asarray(x, dtype=self.dtype)
        self.x = x
        return x * self.params["g"]

    def backward(self, dy):
        self.grads["g"] += np.sum(dy * self.x, axis=0)
        return dy * self.params["g"]


class Forgetful(Scale):
    def backward(self, dy):
        self.grads["g"] += np.sum(dy * self.x, axis=0)
        return dy
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = "fg_explain_user_layers"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


def test_user_layer_is_explained_and_checked(user_module, capsys):
    assert cli.main(["explain", f"{user_module}:Scale", "--args", '{"n": 3}', "--input-shape", "4,3"]) == 0
    out = capsys.readouterr().out
    assert "gradient check of Scale(n=3) (fg_explain_user_layers:Scale) on a random x of shape (4, 3), float64:" in out
    assert "  y_sk = g_k x_sk;  dL/dg_k = sum_s dL/dy_sk x_sk;  dL/dx_sk = g_k dL/dy_sk." in out
    rows = assert_rows_are_the_source(out)
    texts = [r["text"] for r in rows]
    assert "def forward(self, x):" in texts and "def backward(self, dy):" in texts
    assert '    self.grads["g"] += np.sum(dy * self.x, axis=0)' in texts
    assert re.search(r"^  x +\(4, 3\) +12 .* yes$", out, re.M) and re.search(r"^  g +\(3,\) +3 .* yes$", out, re.M)
    assert re.search(r"^  accumulation .* yes$", out, re.M)


def test_a_wrong_user_backward_shows_the_failing_table_and_exits_1(user_module, capsys):
    assert cli.main(["explain", f"{user_module}:Forgetful", "--args", '{"n": 3}', "--input-shape", "2,3"]) == 1
    out = capsys.readouterr().out
    assert "Forgetful has no docstring" in out  # its own docstring, not the inherited one
    assert re.search(r"^  x +\(2, 3\) .* NO$", out, re.M) and re.search(r"^  g +\(3,\) .* yes$", out, re.M)
    # the backward shown is the subclass's own
    assert [r["text"] for r in source_rows(out)].count("    return dy") == 1


@pytest.mark.parametrize(
    "argv, words",
    [
        (["{m}:Nope", "--no-check"], ["has no Nope"]),
        (["{m}:np", "--no-check"], ["Layer subclass", "module"]),
        (["fg_explain_no_such_module:Scale", "--no-check"], ["cannot import", "fg_explain_no_such_module"]),
        (["{m}:Scale", "--args", '{"n": 3}'], ["--input-shape", "--no-check"]),
        (["{m}:Scale", "--args", "{n: 3}", "--no-check"], ["--args", "JSON object"]),
        (["{m}:Scale", "--args", "[3]", "--no-check"], ["--args", "got list"]),
        (["{m}:Scale", "--input-shape", "2,3"], ["Scale() failed", "missing 1 required positional argument: 'n'", "--args"]),
        (["{m}:Scale", "--args", '{"n": 3}', "--input-shape", "2,0"], ["--input-shape", "'2,0'"]),
        (["{m}:Scale", "--args", '{"n": 3}', "--input-shape", "1000,1000"], ["1000000 elements"]),
        (["dense", "--input-shape", "2,3"], ["module:Class", "--input-shape"]),
        (["Scale"], ["unknown op 'Scale'"]),
    ],
)
def test_requests_explain_cannot_serve_exit_2_with_one_clear_line(user_module, capsys, argv, words):
    argv = [a.replace("{m}", user_module) for a in argv]
    assert cli.main(["explain", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    message = captured.err.strip()
    assert message.startswith("python -m fastgrad explain: ") and len(message) < 300 and "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_a_user_layer_that_raises_is_reported_after_its_code(user_module, capsys):
    # n=3 but inputs of width 5: the layer's own forward raises inside the check
    assert cli.main(["explain", f"{user_module}:Scale", "--args", '{"n": 3}', "--input-shape", "2,5"]) == 1
    out = capsys.readouterr().out
    assert "def backward(self, dy):" in out
    assert out.strip().splitlines()[-1].startswith("gradient check of Scale") and "could not run: ValueError" in out


def test_a_failing_check_of_a_built_in_op_exits_1(monkeypatch, capsys):
    def broken_cases(rng):
        layer = fastgrad.Dense(3, 2, "tanh", dtype=np.float64, seed=0)
        right = layer.backward
        layer.backward = lambda dy: 2 * right(dy)  # dL/dx doubled, the parameter gradients still right
        return [(layer, rng.standard_normal((2, 3)))]

    monkeypatch.setitem(explain.OPS, "dense", explain.OPS["dense"]._replace(cases=broken_cases))
    assert cli.main(["explain", "dense"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^  x +\(2, 3\) .* NO$", out, re.M) and re.search(r"^  W +\(2, 3\) .* yes$", out, re.M)


def test_no_check_needs_no_instance(user_module, capsys):
    # Scale needs n to be built; without the check nothing is built, so no --args are needed
    assert cli.main(["explain", f"{user_module}:Scale", "--no-check"]) == 0
    out = capsys.readouterr().out
    assert "def forward(self, x):" in out and "gradient check" not in out
    assert_rows_are_the_source(out)


def test_paths_of_user_files_are_relative_to_the_working_directory(user_module, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["explain", f"{user_module}:Scale", "--no-check"]) == 0
    rows = assert_rows_are_the_source(capsys.readouterr().out, cwd=tmp_path)
    assert {r["path"] for r in rows} == {f"{user_module}.py"}
    assert explain.display_path(ROOT / "fastgrad" / "kernels" / "dense.py") == "fastgrad/kernels/dense.py"
