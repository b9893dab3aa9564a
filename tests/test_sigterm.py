"""SIGTERM with the library in the process ends it no later, and no differently, than without it.

Each case runs a program in a fresh interpreter, sends it SIGTERM and measures what happened:
how soon it ended and how (its exit status), whether its own handler or signal-waiting thread got
every SIGTERM, what a subprocess it started inherited, and what arrived at the local receiver.

- The main thread in a long C call (``hashlib.pbkdf2_hmac``): a Python handler cannot run there,
  yet the process ends by SIGTERM within ``exit_timeout`` + 1 s, its queue delivered.
- A server's handler set before the library: it gets each SIGTERM at once (the second too), what
  is queued before and during its graceful stop leaves during the stop, and a subprocess started
  then does not inherit a blocked SIGTERM.
- A program that blocks SIGTERM on its main thread and ``sigwait``-s in a thread of its own gets
  it there, although one of the library's threads (started before the block) was given it.
- gevent and eventlet: the drain runs as a greenlet, so everything queued is delivered.
- A forked child, with or without Python's fork hooks (uWSGI forks from C): its SIGTERM is its own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional

import pytest

from analytics_vitally.testing import Receiver

from .conftest import TOKEN

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SIGTERM, signal masks and /proc")

SIGTERM_BIT = 1 << (signal.SIGTERM - 1)
PATCH = {
    "gevent": "from gevent import monkey; monkey.patch_all()",
    "eventlet": "import eventlet; eventlet.monkey_patch()",
}


class Program:
    """A Python program in a subprocess, its output read line by line as it comes."""

    def __init__(self, code: str) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("VITALLY_")}
        self.process = subprocess.Popen(
            [sys.executable, "-W", "ignore", "-c", textwrap.dedent(code)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.pid = self.process.pid
        self._lines: List[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self._lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def output(self) -> str:
        with self._changed:
            return "\n".join(self._lines)

    def line(self, pattern: str, timeout: float = 10.0) -> Optional[re.Match[str]]:
        """The first output line matching ``pattern``, waited for up to ``timeout`` s; None if none came."""
        found: List[re.Match[str]] = []

        def seen() -> bool:
            found[:] = [match for match in map(re.compile(pattern).search, self._lines) if match][:1]
            return bool(found)

        with self._changed:
            self._changed.wait_for(seen, timeout)
        return found[0] if found else None

    def expect(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        match = self.line(pattern, timeout)
        if match is None:
            pytest.fail(f"no line matching {pattern!r} within {timeout}s; the program's output:\n{self.output()}")
        return match

    def wait(self, timeout: float) -> Optional[int]:
        """The exit status, or None if the program still ran ``timeout`` s later."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self._reader.join(5)


@pytest.fixture
def run() -> Iterator[Callable[[str], Program]]:
    programs: List[Program] = []

    def start(code: str) -> Program:
        programs.append(Program(code))
        return programs[-1]

    yield start
    for program in programs:
        program.close()


def blocked_signals(pid: int, tid: Optional[int] = None) -> int:
    """The signal mask of thread ``tid`` of process ``pid`` (its main thread by default), from /proc."""
    with open(f"/proc/{pid}/task/{tid or pid}/status") as status:
        fields: Dict[str, str] = dict(line.split(":", 1) for line in status if ":" in line)
    return int(fields["SigBlk"].strip(), 16)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle(pid: int) -> bool:
    """Whether the process used no CPU over the last fifth of a second."""
    before = cpu_seconds(pid)
    time.sleep(0.2)
    return cpu_seconds(pid) == before


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout}s")
        time.sleep(0.01)


def assert_arrived(receiver: Receiver, count: int, output: str) -> None:
    if not receiver.wait_for(count, timeout=5):
        pytest.fail(f"{len(receiver.messages)} of {count} messages arrived; the program's output:\n{output}")
    ids = receiver.message_ids()
    assert (len(ids), len(set(ids))) == (count, count), output


def test_a_sigterm_ends_the_process_while_its_main_thread_is_in_a_long_c_call(
    run: Callable[[str], Program], receiver: Receiver
) -> None:
    # Measured before: the Python handler waited for the C call to return (15 to 19 s for a hash).
    program = run(
        f"""
        import hashlib
        from analytics_vitally import Client
        client = Client({TOKEN!r}, host={receiver.url!r}, upload_interval=60, exit_timeout=1)
        for i in range(10):
            client.track("u", "queued", {{"i": i}})
        print("computing", flush=True)
        hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 2**31 - 1)  # half an hour in one C call
        print("computed", flush=True)
        """
    )
    program.expect("computing")
    started = cpu_seconds(program.pid)
    wait_until(lambda: cpu_seconds(program.pid) > started + 0.3, 10, "the C call running")
    sent = time.monotonic()
    program.process.send_signal(signal.SIGTERM)
    status = program.wait(2.0)  # exit_timeout + 1 s
    took = time.monotonic() - sent
    assert status == -signal.SIGTERM, f"exit status {status} {took:.1f}s after SIGTERM:\n{program.output()}"
    assert_arrived(receiver, 10, program.output())


SERVER = """
    import signal, sys, time
    caught = []

    def graceful_stop(signum, frame):  # a server's: it only starts a graceful stop
        caught.append(signum)
        print(f"SIGTERM {{len(caught)}}", flush=True)

    signal.signal(signal.SIGTERM, graceful_stop)  # set before the app (and the library) is imported
    from analytics_vitally import Client
    client = Client({token!r}, host={url!r}, upload_interval=60)
"""


def test_a_servers_handler_gets_the_second_sigterm_at_once(run: Callable[[str], Program], receiver: Receiver) -> None:
    # Measured before: the second waited 14 s (SIGTERM blocked on the main thread, no other thread to take it).
    program = run(
        SERVER.format(token=TOKEN, url=receiver.url)
        + """
    print("ready", flush=True)
    while len(caught) < 2:  # a graceful stop that hangs: the second SIGTERM forces the exit
        time.sleep(0.01)
    print("forced", flush=True)
    """
    )
    program.expect("ready")
    program.process.send_signal(signal.SIGTERM)
    program.expect("SIGTERM 1", timeout=5)
    program.process.send_signal(signal.SIGTERM)
    program.expect("SIGTERM 2", timeout=1)
    assert program.wait(5) == 0, program.output()


def test_what_is_queued_before_and_during_a_servers_graceful_stop_leaves_during_it(
    run: Callable[[str], Program], receiver: Receiver
) -> None:
    # As uvicorn ends: the default action put back and the SIGTERM raised again, so no atexit drain
    # runs after the stop. Before: nothing left during the stop (upload_interval=60).
    program = run(
        SERVER.format(token=TOKEN, url=receiver.url)
        + """
    for i in range(5):
        client.track("u", "before the stop", {"i": i})
    print("ready", flush=True)
    while not caught:
        time.sleep(0.01)
    for i in range(5):
        client.track("u", "during the stop", {"i": i})  # requests still being answered
    deadline = time.monotonic() + 5
    while client.stats().sent < 10 and time.monotonic() < deadline:  # the stop waits for its connections
        time.sleep(0.01)
    print("sent during the stop:", client.stats().sent, flush=True)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.raise_signal(signal.SIGTERM)
    """
    )
    program.expect("ready")
    program.process.send_signal(signal.SIGTERM)
    assert program.expect(r"sent during the stop: (\d+)").group(1) == "10", program.output()
    assert program.wait(5) == -signal.SIGTERM, program.output()
    assert_arrived(receiver, 10, program.output())


def test_a_subprocess_started_during_a_graceful_stop_can_be_terminated(
    run: Callable[[str], Program], receiver: Receiver
) -> None:
    # Before: it inherited the SIGTERM the library had blocked on the main thread, and ignored terminate().
    program = run(
        SERVER.format(token=TOKEN, url=receiver.url)
        + """
    import subprocess
    client.track("u", "e")
    print("ready", flush=True)
    while not caught:
        time.sleep(0.01)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    print("child", child.pid, flush=True)
    print("child ended", child.wait(), flush=True)
    """
    )
    program.expect("ready")
    program.process.send_signal(signal.SIGTERM)
    child = int(program.expect(r"child (\d+)").group(1))
    assert not blocked_signals(child) & SIGTERM_BIT, "the subprocess inherited a blocked SIGTERM"
    os.kill(child, signal.SIGTERM)  # what terminate() sends
    assert program.expect(r"child ended (-?\d+)", timeout=5).group(1) == str(-signal.SIGTERM)
    assert program.wait(5) == 0, program.output()
    assert_arrived(receiver, 1, program.output())


@pytest.mark.parametrize("main", ["sleeps", "joins"])
def test_a_program_that_waits_for_sigterm_in_a_thread_of_its_own_gets_it(
    run: Callable[[str], Program], receiver: Receiver, main: str
) -> None:
    # The library's threads start before the program blocks SIGTERM, so the kernel may give it to one of
    # them. Before: the handler re-raised it at the main thread, where it stayed blocked (swallowed).
    program = run(
        f"""
        import signal, threading, time
        from analytics_vitally import Client
        client = Client({TOKEN!r}, host={receiver.url!r}, upload_interval=60)
        client.track("u", "e")
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTERM}})

        def stop_gracefully():
            print("waiting in", threading.get_native_id(), flush=True)
            signal.sigwait({{signal.SIGTERM}})
            print("graceful stop", flush=True)

        waiter = threading.Thread(target=stop_gracefully)
        waiter.start()
        if {main!r} == "joins":
            waiter.join()
        else:
            while waiter.is_alive():
                time.sleep(0.05)
        """
    )
    waiter = int(program.expect(r"waiting in (\d+)").group(1))
    wait_until(lambda: not blocked_signals(program.pid, waiter) & SIGTERM_BIT, 5, "the thread waiting in sigwait")
    program.process.send_signal(signal.SIGTERM)
    program.expect("graceful stop", timeout=1)
    assert program.wait(5) == 0, program.output()
    assert_arrived(receiver, 1, program.output())


@pytest.mark.parametrize("library", ["gevent", "eventlet"])
def test_green_threads_drain_at_sigterm(run: Callable[[str], Program], receiver: Receiver, library: str) -> None:
    # Before: the handler ran in the hub, join() raised BlockingSwitchOutError: 200 of 250, nothing logged.
    pytest.importorskip(library)
    program = run(
        f"""
        {PATCH[library]}
        import time
        from analytics_vitally import Client
        client = Client({TOKEN!r}, host={receiver.url!r}, upload_interval=60)
        for i in range(250):
            client.track("u", "e", {{"i": i}})
        print("queued", flush=True)
        time.sleep(60)
        """
    )
    program.expect("queued")
    assert receiver.wait_for(200, timeout=10)  # the two full batches left on their size
    wait_until(lambda: idle(program.pid), 10, "the program idle")  # eventlet's hub asleep until its next timer
    program.process.send_signal(signal.SIGTERM)
    assert program.wait(10) == -signal.SIGTERM, program.output()
    assert_arrived(receiver, 250, program.output())


@pytest.mark.parametrize("fork", ["os.fork()", "ctypes.CDLL(None).fork()"], ids=["os-fork", "fork-without-hooks"])
def test_a_sigterm_to_a_forked_child_is_the_childs(
    run: Callable[[str], Program], receiver: Receiver, fork: str
) -> None:
    # Without the fork hooks (uWSGI forks from C), the child shares what the parent set up until its
    # first message call: its SIGTERM must neither end the parent nor go undrained.
    program = run(
        f"""
        import ctypes, os, signal, time
        from analytics_vitally import Client
        client = Client({TOKEN!r}, host={receiver.url!r}, upload_interval=60, exit_timeout=1)
        pid = {fork}
        if pid == 0:
            for i in range(3):
                client.track("u", "in the child", {{"i": i}})
            print("queued in the child", flush=True)
            time.sleep(60)
            os._exit(0)
        print("child", pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print("child ended by signal", os.WTERMSIG(status) if os.WIFSIGNALED(status) else None, flush=True)
        time.sleep(1.5)  # longer than the parent would take to end if it took the child's SIGTERM for its own
        print("parent still running", flush=True)
        """
    )
    child = int(program.expect(r"child (\d+)").group(1))
    program.expect("queued in the child")
    os.kill(child, signal.SIGTERM)
    assert program.expect(r"child ended by signal (\w+)").group(1) == str(int(signal.SIGTERM))
    assert program.wait(10) == 0, program.output()
    assert "parent still running" in program.output()
    assert_arrived(receiver, 3, program.output())
