"""``analytics-vitally doctor`` and ``analytics_vitally.doctor()``, against real servers on 127.0.0.1:
the local receiver (answering 200, 400, 401, 403), a port that refuses connections, a TLS server
whose certificate is not trusted (made by trustme at test time), a forward and CONNECT proxy, an
unwritable spool and one holding what another write key left. Each case checks the finding, the exit
code, and that the write key is nowhere in the output."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import socketserver
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import trustme

import analytics_vitally
from analytics_vitally.diagnosis import TEST_EVENT, Finding, Report
from analytics_vitally.diagnosis.report import PROBLEM, WARNING, Findings
from analytics_vitally.settings import Settings
from analytics_vitally.spool import Spool
from analytics_vitally.testing import Receiver, Reply, Request

from .conftest import COMMAND, TOKEN, MakeClient, run_script

KEY = "doctor-secret-key-4f9a2c7e"
"""The write key every receiver here takes: long and unlike any other text, so finding it in the output
means the output shows it."""
_NETWORK_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def environment(**extra: str) -> Dict[str, str]:
    """This environment without VITALLY_*, proxies or CA bundles (any case), plus ``extra``."""
    dropped = {name.lower() for name in _NETWORK_VARIABLES}
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("VITALLY_") and name.lower() not in dropped
    }
    return {**kept, **extra}


def doctor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [COMMAND, "doctor", *args], env=environment(**env), capture_output=True, text=True, timeout=120
    )
    assert KEY not in done.stdout + done.stderr
    assert done.stderr == "", done.stderr  # everything is in the report, on standard output
    return done


def lines_of(output: str, topic: str) -> str:
    """The findings under ``topic`` in a report's text, joined into one line (the text is wrapped)."""
    section = output.split(f"\n\n{topic}\n", 1)[1].split("\n\n", 1)[0]
    return " ".join(line.strip() for line in section.splitlines())


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy, CA bundle or VITALLY_* setting from the machine reaches ``doctor()`` run in this process."""
    for name in list(os.environ):
        if name.startswith("VITALLY_") or name.upper() in _NETWORK_VARIABLES:
            monkeypatch.delenv(name)


@pytest.fixture
def vitally() -> Iterator[Receiver]:
    """The receiver as Vitally: 401 for another key, 400 for an empty batch (a batch holds 1 to 100)."""
    with Receiver(token=KEY) as running:
        yield running


def answering(status: int, body: Any) -> Callable[[Request], Optional[Reply]]:
    """A respond hook: ``status`` for a request with the key, the receiver's own answer (401) otherwise."""

    def respond(request: Request) -> Optional[Reply]:
        return Reply(status, body) if request.headers.get("authorization") == f"Basic {KEY}" else None

    return respond


# The write key: what each answer to the empty batch means. ---------------------------------------------


def test_an_empty_batch_accepted_with_200_means_the_key_works(vitally: Receiver) -> None:
    vitally.respond = answering(200, {"message": "Success."})

    done = doctor("--host", vitally.url, "--write-key", KEY)

    assert done.returncode == 0, done.stdout
    assert "result: a message would be delivered" in done.stdout
    found = lines_of(done.stdout, "write key")
    assert found.startswith("ok       accepted: an empty batch with it was accepted (2xx), while one with a made-up")
    assert "got 401; no data was created in Vitally" in found
    assert vitally.messages == []  # nothing made
    assert [request.body for request in vitally.requests] == [b"[]", b"[]"]  # the key's, then the made-up one's


def test_an_empty_batch_refused_as_invalid_with_400_means_the_key_works(vitally: Receiver) -> None:
    done = doctor("--host", vitally.url, "--write-key", KEY)

    assert done.returncode == 0, done.stdout
    found = lines_of(done.stdout, "write key")
    assert "accepted: an empty batch with it got 400 (the empty body refused as invalid: " in found
    assert "a batch holds 1 to 100 messages, not 0" in found


def test_a_200_whatever_the_key_confirms_nothing(vitally: Receiver) -> None:
    vitally.respond = lambda request: Reply(200)  # an endpoint that takes an empty batch from anyone

    done = doctor("--host", vitally.url, "--write-key", KEY)

    assert done.returncode == 1, done.stdout
    found = lines_of(done.stdout, "write key")
    assert "PROBLEM  not confirmed: an empty batch with it was accepted (2xx), but one with a made-up key" in found
    assert "run again with --send-test" in found


def test_a_401_says_the_key_is_refused_and_where_to_copy_it_from(vitally: Receiver) -> None:
    done = doctor("--host", vitally.url, "--write-key", KEY + "-old")

    assert done.returncode == 1, done.stdout
    assert "result: a message would NOT be delivered (1 problem(s))" in done.stdout
    found = lines_of(done.stdout, "write key")
    assert "PROBLEM  refused: the endpoint answered 401 to an empty batch" in found
    assert "copy the token again from Vitally (Settings, Integrations, Vitally Analytics API, HTTPS API tab)" in found
    assert KEY + "-old" not in done.stdout


def test_a_403_points_at_what_is_in_between(vitally: Receiver) -> None:
    vitally.respond = answering(403, {"message": "Forbidden by policy"})

    done = doctor("--host", vitally.url, "--write-key", KEY)

    assert done.returncode == 1, done.stdout
    found = lines_of(done.stdout, "write key")
    assert "PROBLEM  forbidden: the endpoint answered 403 to an empty batch (403, which Vitally does not" in found
    assert "Forbidden by policy" in found
    assert "a proxy, firewall or gateway" in found


def test_an_answer_that_echoes_the_key_is_shown_without_it(vitally: Receiver) -> None:
    vitally.respond = answering(403, {"message": f"Forbidden: Basic {KEY}"})

    done = doctor("--host", vitally.url, "--write-key", KEY)  # doctor() asserts the key is not in the output

    assert "Forbidden: Basic [redacted write_key]" in lines_of(done.stdout, "write key")


@pytest.mark.parametrize(
    ("status", "headers", "said"),
    [
        (404, {}, "PROBLEM  the endpoint answered 404 to an empty batch: 404 (no batch API at this address"),
        (429, {"Retry-After": "30"}, "PROBLEM  not judged: the endpoint answered 429 to an empty batch (429: too many"),
        (503, {}, "PROBLEM  not judged: the endpoint answered 503 to an empty batch (503: a server error"),
    ],
)
def test_other_answers_say_what_they_mean(vitally: Receiver, status: int, headers: Dict[str, str], said: str) -> None:
    vitally.respond = lambda request: Reply(status, {"message": "no"}, headers)

    done = doctor("--host", vitally.url, "--write-key", KEY)

    assert done.returncode == 1, done.stdout
    assert said in lines_of(done.stdout, "write key")
    assert len(vitally.requests) == 1  # one try, no retries
    if headers:
        assert "(Retry-After: 30s)" in lines_of(done.stdout, "write key")


def test_the_key_from_the_environment_is_said_to_come_from_there(vitally: Receiver) -> None:
    elsewhere = "https://vitally.example.com"
    done = doctor("--host", vitally.url, VITALLY_WRITE_KEY=KEY + "\n", VITALLY_SUBDOMAIN="acme", VITALLY_HOST=elsewhere)

    assert done.returncode == 0, done.stdout
    settings = lines_of(done.stdout, "settings")
    fingerprint = Settings(write_key=KEY, host=vitally.url).resolved().fingerprint
    assert f"write_key = set (fingerprint {fingerprint} with the endpoint) (from environment variable" in settings
    assert f"host = '{vitally.url}' (from option --host); VITALLY_HOST is set too, and not used" in settings
    assert "subdomain = 'acme' (from environment variable VITALLY_SUBDOMAIN)" in settings
    endpoint = lines_of(done.stdout, "endpoint")
    assert f"ok       {vitally.url}/analytics/v1/batch (the host setting's batch endpoint)" in endpoint
    assert "WARNING  127.0.0.1 is this machine: messages go to a local stand-in, not to Vitally" in endpoint


def test_unusable_settings_are_a_problem_and_say_which(vitally: Receiver) -> None:
    done = doctor("--host", vitally.url)  # no write key anywhere

    assert done.returncode == 1, done.stdout
    assert "PROBLEM  the settings are unusable: write_key is not set" in lines_of(done.stdout, "settings")
    assert "\n\nwrite key\n" not in done.stdout  # not asked without one
    assert "ok       connected to 127.0.0.1" in lines_of(done.stdout, "tcp")  # the network is still looked at


# The way there: TCP, TLS, proxies. ------------------------------------------------------------------------


def test_a_name_that_does_not_resolve_is_said_at_the_dns_step() -> None:
    done = doctor("--host", "https://doctor-check.invalid", "--write-key", KEY)  # .invalid never resolves

    assert done.returncode == 1, done.stdout
    found = lines_of(done.stdout, "dns")
    assert "PROBLEM  doctor-check.invalid cannot be looked up: " in found
    assert "check the host setting's name, and this machine's DNS resolver" in found
    assert "\n\ntcp\n" not in done.stdout and "\n\nwrite key\n" not in done.stdout


def test_a_refused_connection_is_said_at_the_tcp_step() -> None:
    with socket.socket() as bound:  # bound, never listening: the kernel refuses every connection to it
        bound.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound.getsockname()[1]}"

        done = doctor("--host", url, "--write-key", KEY)

    assert done.returncode == 1, done.stdout
    found = lines_of(done.stdout, "tcp")
    assert f"PROBLEM  cannot connect to 127.0.0.1: 127.0.0.1 port {url.rsplit(':', 1)[1]}: connection refused" in found
    assert "nothing listens there" in found
    assert "\n\nwrite key\n" not in done.stdout


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@contextlib.contextmanager
def tls_receiver(authority: trustme.CA) -> Iterator[Tuple[Receiver, str]]:
    """The receiver behind TLS with a certificate for 127.0.0.1 from ``authority``, and its https URL."""
    receiver = Receiver(token=KEY)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    receiver._server.socket = context.wrap_socket(receiver._server.socket, server_side=True)
    with receiver:
        yield receiver, f"https://127.0.0.1:{receiver.port}"


def test_a_certificate_from_an_unknown_authority_is_not_trusted(authority: trustme.CA) -> None:
    with tls_receiver(authority) as (receiver, url):
        done = doctor("--host", url, "--write-key", KEY)

    assert done.returncode == 1, done.stdout
    found = lines_of(done.stdout, "tls")
    assert (
        "PROBLEM  the certificate 127.0.0.1 presented is not trusted: unable to get local issuer certificate" in found
    )
    assert "REQUESTS_CA_BUNDLE=" in found
    assert receiver.requests == []  # nothing was sent over it


def test_a_trusted_certificate_shows_the_protocol(authority: trustme.CA, tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    with tls_receiver(authority) as (_, url):
        done = doctor("--host", url, "--write-key", KEY, REQUESTS_CA_BUNDLE=str(bundle))

    assert done.returncode == 0, done.stdout
    found = lines_of(done.stdout, "tls")
    assert "ok       TLSv1." in found and f"checked against the CA bundle {bundle}" in found


class Proxy(socketserver.ThreadingTCPServer):
    """A forward proxy on 127.0.0.1: absolute-URI requests (http://) are passed on, CONNECT opens a tunnel.
    ``seen`` lists each connection's first request line and whether it carried an Authorization header."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.seen: List[Tuple[str, bool]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(socketserver.BaseRequestHandler):
    server: Proxy

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.request.recv(65536)
            if not data:
                return
            head += data
        line, _, rest = head.partition(b"\r\n")
        method, target, version = line.decode().split(" ")
        self.server.seen.append((f"{method} {target}", b"\nauthorization:" in b"\n" + rest.lower()))
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            address = target.split("/")[2]
            host, port = address.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            path = "/" + target.split("/", 3)[3]
            upstream.sendall(f"{method} {path} {version}\r\n".encode() + rest)
        with upstream:
            _pipe(self.request, upstream)


def _pipe(one: socket.socket, other: socket.socket) -> None:
    """Pass bytes both ways until either side closes."""
    while True:
        ready, _, _ = select.select([one, other], [], [], 30)
        if not ready:
            return
        for sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            (other if sock is one else one).sendall(data)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    server = Proxy()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_plain_http_proxy_is_said_to_see_the_key(vitally: Receiver, proxy: Proxy) -> None:
    done = doctor("--host", vitally.url, "--write-key", KEY, HTTP_PROXY=proxy.url)

    assert done.returncode == 0, done.stdout  # delivered, through it
    found = lines_of(done.stdout, "proxy")
    assert f"WARNING  {proxy.url} (from a proxies setting or HTTPS_PROXY/HTTP_PROXY/ALL_PROXY) gets every" in found
    assert "in plain text: it can read the write key" in found
    assert f"connected to the proxy 127.0.0.1 port {proxy.server_address[1]}" in lines_of(done.stdout, "tcp")
    assert (f"POST {vitally.url}/analytics/v1/batch", True) in proxy.seen  # the key went through it, readable


def test_a_connect_proxy_tunnels_tls_and_does_not_see_the_key(
    authority: trustme.CA, proxy: Proxy, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    with tls_receiver(authority) as (receiver, url):
        done = doctor("--host", url, "--write-key", KEY, HTTPS_PROXY=proxy.url, REQUESTS_CA_BUNDLE=str(bundle))

    assert done.returncode == 0, done.stdout
    found = lines_of(done.stdout, "proxy")
    assert f"ok       {proxy.url} (from a proxies setting" in found
    assert f"tunnels the TLS connection (CONNECT 127.0.0.1:{receiver.port}): it sees the host name, not the" in found
    tls = lines_of(done.stdout, "tls")
    assert "ok       TLSv1." in tls and "if that authority is the proxy's, the proxy decrypts" in tls
    assert proxy.seen and all(seen == (f"CONNECT 127.0.0.1:{receiver.port}", False) for seen in proxy.seen)
    assert len(receiver.requests) == 2  # the empty batches came through the tunnel


# The spool. -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def unwritable_directory(path: Path) -> Iterator[str]:
    """A directory nobody can make a file in, root included: immutable (``chattr +i``, which needs root
    and a file system that has the flag, ext4 or xfs), or without write permission for another user."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        how = "mode 555"
    else:
        made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"chattr +i is not available here: {made.stderr.strip()}")
        how = "chattr +i"
    try:
        with pytest.raises(OSError):
            (path / "probe").write_text("x")  # it really is unwritable
        yield how
    finally:
        if how == "chattr +i":
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o755)


def test_an_unwritable_spool_directory_is_a_problem(vitally: Receiver, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with unwritable_directory(spool):
        done = doctor("--host", vitally.url, "--write-key", KEY, "--spool", str(spool))

    assert done.returncode == 1, done.stdout
    found = lines_of(done.stdout, "spool")
    assert f"PROBLEM  {spool} cannot be written: " in found
    assert "Client() raises ConfigurationError" in found
    assert "ok       accepted" in lines_of(done.stdout, "write key")  # only the spool stops delivery


def test_a_spool_path_under_a_file_cannot_be_made(vitally: Receiver, tmp_path: Path) -> None:
    (tmp_path / "data").write_text("a file, not a directory")
    spool = tmp_path / "data" / "spool"

    done = doctor("--host", vitally.url, "--write-key", KEY, VITALLY_SPOOL=str(spool))

    assert done.returncode == 1, done.stdout
    assert f"PROBLEM  {spool} cannot be made: {tmp_path / 'data'} is a file, not a directory" in lines_of(
        done.stdout, "spool"
    )
    assert f"spool = '{spool}' (from environment variable VITALLY_SPOOL)" in lines_of(done.stdout, "settings")


def written_by(directory: Path, write_key: str, host: str, count: int) -> None:
    """``count`` messages left in ``directory`` by a process, now gone, that sent with ``write_key`` to ``host``."""
    chosen = Settings(write_key=write_key, host=host).resolved()
    spool = Spool(directory, owner=chosen.fingerprint, endpoint=chosen.url, segment_bytes=1 << 16)
    for number in range(count):
        track = {"type": "track", "userId": "u", "event": "e", "properties": {}, "messageId": f"old-{number}"}
        assert spool.append(json.dumps(track).encode()) is not None
    spool.close()


def test_a_spool_with_what_another_key_left_says_how_to_send_it(vitally: Receiver, tmp_path: Path) -> None:
    written_by(tmp_path, "the-key-before-rotation", vitally.url, 5)
    written_by(tmp_path, KEY, vitally.url, 2)
    old = Settings(write_key="the-key-before-rotation", host=vitally.url).resolved().fingerprint

    done = doctor("--host", vitally.url, "--write-key", KEY, "--spool", str(tmp_path))

    assert done.returncode == 0, done.stdout  # a new message would be delivered; the old ones wait
    found = lines_of(done.stdout, "spool")
    assert "holds 7 pending message(s) in 2 file(s), 0 dead letter(s)" in found
    assert "2 message(s) for this write key and endpoint, left by processes that ended" in found
    assert (
        f"WARNING  5 message(s) in 1 file(s) written for this endpoint under another write key (5 for {old};" in found
    )
    assert f"analytics-vitally spool --send --rekey {tmp_path}" in found
    assert "the-key-before-rotation" not in done.stdout
    assert vitally.messages == []  # doctor sends none of them


# The command itself. ----------------------------------------------------------------------------------------


def test_send_test_sends_one_named_event_and_says_so(vitally: Receiver) -> None:
    done = doctor("--host", vitally.url, "--write-key", KEY, "--send-test", "--test-user", "support-check")

    assert done.returncode == 0, done.stdout
    assert [(m["type"], m["event"], m["userId"]) for m in vitally.messages] == [("track", TEST_EVENT, "support-check")]
    found = lines_of(done.stdout, "test event")
    assert f"ok       sent one test event, {TEST_EVENT!r} for userId 'support-check' (messageId " in found
    assert vitally.messages[0]["messageId"] in found
    assert "the endpoint accepted it (2xx). It is real data" in found


def test_without_send_test_no_message_is_sent(vitally: Receiver) -> None:
    done = doctor("--host", vitally.url, "--write-key", KEY)

    assert vitally.messages == [] and "\n\ntest event\n" not in done.stdout


def test_the_output_is_plain_text_for_a_ticket(vitally: Receiver) -> None:
    done = doctor("--host", vitally.url, "--write-key", KEY)

    assert done.stdout.isascii() and "\x1b" not in done.stdout  # no colours, nothing a ticket mangles
    assert all(len(line) <= 100 for line in done.stdout.splitlines())
    assert done.stdout.startswith("analytics-vitally doctor: analytics-vitally ")
    assert "note     not checked: this command runs in a process of its own" in lines_of(done.stdout, "process")


def test_findings_never_hold_the_key_whatever_a_check_says() -> None:
    # Every finding's text passes through the key's redactor: a check that quotes an exception or an answer
    # holding the key (in any of the forms a server echoes it) cannot put it in the report.
    found = Findings(KEY)
    found.add("tls", PROBLEM, f"handshake failed: {KEY!r} in {json.dumps({'k': KEY})}", f"not {KEY}")

    report = found.report(delivers=False)

    assert KEY not in report.text() and KEY not in repr(report) and KEY not in repr(found)
    assert "handshake failed: '[redacted write_key]'" in report.text()


def test_the_exit_code_is_0_only_when_the_key_was_accepted() -> None:
    warned = Finding("spool", WARNING, "5 message(s) written under another write key")

    assert Report((warned,), delivers=True).exit_code == 0  # warnings do not stop delivery
    assert Report((warned,), delivers=False).exit_code == 1  # nothing confirmed delivery: never 0
    assert Report((Finding("tls", PROBLEM, "not trusted"),), delivers=True).exit_code == 1


def test_a_usage_error_exits_2() -> None:
    done = subprocess.run([COMMAND, "doctor", "--timeout", "soon"], capture_output=True, text=True, timeout=60)

    assert done.returncode == 2 and "--timeout" in done.stderr


# doctor() inside the app. ---------------------------------------------------------------------------------


def test_doctor_checks_the_default_client_and_shows_its_stats(module_api: Any, receiver: Receiver) -> None:
    module_api.track("32", "scored-goal")
    assert module_api.flush(timeout=10)

    report = module_api.doctor()

    assert isinstance(report, Report) and report.ok and report.exit_code == 0
    assert report.stats is not None and report.stats.sent == 1
    text = report.text()
    assert TOKEN not in text and TOKEN not in repr(report)
    assert "the default client's stats(): enqueued 1, sent 1, failed 0" in lines_of(text, "stats")
    settings = lines_of(text, "settings")
    assert f"host = '{receiver.url}' (from module attribute analytics_vitally.host)" in settings
    assert "(from module attribute analytics_vitally.write_key)" in settings
    assert "note     pid " in lines_of(text, "process")


def test_doctor_of_a_client_reports_its_failures(make_client: MakeClient, receiver: Receiver) -> None:
    client = make_client(write_key="not-the-receiver-s", max_retries=0)  # the receiver takes test-token
    client.track("32", "scored-goal")
    client.flush(timeout=10)

    report = analytics_vitally.doctor(client)

    assert not report.ok and report.exit_code == 1
    assert [finding.text.split(":")[0] for finding in report.problems] == ["refused"]
    assert report.stats is not None and report.stats.failed == 1
    stats = lines_of(report.text(), "stats")
    assert "WARNING  1 message(s) failed for good" in stats
    assert "host = " in lines_of(report.text(), "settings") and "not-the-receiver-s" not in report.text()


def test_settings_given_to_doctor_are_arguments(vitally: Receiver) -> None:
    report = analytics_vitally.doctor(write_key=KEY, host=vitally.url, proxies={"http": "http://u:secret@127.0.0.1:9"})

    settings = lines_of(report.text(), "settings")
    assert "(from argument write_key=)" in settings
    assert "proxies = {'http': 'http://***@127.0.0.1:9'} (from argument proxies=)" in settings
    assert "secret" not in report.text()
    assert report.stats is None and "\n\nstats\n" not in report.text()
    with pytest.raises(TypeError, match="did you mean 'write_key'"):
        analytics_vitally.doctor(writekey=KEY)


def test_doctor_inside_an_app_sees_its_process(vitally: Receiver) -> None:
    # A uWSGI process with threads disabled (as test_integrations fakes one), and a client made on the
    # main thread, which sets the library's SIGTERM handler.
    done = run_script(
        f"""
        import sys, types
        uwsgi = types.ModuleType("uwsgi")
        uwsgi.opt, uwsgi.has_threads, uwsgi.worker_id = {{}}, 0, lambda: 1
        sys.modules["uwsgi"] = uwsgi
        import analytics_vitally
        client = analytics_vitally.Client({KEY!r}, host={vitally.url!r})
        report = analytics_vitally.doctor(client)
        print(report)
        sys.exit(report.exit_code)
        """
    )

    assert done.returncode == 1, done.stdout + done.stderr
    found = lines_of(done.stdout, "process")
    assert "PROBLEM  uWSGI runs this process with Python threads disabled" in found
    assert "--enable-threads" in found
    assert "ok       SIGTERM handler: the library's" in found
    assert "ok       no gevent or eventlet" in found
    assert KEY not in done.stdout + done.stderr


def test_doctor_is_loaded_only_when_used() -> None:
    done = run_script(
        """
        import sys, analytics_vitally
        assert "analytics_vitally.diagnosis" not in sys.modules
        assert "doctor" in analytics_vitally.__all__ and callable(analytics_vitally.doctor)
        print(analytics_vitally.doctor.__module__)
        """
    )
    assert done.stdout.strip() == "analytics_vitally.diagnosis", done.stderr
