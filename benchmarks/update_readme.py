"""Put the generated benchmark table into README.md between the bench markers.

Only the text between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` is
replaced (the markers stay); the rest of README.md is never touched.  Nobody
types benchmark numbers by hand (DESIGN section 6)::

    python -m benchmarks.update_readme                       # from benchmarks/results/latest.json
    python -m benchmarks.update_readme --results other.json --readme README.md
    python -m benchmarks --update-readme                     # run, then update
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import report

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"
ROOT = Path(__file__).resolve().parents[1]


def replace_block(text: str, block: str) -> str:
    """``text`` with everything between the markers replaced by ``block``; ValueError without exactly one pair."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"README must contain exactly one {START} and one {END}")
    head, rest = text.split(START)
    if END not in rest:
        raise ValueError(f"{END} comes before {START}")
    _, tail = rest.split(END)
    return f"{head}{START}\n{block.strip()}\n{END}{tail}"


def update_readme(readme, block: str) -> None:
    """Rewrite ``readme`` atomically with the new block (the file is unchanged on any error)."""
    readme = Path(readme)
    new = replace_block(readme.read_text(), block)
    tmp = readme.with_name(readme.name + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, readme)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.update_readme", description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = p.parse_args(argv)
    try:
        data = json.loads(args.results.read_text())
        update_readme(args.readme, report.readme_block(data))
    except (OSError, ValueError) as exc:
        print(f"update_readme: {exc}", file=sys.stderr)
        return 1
    print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
