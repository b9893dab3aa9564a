"""The Segment face's call against the main module's, interleaved: what ``import analytics_vitally.segment``
costs a caller.

    python bench/dropin.py                     # 8 rounds of 20,000 calls each way (about 2 minutes)
    python bench/dropin.py --reps 4 --calls 200000

Each round measures ``analytics_vitally.track`` then ``analytics_vitally.segment.track`` (the other way
round in odd rounds), each in a fresh process against the same receiver (``bench/measure.py`` with the
clients ``ours-module`` and ``ours-segment-face``: the same call, ``track("user-N", "Benchmark Event",
{...})``, the same client settings: bench/run.py's "call" scenario, defaults on loopback). The table
gives both medians, and the median of the per-round ratios face/module with their spread. Asserts
nothing: it prints numbers. The issue's target is a ratio of at most 1.3.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

from rig import ReceiverControl, snapshot_library, start_receiver
from run import SCENARIOS, run_measurement, wait_for_quiet

SIDES = {"module": "ours-module", "face": "ours-segment-face"}
MEASURES = {
    "call_us": "µs per call (wall)",
    "call_cpu_us": "µs app-thread CPU per call",
    "delivered_fraction": "delivered / calls",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    scenario = next(s for s in SCENARIOS if s.name == "call")
    found: Dict[str, Dict[str, List[float]]] = {key: {side: [] for side in SIDES} for key in MEASURES}
    with tempfile.TemporaryDirectory(prefix="bench-dropin-") as work:
        library = Path(work) / "lib"
        library.mkdir()
        snapshot_library(library)
        receiver, port = start_receiver()
        control = ReceiverControl(port)
        try:
            for rep in range(args.reps):
                order = list(SIDES) if rep % 2 == 0 else list(reversed(SIDES))
                for side in order:
                    wait_for_quiet(lambda text: print(text, file=sys.stderr))
                    result = run_measurement(port, SIDES[side], args.calls, scenario, library)
                    for key in MEASURES:
                        found[key][side].append(float(result[key]))
                    print(f"round {rep + 1} {side}: {result['call_us']:.2f} µs/call", file=sys.stderr)
        finally:
            del control
            receiver.terminate()
            receiver.wait(10)
    print(
        f"{args.reps} rounds of {args.calls:,} calls, analytics_vitally.track (module) and "
        "analytics_vitally.segment.track (face) alternating"
    )
    for key, unit in MEASURES.items():
        module, face = found[key]["module"], found[key]["face"]
        ratios = sorted(y / x for x, y in zip(module, face) if x)
        print(
            f"{unit:28} module median {statistics.median(module):9,.3f}  face median {statistics.median(face):9,.3f}"
            f"  face/module per round: median {statistics.median(ratios):.3f}, from {ratios[0]:.3f} to {ratios[-1]:.3f}"
        )


if __name__ == "__main__":
    main()
