"""Lock client benchmark: bundle load+verify, decision latency, daemon RSS and time to first decision.

Run from the repository root::

    .venv/bin/python bench/lock.py            # all sizes: 1,000 / 20,000 / 100,000 keys
    .venv/bin/python bench/lock.py --quick    # 1,000 and 20,000 keys, fewer repetitions

The daemon part starts ``lockclient run`` as a process against a local mTLS bundle server and a
Type 2 card emulator on nfcpy's udp driver (127.0.0.1, port 41090), with the bundle already in
the state directory as after a reboot, and measures from process start to the first decision.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lockclient import bundle as bundle_mod  # noqa: E402
from lockclient import dsse  # noqa: E402
from lockclient.daemon import DoorClock  # noqa: E402
from lockclient.door import DoorController  # noqa: E402
from lockclient.hwid import format_hwid  # noqa: E402
from tests.bundle_factory import FOREVER, Trust, synthetic_keys  # noqa: E402

EMULATOR_PORT = 41090
CARD_UID = "04a23b4c5d6e7f"


def measure_verify(trust: Trust, count: int, repeats: int) -> dict:
    keys = synthetic_keys(count)
    signers_data = trust.signers()
    bundle_data = trust.bundle(keys=keys, issued_at=int(time.time()) - 60, expires_at=int(time.time()) + 7 * 86_400)
    root = dsse.load_public_key(trust.root.public_b64)
    root_keys = {dsse.key_id(root): root}
    now = time.time()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        signers = bundle_mod.verify_signers(signers_data, root_keys, None, now)
        verified = bundle_mod.verify_bundle(bundle_data, signers, "front-door", None, now)
        timings.append(time.perf_counter() - started)
    return {"keys": count, "bytes": len(bundle_data), "verify_s": statistics.median(timings),
            "bundle": verified, "hwids": list(keys)}


class TimedOutput:
    """An output that records when it was energised."""

    def __init__(self):
        self.energised_at = 0.0

    def set(self, active: bool) -> None:
        if active:
            self.energised_at = time.perf_counter()

    def close(self) -> None:
        pass


def measure_decisions(bundle, hwids: list[str], samples: int) -> dict:
    """Time UID bytes -> canonical id -> decision -> door controller -> strike output."""
    rng = random.Random(1)
    raw_ids = []
    for index in range(samples):
        if index % 2:
            raw_ids.append(bytes.fromhex(rng.choice(hwids).replace(":", "")))
        else:
            raw_ids.append(bytes([0x04]) + rng.randbytes(6))  # almost surely unknown
    now = time.time()
    monotonic = [0.0]
    output = TimedOutput()
    door = DoorController(output, DoorClock(monotonic=lambda: monotonic[0], time=lambda: now))
    door.set_bundle(bundle)
    latencies = []
    for raw in raw_ids:
        started = time.perf_counter()
        hwid = format_hwid(raw)
        decision = bundle_mod.decide(bundle, hwid, now)
        door.tap(hwid, decision)
        if decision.allowed:
            latencies.append(output.energised_at - started)
            monotonic[0] += 3600.0  # let the unlock run out, so the next grant energises again
            door.poll()
        else:
            latencies.append(time.perf_counter() - started)
    door.shutdown()
    latencies.sort()
    return {"mean_us": statistics.mean(latencies) * 1e6,
            "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
            "p999_us": latencies[int(len(latencies) * 0.999)] * 1e6,
            "max_us": latencies[-1] * 1e6}


def measure_daemon(count: int, workdir: Path, runs: int) -> dict:
    from tests.lock_environment import BUNDLE_PATH, SIGNERS_PATH, LockEnvironment
    from compiler.nfc_emulator import LOOPBACK  # noqa: F401  (the emulator runs as a process below)
    from tests.tls_fixtures import static

    environment = LockEnvironment.create(workdir)
    trust = environment.trust
    keys = synthetic_keys(count)
    keys[format_hwid(bytes.fromhex(CARD_UID))] = FOREVER
    environment.server.routes[SIGNERS_PATH] = static(trust.signers())
    environment.server.routes[BUNDLE_PATH] = static(trust.bundle(keys=keys, expires_at=int(time.time()) + 7 * 86_400))
    config_path = environment.config.path
    config_path.write_text(config_path.read_text().replace(
        'path = "udp:127.0.0.1:41099"', f'path = "udp:127.0.0.1:{EMULATOR_PORT}"',
    ).replace("poll_interval = 1", "poll_interval = 300"))

    # First run: fetch and store the bundle, as the lock would have done before a reboot.
    first = _run_until(config_path, "accepted bundle version")
    first.terminate()
    first.wait(timeout=20)

    decisions, rss = [], []
    try:
        for _ in range(runs):
            seconds, kib = _first_decision(config_path)
            decisions.append(seconds)
            rss.append(kib)
    finally:
        environment.close()
    return {"keys": count, "first_decision_s": statistics.median(decisions), "first_decision_min_s": min(decisions),
            "rss_mib": max(rss) / 1024}


def _first_decision(config_path: Path) -> tuple[float, int]:
    """Start the daemon with a card already on the reader; return seconds to the decision and RSS."""
    emulator = subprocess.Popen(
        [sys.executable, "-m", "compiler.nfc_emulator", "--port", str(EMULATOR_PORT), "--type2", CARD_UID],
        stdout=subprocess.PIPE, text=True,
    )
    emulator.stdout.readline()
    try:
        started = time.monotonic()
        process = _run_until(config_path, ": open (granted)")
        to_decision = time.monotonic() - started
        time.sleep(1.0)
        rss_kib = _rss_kib(process.pid)
        process.terminate()
        process.wait(timeout=20)
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    return to_decision, rss_kib


def _run_until(config_path: Path, marker: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "lockclient.cli", "run", "--config", str(config_path)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )
    found = threading.Event()

    def watch() -> None:
        for line in process.stderr:
            if marker in line:
                found.set()
        found.set()

    threading.Thread(target=watch, daemon=True).start()
    if not found.wait(120) or process.poll() is not None:
        process.kill()
        raise RuntimeError(f"lockclient did not log {marker!r}")
    return process


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 and 20,000 keys only, fewer repetitions")
    args = parser.parse_args()
    sizes = (1_000, 20_000) if args.quick else (1_000, 20_000, 100_000)
    repeats = 3 if args.quick else 5
    trust = Trust()

    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| keys | envelope bytes | load+verify (median) | decision mean | p99 | p99.9 | max |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for count in sizes:
        verified = measure_verify(trust, count, repeats)
        decisions = measure_decisions(verified["bundle"], verified["hwids"], 20_000)
        print(f"| {count:,} | {verified['bytes']:,} | {verified['verify_s'] * 1000:.0f} ms "
              f"| {decisions['mean_us']:.1f} µs | {decisions['p99_us']:.1f} µs | {decisions['p999_us']:.0f} µs "
              f"| {decisions['max_us']:.0f} µs |")

    print()
    print("| keys | start to first decision (median) | (best) | daemon RSS |")
    print("|---:|---:|---:|---:|")
    for count in sizes:
        with tempfile.TemporaryDirectory() as directory:
            daemon = measure_daemon(count, Path(directory), runs=repeats)
        print(f"| {count:,} | {daemon['first_decision_s']:.2f} s | {daemon['first_decision_min_s']:.2f} s "
              f"| {daemon['rss_mib']:.1f} MiB |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
