"""The request deadline through its own interface: arm, attach a socket, disarm, fire_all."""

from __future__ import annotations

import socket
import time
from typing import Callable, Iterator, List, Tuple

import pytest

from analytics_vitally.transport.deadline import Deadline, watchdog

Pair = Tuple[socket.socket, socket.socket]
"""A connected socket (the request's end) and its peer, which never answers unless told to."""
BOUND = 5.0
"""What a wait may take at most in these tests; the deadlines are a small part of it."""


def socketpair() -> Pair:
    ours, peer = socket.socketpair()
    return ours, peer


def tcp() -> Pair:
    """A real connection on 127.0.0.1 to a server that accepts it and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = socket.create_connection(server.getsockname(), timeout=BOUND)
        peer, _ = server.accept()
    return ours, peer


@pytest.fixture(params=[socketpair, tcp], ids=["socketpair", "tcp"])
def pairs(request: pytest.FixtureRequest) -> Iterator[Callable[[], Pair]]:
    """Makes connected pairs of the parameter's kind; all are closed after the test."""
    made: List[Pair] = []

    def make() -> Pair:
        pair = request.param()
        made.append(pair)
        return pair

    yield make
    for pair in made:
        for sock in pair:
            sock.close()


def blocked_recv(sock: socket.socket) -> Tuple[bytes, float]:
    """What a blocked ``recv`` returns, and after how many seconds (it gives up after twice ``BOUND``)."""
    sock.settimeout(2 * BOUND)
    started = time.monotonic()
    data = sock.recv(1)
    return data, time.monotonic() - started


def still_open(ours: socket.socket, peer: socket.socket) -> bool:
    """A byte sent by the peer still arrives on ``ours``."""
    peer.sendall(b"x")
    ours.settimeout(BOUND)
    return ours.recv(1) == b"x"


def poll(condition: Callable[[], bool]) -> bool:
    """Whether ``condition`` became true within ``BOUND`` seconds."""
    give_up = time.monotonic() + BOUND
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.01)
    return True


def test_a_deadline_that_passes_shuts_its_socket_down(pairs: Callable[[], Pair]) -> None:
    ours, _ = pairs()
    deadline = watchdog.get().arm(0.2, object())
    assert isinstance(deadline, Deadline) and deadline.seconds == 0.2
    deadline.attach(ours)
    data, took = blocked_recv(ours)
    assert data == b""  # shut down: the blocked read returned as at the end of the connection
    assert took < BOUND
    assert deadline.fired
    deadline.disarm()


def test_a_duplicate_handle_shuts_the_connection_down(pairs: Callable[[], Pair]) -> None:
    # The lanes attach a dup() of the socket's descriptor: it stays valid when TLS wraps the socket.
    ours, _ = pairs()
    handle = ours.dup()
    try:
        deadline = watchdog.get().arm(0.2, object())
        deadline.attach(handle)
        data, took = blocked_recv(ours)
        assert data == b"" and took < BOUND
        deadline.disarm()
    finally:
        handle.close()


def test_a_socket_attached_after_its_deadline_passed_is_shut_at_once(pairs: Callable[[], Pair]) -> None:
    ours, _ = pairs()
    deadline = watchdog.get().arm(0.05, object())
    assert poll(lambda: deadline.fired)
    deadline.attach(ours)
    data, took = blocked_recv(ours)
    assert data == b"" and took < BOUND
    deadline.disarm()


def test_a_disarmed_deadline_never_shuts_its_socket(pairs: Callable[[], Pair]) -> None:
    ours, peer = pairs()
    deadline = watchdog.get().arm(0.1, object())
    deadline.attach(ours)
    deadline.disarm()
    later = watchdog.get().arm(0.2, object())  # armed after, due after: the watchdog reaches it last
    assert poll(lambda: later.fired)
    later.disarm()
    assert not deadline.fired
    assert still_open(ours, peer)


def test_a_disarmed_deadline_ignores_a_socket_attached_late(pairs: Callable[[], Pair]) -> None:
    ours, peer = pairs()
    deadline = watchdog.get().arm(0.05, object())
    assert poll(lambda: deadline.fired)
    deadline.disarm()
    deadline.attach(ours)
    assert still_open(ours, peer)


def test_fire_all_ends_only_that_owners_requests(pairs: Callable[[], Pair]) -> None:
    one, other = object(), object()
    (first, _), (second, _), (third, third_peer) = pairs(), pairs(), pairs()
    armed = [watchdog.get().arm(60, owner) for owner in (one, one, other)]
    for deadline, sock in zip(armed, (first, second, third)):
        deadline.attach(sock)
    watchdog.get().fire_all(one)
    for sock in (first, second):
        data, took = blocked_recv(sock)
        assert data == b"" and took < BOUND
    assert [deadline.fired for deadline in armed] == [True, True, False]
    assert still_open(third, third_peer)
    for deadline in armed:
        deadline.disarm()
