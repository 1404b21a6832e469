"""Benchmark `doorlock compile` on a synthetic organisation.

Default: 10,000 people with 2 keys each (20,000 keys) and 1,000 locks, compiled at three
grant densities. Fewer groups means more locks per group, so the number of key x lock grants
grows while people, keys and locks stay the same. Each run is a separate process, so its peak
memory (maximum resident set size) is its own.

Usage: .venv/bin/python bench/compile.py [--people N] [--locks N] [--groups 100,45,21]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NOW = 1796414400  # 2026-12-04T20:00:00Z, fixed so that runs compare


def measure(access: Path, out: Path) -> dict:
    """Load, compile, sign and write one build; return timings and sizes."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from compiler.bundle_build import compile_repository, write_build
    from compiler.loader import load_repository
    from compiler.signing import build_signers_document

    gc.disable()  # as `doorlock compile` does
    root, signer = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signers = build_signers_document(root, [(signer.public_key(), "bench")], 1, NOW - 86400, NOW + 365 * 86400)

    # Wall time and CPU time per phase: on a shared machine the CPU time is the steadier figure.
    marks = [(time.perf_counter(), time.process_time())]
    repository = load_repository(access)
    marks.append((time.perf_counter(), time.process_time()))
    build = compile_repository(repository, signer, signers, NOW)
    marks.append((time.perf_counter(), time.process_time()))
    write_build(build, out)
    marks.append((time.perf_counter(), time.process_time()))
    wall = [round(later[0] - earlier[0], 2) for earlier, later in zip(marks, marks[1:])]
    cpu = [round(later[1] - earlier[1], 2) for earlier, later in zip(marks, marks[1:])]

    sizes = [len(entry.envelope) for entry in build.bundles.values()]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "people": len(repository.people),
        "keys": sum(len(person.keys) for person in repository.people.values()),
        "locks": len(build.bundles),
        "grants": sum(entry.keys for entry in build.bundles.values()),
        "load_seconds": wall[0],
        "compile_seconds": wall[1],
        "write_seconds": wall[2],
        "total_seconds": round(sum(wall), 2),
        "load_cpu_seconds": cpu[0],
        "compile_cpu_seconds": cpu[1],
        "write_cpu_seconds": cpu[2],
        "peak_rss_mib": round(usage.ru_maxrss / 1024),
        "total_bundle_mib": round(sum(sizes) / 2**20, 1),
        "largest_bundle_kib": round(max(sizes) / 1024),
    }


def run_child(arguments: argparse.Namespace) -> None:
    print(json.dumps(measure(Path(arguments.child), Path(arguments.child).with_name("build"))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--keys-per-person", type=int, default=2)
    parser.add_argument("--locks", type=int, default=1_000)
    parser.add_argument("--groups", default="100,45,21", help="comma-separated group counts, one run each")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        run_child(arguments)
        return

    from compiler.synthetic import generate_organisation

    rows = []
    for groups in (int(value) for value in arguments.groups.split(",")):
        with tempfile.TemporaryDirectory(prefix="doorlock-bench-") as scratch:
            access = Path(scratch) / "access"
            generate_organisation(access, people=arguments.people, keys_per_person=arguments.keys_per_person,
                                  groups=groups, locks=arguments.locks, seed=1)
            output = subprocess.run([sys.executable, __file__, "--child", str(access)],
                                    check=True, capture_output=True, text=True, env=dict(os.environ))
            row = json.loads(output.stdout.strip().splitlines()[-1])
            row["groups"] = groups
            rows.append(row)
            print(json.dumps(row), flush=True)

    base = rows[0]["grants"]
    print()
    print("Seconds as wall / CPU.")
    print()
    print("| groups | key x lock grants | ratio | load YAML | compile + sign | write | total wall "
          "| peak RSS MiB | all bundles MiB | largest bundle KiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['groups']} | {row['grants']:,} | {row['grants'] / base:.1f}x "
              f"| {row['load_seconds']} / {row['load_cpu_seconds']} "
              f"| {row['compile_seconds']} / {row['compile_cpu_seconds']} "
              f"| {row['write_seconds']} / {row['write_cpu_seconds']} | {row['total_seconds']} "
              f"| {row['peak_rss_mib']} | {row['total_bundle_mib']} | {row['largest_bundle_kib']} |")


if __name__ == "__main__":
    main()
