"""The phase benchmarks run and print what they claim (their timings are not asserted)."""

import numpy as np
import pytest

from benchmarks import phases, product_threads


def test_product_threads_checks_the_product_and_prints_both_thread_counts(capsys):
    assert product_threads.main(["--rounds", "1", "--shapes", "S,untuned"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.lstrip().startswith(("S ", "untuned "))]
    assert [(r[0], r[2]) for r in rows] == [("S", "2"), ("S", "1"), ("untuned", "2"), ("untuned", "1")]
    assert all(r[-2] == rows[0][-2] for r in rows[:2])  # the same packing items at either thread count


def test_product_threads_counts_come_from_the_plan():
    from fastgrad.kernels import products

    _fns, (items, tasks) = product_threads.calls((200, 300, 700), np.float64)
    plan = products.gemm_plan(200, 700, 300, np.float64)
    assert tasks == products.task_count(plan) >= products.MIN_TASKS
    mr, nr = products.tile_shape(np.float64)
    blocks = -(-300 // plan.kc)
    assert items == blocks * (-(-200 // mr) + -(-700 // nr))


def test_phase_command_line_rejects_unknown_shapes_and_zero_rounds():
    with pytest.raises(SystemExit):
        phases.parse_args("p", "d", {"S": 1}, ["--shapes", "S,XL"])
    with pytest.raises(SystemExit):
        phases.parse_args("p", "d", {"S": 1}, ["--rounds", "0"])
    assert phases.parse_args("p", "d", {"S": 1, "M": 2}, ["--shapes", "M"]).shapes == ["M"]


def test_render_aligns_plain_text_and_writes_markdown():
    head = ["shape", "threads", "ms"]
    rows = [["S", "2", "0.5"], ["LONG", "1", "12.25"]]
    md = phases.render(head, rows, True).splitlines()
    assert md[0] == "| shape | threads | ms |" and md[1] == "|---|---|---:|" and md[3] == "| LONG | 1 | 12.25 |"
    plain = phases.render(head, rows, False).splitlines()
    assert len({len(line) for line in plain}) == 1 and plain[2].split() == ["LONG", "1", "12.25"]
