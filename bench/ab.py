"""This client against an earlier version of itself, interleaved: is a change within noise?

    python bench/ab.py --a ab9ff69                 # that revision against the working tree
    python bench/ab.py --a v1 --b v2 --reps 10 --scenarios call,loopback
    python bench/ab.py --a 05608b2 --spool         # both sides writing to a spool (ours + spool)

On a shared VM the speed of the whole machine drifts by tens of percent within minutes, so two
separate ``bench/run.py`` runs cannot tell a 5 % change from noise. Here each round measures A then
B (B then A in odd rounds), each in a fresh process against the same receiver (``bench/measure.py``,
the scenarios of ``bench/run.py``), and the table gives, per scenario, both medians and the median
of the per-round ratios B/A, with their spread. Asserts nothing: it prints numbers.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List

from rig import ReceiverControl, snapshot_library, start_receiver
from run import OURS, OURS_SPOOL, SCENARIOS, run_measurement, wait_for_quiet

ROOT = Path(__file__).resolve().parent.parent


def source(revision: str, into: Path) -> Path:
    """A directory holding ``analytics_vitally`` as of ``revision`` (``worktree``: the files as they are now)."""
    into.mkdir()
    if revision == "worktree":
        snapshot_library(into)
        return into
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision, "analytics_vitally"],
        check=True,
        capture_output=True,
    ).stdout
    archive_path = into / "source.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(into)  # our own repository's files
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="a git revision")
    parser.add_argument("--b", default="worktree", help="a git revision, or worktree (default)")
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--scenarios", default="call,loopback", help="names from bench/run.py's SCENARIOS")
    parser.add_argument("--b-otel", action="store_true", help="B with OpenTelemetry metrics instrumented")
    parser.add_argument("--spool", action="store_true", help="both sides with a spool (a fresh directory per run)")
    args = parser.parse_args()
    chosen = [scenario for scenario in SCENARIOS if scenario.name in args.scenarios.split(",")]
    keys = {"call": "call_us", "loopback": "messages_per_second"}
    extra = {
        "call": ("call_cpu_us", "µs app-thread CPU"),
        "loopback": ("process_cpu_us_per_delivered", "µs CPU/message"),
    }
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as work:
        libraries = {"A": source(args.a, Path(work) / "a"), "B": source(args.b, Path(work) / "b")}
        receiver, port = start_receiver()
        control = ReceiverControl(port)
        found: Dict[str, Dict[str, List[float]]] = {s.name: {"A": [], "B": []} for s in chosen}
        found.update({f"{s.name}+": {"A": [], "B": []} for s in chosen if s.name in extra})
        try:
            for rep in range(args.reps):
                order = ["A", "B"] if rep % 2 == 0 else ["B", "A"]
                for scenario in chosen:
                    for side in order:
                        wait_for_quiet(lambda text: print(text, file=sys.stderr))
                        flags = ["--otel"] if side == "B" and args.b_otel else []
                        client = OURS_SPOOL if args.spool else OURS
                        result = run_measurement(port, client, args.calls, scenario, libraries[side], flags)
                        value = float(result[keys.get(scenario.name, "call_us")])
                        found[scenario.name][side].append(value)
                        if scenario.name in extra:
                            found[f"{scenario.name}+"][side].append(float(result[extra[scenario.name][0]]))
                        print(f"round {rep + 1} {scenario.name} {side}: {value:,.2f}", file=sys.stderr)
        finally:
            del control
            receiver.terminate()
            receiver.wait(10)
    instrumented = (" with metrics instrumented" if args.b_otel else "") + (", both with a spool" if args.spool else "")
    print(f"A = {args.a}, B = {args.b}{instrumented}; {args.reps} rounds of {args.calls:,} calls, A and B alternating")
    rows = [(s.name, "msg/s" if s.name == "loopback" else "µs per call (wall)") for s in chosen]
    rows += [(f"{s.name}+", extra[s.name][1]) for s in chosen if s.name in extra]
    for name, unit in rows:
        a, b = found[name]["A"], found[name]["B"]
        ratios = sorted(y / x for x, y in zip(a, b))
        print(
            f"{name:9} {unit:20} A median {statistics.median(a):9,.2f}  "
            f"B median {statistics.median(b):9,.2f}  "
            f"B/A per round: median {statistics.median(ratios):.3f}, from {ratios[0]:.3f} to {ratios[-1]:.3f}"
        )


if __name__ == "__main__":
    main()
