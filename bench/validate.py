"""Measure ``doorlock validate`` on a large synthetic organisation.

Usage: ``.venv/bin/python bench/validate.py [--people N] [--keys-per-person K] [--locks L]``

Generates the organisation (seed 1) in a temporary directory, then runs the code path of
``doorlock validate`` (``check_repository``, imports included) in a fresh child process per run.
It prints the child's wall-clock seconds, CPU seconds (steadier than wall-clock time when other
jobs share the machine) and peak resident memory (``ru_maxrss``). Generating the files is
timed separately, and this script's own memory is not counted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compiler.synthetic import generate_organisation  # noqa: E402

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
started = time.perf_counter()
cpu_started = time.process_time()
from compiler.loader import check_repository
result = check_repository({directory!r})
elapsed = time.perf_counter() - started
cpu = time.process_time() - cpu_started
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": elapsed, "cpu_seconds": cpu, "peak_mib": peak_kib / 1024,
                  "errors": len(result.errors), "warnings": len(result.warnings)}}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--keys-per-person", type=int, default=2)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--locks", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=3, help="number of timed runs; the best and the median are shown")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="doorlock-bench-") as directory:
        started = time.perf_counter()
        organisation = generate_organisation(
            directory, people=arguments.people, keys_per_person=arguments.keys_per_person,
            groups=arguments.groups, locks=arguments.locks, seed=1,
        )
        generated = time.perf_counter() - started
        print(f"generated {organisation.people} people, {organisation.keys} keys, {organisation.groups} groups, "
              f"{organisation.locks} locks in {generated:.1f} s")

        runs = []
        for _ in range(arguments.runs):
            output = subprocess.run(
                [sys.executable, "-c", CHILD.format(root=str(ROOT), directory=directory)],
                check=True, capture_output=True, text=True,
            ).stdout
            runs.append(json.loads(output))
        seconds = sorted(run["seconds"] for run in runs)
        cpu_seconds = sorted(run["cpu_seconds"] for run in runs)
        last = runs[-1]
        print(f"validate: wall best {seconds[0]:.2f} s, median {seconds[len(seconds) // 2]:.2f} s; "
              f"CPU best {cpu_seconds[0]:.2f} s over {len(runs)} runs; "
              f"peak RSS {max(run['peak_mib'] for run in runs):.0f} MiB; "
              f"{last['errors']} errors, {last['warnings']} warnings")
        if last["errors"]:
            print("the synthetic organisation should be valid: this is a bug", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
