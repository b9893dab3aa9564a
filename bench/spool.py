"""What the on-disk spool costs, and why it writes through a shared memory map. Prints tables.

    python bench/spool.py              # about a minute
    python bench/spool.py --quick      # a smoke test of the script
    python bench/spool.py --dir /path  # measure on another file system (default: a temporary directory)

Before each measurement it waits (up to 20 s) for other processes to leave the CPUs alone,
and says at the end how busy they were.

1. µs per append on the caller's thread for each way of storing a record that was weighed:
   ``write()`` per record, ``sqlite3`` in WAL mode, a shared memory map (bare, over a zero-filled
   file or an fallocated one), and ``Spool.append`` itself; alone, and with a competing Python
   thread busy (the worst case for GIL hand-offs). "hand-offs" counts the appends during which the
   competing thread ran: each one is a GIL hand-off, paid by the caller.
2. What ``fsync=True`` (power-cut durability) costs per append, against the same alternatives.
3. Past the limit: ten times the messages that fit in ``max_bytes``, with nothing acknowledged.
4. ``track()`` with delivery running to a loopback receiver in its own process, alternating
   rounds: no spool, ``Spool`` wired the way the notes describe (the bench patches the client's
   queue and delivery), and a ``write()`` per call in its place. Wall time minus the app
   thread's CPU time is time it spent waiting, mostly for the GIL.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import struct
import sys
import tempfile
import threading
import time
import zlib
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from rig import LOOPBACK, ReceiverControl, machine_busy, start_receiver

from analytics_vitally import Client
from analytics_vitally.spool import Spool

RECORD = (
    b'{"type":"track","userId":"user-417","event":"Benchmark Event","properties":{"plan":"pro","index":417,'
    b'"amount":12.5},"messageId":"5b0e0b4e-3f0c-4c53-9d35-2f9a4d8a0a11","timestamp":"2024-01-01T00:00:00.000Z"}'
)
HEADER = struct.Struct("<2sBBII")
MAP_BYTES = 64 << 20

Append = Callable[[bytes], Any]
QUIET_LOAD = 0.3
QUIET_WAIT = 20.0
loads: List[float] = []


def wait_for_quiet() -> None:
    """Wait (at most QUIET_WAIT seconds) until other processes leave the CPUs alone; note the load seen."""
    deadline = time.monotonic() + QUIET_WAIT
    while True:
        busy = machine_busy(0.3)
        if busy <= QUIET_LOAD or time.monotonic() > deadline:
            loads.append(busy)
            return
        time.sleep(0.5)


class Competitor:
    """A thread running Python code without pause; ``ticks`` grows while it holds the GIL."""

    def __init__(self) -> None:
        self.ticks = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop:
            self.ticks += 1

    def __enter__(self) -> Competitor:
        self._thread.start()
        time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop = True
        self._thread.join()


def timed(append: Append, count: int, competitor: Optional[Competitor]) -> Tuple[float, float]:
    """(µs per append, hand-offs per 1000 appends)."""
    handoffs = 0
    if competitor is None:
        started = time.perf_counter()
        for _ in range(count):
            append(RECORD)
        return (time.perf_counter() - started) / count * 1e6, 0.0
    started = time.perf_counter()
    for _ in range(count):
        before = competitor.ticks
        append(RECORD)
        handoffs += competitor.ticks != before
    return (time.perf_counter() - started) / count * 1e6, handoffs / count * 1000


# The candidates. -------------------------------------------------------------------------


@contextmanager
def write_per_record(directory: str) -> Iterator[Append]:
    handle = os.open(os.path.join(directory, "write.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def append(data: bytes) -> None:
        os.write(handle, HEADER.pack(b"\xf5\xa9", 0x50, 0, len(data), zlib.crc32(data)) + data)

    try:
        yield append
    finally:
        os.close(handle)


@contextmanager
def sqlite_wal(directory: str, synchronous: str = "OFF") -> Iterator[Append]:
    connection = sqlite3.connect(os.path.join(directory, "spool.db"), isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={synchronous}")
    connection.execute("CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    execute = connection.execute

    def append(data: bytes) -> None:
        execute("INSERT INTO spool (data) VALUES (?)", (data,))

    try:
        yield append
    finally:
        connection.close()


@contextmanager
def bare_map(directory: str, prefill: bool) -> Iterator[Append]:
    import mmap

    handle = os.open(os.path.join(directory, f"map-{prefill}"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    if prefill:
        zeros = bytes(1 << 20)
        for offset in range(0, MAP_BYTES, len(zeros)):
            os.pwrite(handle, zeros, offset)
    else:
        os.posix_fallocate(handle, 0, MAP_BYTES)
    memory = mmap.mmap(handle, MAP_BYTES)
    position = [0]
    lock = threading.Lock()
    pack = HEADER.pack_into

    def append(data: bytes) -> None:
        with lock:
            start = position[0]
            end = start + HEADER.size + len(data)
            position[0] = end
            pack(memory, start, b"\xf5\xa9", 0x50, 0, len(data), zlib.crc32(data))
            memory[start + HEADER.size : end] = data

    try:
        yield append
    finally:
        memory.close()
        os.close(handle)


class Acker:
    """Acknowledges tokens in batches of 100 on its own thread, as the worker would after delivery
    (which is also when the spool makes its next file ahead of need)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.tokens: List[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def add(self, token: Optional[int]) -> None:
        if token is not None:
            self.tokens.append(token)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            while len(self.tokens) >= 100:
                batch, self.tokens[:100] = self.tokens[:100], []
                self.spool.acknowledge(batch)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def spool_append(directory: str, acked: bool, fsync: bool = False) -> Iterator[Append]:
    spool = Spool(os.path.join(directory, "spool"), max_bytes=1 << 30, fsync=fsync)
    if not acked:
        yield spool.append
    else:
        acker = Acker(spool)
        add, append = acker.add, spool.append

        def append_and_ack_later(data: bytes) -> None:
            add(append(data))

        try:
            yield append_and_ack_later
        finally:
            acker.close()
    spool.close()


@contextmanager
def write_and_sync(directory: str) -> Iterator[Append]:
    with write_per_record(directory) as write:
        handle = os.open(os.path.join(directory, "write.log"), os.O_WRONLY)

        def append(data: bytes) -> None:
            write(data)
            os.fdatasync(handle)

        try:
            yield append
        finally:
            os.close(handle)


CANDIDATES: Dict[str, Callable[[str], Any]] = {
    "write() per record (O_APPEND)": write_per_record,
    "sqlite3 WAL, synchronous=OFF, a commit per record": sqlite_wal,
    "mmap, bare, zero-filled file": lambda directory: bare_map(directory, prefill=True),
    "mmap, bare, fallocated file (page faults on the caller)": lambda directory: bare_map(directory, prefill=False),
    "Spool.append, a thread acknowledges (spare files made ahead)": lambda directory: spool_append(directory, True),
    "Spool.append, nothing acknowledged (every file made on the caller)": lambda directory: spool_append(
        directory, False
    ),
}
DURABLE: Dict[str, Callable[[str], Any]] = {
    "Spool(fsync=True): fdatasync after each record": lambda directory: spool_append(directory, False, fsync=True),
    "write() + fdatasync per record": write_and_sync,
    "sqlite3 WAL, synchronous=FULL": lambda directory: sqlite_wal(directory, "FULL"),
}


@contextmanager
def fresh(root: str) -> Iterator[str]:
    directory = tempfile.mkdtemp(dir=root)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def candidates_table(root: str, count: int, rounds: int) -> None:
    print(f"\n## µs per append on the caller's thread ({count:,} records of {len(RECORD)} bytes, median of {rounds})\n")
    print("| candidate | alone | with a busy Python thread | hand-offs per 1000 appends (busy) |")
    print("| --- | ---: | ---: | ---: |")
    results: Dict[str, List[Tuple[float, float, float]]] = {name: [] for name in CANDIDATES}
    for _ in range(rounds):
        for name, make in CANDIDATES.items():  # alternating, so drift hits every candidate alike
            wait_for_quiet()
            with fresh(root) as directory, make(directory) as append:
                alone, _ = timed(append, count, None)
            with fresh(root) as directory, make(directory) as append, Competitor() as competitor:
                busy, handoffs = timed(append, count, competitor)
            results[name].append((alone, busy, handoffs))
    for name, rows in results.items():
        alone, busy, handoffs = (statistics.median(column) for column in zip(*rows))
        print(f"| {name} | {alone:.2f} | {busy:.2f} | {handoffs:.0f} |")


def durable_table(root: str, count: int) -> None:
    print(f"\n## Power-cut durability: µs per append ({count} records, alone)\n")
    print("| candidate | µs per append | appends/s |")
    print("| --- | ---: | ---: |")
    for name, make in DURABLE.items():
        wait_for_quiet()
        with fresh(root) as directory, make(directory) as append:
            cost, _ = timed(append, count, None)
        print(f"| {name} | {cost:,.0f} | {1e6 / cost:,.0f} |")


def limit_table(root: str, max_bytes: int) -> None:
    fits = max_bytes // (len(RECORD) + HEADER.size)
    calls = fits * 10
    print(
        f"\n## Past the limit: {calls:,} appends into max_bytes={max_bytes:,} (about {fits:,} fit), none acknowledged"
    )
    with fresh(root) as directory:
        path = os.path.join(directory, "spool")
        spool = Spool(path, max_bytes=max_bytes)
        tokens: List[int] = []
        refused = 0
        refused_time = accepted_time = 0.0
        largest = 0
        for index in range(calls):
            started = time.perf_counter()
            token = spool.append(RECORD)
            spent = time.perf_counter() - started
            if token is None:
                refused += 1
                refused_time += spent
            else:
                tokens.append(token)
                accepted_time += spent
            if index % 1000 == 0:
                largest = max(largest, _apparent(path))
        largest = max(largest, _apparent(path))
        spool.acknowledge(tokens)
        after_ack = _apparent(path)
        again = sum(spool.append(RECORD) is not None for _ in range(1000))
        spool.close()
    print(
        "| accepted | refused (None) | µs per accepted append | µs per refused append | largest on disk | "
        "on disk after acknowledging all | accepted of 1,000 more |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {len(tokens):,} | {refused:,} | {accepted_time / max(1, len(tokens)) * 1e6:.2f} | "
        f"{refused_time / max(1, refused) * 1e6:.2f} | {largest:,} | {after_ack:,} | {again:,} |"
    )


def _apparent(path: str) -> int:
    return sum(os.stat(os.path.join(path, name)).st_size for name in os.listdir(path))


# track() with delivery running. ----------------------------------------------------------


def spooled_client(client: Client, spool: Spool) -> None:
    """Wire ``spool`` into ``client`` the way the notes describe, by patching private attributes
    (bench only): the record is appended before the message is queued, acknowledged after delivery."""
    worker = client._worker
    delivery: Any = worker._delivery
    put, deliver = worker.put, delivery.deliver
    tokens: Dict[int, int] = {}

    def put_spooled(data: str) -> bool:
        token = spool.append(data.encode())
        if token is None:
            return False
        tokens[id(data)] = token  # the queued str object stays alive until delivered, so its id is unique
        if not put(data):
            spool.acknowledge([tokens.pop(id(data))])
            return False
        return True

    def deliver_and_acknowledge(items: List[str]) -> Any:
        outcome = deliver(items)
        spool.acknowledge([tokens.pop(id(item)) for item in items])
        return outcome

    delivery.deliver = deliver_and_acknowledge
    client._dispatch = put_spooled


def written_client(client: Client, directory: str) -> None:
    """A write() per call in the spool's place (bench only)."""
    handle = os.open(os.path.join(directory, "write.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    put = client._worker.put

    def put_written(data: str) -> bool:
        encoded = data.encode()
        os.write(handle, HEADER.pack(b"\xf5\xa9", 0x50, 0, len(encoded), zlib.crc32(encoded)) + encoded)
        return put(data)

    client._dispatch = put_written


def track_table(root: str, calls: int, rounds: int) -> None:
    process, port = start_receiver()
    control = ReceiverControl(port)
    url = f"http://{LOOPBACK}:{port}"
    modes = ("no spool", "Spool (mmap)", "write() per call")
    results: Dict[str, List[Tuple[float, float, float, int]]] = {mode: [] for mode in modes}
    try:
        for _ in range(rounds):
            for mode in modes:
                wait_for_quiet()
                with fresh(root) as directory:
                    client = Client("bench-key", host=url, max_queue_size=max(50_000, calls))
                    spool = None
                    if mode == "Spool (mmap)":
                        spool = Spool(os.path.join(directory, "spool"))
                        spooled_client(client, spool)
                    elif mode == "write() per call":
                        written_client(client, directory)
                    control.reset(target=calls)
                    track = client.track
                    started = time.monotonic()
                    thread_started = time.thread_time()
                    for i in range(calls):
                        track(f"user-{i % 1000}", "Benchmark Event", {"plan": "pro", "index": i, "amount": 12.5})
                    call_cpu = (time.thread_time() - thread_started) / calls * 1e6
                    call_cost = (time.monotonic() - started) / calls * 1e6
                    client.flush(300)
                    received = control.wait(timeout=300)
                    end = received["reached_at"] or received["last_at"] or time.monotonic()
                    throughput = received["messages"] / max(1e-9, end - started)
                    size = spool.disk_bytes if spool is not None else 0
                    client.shutdown(10)
                    if spool is not None:
                        spool.close()
                    results[mode].append((call_cost, call_cpu, throughput, size))
    finally:
        process.kill()
        process.wait()
    print(
        f"\n## track() with delivery running ({calls:,} calls, loopback receiver in its own process, "
        f"median of {rounds} alternating rounds)\n"
    )
    print(
        "| | µs per track() | ... of which the app thread's CPU | msg/s, first call to last delivered "
        "| spool on disk after flush |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    base_cost, _, base_rate, _ = (statistics.median(column) for column in zip(*results["no spool"]))
    for mode in modes:
        cost, cpu, rate, size = (statistics.median(column) for column in zip(*results[mode]))
        ratio = f" ({cost / base_cost:.2f}x, {rate / base_rate:.2f}x)" if mode != "no spool" else ""
        print(f"| {mode}{ratio} | {cost:.2f} | {cpu:.2f} | {rate:,.0f} | {size:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dir", default=None, help="where to make the files (default: a temporary directory)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(dir=args.dir)
    quick = args.quick
    try:
        print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, files in {root}")
        candidates_table(root, 2_000 if quick else 20_000, 1 if quick else 5)
        durable_table(root, 20 if quick else 200)
        limit_table(root, 1 << 20 if quick else 10_000_000)
        track_table(root, 2_000 if quick else 20_000, 1 if quick else 5)
        print(
            f"\nOther processes kept a median of {statistics.median(loads):.2f} CPUs busy before the measurements "
            f"(at most {max(loads):.2f}; each waited up to {QUIET_WAIT:.0f} s for {QUIET_LOAD} or less)."
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
