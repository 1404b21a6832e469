"""Measure ``doorlock diff`` and ``doorlock report`` on a large synthetic organisation.

Usage: ``.venv/bin/python bench/diff_report.py [--people N] [--keys-per-person K] [--groups G] [--locks L]``

Generates the organisation (seed 1) twice in a temporary directory and changes one schedule in
the second copy, so the diff has real work. Loading both sides is timed separately from
comparing them; the report is written to a temporary directory. Times are wall-clock seconds
and CPU seconds of this process (CPU time is steadier when other jobs share the machine).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compiler.access_view import grants_by_person_and_lock  # noqa: E402
from compiler.diff import AccessSide, diff_access, format_markdown  # noqa: E402
from compiler.loader import load_repository  # noqa: E402
from compiler.report import write_site  # noqa: E402
from compiler.synthetic import generate_organisation  # noqa: E402


def timed(label: str, function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    print(f"{label:<28} {time.perf_counter() - wall:7.2f} s wall {time.process_time() - cpu:7.2f} s CPU")
    return result


def change_one_schedule(root: Path) -> None:
    """Move the end of the first window of office-hours to 23:30, so its users get changed hours."""
    path = root / "schedules" / "office-hours.yaml"
    text = path.read_text()
    start = text.index('end: "') + len('end: "')
    path.write_text(text[:start] + "23:30" + text[start + len("HH:MM"):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--keys-per-person", type=int, default=2)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--locks", type=int, default=1_000)
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="doorlock-bench-") as scratch:
        base = Path(scratch) / "base"
        head = Path(scratch) / "head"
        generate_organisation(base, people=arguments.people, keys_per_person=arguments.keys_per_person,
                              groups=arguments.groups, locks=arguments.locks, seed=1)
        shutil.copytree(base, head)
        change_one_schedule(head)

        base_repository = timed("load base", load_repository, base)
        head_repository = timed("load head", load_repository, head)
        grants = timed("effective grants (one side)", grants_by_person_and_lock, base_repository)
        print(f"{len(grants)} (person, lock) pairs")

        result = timed("diff", diff_access, AccessSide("base", base_repository), AccessSide("head", head_repository))
        markdown = format_markdown(result)
        changed = sum(len(changes) for changes in result.people.values())
        print(f"{changed} person-level changes, Markdown {len(markdown)} characters")

        files = timed("report", write_site, base_repository, Path(scratch) / "site")
        size = sum(path.stat().st_size for path in (Path(scratch) / "site").rglob("*") if path.is_file())
        print(f"{len(files)} files, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
