"""SIP over TCP and TLS (RFC 3261 §18): scripted phones on a socket, SIPp over TCP, and hostile streams."""

from __future__ import annotations

import os
import random
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from .browser_agent import header, register
from .conftest import IvrProcess, free_port, sipp
from .test_e2e_hardening import mutate, seeds
from .test_e2e_retransmission import cseq_of, status_line, to_tags
from .test_e2e_routing import SENIOR, customers
from .test_e2e_sip import crm_rows, finished

pytestmark = pytest.mark.e2e


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """cert.pem and key.pem for 127.0.0.1, made with the openssl command."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def stream_ivr(ivr_factory, tmp_path: Path, **kwargs) -> tuple[IvrProcess, int]:  # type: ignore[no-untyped-def]
    """An IVR on udp, tcp and tls (a fresh self-signed certificate); returns it and its TLS port."""
    self_signed_certificate(tmp_path)
    tls_port = free_port(socket.SOCK_STREAM)
    general = (f"transports = udp, tcp, tls\ntls_port = {tls_port}\ntls_certificate = cert.pem\ntls_key = key.pem\n"
               + kwargs.pop("general", ""))
    return ivr_factory(general=general, **kwargs), tls_port


class StreamPhone:
    """A TCP (or TLS) connection to the IVR that sends hand-written SIP and frames what comes back.

    It speaks like tests' ScriptedPhone (send/until/port), so the UDP helpers drive it; the Via
    transport of what it sends is rewritten to its own.
    """

    def __init__(self, ivr: IvrProcess, *, tls_port: int | None = None) -> None:
        self.ivr = ivr
        self.transport = "TLS" if tls_port else "TCP"
        raw = socket.create_connection(("127.0.0.1", tls_port or ivr.port), timeout=5)
        if tls_port:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the test's own self-signed certificate
            raw = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.sock = raw
        self.port = self.sock.getsockname()[1]
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", 0))
        self.buffer = b""
        self.closed = False
        self.call_id = f"{uuid.uuid4().hex}@127.0.0.1"
        self.from_tag = uuid.uuid4().hex[:8]
        self.to_tag = ""

    def close(self) -> None:
        self.sock.close()
        self.rtp.close()

    def send(self, text: str) -> None:
        text = text.replace("SIP/2.0/UDP", f"SIP/2.0/{self.transport}")
        self.sock.sendall(text.replace("\r\n", "\n").replace("\n", "\r\n").encode())

    def _frame(self) -> str | None:
        while self.buffer.startswith(b"\r\n"):
            self.buffer = self.buffer[2:]
            return "\r\n"  # a pong
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        length = re.search(rb"\r\n(?:content-length|l)\s*:\s*(\d+)", self.buffer[:end + 2], re.I)
        size = end + 4 + (int(length.group(1)) if length else 0)
        if len(self.buffer) < size:
            return None
        message, self.buffer = self.buffer[:size], self.buffer[size:]
        return message.decode("utf-8", "replace")

    def until(self, predicate, seconds: float = 10) -> list[tuple[float, str]]:  # type: ignore[no-untyped-def]
        got: list[tuple[float, str]] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            while (message := self._frame()) is not None:
                got.append((time.monotonic(), message))
            if any(predicate(text) for _, text in got):
                return got
            if self.closed:
                break
            self.sock.settimeout(max(0.01, min(0.2, end - time.monotonic())))
            try:
                data = self.sock.recv(65535)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            if not data:
                self.closed = True
            self.buffer += data
        seen = [t.splitlines()[0] for _, t in got]
        raise AssertionError(f"not seen in {seconds} s: {seen}\n{self.ivr.log()[-3000:]}")

    def options(self) -> str:
        branch = f"z9hG4bK{uuid.uuid4().hex}"
        self.send(f"OPTIONS sip:95000@127.0.0.1:{self.ivr.port} SIP/2.0\n"
                  f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch}\nMax-Forwards: 70\n"
                  f"From: <sip:probe@127.0.0.1>;tag={uuid.uuid4().hex[:8]}\nTo: <sip:95000@127.0.0.1>\n"
                  f"Call-ID: {uuid.uuid4().hex}@127.0.0.1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n")
        got = self.until(lambda t: branch in t)
        return next(t for _, t in got if branch in t)

    def invite(self, branch: str) -> str:
        sdp = (f"v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\n"
               f"m=audio {self.rtp.getsockname()[1]} RTP/AVP 0 101\na=rtpmap:0 PCMU/8000\n"
               f"a=rtpmap:101 telephone-event/8000\n").replace("\n", "\r\n")
        return (f"INVITE sip:95000@127.0.0.1:{self.ivr.port};transport=tcp SIP/2.0\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch}\n"
                f"Max-Forwards: 70\nFrom: <sip:13800000001@127.0.0.1>;tag={self.from_tag}\n"
                f"To: <sip:95000@127.0.0.1>\nCall-ID: {self.call_id}\nCSeq: 1 INVITE\n"
                f"Contact: <sip:13800000001@127.0.0.1:{self.port};transport=tcp>\nContent-Type: application/sdp\n"
                f"Content-Length: {len(sdp)}\n\n") + sdp

    def in_dialog(self, method: str, cseq: int, branch: str) -> str:
        return (f"{method} sip:95000@127.0.0.1:{self.ivr.port};transport=tcp SIP/2.0\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch}\n"
                f"Max-Forwards: 70\nFrom: <sip:13800000001@127.0.0.1>;tag={self.from_tag}\n"
                f"To: <sip:95000@127.0.0.1>;tag={self.to_tag}\nCall-ID: {self.call_id}\nCSeq: {cseq} {method}\n"
                f"Content-Length: 0\n\n")


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Read (and drop) until the IVR closes the connection; how long that took. Fails after `seconds`."""
    started = time.monotonic()
    while (left := seconds - (time.monotonic() - started)) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65535):
                return time.monotonic() - started
        except TimeoutError:
            break
        except ConnectionResetError:
            return time.monotonic() - started
    raise AssertionError(f"connection still open after {seconds} s")


def talk(phone: StreamPhone) -> list[tuple[float, str]]:
    """INVITE, 100/180/200, ACK, a second of the call, BYE/200: everything the phone received."""
    phone.send(phone.invite("z9hG4bK-tcp-inv1"))
    got = phone.until(lambda t: status_line(t).startswith("SIP/2.0 200") and "INVITE" in cseq_of(t))
    ok = next(t for _, t in got if status_line(t).startswith("SIP/2.0 200"))
    phone.to_tag = to_tags(ok)[0]
    phone.send(phone.in_dialog("ACK", 1, "z9hG4bK-tcp-ack1"))
    time.sleep(1)
    phone.send(phone.in_dialog("BYE", 2, "z9hG4bK-tcp-bye1"))
    return got + phone.until(lambda t: "BYE" in cseq_of(t) and status_line(t).startswith("SIP/2.0 200"))


def wait_for_outcome(ivr: IvrProcess, count: int = 1) -> list:  # type: ignore[type-arg]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(crm_rows(ivr, "outcome is not null")) < count:
        time.sleep(0.2)
    return crm_rows(ivr)


# --- the transports work ------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_options_and_keepalive_are_answered_on_the_same_connection(ivr_factory, tmp_path: Path, transport: str) -> None:  # type: ignore[no-untyped-def]
    ivr, tls_port = stream_ivr(ivr_factory, tmp_path)
    phone = StreamPhone(ivr, tls_port=tls_port if transport == "tls" else None)
    try:
        answer = phone.options()
        assert status_line(answer) == "SIP/2.0 200 OK"
        assert header(answer, "Via").startswith(f"SIP/2.0/{transport.upper()} 127.0.0.1:{phone.port}")
        phone.sock.sendall(b"\r\n\r\n")  # RFC 5626 ping: a CRLF comes back, the connection stays
        assert phone.until(lambda t: t == "\r\n", seconds=3)
        assert status_line(phone.options()) == "SIP/2.0 200 OK"
    finally:
        phone.close()
    assert f"event='sip_connection_opened' transport='{transport.upper()}' peer='127.0.0.1:{phone.port}'" in ivr.log()


def test_a_call_over_tcp_runs_on_its_connection_and_leaves_one_crm_row(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr, _ = stream_ivr(ivr_factory, tmp_path)
    phone = StreamPhone(ivr)
    try:
        got = talk(phone)
    finally:
        phone.close()
    statuses = [status_line(t).split(" ", 2)[1] for _, t in got if "INVITE" in cseq_of(t)]
    # the IVR answers 180 while it handles the INVITE, so no 100 Trying is needed first (RFC 3261 §17.2.1)
    assert [s for s in statuses if s != "100"][:2] == ["180", "200"], statuses
    ok = next(t for _, t in got if status_line(t).startswith("SIP/2.0 200") and "INVITE" in cseq_of(t))
    assert header(ok, "Contact") == f"<sip:127.0.0.1:{ivr.port};transport=tcp>"
    assert len([t for _, t in got if status_line(t) == "SIP/2.0 200 OK" and "INVITE" in cseq_of(t)]) == 1, \
        "a 2xx over TCP is still sent once per hop (no retransmission once ACKed)"
    rows = wait_for_outcome(ivr)
    assert len(rows) == 1 and rows[0]["outcome"] == "caller_hangup", [dict(r) for r in rows]
    assert rows[0]["sip_call_id"] == phone.call_id


def test_an_agent_registered_over_tcp_is_rung_on_that_connection(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    ivr, _ = stream_ivr(ivr_factory, tmp_path, db_url=db_url,
                        extra="[801]\ntype = agent\nseat_group = senior\nhost = dynamic\nsecret = pw801\n")
    phone = StreamPhone(ivr)
    caller = None
    try:
        _, status = register(phone, ivr, "801", f"sip:801@127.0.0.1:{phone.port};transport=tcp")  # type: ignore[arg-type]
        assert status.startswith("SIP/2.0 200")
        caller = sipp(tmp_path, "survey_caller", ivr.port, extra=("-d", "11000"))
        got = phone.until(lambda t: t.startswith("INVITE "), seconds=20)
        invite = next(t for _, t in got if t.startswith("INVITE "))
        assert header(invite, "Via").startswith(f"SIP/2.0/TCP 127.0.0.1:{ivr.port};")
        assert header(invite, "Contact") == f"<sip:127.0.0.1:{ivr.port};transport=tcp>"
        assert SENIOR in invite
        # answer it: the ACK comes on the same connection
        sdp = (f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               f"m=audio {phone.rtp.getsockname()[1]} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
        echoed = "\r\n".join(line for line in invite.split("\r\n")
                             if line.lower().split(":")[0] in ("via", "from", "call-id", "cseq"))
        to = header(invite, "To") + ";tag=agent801"
        phone.sock.sendall((f"SIP/2.0 200 OK\r\n{echoed}\r\nTo: {to}\r\n"
                            f"Contact: <sip:801@127.0.0.1:{phone.port};transport=tcp>\r\n"
                            f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}").encode())
        got = phone.until(lambda t: t.startswith("ACK "), seconds=10)
        ack = next(t for _, t in got if t.startswith("ACK "))
        assert header(ack, "Via").startswith("SIP/2.0/TCP ")
    finally:
        if caller is not None:
            caller.proc.kill()
        phone.close()


def test_sipp_caller_over_tcp_completes_a_call(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr, _ = stream_ivr(ivr_factory, tmp_path)
    finished(sipp(tmp_path, "short_call", ivr.port, extra=("-t", "t1"), timeout_s=30), 40)
    rows = wait_for_outcome(ivr)
    assert len(rows) == 1 and rows[0]["outcome"] is not None, [dict(r) for r in rows]
    assert re.search(r"event='sip_connection_opened' transport='TCP' peer='127\.0\.0\.1:\d+'", ivr.log())


def test_a_phone_with_a_tcp_contact_is_rung_on_a_connection_the_ivr_opens(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from .test_e2e_retransmission import ScriptedPhone

    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    ivr, _ = stream_ivr(ivr_factory, tmp_path, db_url=db_url,
                        extra="[801]\ntype = agent\nseat_group = senior\nhost = dynamic\nsecret = pw801\n")
    phone = ScriptedPhone(ivr)  # registers over UDP from port P, and listens for TCP on P as its Contact says
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", phone.port))
    listener.listen(1)
    listener.settimeout(20)
    caller = None
    try:
        _, status = register(phone, ivr, "801", f"sip:801@127.0.0.1:{phone.port};transport=tcp")
        assert status.startswith("SIP/2.0 200")
        caller = sipp(tmp_path, "survey_caller", ivr.port, extra=("-d", "11000"))
        accepted, _ = listener.accept()
        with accepted:
            accepted.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                data += accepted.recv(65535)
        invite = data.decode("utf-8", "replace")
        assert invite.startswith(f"INVITE sip:801@127.0.0.1:{phone.port};transport=tcp SIP/2.0\r\n")
        assert header(invite, "Via").startswith(f"SIP/2.0/TCP 127.0.0.1:{ivr.port};")
        assert header(invite, "Contact") == f"<sip:127.0.0.1:{ivr.port};transport=tcp>"
    finally:
        if caller is not None:
            caller.proc.kill()
        listener.close()
        phone.close()
    assert "outbound=True" in ivr.log()


# --- hostile streams ------------------------------------------------------------------


def test_hostile_streams_are_closed_within_their_limits_while_a_call_completes(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr, _ = stream_ivr(ivr_factory, tmp_path)
    took: dict[str, float] = {}
    errors: list[BaseException] = []

    def hostile(name: str, limit: float, opening: bytes, drip: bool = False) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", ivr.port), timeout=5)
            with sock:
                sock.sendall(opening)
                if drip:  # slow-loris: one byte a second of a message that never ends
                    started = time.monotonic()
                    for byte in b"OPTIONS sip:95000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1\r\n":
                        try:
                            sock.sendall(bytes([byte]))
                        except OSError:
                            break
                        sock.settimeout(1)
                        try:
                            if not sock.recv(1):
                                break
                        except TimeoutError:
                            continue
                        except ConnectionResetError:
                            break
                    took[name] = time.monotonic() - started
                    return
                took[name] = closed_within(sock, limit)
        except BaseException as exc:  # noqa: BLE001 — reported by the main thread
            errors.append(exc)

    half = b"INVITE sip:95000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKh\r\nFrom: <sip:a@b>"
    no_length = (b"OPTIONS sip:95000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKn\r\n"
                 b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:95000@127.0.0.1>\r\nCall-ID: nolen\r\n"
                 b"CSeq: 1 OPTIONS\r\n\r\n")
    cases = [
        threading.Thread(target=hostile, args=("malformed", 3, b"\x16\x03\x01\x00\xff\xfe garbage\r\n\r\n")),
        threading.Thread(target=hostile, args=("no_content_length", 3, no_length)),
        threading.Thread(target=hostile, args=("oversized_headers", 3, b"OPTIONS sip:x SIP/2.0\r\nX: " + b"a" * 20000)),
        threading.Thread(target=hostile, args=("half_open", 13, half)),
        threading.Thread(target=hostile, args=("slow_loris", 13, b"", True)),
    ]
    for thread in cases:
        thread.start()
    phone = StreamPhone(ivr)  # meanwhile a normal call on its own connection
    try:
        talk(phone)
    finally:
        phone.close()
    for thread in cases:
        thread.join(30)
    assert not errors, errors
    assert took["malformed"] < 2 and took["no_content_length"] < 2 and took["oversized_headers"] < 2, took
    assert 9 <= took["half_open"] <= 12.5, took
    assert 9 <= took["slow_loris"] <= 12.5, f"slow-loris sender kept its connection: {took}"
    rows = wait_for_outcome(ivr)
    assert len(rows) == 1 and rows[0]["outcome"] == "caller_hangup", [dict(r) for r in rows]
    log = ivr.log()
    assert "Traceback" not in log
    assert "reason='no Content-Length on a stream (RFC 3261 §18.3)'" in log
    assert "reason='message incomplete 10 s after its first byte'" in log
    assert ivr.proc.poll() is None


def test_a_missing_content_length_is_answered_400_then_the_connection_closes(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr, _ = stream_ivr(ivr_factory, tmp_path)
    phone = StreamPhone(ivr)
    try:
        phone.send(f"OPTIONS sip:95000@127.0.0.1 SIP/2.0\nVia: SIP/2.0/TCP 127.0.0.1:{phone.port};branch=z9hG4bKnl\n"
                   f"From: <sip:a@127.0.0.1>;tag=1\nTo: <sip:95000@127.0.0.1>\nCall-ID: nolen\nCSeq: 1 OPTIONS\n\n")
        got = phone.until(lambda t: t.startswith("SIP/2.0 400"), seconds=5)
        refusal = next(t for _, t in got if t.startswith("SIP/2.0 400"))
        assert status_line(refusal) == "SIP/2.0 400 Missing Content-Length"
        assert closed_within(phone.sock, 3) < 3
    finally:
        phone.close()


def test_connections_beyond_max_connections_are_refused(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr, _ = stream_ivr(ivr_factory, tmp_path, general="max_connections = 2\n")
    held = [StreamPhone(ivr), StreamPhone(ivr)]
    try:
        for phone in held:
            assert status_line(phone.options()) == "SIP/2.0 200 OK"
        extra = socket.create_connection(("127.0.0.1", ivr.port), timeout=5)
        with extra:
            assert closed_within(extra, 3) < 3
        held[0].close()
        time.sleep(0.3)
        again = StreamPhone(ivr)  # a place is free again
        assert status_line(again.options()) == "SIP/2.0 200 OK"
        again.close()
    finally:
        for phone in held:
            phone.close()
    assert "event='sip_connection_refused'" in ivr.log()


FUZZ_MESSAGES = 2000


def test_two_thousand_mutated_messages_over_tcp_then_options_still_answered(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr, _ = stream_ivr(ivr_factory, tmp_path, extra="[limits]\ntrusted = 127.0.0.1\nmax_invites_per_second = 100000\n")
    rng = random.Random(1805)
    corpus = [s.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP") for s in seeds(ivr.port, 1)]
    sock: socket.socket | None = None
    connections = 0
    for n in range(FUZZ_MESSAGES):
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", ivr.port), timeout=5)
            sock.setblocking(False)
            connections += 1
        try:
            sock.sendall(mutate(rng, rng.choice(corpus), n))
            while sock.recv(65535):
                pass
        except BlockingIOError:
            pass
        except OSError:  # the IVR closed it (bad framing): a new connection for the next message
            sock.close()
            sock = None
        if n % 50 == 49:
            time.sleep(0.01)
    if sock is not None:
        sock.close()
    assert ivr.proc.poll() is None, "the IVR died under malformed streams"
    phone = StreamPhone(ivr)
    try:
        assert status_line(phone.options()) == "SIP/2.0 200 OK"
    finally:
        phone.close()
    log = ivr.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 500:][:3000]
    print(f"tcp fuzz: {FUZZ_MESSAGES} messages on {connections} connections")


# --- a real softphone (pjsua2) over TCP and TLS -----------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_pjsua2_agent_registers_over_a_stream_and_answers_a_routed_call(ivr_factory, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                         transport: str) -> None:
    from .conftest import ROOT
    from .test_e2e_routing import agents_conf, wait_for_row, wait_line

    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    ivr, tls_port = stream_ivr(ivr_factory, tmp_path, db_url=db_url,
                               extra="[queues]\nwrap_up_seconds = 0\n" + agents_conf(**{"801": ("senior", "dynamic")}))
    port = tls_port if transport == "tls" else ivr.port
    phone = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "softphone_agent.py"), "--ivr-port", str(ivr.port), "--agent", "801",
         "--password", "pw801", "--talk", "4", "--calls", "1", "--timeout", "90"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PJSUA_OUTBOUND": f"sip:127.0.0.1:{port};transport={transport}"},
    )
    try:
        assert wait_line(phone, "registered") == "registered 200"
        registered = re.search(r"event='agent_registered' agent='801' contact='127\.0\.0\.1:(\d+)'", ivr.log())
        assert registered, ivr.log()[-2000:]
        assert f"event='sip_connection_opened' transport='{transport.upper()}' peer='127.0.0.1:{registered.group(1)}'" \
            in ivr.log(), "the agent's contact is its connection"
        caller = sipp(tmp_path, "survey_caller", ivr.port, extra=("-d", "11000"))
        finished(caller)
        assert wait_line(phone, "answered")  # the phone has no UDP transport: the INVITE came on its connection
        phone.wait(30)
    finally:
        if phone.poll() is None:
            phone.kill()
    row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    assert (row["seat_group"], row["agent_number"], row["outcome"]) == ("senior", "801", "completed")
    assert "sip_connection_gone" not in ivr.log()


def test_plain_text_on_the_tls_port_is_closed_without_a_traceback(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr, tls_port = stream_ivr(ivr_factory, tmp_path)
    with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as sock:
        sock.sendall(b"OPTIONS sip:95000@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n")
        assert closed_within(sock, 3) < 3
    silent = socket.create_connection(("127.0.0.1", tls_port), timeout=5)  # never says hello
    with silent:
        assert closed_within(silent, 13) < 12.5
    phone = StreamPhone(ivr, tls_port=tls_port)
    try:
        assert status_line(phone.options()) == "SIP/2.0 200 OK"
    finally:
        phone.close()
    assert "Traceback" not in ivr.log(), ivr.log()[-3000:]


# --- the framer on its own (no I/O, a float for the clock) ------------------------------


def test_framer_splits_by_content_length_and_answers_pings() -> None:
    from ivr.sip.stream import Broken, Framed, Ping, StreamFramer

    options = b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/TCP h\r\nl: 4\r\n\r\nbody"
    framer = StreamFramer(0.0, idle_seconds=300)
    assert framer.feed(b"\r\n\r\n" + options[:10], 1.0) == [Ping()]
    assert framer.feed(options[10:] + options + b"\r\n", 2.0) == [Framed(options), Framed(options)]
    assert framer.feed(b"\r\n", 3.0) == [Ping()]
    assert framer.expired(3.0 + 299) is None and framer.expired(3.0 + 300) == "idle for 300 s"
    assert framer.expired(3.0 + 400, busy=True) is None
    framer.feed(b"OPT", 10.0)
    assert framer.expired(19.9) is None
    assert framer.expired(20.0) == "message incomplete 10 s after its first byte"
    lying = StreamFramer(0.0, idle_seconds=300)
    assert lying.feed(b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 0.0) == [
        Broken("Content-Length unusable", b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 1\r\nContent-Length: 2\r\n", 400)]
    assert lying.feed(options, 1.0) == [], "nothing is read after the stream broke"
    huge = StreamFramer(0.0, idle_seconds=300)
    assert huge.feed(b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 70000\r\n\r\n", 0.0)[0].reason == \
        "message of 70048 bytes over 65536"
