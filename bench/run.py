"""Benchmark analytics_vitally against segment-analytics-python, rudder-sdk-python and posthog.

    python bench/run.py            # 20,000 calls per run, 200,000/1,000,000 sustained, 3 rounds: 12-18 min
    python bench/run.py --quick    # 2,000 calls, 20,000 sustained, 1 round: checks the rig works

One receiver (bench/receiver.py) runs in its own process on 127.0.0.1 for the
whole benchmark. Every measurement runs in a fresh subprocess (bench/measure.py)
so that peak RSS is one client's own; the clients alternate within each round.
What counts as delivered is what the receiver counted. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from clients import CLIENTS, LABELS
from rig import (
    BENCH_DIR,
    CeilingResult,
    ReceiverControl,
    batch_request,
    environment,
    library_fingerprint,
    machine_busy,
    our_batch_body,
    post_loop,
    snapshot_library,
    start_receiver,
)

OURS = "ours"
SEGMENT = "segment"
OURS_SPOOL = "ours+spool"
"""Ours with spool=<a fresh temporary directory per measurement, removed after it>: a column beside ours."""
SHORT = {"ours": "ours", "segment": "segment", "rudder": "rudder", "posthog": "posthog", OURS_SPOOL: "ours + spool"}
RTT = 0.05
"""Seconds the receiver waits before answering each batch in the round-trip scenarios."""
CEILING_SECONDS = 2.0
QUIET_LOAD = 0.25
"""Before each measurement, wait until other processes use at most this many CPUs..."""
QUIET_WAIT = 20.0
"""...or until this many seconds passed."""
SUSTAINED = 200_000
"""Calls back to back in the sustained scenario (every client, defaults)."""
MILLION = 1_000_000
"""Calls back to back in the longest sustained run (ours only)."""
FSYNC_CALLS = 2_000
"""At most this many calls in the spool_fsync=True run (each call waits for the disk)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    delay: float
    settings: Callable[[str, int], Dict[str, Any]]
    """The client settings for (client, calls)."""
    count: str = "calls"
    """Which call count the scenario uses: "calls", "sustained", "million" or "fsync" (see Results.counts)."""
    only: Tuple[str, ...] = ()
    """The clients it runs for (empty: every client, and ours + spool if ``spool``)."""
    spool: bool = False
    """Also run ours with a spool (OURS_SPOOL), the ``spool`` directory added to the settings."""
    once: bool = False
    """Run in the first round only."""

    def runs_for(self, client: str) -> bool:
        if self.only:
            return client in self.only
        return client != OURS_SPOOL or self.spool


def _defaults(client: str, calls: int) -> Dict[str, Any]:
    return {}


def _no_drops(client: str, calls: int) -> Dict[str, Any]:
    # The peers default to max_queue_size=10,000 (ours to 50,000) and drop (Segment, Rudder, PostHog with
    # only a log line) once it is full; throughput is only meaningful if every call's message is kept.
    return {"max_queue_size": max(calls, 50_000)}


def _no_drops_four_threads(client: str, calls: int) -> Dict[str, Any]:
    # All four call their delivery-thread count "thread".
    return {**_no_drops(client, calls), "thread": 4}


def _fsync(client: str, calls: int) -> Dict[str, Any]:
    # Power-cut durability: every call waits for the disk. A figure to document, not a target.
    return {"spool_fsync": True}


SCENARIOS = (
    Scenario("call", "defaults, loopback", 0.0, _defaults, spool=True),
    Scenario("loopback", "loopback, queue raised", 0.0, _no_drops, spool=True),
    Scenario("rtt", f"{RTT * 1000:.0f} ms/request, default threads", RTT, _no_drops),
    Scenario("rtt4", f"{RTT * 1000:.0f} ms/request, thread=4", RTT, _no_drops_four_threads),
    # A producer that never pauses (a backfill, a batch job) with every client's defaults, far past its queue.
    Scenario("sustained", "sustained, defaults, loopback", 0.0, _defaults, count="sustained"),
    Scenario("million", "sustained, defaults, loopback", 0.0, _defaults, count="million", only=("ours",)),
    # Last, so that its disk writes do not disturb the other measurements of the round.
    Scenario("fsync", "defaults, spool_fsync=True", 0.0, _fsync, count="fsync", only=(OURS_SPOOL,), once=True),
)


def columns(clients: Sequence[str]) -> List[str]:
    """The clients, with ours + spool right after ours when ours is one of them."""
    found: List[str] = []
    for client in clients:
        found.append(client)
        if client == OURS:
            found.append(OURS_SPOOL)
    return found


@dataclass
class Results:
    calls: int
    reps: int
    counts: Dict[str, int] = field(default_factory=dict)
    """Calls per run for each Scenario.count ("calls", "sustained", "million", "fsync"); 0 skips those scenarios."""
    runs: Dict[str, Dict[str, List[Dict[str, Any]]]] = field(default_factory=dict)
    """scenario -> client (or OURS_SPOOL) -> one result per round."""
    ceilings: List[CeilingResult] = field(default_factory=list)
    pipelined: List[CeilingResult] = field(default_factory=list)
    replay: Dict[str, CeilingResult] = field(default_factory=dict)
    """client -> the ceiling when replaying that client's own largest request."""
    failures: List[str] = field(default_factory=list)
    library: str = ""
    """Fingerprint of the analytics_vitally source measured (a copy taken when the benchmark started)."""

    def add(self, scenario: str, client: str, result: Dict[str, Any]) -> None:
        self.runs.setdefault(scenario, {}).setdefault(client, []).append(result)

    def values(self, scenario: str, client: str, key: str) -> List[float]:
        runs = self.runs.get(scenario, {}).get(client, [])
        return [float(run[key]) for run in runs if run.get(key) is not None]

    def median(self, scenario: str, client: str, key: str) -> Optional[float]:
        values = self.values(scenario, client, key)
        return statistics.median(values) if values else None

    def ceiling(self, pipelined: bool = False) -> Optional[float]:
        """The rig ceiling in msg/s (1 connection, or 8 requests pipelined), median over the rounds."""
        loops = self.pipelined if pipelined else self.ceilings
        return statistics.median(loop.messages_per_second for loop in loops) if loops else None


def run_measurement(
    port: int, client: str, calls: int, scenario: Scenario, library: Path, extra: Sequence[str] = ()
) -> Dict[str, Any]:
    """One measurement in a fresh process; for OURS_SPOOL, ours with a fresh spool directory, removed after it.
    ``extra``: more arguments for bench/measure.py (``--otel``)."""
    settings = scenario.settings(client, calls)
    if client != OURS_SPOOL:
        return _measure(port, client, calls, scenario, settings, library, extra)
    spool = tempfile.mkdtemp(prefix="bench-spool-")
    try:
        return _measure(port, OURS, calls, scenario, {**settings, "spool": spool}, library)
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def _measure(
    port: int,
    client: str,
    calls: int,
    scenario: Scenario,
    settings: Dict[str, Any],
    library: Path,
    extra: Sequence[str] = (),
) -> Dict[str, Any]:
    command = [
        sys.executable,
        str(BENCH_DIR / "measure.py"),
        f"--client={client}",
        f"--port={port}",
        f"--calls={calls}",
        f"--delay={scenario.delay}",
    ]
    command += [f"--set={name}={json.dumps(value)}" for name, value in settings.items()]
    command += list(extra)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment(library))
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: Dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"{client}/{scenario.name} printed no result (exit {done.returncode}):\n{done.stderr[-2000:]}")


def rig_ceiling(control: ReceiverControl, results: Results) -> None:
    request = batch_request(control.port, our_batch_body(100))
    results.ceilings.append(post_loop(control, request, CEILING_SECONDS))
    results.pipelined.append(post_loop(control, request, CEILING_SECONDS, depth=8))


def wait_for_quiet(log: Callable[[str], None]) -> float:
    """Wait (at most QUIET_WAIT seconds) until other processes leave the CPUs alone; the load seen last."""
    deadline = time.monotonic() + QUIET_WAIT
    while True:
        busy = machine_busy(0.3)
        if busy <= QUIET_LOAD or time.monotonic() > deadline:
            if busy > QUIET_LOAD:
                log(f"  (other processes keep {busy:.2f} CPUs busy; measuring anyway)")
            return busy
        time.sleep(0.5)


def benchmark(counts: Dict[str, int], reps: int, clients: Sequence[str], log: Callable[[str], None]) -> Results:
    results = Results(counts["calls"], reps, dict(counts))
    snapshot = Path(tempfile.mkdtemp(prefix="bench-library-"))
    results.library = library_fingerprint(snapshot_library(snapshot))
    receiver, port = start_receiver()
    control = ReceiverControl(port)
    largest: Dict[str, bytes] = {}
    try:
        for rep in range(reps):
            log(f"round {rep + 1}/{reps}: rig ceiling")
            rig_ceiling(control, results)
            every = columns(clients)
            order = every[rep % len(every) :] + every[: rep % len(every)]
            for scenario in SCENARIOS:
                calls = counts.get(scenario.count, 0)
                if not calls or (scenario.once and rep):
                    continue
                for client in order:
                    if not scenario.runs_for(client):
                        continue
                    wait_for_quiet(log)
                    started = time.monotonic()
                    try:
                        result = run_measurement(port, client, calls, scenario, snapshot)
                    except (RuntimeError, subprocess.TimeoutExpired) as error:
                        results.failures.append(f"round {rep + 1} {scenario.name} {client}: {error}")
                        log(f"  {scenario.name:<9} {client:<10} FAILED: {error}")
                        continue
                    results.add(scenario.name, client, result)
                    if scenario.name == "loopback" and client in CLIENTS:
                        largest[client] = control.largest_request()
                    log(
                        f"  {scenario.name:<9} {client:<10} {result['call_us']:7.2f} µs/call "
                        f"{result['messages_per_second']:9,.0f} msg/s  {result['delivered']:>7}/{calls} delivered  "
                        f"{_number(result.get('process_cpu_us_per_delivered'), 1):>6} µs CPU/delivered  "
                        f"peak {result['peak_rss_kib'] / 1024:5.1f} MiB  ({time.monotonic() - started:.1f}s)"
                    )
        log("replaying each client's own largest request (receiver ceiling per payload shape)")
        for client, request in largest.items():
            if request:
                results.replay[client] = post_loop(control, request, CEILING_SECONDS / 2)
    finally:
        receiver.terminate()
        receiver.wait(10)
        shutil.rmtree(snapshot, ignore_errors=True)
    return results


# The report. ---------------------------------------------------------------------------------


def _number(value: Optional[float], digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(ours: Optional[float], peer: Optional[float]) -> str:
    if ours is None or peer is None or peer == 0:
        return "-"
    return f"{ours / peer:.2f}x"


def _head() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(BENCH_DIR.parent), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(BENCH_DIR.parent), "status", "--porcelain", "--", "analytics_vitally"],
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


@dataclass(frozen=True)
class Target:
    """One of issue 10's targets (ours against Segment) or issue 11's (ours + spool against ours); same run."""

    label: str
    wanted: str
    measured: Optional[str]
    """The measured ratio (or fraction), None when a run is missing."""
    met: Optional[bool]


def _ratio_target(
    results: Results,
    label: str,
    scenario: str,
    key: str,
    wanted: str,
    met: Callable[[float], bool],
    peer: str = "",
    client: str = OURS,
    against: str = SEGMENT,
) -> Target:
    """``client`` (ours) in ``scenario`` against ``against`` (Segment) in ``peer`` (default: the same), medians."""
    ours = results.median(scenario, client, key)
    other = results.median(peer or scenario, against, key)
    if ours is None or not other:
        return Target(label, wanted, None, None)
    ratio = ours / other
    return Target(label, wanted, f"{ratio:.2f}x", met(ratio))


def _delivery_target(results: Results, label: str, scenario: str) -> Target:
    """At least 99.9% delivered and nothing dropped by ours, in every round of ``scenario``."""
    wanted = ">=99.9%, 0 dropped"
    runs = results.runs.get(scenario, {}).get(OURS, [])
    if not runs:
        return Target(label, wanted, None, None)
    worst = min(float(run["delivered_fraction"]) for run in runs)
    dropped = max(int(run["dropped_by_client"]) for run in runs)
    settled = all(run.get("settled", True) for run in runs)
    measured = f"{worst:.2%}, {dropped} dropped" + ("" if len(runs) == 1 else " (worst round)")
    return Target(label, wanted, measured, worst >= 0.999 and dropped == 0 and settled)


def targets(results: Results) -> List[Target]:
    """Issue 10's targets: the sustained scenario's, and that nothing else regressed."""
    sustained = results.counts.get("sustained", 0)
    million = results.counts.get("million", 0)
    found = [
        _ratio_target(results, "call cost, defaults", "call", "call_us", "<=0.25x", lambda r: r <= 0.25),
        _ratio_target(
            results, "loopback throughput, queue raised", "loopback", "messages_per_second", ">=3x", lambda r: r >= 3
        ),
        _ratio_target(results, "peak RSS, defaults", "call", "peak_rss_kib", "<=0.8x", lambda r: r <= 0.8),
        _ratio_target(
            results,
            f"{RTT * 1000:.0f} ms rtt, thread=4 vs Segment default",
            "rtt4",
            "messages_per_second",
            ">=3.8x",
            lambda r: r >= 3.8,
            peer="rtt",
        ),
    ]
    if sustained:
        found += [
            _delivery_target(results, f"{sustained:,} calls: delivered (ours)", "sustained"),
            _ratio_target(
                results,
                f"{sustained:,} calls: delivered/s",
                "sustained",
                "messages_per_second",
                ">=4x",
                lambda r: r >= 4,
            ),
            _ratio_target(
                results,
                f"{sustained:,} calls: CPU per delivered msg",
                "sustained",
                "process_cpu_us_per_delivered",
                "<=0.2x",
                lambda r: r <= 0.2,
            ),
        ]
    if million:
        found.append(_delivery_target(results, f"{million:,} calls: delivered (ours)", "million"))
    return found


def spool_targets(results: Results) -> List[Target]:
    """Issue 11's targets: ours with a spool against ours without, same run, same receiver."""
    return [
        _ratio_target(
            results,
            "call cost, defaults",
            "call",
            "call_us",
            "<=1.5x",
            lambda r: r <= 1.5,
            client=OURS_SPOOL,
            against=OURS,
        ),
        _ratio_target(
            results,
            "loopback throughput, queue raised",
            "loopback",
            "messages_per_second",
            ">=0.7x",
            lambda r: r >= 0.7,
            client=OURS_SPOOL,
            against=OURS,
        ),
    ]


LABEL_WIDTH = 48
COLUMN_WIDTH = 13


def report(results: Results, clients: Sequence[str]) -> str:
    """The whole report: the summary, then one table after another, then the runs."""
    lines = _summary(results, clients)
    lines += _clients_table(results, columns(clients))
    lines += _ratios_table(results, clients)
    lines += _targets_table(results, clients)
    lines += _settings_notes(results, clients)
    lines += _runs_list(results, clients)
    return "\n".join(lines)


def _label(column: str) -> str:
    if column == OURS_SPOOL:
        return f"{LABELS[OURS]} with spool=<a fresh directory>"
    return LABELS[column]


def _file_system(path: str) -> str:
    """The type of the file system holding ``path`` (from /proc/mounts), or "?"."""
    path = os.path.realpath(path)
    found, best = "?", ""
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount = fields[1]
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    found, best = fields[2], mount
    except OSError:
        pass
    return found


def _summary(results: Results, clients: Sequence[str]) -> List[str]:
    """What was measured, on what, with what load around it; the rig ceiling."""
    calls = results.calls
    sustained = results.counts.get("sustained", 0)
    million = results.counts.get("million", 0)
    versions = {
        client: results.runs.get("call", {}).get(client, [{}])[0].get("version", "?")
        for client in clients
        if results.runs.get("call", {}).get(client)
    }
    sizes = f"{calls:,} track() calls per run"
    if sustained:
        sizes += f", {sustained:,} in the sustained scenario"
    if million:
        sizes += f" ({million:,} for ours)"
    lines = [
        f"{sizes}; medians of {results.reps} round(s); clients alternate within a round; each run in a fresh process.",
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs. "
        + ", ".join(f"{LABELS[client]} {version}" for client, version in versions.items()),
    ]
    every_run = [run for by_client in results.runs.values() for runs in by_client.values() for run in runs]
    libraries = sorted({run["library"] for run in every_run if run["client"] == OURS})
    lines.append(
        f"analytics_vitally source measured: {results.library} (sha256 prefix of a copy taken at the start; "
        f"HEAD {_head()})"
    )
    if libraries and libraries != [results.library]:
        lines.append(f"WARNING: the runs imported analytics_vitally {', '.join(libraries)}, not the snapshot")
    loads = [run["other_load"] for run in every_run]
    if loads:
        lines.append(
            f"Other processes' CPU during the measurements: median {statistics.median(loads):.2f} cores, "
            f"max {max(loads):.2f} (of {os.cpu_count()}); each measurement's is in the Runs list below."
        )
    lines.append(
        f"Rig ceiling (bench/receiver.py absorbing pre-encoded 100-message batches of ours over 1 keep-alive "
        f"connection): {_number(results.ceiling())} msg/s; 8 requests pipelined: "
        f"{_number(results.ceiling(pipelined=True))} msg/s."
    )
    lines.append("")
    return lines


class _ClientRows:
    """Rows of the table with one column per client, each cell the median over the rounds."""

    def __init__(self, results: Results, clients: Sequence[str]) -> None:
        self.results = results
        self.clients = clients
        self.lines: List[str] = []

    def heading(self, text: str) -> None:
        self.lines.append(text)

    def _cells(self, label: str, scenario: str, key: str, cell: Callable[[Optional[float]], str]) -> None:
        cells = [cell(self.results.median(scenario, client, key)) for client in self.clients]
        self.lines.append(f"{label:{LABEL_WIDTH}}" + "".join(f"{text:>{COLUMN_WIDTH}}" for text in cells))

    def row(self, label: str, scenario: str, key: str, digits: int = 0, scale: float = 1.0) -> None:
        self._cells(label, scenario, key, lambda value: _number(None if value is None else value * scale, digits))

    def fraction_row(self, label: str, scenario: str, key: str, of: float = 1.0, digits: int = 2) -> None:
        self._cells(label, scenario, key, lambda value: "-" if value is None else f"{value / of:.{digits}%}")

    def dropped_row(self, label: str, scenario: str) -> None:
        self._cells(
            label, scenario, "dropped_by_client", lambda value: "-" if value is None or value < 0 else f"{value:,.0f}"
        )


def _clients_table(results: Results, clients: Sequence[str]) -> List[str]:
    """Scenarios 1 to 6, one column per client (and ours + spool)."""
    table = _ClientRows(results, clients)
    table.heading("Columns: " + ", ".join(f"{SHORT[c]} = {_label(c)}" for c in clients) + ".")
    table.heading("")
    head = f"{'':{LABEL_WIDTH}}" + "".join(f"{SHORT[c]:>{COLUMN_WIDTH}}" for c in clients)
    table.heading(head)
    table.heading("-" * len(head))
    _call_cost_rows(table, results.calls, results.counts.get("fsync", 0) if results.runs.get("fsync") else 0)
    _loopback_rows(table, results.ceiling())
    _round_trip_rows(table)
    _memory_rows(table, results.calls)
    sustained = results.counts.get("sustained", 0)
    million = results.counts.get("million", 0)
    if sustained:
        table.heading(f"5. sustained: {sustained:,} calls back to back, defaults, loopback")
        _sustained_rows(table, "sustained", sustained)
    if million and results.runs.get("million"):
        table.heading(f"6. sustained: {million:,} calls back to back, defaults, loopback (ours only)")
        _sustained_rows(table, "million", million)
    table.heading("")
    return table.lines


def _call_cost_rows(table: _ClientRows, calls: int, fsync: int) -> None:
    table.heading("1. app-thread cost per call, delivery running")
    table.row("   defaults: µs per call (wall)", "call", "call_us", 2)
    table.row("   defaults: µs per call (app-thread CPU)", "call", "call_cpu_us", 2)
    table.row(f"   defaults: delivered of {calls:,}", "call", "delivered")
    table.row("   queue raised: µs per call (wall)", "loopback", "call_us", 2)
    if fsync:
        table.row(f"   spool_fsync=True, {fsync:,} calls: µs (wall)", "fsync", "call_us", 1)
        table.row("   spool_fsync=True: µs (app-thread CPU)", "fsync", "call_cpu_us", 1)


def _loopback_rows(table: _ClientRows, ceiling: Optional[float]) -> None:
    table.heading("2. loopback throughput, first call to last counted")
    table.row("   msg/s (queue raised)", "loopback", "messages_per_second")
    if ceiling:
        table.fraction_row("   fraction of rig ceiling", "loopback", "messages_per_second", ceiling, 1)
    table.row("   client CPU per message (µs, all threads)", "loopback", "process_cpu_us_per_message", 1)


def _round_trip_rows(table: _ClientRows) -> None:
    table.heading(f"3. throughput, {RTT * 1000:.0f} ms per request")
    table.row("   msg/s, default threads (1)", "rtt", "messages_per_second")
    table.row("   msg/s, thread=4", "rtt4", "messages_per_second")


def _memory_rows(table: _ClientRows, calls: int) -> None:
    table.heading(f"4. memory over the {calls:,}-call run (defaults)")
    table.row("   peak RSS, MiB (VmHWM)", "call", "peak_rss_kib", 1, 1 / 1024)
    table.row("   RSS after import + construction, MiB", "call", "rss_built_kib", 1, 1 / 1024)
    table.row("   peak RSS, queue raised, MiB", "loopback", "peak_rss_kib", 1, 1 / 1024)


def _sustained_rows(table: _ClientRows, scenario: str, count: int) -> None:
    table.row(f"   delivered of {count:,}", scenario, "delivered")
    table.fraction_row("   delivered, % of calls", scenario, "delivered_fraction")
    table.dropped_row("   dropped, client's own count", scenario)
    table.row("   delivered msg/s, first call to last counted", scenario, "messages_per_second")
    table.row("   process CPU per delivered message (µs)", scenario, "process_cpu_us_per_delivered", 1)
    table.row("   process CPU per call (µs)", scenario, "process_cpu_us_per_message", 1)
    table.row("   µs per call (wall)", scenario, "call_us", 2)
    table.row("   peak RSS, MiB (VmHWM)", scenario, "peak_rss_kib", 1, 1 / 1024)


def _ratios_table(results: Results, clients: Sequence[str]) -> List[str]:
    """Ours divided by each peer, medians."""
    peers = [client for client in clients if client != OURS]
    if OURS not in clients or not peers:
        return []
    sustained = results.counts.get("sustained", 0)
    lines = [
        f"{'ours ÷ peer':{LABEL_WIDTH}}" + "".join(f"{SHORT[c]:>{COLUMN_WIDTH}}" for c in peers),
        "-" * (LABEL_WIDTH + COLUMN_WIDTH * len(peers)),
    ]

    def ratio_row(label: str, scenario: str, key: str, peer_scenario: str = "") -> None:
        ours = results.median(scenario, OURS, key)
        cells = [_ratio(ours, results.median(peer_scenario or scenario, peer, key)) for peer in peers]
        lines.append(f"{label:{LABEL_WIDTH}}" + "".join(f"{cell:>{COLUMN_WIDTH}}" for cell in cells))

    ratio_row("call cost, defaults (lower is better)", "call", "call_us")
    ratio_row("call cost, queue raised", "loopback", "call_us")
    ratio_row("loopback throughput", "loopback", "messages_per_second")
    ratio_row(f"{RTT * 1000:.0f} ms, default threads vs peer default", "rtt", "messages_per_second")
    ratio_row(f"{RTT * 1000:.0f} ms, thread=4 vs peer default", "rtt4", "messages_per_second", "rtt")
    ratio_row(f"{RTT * 1000:.0f} ms, thread=4 vs peer thread=4", "rtt4", "messages_per_second")
    ratio_row("peak RSS, defaults (lower is better)", "call", "peak_rss_kib")
    if sustained:
        ratio_row(f"{sustained:,} calls: delivered", "sustained", "delivered")
        ratio_row(f"{sustained:,} calls: delivered msg/s", "sustained", "messages_per_second")
        ratio_row(f"{sustained:,} calls: CPU/delivered (lower better)", "sustained", "process_cpu_us_per_delivered")
    lines.append("")
    return lines


def _targets_table(results: Results, clients: Sequence[str]) -> List[str]:
    """Issue 10's targets (ours against Segment), then issue 11's (ours + spool against ours), each met or not."""
    lines: List[str] = []
    if OURS in clients and SEGMENT in clients:
        note = ""
        sustained = results.counts.get("sustained", 0)
        if sustained and sustained != SUSTAINED:
            note = f"(The issue's sustained targets are set at {SUSTAINED:,} and {MILLION:,} calls.)"
        lines += _target_lines("Targets (issue 10): ours vs Segment", targets(results), note)
    if OURS in clients:
        lines += _target_lines("Targets (issue 11): ours + spool vs ours", spool_targets(results))
    return lines


def _target_lines(title: str, found: Sequence[Target], note: str = "") -> List[str]:
    head = f"{title:{LABEL_WIDTH}}{'target':>20}{'measured':>30}{'met':>6}"
    lines = [head, "-" * len(head)]
    for target in found:
        verdict = "-" if target.met is None else ("yes" if target.met else "NO")
        lines.append(
            f"{target.label:{LABEL_WIDTH}}{target.wanted:>20}{target.measured or 'not measured':>30}{verdict:>6}"
        )
    measured = [target for target in found if target.met is not None]
    met = sum(1 for target in measured if target.met)
    lines.append(f"{met} of {len(measured)} measured targets met; ratios are medians over the rounds.")
    if note:
        lines.append(note)
    lines.append("")
    return lines


def _settings_notes(results: Results, clients: Sequence[str]) -> List[str]:
    """The settings each scenario used."""
    lines = [
        "Settings: scenario 1 and memory use every client's defaults (max_queue_size=10,000 for the peers and",
        "  50,000 for ours, so calls beyond a full queue are dropped: see 'delivered'). Throughput scenarios set "
        f"max_queue_size={max(results.calls, 50_000):,} on every client;",
        "  thread=4 is the `thread` argument of all four (Segment/Rudder: consumer threads; PostHog: consumers).",
        "  Rudder gzips by default (kept); PostHog's flush_interval is 5 s by default (kept); nobody else gzips.",
    ]
    if results.counts.get("sustained", 0):
        lines += [
            "  Sustained: every client's defaults, calls back to back far past the queue; process CPU (all threads,",
            "  getrusage via process_time) from the first call to the settled count, divided by messages counted.",
        ]
    if OURS in clients:
        parent = tempfile.gettempdir()
        lines.append(
            f"  ours + spool: ours with spool=<a fresh directory in {parent} ({_file_system(parent)}), removed after "
            "each run>, in scenarios 1 and 2;"
        )
        fsync = results.counts.get("fsync", 0)
        if fsync:
            lines.append(
                f"  spool_fsync=True: defaults plus a spool with spool_fsync=True, {fsync:,} calls, first round only "
                "(not a target)."
            )
    lines.append("")
    return lines


def _runs_list(results: Results, clients: Sequence[str]) -> List[str]:
    """Every run of every round, the rig ceilings, the paths posted, and what went wrong."""
    lines = [
        "Runs, every round: msg/s | µs/call | delivered | requests | receiver CPU | other processes' CPU (cores) "
        "| CPU µs/delivered"
    ]
    for scenario in SCENARIOS:
        for client in columns(clients):
            runs = results.runs.get(scenario.name, {}).get(client, [])
            if not runs:
                continue
            cells = "  ".join(
                f"{run['messages_per_second']:,.0f}|{run['call_us']:.1f}|{run['delivered']}|{run['requests']}|"
                f"{run['receiver_cpu']:.0%}|{run['other_load']:.2f}|"
                f"{_number(run.get('process_cpu_us_per_delivered'), 1)}"
                for run in runs
            )
            lines.append(f"  {scenario.name:<10}{client:<11}{cells}")
    ceilings = "  ".join(f"{c.messages_per_second:,.0f} (receiver CPU {c.receiver_cpu:.0%})" for c in results.ceilings)
    lines.append(f"  ceiling   1 conn     {ceilings}")
    lines.append("  ceiling   8 deep     " + "  ".join(f"{c.messages_per_second:,.0f}" for c in results.pipelined))
    if results.replay:
        lines.append(
            "Receiver ceiling replaying each client's own largest request (1 connection): "
            + ", ".join(
                f"{LABELS[client]} {replay.messages_per_second:,.0f} msg/s" for client, replay in results.replay.items()
            )
        )
    paths = {
        client: sorted({path for run in results.runs.get("loopback", {}).get(client, []) for path in run["paths"]})
        for client in clients
    }
    lines.append("Paths posted: " + ", ".join(f"{LABELS[client]} {' '.join(p)}" for client, p in paths.items()))
    unsettled = [
        f"{scenario} {client} round {index + 1}"
        for scenario, by_client in results.runs.items()
        for client, runs in by_client.items()
        for index, run in enumerate(runs)
        if not run.get("settled", True)
    ]
    if unsettled:
        lines.append(
            "WARNING: the count was still moving when the measurement stopped waiting: " + ", ".join(unsettled)
        )
    if results.failures:
        lines.append("FAILURES:")
        lines.extend(f"  {failure}" for failure in results.failures)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2,000 calls, 20,000 sustained, no 1,000,000-call run and 1 round: a smoke test of the rig",
    )
    parser.add_argument("--calls", type=int, help="track() calls per run (default 20,000)")
    parser.add_argument(
        "--sustained",
        type=int,
        metavar="N",
        help=f"calls in the sustained scenario, every client, defaults (default {SUSTAINED:,}; --quick 20,000; "
        "0 skips it)",
    )
    parser.add_argument(
        "--million",
        action=argparse.BooleanOptionalAction,
        help=f"run the {MILLION:,}-call sustained run for ours (default: yes; with --quick: no)",
    )
    parser.add_argument("--reps", type=int, help="rounds; each client runs each scenario once a round (default 3)")
    parser.add_argument("--clients", default=",".join(CLIENTS), help=f"comma-separated subset of {','.join(CLIENTS)}")
    parser.add_argument("--json", metavar="PATH", help="also write every raw result to PATH")
    args = parser.parse_args()
    calls = args.calls or (2_000 if args.quick else 20_000)
    sustained = args.sustained if args.sustained is not None else (20_000 if args.quick else SUSTAINED)
    million = args.million if args.million is not None else not args.quick
    if calls < 1 or sustained < 0:
        parser.error("--calls must be positive and --sustained at least 0")
    counts = {"calls": calls, "sustained": sustained, "million": MILLION if million else 0}
    counts["fsync"] = min(calls, FSYNC_CALLS)
    reps = args.reps or (1 if args.quick else 3)
    clients = [name for name in args.clients.split(",") if name]
    unknown = set(clients) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown client(s): {', '.join(sorted(unknown))}")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.monotonic()
    results = benchmark(counts, reps, clients, log)
    log(f"done in {time.monotonic() - started:.0f}s\n")
    print(report(results, clients))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(
                {
                    "calls": results.calls,
                    "counts": results.counts,
                    "reps": results.reps,
                    "runs": results.runs,
                    "ceilings": [asdict(c) for c in results.ceilings],
                    "pipelined": [asdict(c) for c in results.pipelined],
                    "replay": {client: asdict(c) for client, c in results.replay.items()},
                    "failures": results.failures,
                    "library": results.library,
                },
                file,
                indent=1,
            )


if __name__ == "__main__":
    main()
