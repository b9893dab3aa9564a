"""The proxied lane: through a proxy, requests' adapter, whose urllib3 connections obey request deadlines.

urllib3 makes and reuses its connections deep inside ``HTTPAdapter.send``, where no argument of
ours reaches, so this is the one place a thread-local carries the deadline: ``ProxiedLane.post``
sets "the deadline for connections used on this thread" just around its ``adapter.send`` call
(``_covered_by``), and the watched connection classes below read it in ``_new_conn`` (a new
connection) and ``request`` (a kept-alive one) to attach their socket to it. Outside that call no
deadline is set, and a connection attaches to nothing.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from http.client import IncompleteRead
from typing import Any, Dict, Iterator, Optional, Tuple, Type

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .. import lifecycle
from .deadline import Deadline
from .lane import ANSWER_LIMIT, ClosedWhenDropped


class ProxiedLane(ClosedWhenDropped):
    """Through a proxy: requests' adapter, which knows a proxy's ways (CONNECT, its headers)."""

    def __init__(self, url: str, headers: Dict[str, str], environment: Dict[str, Any]) -> None:
        # Every batch is the same POST but for its body: prepared once, copied per request.
        self._template = requests.Request("POST", url, headers=headers).prepare()
        self._environment = environment
        self._adapter = _WatchedAdapter()

    def post(self, body: bytes, deadline: Deadline) -> urllib3.BaseHTTPResponse:
        """Send ``body`` through the adapter; the connection it uses (made or kept alive, to the
        proxy or through its tunnel) is attached to ``deadline``."""
        request = self._template.copy()
        request.prepare_body(body, None)
        with _covered_by(deadline):
            raw: urllib3.BaseHTTPResponse = self._adapter.send(
                request, timeout=deadline.seconds, **self._environment
            ).raw
        return raw

    def read_answer(self, response: urllib3.BaseHTTPResponse) -> Tuple[bytes, bool]:
        try:
            data: bytes = response.read(ANSWER_LIMIT + 1, decode_content=False)
            if len(data) <= ANSWER_LIMIT and not response.closed:  # a short read before the end: only at its end
                data += response.read(ANSWER_LIMIT + 1 - len(data), decode_content=False)
        except BaseException:
            self._drop(response)
            raise
        if len(data) > ANSWER_LIMIT:
            self._drop(response)
            return data[:ANSWER_LIMIT], True
        if not response.closed or response.length_remaining:
            self._drop(response)
            raise IncompleteRead(data, response.length_remaining)
        response.release_conn()
        return data, False

    @staticmethod
    def _drop(response: urllib3.BaseHTTPResponse) -> None:
        """Close the answer's connection without reading on; its pool makes a new one when needed."""
        response.close()
        response.release_conn()

    def close(self) -> None:
        self._adapter.close()


_this_thread = lifecycle.PerProcess(lambda: threading.local())  # looked up when made: gevent's once patched
"""``.deadline``: the deadline of the request ``ProxiedLane.post`` is sending on this thread, if any.
Made again once gevent or eventlet patched ``threading`` (then it is per green thread)."""


@contextlib.contextmanager
def _covered_by(deadline: Deadline) -> Iterator[None]:
    """Connections made or reused on this thread within the block attach their socket to ``deadline``."""
    local = _this_thread.get()
    local.deadline = deadline
    try:
        yield
    finally:
        local.deadline = None


def _attach(handle: socket.socket) -> None:
    """Attach ``handle`` to the deadline set on this thread by ``_covered_by``, if any."""
    deadline: Optional[Deadline] = getattr(_this_thread.get(), "deadline", None)
    if deadline is not None:
        deadline.attach(handle)


class _WatchedHTTPConnection(HTTPConnection):
    """A connection whose socket the deadline set on the calling thread (``_covered_by``) can shut down."""

    _handle: Optional[socket.socket] = None
    """A duplicate of the socket's descriptor: it stays valid when TLS wraps (and detaches) the socket."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self._close_handle()
        self._handle = sock.dup()
        _attach(self._handle)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self._handle is not None and self.sock is not None:  # a kept-alive connection
            _attach(self._handle)
        super().request(*args, **kwargs)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._close_handle()

    def _close_handle(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS: Dict[str, Type[HTTPConnectionPool]] = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter whose connections (direct or through an HTTP proxy) obey request deadlines."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is urllib3.ProxyManager:  # not SOCKS: its pools need their own connections
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


__all__ = ["ProxiedLane"]
