"""Measure ``doorlock publish`` for many locks, and the publish-to-denial time of the demo story.

Usage: ``.venv/bin/python bench/publish.py [--locks N] [--bundle-bytes B] [--runs R] [--story]``

Publishing: writes builds shaped like ``doorlock compile`` output (opaque bundle bytes of the
given size, as the publisher treats them) in a temporary directory and times three cases:
the first publish (every file new), a publish where one lock's bundle changed (the others are
hard-linked from the live release), and a publish where every bundle changed. Each case runs
``--runs`` times on fresh directories and the best and median wall-clock times are printed.

``--story`` also runs the end-to-end story once with nginx (``compiler.demo``) and prints the
time from the end of the second publish to the lock's first denial of the revoked card; the
lock polls every second there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compiler.publish import publish  # noqa: E402
from tests.fake_builds import bundle_bytes, write_build  # noqa: E402


def _builds(directory: Path, locks: int, size: int) -> tuple[Path, Path, Path]:
    names = [f"lock-{index:05d}" for index in range(locks)]
    first = write_build(directory / "first", {name: (1, bundle_bytes(name, 1, size)) for name in names})
    one = {name: (1, bundle_bytes(name, 1, size)) for name in names}
    one[names[0]] = (2, bundle_bytes(names[0], 2, size))
    one_changed = write_build(directory / "one", one)
    all_changed = write_build(directory / "all", {name: (2, bundle_bytes(name, 2, size)) for name in names})
    return first, one_changed, all_changed


def _time_case(locks: int, size: int, case: str) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as temporary:
        directory = Path(temporary)
        first, one_changed, all_changed = _builds(directory, locks, size)
        www = directory / "www"
        if case == "first":
            started = time.perf_counter()
            publish(first, www)
            return time.perf_counter() - started
        publish(first, www)
        started = time.perf_counter()
        publish(one_changed if case == "one changed" else all_changed, www)
        return time.perf_counter() - started


def _story_denial_seconds() -> float:
    from compiler.demo import Deployment, run_story

    with tempfile.TemporaryDirectory(prefix="bench-story-") as temporary:
        with Deployment(Path(temporary), hosting="nginx") as deployment:
            figures = run_story(deployment, lambda line: None)
    return figures["publish_to_denial"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--locks", type=int, default=1000)
    parser.add_argument("--bundle-bytes", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--story", action="store_true", help="also run the end-to-end story once")
    args = parser.parse_args()

    print(f"publish, {args.locks} locks, {args.bundle_bytes} bytes per bundle, {args.runs} runs")
    for case in ("first", "one changed", "all changed"):
        seconds = [_time_case(args.locks, args.bundle_bytes, case) for _ in range(args.runs)]
        print(f"  {case:12}  best {min(seconds):.2f} s  median {statistics.median(seconds):.2f} s")
    if args.story:
        print(f"story: publish to first denial {_story_denial_seconds():.1f} s (poll interval 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
