"""The way to the endpoint, one step at a time: the URL, the proxy (and whether it could read the write
key), DNS, TCP and TLS, each with the client's own choices (requests' proxy and CA-bundle rules as
``Transport.environment`` finds them, the direct lane's ``tls_context``)."""

from __future__ import annotations

import base64
import http.client
import ipaddress
import socket
import ssl
import time
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple, Union
from urllib.parse import unquote

from requests.utils import DEFAULT_CA_BUNDLE_PATH, select_proxy
from urllib3.util import parse_url

from ..settings import Settings
from ..transport.direct import tls_context
from .report import NOTE, OK, PROBLEM, WARNING, Findings

EXPIRY_WARNING_DAYS = 14


class Route:
    """Where a request for ``settings`` goes: the endpoint, through the proxy if one is in use."""

    def __init__(self, settings: Settings, environment: Dict[str, Any]) -> None:
        self.url = settings.url
        parsed = parse_url(self.url)
        self.scheme = parsed.scheme or "https"
        self.host = (parsed.host or "").strip("[]")
        self.port = parsed.port or (443 if self.scheme == "https" else 80)
        self.verify: Union[bool, str] = environment["verify"]
        self.proxy: Optional[str] = select_proxy(self.url, environment["proxies"])
        self.timeout = settings.timeout
        self.from_subdomain = not settings.host


def check(route: Route, found: Findings) -> bool:
    """Every step to the endpoint, as findings; True when a TLS session (or, for http://, a TCP
    connection) was made to the endpoint, through the proxy if one is in use."""
    kind = "Vitally's batch endpoint" if route.from_subdomain else "the host setting's batch endpoint"
    found.add("endpoint", OK, f"{route.url} ({kind})")
    if not route.from_subdomain and _loopback(route.host):
        found.add(
            "endpoint",
            WARNING,
            f"{route.host} is this machine: messages go to a local stand-in, not to Vitally",
            "leave host unset and set subdomain for production",
        )
    if route.proxy is None:
        found.add(
            "proxy",
            OK,
            "none: the client connects to the endpoint directly (no proxies setting, and "
            "HTTPS_PROXY, HTTP_PROXY, ALL_PROXY unset or bypassed by NO_PROXY)",
        )
        target = (route.host, route.port)
    else:
        proxy = _proxy_target(route, found)
        if proxy is None:  # a SOCKS proxy: not looked through here; the write key check goes through it
            return True
        target = proxy
    addresses = _dns(route, target, found)
    if not addresses:
        return False
    sock = _tcp(route, target, addresses, found)
    if sock is None:
        return False
    with sock:
        if route.scheme != "https":
            return True
        if route.proxy is None:
            return _tls_direct(route, sock, found)
    return _tls_through_proxy(route, target, found)


def _proxy_target(route: Route, found: Findings) -> Optional[Tuple[str, int]]:
    """The proxy's host and port, and what it can see; None for a proxy doctor cannot look through (SOCKS)."""
    assert route.proxy is not None
    parsed = parse_url(route.proxy)
    shown = without_password(route.proxy)
    scheme = parsed.scheme or "http"
    if scheme not in ("http", "https"):
        found.add(
            "proxy",
            NOTE,
            f"{shown} ({scheme}): in use for {route.url}; doctor cannot look through a {scheme} proxy, so DNS, "
            "TCP and TLS to the endpoint are not checked (the write key check below still goes through it)",
        )
        return None
    where = "a proxies setting or HTTPS_PROXY/HTTP_PROXY/ALL_PROXY"
    if route.scheme == "http":
        found.add(
            "proxy",
            WARNING,
            f"{shown} (from {where}) gets every request to {route.url} in plain text: it can read the write "
            "key (the Authorization header) and every message",
            f"use an https:// endpoint, or keep the proxy out of it: NO_PROXY={route.host}",
        )
    else:
        found.add(
            "proxy",
            OK,
            f"{shown} (from {where}) tunnels the TLS connection (CONNECT {route.host}:{route.port}): it sees the "
            "host name, not the write key, unless it decrypts TLS with a certificate authority you trust (see tls)",
        )
    if scheme == "http" and parsed.auth:
        found.add(
            "proxy",
            WARNING,
            "the proxy's user name and password travel in plain text to it (an http:// proxy URL)",
            "use an https:// proxy URL if the proxy offers one",
        )
    return (parsed.host or "").strip("[]"), parsed.port or (443 if scheme == "https" else 80)


def _dns(route: Route, target: Tuple[str, int], found: Findings) -> List[Any]:
    host, port = target
    what = "the proxy " if route.proxy else ""
    started = time.monotonic()
    try:
        addresses = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        if route.proxy:
            action = "check the proxy's host name (HTTPS_PROXY or the proxies setting)"
        elif route.from_subdomain:
            action = (
                "check subdomain: it is the part before .vitally.io in the address you log in at; and that "
                "this machine can look up public names (its DNS resolver)"
            )
        else:
            action = "check the host setting's name, and this machine's DNS resolver"
        found.add("dns", PROBLEM, f"{what}{host} cannot be looked up: {error}", action)
        return []
    shown = ", ".join(sorted({str(address[4][0]) for address in addresses}))
    found.add("dns", OK, f"{what}{host} is {shown} ({_ms(started)})")
    if route.proxy:
        found.add("dns", NOTE, f"{route.host} is looked up by the proxy, not here")
    return addresses


def _tcp(route: Route, target: Tuple[str, int], addresses: List[Any], found: Findings) -> Optional[socket.socket]:
    what = "the proxy " if route.proxy else ""
    failures: List[str] = []
    for family, kind, protocol, _, address in addresses:
        sock = socket.socket(family, kind, protocol)
        sock.settimeout(route.timeout)
        started = time.monotonic()
        try:
            sock.connect(address)
        except OSError as error:
            sock.close()
            failures.append(f"{address[0]} port {address[1]}: {_why(error, route.timeout)}")
            continue
        found.add("tcp", OK, f"connected to {what}{address[0]} port {address[1]} ({_ms(started)})")
        return sock
    refused = all("refused" in failure for failure in failures)
    if refused:
        action = (
            "nothing listens there: check the port in the host setting, or that the server runs"
            if not route.proxy
            else "check that the proxy runs, and its port"
        )
    else:
        action = (
            "a firewall may drop the traffic, or this network may need an outbound proxy: set HTTPS_PROXY "
            "(and allow the endpoint's port)"
        )
    found.add("tcp", PROBLEM, f"cannot connect to {what}{target[0]}: " + "; ".join(failures), action)
    return None


def _tls_direct(route: Route, sock: socket.socket, found: Findings) -> bool:
    started = time.monotonic()
    try:
        context = tls_context(route.verify)
        with context.wrap_socket(sock, server_hostname=route.host) as tls:
            _tls_found(route, tls, started, found)
        return True
    except (OSError, ValueError) as error:
        _tls_failed(route, error, found)
        return False


def _tls_through_proxy(route: Route, proxy: Tuple[str, int], found: Findings) -> bool:
    """CONNECT through the proxy, then TLS with the endpoint inside the tunnel (as requests does)."""
    assert route.proxy is not None
    parsed = parse_url(route.proxy)
    headers = {}
    if parsed.auth:
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(unquote(parsed.auth).encode()).decode()
    started = time.monotonic()
    try:
        context = tls_context(route.verify)
        if parsed.scheme == "https":
            found.add("tls", NOTE, "the TLS connection to an https:// proxy itself is not checked, only the tunnel")
            return True
        connection = http.client.HTTPSConnection(proxy[0], proxy[1], timeout=route.timeout, context=context)
        connection.set_tunnel(route.host, route.port, headers=headers)
        try:
            connection.connect()
            assert isinstance(connection.sock, ssl.SSLSocket)
            _tls_found(route, connection.sock, started, found)
        finally:
            connection.close()
        return True
    except (OSError, ValueError, http.client.HTTPException) as error:
        if "Tunnel connection failed" in str(error):
            found.add(
                "proxy",
                PROBLEM,
                f"the proxy refused to open a tunnel to {route.host}:{route.port}: {error}",
                "allow the endpoint on the proxy, or give the proxy's user name and password in its URL "
                "(407 asks for them)",
            )
            return False
        _tls_failed(route, error, found)
        return False


def _tls_found(route: Route, tls: ssl.SSLSocket, started: float, found: Findings) -> None:
    certificate: Dict[str, Any] = dict(tls.getpeercert() or {})
    names = [str(value) for kind, value in certificate.get("subjectAltName", ()) if kind in ("DNS", "IP Address")]
    subject = ", ".join(names) or _name(certificate.get("subject", ()))
    issuer = _name(certificate.get("issuer", ()))
    expires = certificate.get("notAfter")
    text = (
        f"{tls.version()} with {route.host}, certificate for {subject or '?'} issued by {issuer or '?'}, "
        f"checked against {_trust(route.verify)} ({_ms(started)})"
    )
    found.add("tls", OK, text)
    if isinstance(expires, str):
        left = datetime.fromtimestamp(ssl.cert_time_to_seconds(expires), timezone.utc) - datetime.now(timezone.utc)
        if left.days < EXPIRY_WARNING_DAYS:
            found.add(
                "tls",
                WARNING,
                f"the certificate expires in {left.days} day(s), on {expires}",
                "renew it (if the host setting is yours) or tell Vitally",
            )
    if route.proxy and route.verify is not True:
        found.add(
            "tls",
            NOTE,
            f"the certificate was trusted through {_trust(route.verify)}, not the public authorities: if that "
            "authority is the proxy's, the proxy decrypts the traffic and can read the write key",
        )


def _tls_failed(route: Route, error: BaseException, found: Findings) -> None:
    trust = _trust(route.verify)
    if isinstance(error, ssl.SSLCertVerificationError):
        found.add(
            "tls",
            PROBLEM,
            f"the certificate {route.host} presented is not trusted: {error.verify_message} (checked against {trust})",
            "if a proxy or security software inspects TLS, give the client its certificate authority: "
            "REQUESTS_CA_BUNDLE=/path/to/its-ca.pem; if host points at your own server, fix its certificate "
            "(chain, name, dates). The client never sends without checking the certificate",
        )
    elif isinstance(error, ssl.SSLError):
        found.add(
            "tls",
            PROBLEM,
            f"the TLS handshake with {route.host} failed: {error}",
            "check that the host setting's port speaks HTTPS (a WRONG_VERSION_NUMBER error means plain HTTP), "
            "and that no proxy or firewall breaks TLS; the client needs TLS 1.2 or later",
        )
    else:
        found.add(
            "tls",
            PROBLEM,
            f"no TLS session with {route.host}: {_why(error, route.timeout)}",
            "the connection was made but broke during the handshake: a proxy, firewall or the server cut it",
        )


def _trust(verify: Union[bool, str]) -> str:
    if verify is True:
        return f"requests' certificate authorities ({DEFAULT_CA_BUNDLE_PATH})"
    return f"the CA bundle {verify} (REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE)"


def _name(parts: Any) -> str:
    """A certificate name's common name, else its organisation."""
    values = {key: value for part in parts for key, value in part}
    return str(values.get("commonName") or values.get("organizationName") or "")


def _why(error: BaseException, timeout: float) -> str:
    if isinstance(error, (socket.timeout, TimeoutError)):
        return f"no answer within timeout={timeout}s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    return f"{type(error).__name__}: {error}"


def _ms(started: float) -> str:
    return f"{(time.monotonic() - started) * 1000:.0f} ms"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def without_password(url: str) -> str:
    """``url`` with any user name and password replaced by ``***``."""
    scheme, separator, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{separator}{authority}{slash}{path}"


__all__ = ["Route", "check", "without_password"]
