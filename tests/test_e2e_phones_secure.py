"""baresip 1.0.0 against the IVR over SIP/TCP and SIP/TLS, and with SRTP (SDES), on loopback.

Each scenario is a real call of 5 to 20 s, so all of them start together when
the module begins, each in its own thread (against one of a few IVRs), and
each test waits for its own scenario and asserts on what it left behind:
baresip's events and SIP trace, the IVR's log, the CRM row.

What crosses the wire is checked on the wire: as root, a raw AF_PACKET socket
on lo records the UDP datagrams to and from the phones' RTP ports (each
baresip gets its own `rtp_ports`) while the module runs, and an SRTP test picks
its call's RTP by the ports of the SDP offer and answer in baresip's trace.
The same capture of a plain RTP/AVP call finds the greeting's G.711 frames in
clear, so the SRTP tests would notice clear audio.

TLS with baresip 1.0.0: it has no option to skip the server certificate check
(`sip_verify_server` came later) and needs none, as it never asks libre to
verify a SIP/TLS server (the handshake with the test's self-signed certificate
succeeds without `sip_cafile`, which names that certificate anyway). It cannot
dial a `sips:` URI (it reads it as a user part, "sip:sips:95000@…"), so the
calls dial `sip:…;transport=tls`.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import os
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiortp.codecs import get_codec
from pylibsrtp import Policy, Session

from ivr.greeting import greeting_prompt_id
from prompts.library import PromptLibrary

from .baresip_phone import Baresip, require_baresip, start_baresip
from .conftest import IvrProcess, SippRun, free_port, sipp, start_ivr, write_ivr_config
from .test_e2e_routing import SENIOR, customers
from .test_e2e_sip import crm_events, crm_rows, ivr_prompts, wait_for_row
from .test_e2e_tcp import self_signed_certificate

pytestmark = pytest.mark.e2e

SILENT_CALLER = "13900000001"
SRTP_TAG = 10  # AES_CM_128_HMAC_SHA1_80, the suite baresip 1.0.0 offers: an 80-bit tag on every packet
G711_FRAME = 160  # 20 ms at 8 kHz, one byte a sample
PHONES, RTP_PORTS_EACH = 9, 8  # each baresip takes its RTP (and RTCP) ports from its own block of 8
SO_ATTACH_FILTER, SO_RCVBUFFORCE = 26, 33  # <asm-generic/socket.h>; the socket module lacks them
CRYPTO = re.compile(r"^a=crypto:(\d+) (\S+) inline:(\S+)$", re.M)  # tag, suite, key (RFC 4568)
SILENCE = {b"\xff" * G711_FRAME, b"\xd5" * G711_FRAME}  # PCMU and PCMA of baresip's silent WAV

# Over TLS the IVR's Contact is `<sip:127.0.0.1:TLS_PORT;transport=tls>` unless the request was `sips:`
# (RFC 3261 §8.1.1.8): baresip 1.0.0's libre (1.1.0) sends no request to a `sips:` URI (ENOSYS), so
# with a `sips:` Contact it could neither ACK the IVR's 200 OK nor send its BYE on a dialog over TLS.


# --- baresip's SIP trace (-s) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Traced:
    """One SIP message in baresip's log: transport, source and destination ("127.0.0.1:5060"), text.

    The log is read as text, so its lines end in a bare newline.
    """

    transport: str
    source: str
    destination: str
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0]

    @property
    def body(self) -> str:
        return self.text.split("\n\n", 1)[1] if "\n\n" in self.text else ""


def sip_trace(phone: Baresip) -> list[Traced]:
    return [Traced(*m) for m in re.findall(r"\x1b\[36;1m#\n(\w+) (\S+) -> (\S+)\n(.*?)\x1b\[;m", phone.log(), re.S)]


def first(trace: list[Traced], start: str) -> Traced:
    found = next((m for m in trace if m.first_line.startswith(start)), None)
    assert found is not None, f"no '{start}' in baresip's trace: {[(m.transport, m.first_line) for m in trace]}"
    return found


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def seen(phone: Baresip, kind: str) -> dict[str, Any] | None:
    return next((e for e in phone.events if e["type"] == kind), None)


# --- the wire: the phones' UDP on lo --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Datagram:
    source: int
    destination: int
    payload: bytes


MARKER_PORT = 9  # discard: nobody listens, but a datagram sent there still crosses lo


def port_filter(low: int, high: int) -> bytes:
    """A classic BPF program: IPv4 UDP datagrams from or to a port in [low, high), or to MARKER_PORT.

    The kernel drops everything else before it reaches the capture, so other UDP on lo (a
    load test on the same machine) cannot make the capture fall behind.
    """
    ld_h, ld_b, ldx_iphl, ld_h_x, jeq, jge, ret = 0x28, 0x30, 0xB1, 0x48, 0x15, 0x35, 0x06
    accept, drop = 12, 13
    program = [  # (code, jump if true, jump if false, k): jumps name the instruction, None is the next
        (ld_h, None, None, 12),        # 0: ethertype
        (jeq, None, drop, 0x0800),     # 1: IPv4
        (ld_b, None, None, 23),        # 2: IP protocol
        (jeq, None, drop, 17),         # 3: UDP
        (ldx_iphl, None, None, 14),    # 4: X = IP header length
        (ld_h_x, None, None, 14),      # 5: source port
        (jge, None, 8, low),           # 6
        (jge, 8, accept, high),        # 7: source port in range
        (ld_h_x, None, None, 16),      # 8: destination port
        (jeq, accept, None, MARKER_PORT),  # 9
        (jge, None, drop, low),        # 10
        (jge, drop, accept, high),     # 11: destination port in range
        (ret, None, None, 0x40000),    # 12: accept (the whole frame)
        (ret, None, None, 0),          # 13: drop
    ]
    return b"".join(struct.pack("HBBI", code, (pc + 1 if t is None else t) - pc - 1,
                                (pc + 1 if f is None else f) - pc - 1, k)
                    for pc, (code, t, f, k) in enumerate(program))


class LoopbackCapture:
    """Records UDP datagrams on lo to or from ports [low, high) from start to close.

    A raw AF_PACKET socket with a kernel filter: root only.
    """

    def __init__(self, low: int, high: int) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))  # ETH_P_ALL
        code = ctypes.create_string_buffer(port_filter(low, high))
        program = struct.pack("HL", len(code.raw) // 8, ctypes.addressof(code))  # struct sock_fprog
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)
        with contextlib.suppress(OSError):  # SO_RCVBUFFORCE: root may go past rmem_max
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 24)
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.datagrams: list[Datagram] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lo-capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                frame, address = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            # lo hands each frame to packet sockets twice, outgoing and incoming: keep one
            if address[2] == socket.PACKET_OUTGOING or frame[12:14] != b"\x08\x00" or frame[23] != 17:
                continue
            udp = frame[14 + (frame[14] & 0x0F) * 4:]
            source, destination, length = struct.unpack("!HHH", udp[:6])
            self.datagrams.append(Datagram(source, destination, udp[8:length]))

    def sync(self) -> None:
        """Returns once everything sent on lo before the call has been recorded (a marker datagram went round)."""
        marker, checked = os.urandom(16), len(self.datagrams)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(marker, ("127.0.0.1", MARKER_PORT))
        deadline = time.monotonic() + 10
        while True:
            recorded = len(self.datagrams)
            if any(d.payload == marker for d in self.datagrams[checked:recorded]):
                return
            assert time.monotonic() < deadline, "the capture on lo fell behind"
            checked = recorded
            time.sleep(0.05)

    def rtp(self, source: int, destination: int) -> list[bytes]:
        """The RTP (version 2, not RTCP) datagrams from one port to another."""
        self.sync()
        return [d.payload for d in list(self.datagrams)
                if (d.source, d.destination) == (source, destination)
                and len(d.payload) >= 12 and d.payload[0] >> 6 == 2 and not 192 <= d.payload[1] <= 223]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self.sock.close()


def open_capture(low: int, high: int) -> LoopbackCapture | str:
    """The capture, or why there is none."""
    if os.geteuid() != 0:
        return "not root: no raw packet socket on lo"
    try:
        return LoopbackCapture(low, high)
    except OSError as error:
        return f"no raw packet socket on lo: {error}"


# --- the scenarios, all started with the module ------------------------------------------


@dataclass
class Call:
    """What one scenario left: its IVR, its baresip (stopped), and for an agent the SIPp caller."""

    ivr: IvrProcess
    phone: Baresip
    tls_port: int = 0
    caller: SippRun | None = None
    caller_rc: int | None = None
    agent_bye: bool = False  # the IVR logged the agent's BYE (within 5 s of its hanging up)


@dataclass
class Bench:
    """The module's IVRs and scenarios (futures), and the capture of lo."""

    folder: Path
    certificate: Path
    rtp_ports: Iterator[int]  # the first of RTP_PORTS_EACH ports for each baresip, all inside the capture's range
    capture: LoopbackCapture | str
    pool: ThreadPoolExecutor
    ivrs: dict[str, Future[IvrProcess]] = field(default_factory=dict)
    tls_ports: dict[str, int] = field(default_factory=dict)
    scenarios: dict[str, Future[Call]] = field(default_factory=dict)

    def result(self, name: str, timeout: float = 90) -> Call:
        return self.scenarios[name].result(timeout)

    def wire(self) -> LoopbackCapture:
        """The capture of lo; without it (not root) a test of the wire fails in CI and is skipped elsewhere."""
        if isinstance(self.capture, str):
            if os.environ.get("CI"):
                pytest.fail(f"cannot watch the wire: {self.capture}")
            pytest.skip(f"cannot watch the wire: {self.capture}")
        return self.capture


MIGRATING = threading.Lock()  # alembic's command context is process-global: one migration at a time


def start_bench_ivr(bench: Bench, name: str, *, srtp: str, extra: str = "", with_customers: bool = False) -> None:
    """An IVR of its own folder on udp, tcp and tls (the module's certificate), started in the pool."""
    folder = bench.folder / name
    folder.mkdir()
    tls_port = free_port(socket.SOCK_STREAM)
    bench.tls_ports[name] = tls_port
    general = (f"transports = udp, tcp, tls\ntls_port = {tls_port}\n"
               f"tls_certificate = {bench.certificate}\ntls_key = {bench.certificate.with_name('key.pem')}\n")

    def start() -> IvrProcess:
        port, db_url = free_port(), f"sqlite:///{folder / 'crm.db'}"
        if with_customers:
            with MIGRATING:
                customers(folder, db_url)
        conf = write_ivr_config(folder, sip_port=port, db_url=db_url, general=general,
                                extra=f"[media]\nsrtp = {srtp}\n{extra}")
        return start_ivr(folder, conf, port, db_url)

    bench.ivrs[name] = bench.pool.submit(start)


def baresip_config(bench: Bench) -> str:
    first = next(bench.rtp_ports)
    return f"module srtp.so\nsip_cafile {bench.certificate}\nrtp_ports {first}-{first + RTP_PORTS_EACH - 1}\n"


def free_udp_block(size: int) -> int:
    """The first of `size` consecutive UDP ports on 127.0.0.1 free right now, below the IVRs' RTP ports."""
    for first in random.sample(range(10_000, 20_000 - size, size), 50):
        with contextlib.ExitStack() as stack:
            try:
                for port in range(first, first + size):
                    stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)).bind(("127.0.0.1", port))
            except OSError:
                continue
            return first
    raise RuntimeError(f"no {size} consecutive free UDP ports")


def caller_scenario(bench: Bench, ivr_name: str, home: str, *, transport: str = "udp", params: str = "",
                    hang_up_after: float | None = None) -> Callable[[], Call]:
    """baresip dials 95000 and stays silent: the IVR hangs up, or baresip does after `hang_up_after` s."""

    def run() -> Call:
        ivr = bench.ivrs[ivr_name].result(60)
        tls_port = bench.tls_ports[ivr_name]
        target = {"udp": f"{ivr.port}", "tcp": f"{ivr.port};transport=tcp", "tls": f"{tls_port};transport=tls"}
        # regint=0: a caller does not register; the IVR answers anyone who dials 95000
        phone = start_baresip(bench.folder / home, f"<sip:{SILENT_CALLER}@127.0.0.1>;regint=0{params}",
                              baresip_config(bench))
        try:
            phone.command("dial", f"sip:95000@127.0.0.1:{target[transport]}")
            if phone.wait_event(("CALL_ESTABLISHED", "CALL_CLOSED"))["type"] == "CALL_ESTABLISHED":
                if hang_up_after is not None:
                    time.sleep(hang_up_after)
                    phone.command("hangup")
                phone.wait_event("CALL_CLOSED", timeout=45)
        finally:
            phone.stop()
        return Call(ivr, phone, tls_port)

    return run


def agent_scenario(bench: Bench, ivr_name: str, transport: str) -> Callable[[], Call]:
    """baresip registers as agent 801 over `transport`; a senior SIPp caller is put through to it."""

    def run() -> Call:
        ivr = bench.ivrs[ivr_name].result(60)
        tls_port = bench.tls_ports[ivr_name]
        registrar = f"{tls_port if transport == 'tls' else ivr.port};transport={transport}"
        phone = start_baresip(bench.folder / f"agent-{transport}",
                              f"<sip:801@127.0.0.1:{registrar}>;auth_pass=pw801;regint=300;answermode=auto",
                              baresip_config(bench))
        call = Call(ivr, phone, tls_port)
        try:
            if phone.wait_event(("REGISTER_OK", "REGISTER_FAIL"))["type"] != "REGISTER_OK":
                return call
            call.caller = sipp(bench.folder / ivr_name, "survey_caller", ivr.port, extra=("-d", "11000"))
            phone.wait_event("CALL_ESTABLISHED", timeout=20)
            time.sleep(5)  # the announcement (~3 s), then talk
            phone.command("hangup")
            phone.wait_event("CALL_CLOSED")
            # the agent's BYE ends the bridge at once; without it the caller would wait for minutes
            sipp_call = f"1-{call.caller.proc.pid}@127.0.0.1"
            deadline = time.monotonic() + 5
            while "agent_bye" not in [k for k, _ in crm_events(ivr, sipp_call)] and time.monotonic() < deadline:
                time.sleep(0.1)
            call.agent_bye = "agent_bye" in [k for k, _ in crm_events(ivr, sipp_call)]
            if call.agent_bye:
                call.caller_rc = call.caller.wait(40)
        finally:
            if call.caller is not None and call.caller.proc.poll() is None:
                call.caller.proc.kill()
                call.caller.proc.wait()
            phone.stop()
        return call

    return run


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    require_baresip()
    folder = tmp_path_factory.mktemp("secure")
    certificate, _ = self_signed_certificate(folder)
    rtp_low = free_udp_block(PHONES * RTP_PORTS_EACH)
    capture = open_capture(rtp_low, rtp_low + PHONES * RTP_PORTS_EACH)
    with ThreadPoolExecutor(max_workers=16, thread_name_prefix="scenario") as pool:
        bench = Bench(folder, certificate, iter(range(rtp_low, rtp_low + PHONES * RTP_PORTS_EACH, RTP_PORTS_EACH)),
                      capture, pool)
        wrap_up = "[queues]\nwrap_up_seconds = 0\n"
        agent = "[801]\ntype = agent\nseat_group = senior\nhost = dynamic\nsecret = pw801\ndigest = md5\n"
        start_bench_ivr(bench, "streams", srtp="optional", extra="[silence]\nwait_seconds = 1\n")
        start_bench_ivr(bench, "required", srtp="required")
        start_bench_ivr(bench, "off", srtp="off")
        for transport in ("tcp", "tls"):
            start_bench_ivr(bench, f"agent-{transport}", srtp="optional", extra=wrap_up + agent, with_customers=True)
        scenarios = {
            "caller-tcp": caller_scenario(bench, "streams", "caller-tcp", transport="tcp"),
            "caller-tls": caller_scenario(bench, "streams", "caller-tls", transport="tls"),
            "agent-tcp": agent_scenario(bench, "agent-tcp", "tcp"),
            "agent-tls": agent_scenario(bench, "agent-tls", "tls"),
            "plain": caller_scenario(bench, "streams", "plain", hang_up_after=5),
            "srtp-optional": caller_scenario(bench, "streams", "srtp-optional", params=";mediaenc=srtp-mand",
                                             hang_up_after=5),
            "srtp-required": caller_scenario(bench, "required", "srtp-required", params=";mediaenc=srtp-mand",
                                             hang_up_after=5),
            "srtp-off": caller_scenario(bench, "off", "srtp-off", params=";mediaenc=srtp-mand", hang_up_after=5),
            "plain-required": caller_scenario(bench, "required", "plain-required", hang_up_after=5),
        }
        bench.scenarios = {name: pool.submit(run) for name, run in scenarios.items()}
        try:
            yield bench
        finally:
            for scenario in bench.scenarios.values():
                with contextlib.suppress(Exception):
                    scenario.result(120)
            for ivr in bench.ivrs.values():
                with contextlib.suppress(Exception):
                    ivr.result(60).stop()
            if isinstance(capture, LoopbackCapture):
                capture.close()


# --- SIP over TCP and TLS -----------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_baresip_caller_over_a_stream_hears_the_greeting_and_is_hung_up_on(bench: Bench, transport: str) -> None:
    call = bench.result(f"caller-{transport}")
    phone, ivr = call.phone, call.ivr
    established = seen(phone, "CALL_ESTABLISHED")
    assert established is not None, f"baresip: {[(e['type'], e.get('param')) for e in phone.events]}"
    rtp = seen(phone, "CALL_RTPESTAB")
    assert rtp is not None and rtp["param"] == "audio", "the IVR's audio reached baresip"
    trace = sip_trace(phone)
    invite = first(trace, "INVITE sip:95000@")
    assert invite.transport == transport.upper()
    # the IVR hangs up on the silent caller, on the connection baresip opened
    bye = first(trace, f"BYE sip:{SILENT_CALLER}-")
    assert (bye.transport, bye.source, bye.destination) == (invite.transport, invite.destination, invite.source)
    assert f";transport={transport} SIP/2.0" in bye.first_line
    row = wait_for_row(ivr, established["id"])
    assert (row["caller"], row["outcome"], row["hangup_by"], row["silent_attempts"]) == (
        SILENT_CALLER, "silent", "ivr", 3)
    prompts = [detail for kind, detail in crm_events(ivr, established["id"]) if kind == "prompt"]
    assert prompts and "greeting" in prompts[0], prompts
    assert (f"event='sip_connection_opened' transport='{transport.upper()}' peer='{invite.source}'"
            in ivr.log()), "the call's requests came over baresip's connection"


def test_baresip_reaches_the_ivr_over_tls_and_gets_its_answer(bench: Bench) -> None:
    """The TLS leg itself works: handshake with the self-signed certificate, INVITE, 100/180/200 with SDP."""
    call = bench.result("caller-tls")
    trace = sip_trace(call.phone)
    invite = first(trace, "INVITE sip:95000@")
    assert (invite.transport, port_of(invite.destination)) == ("TLS", call.tls_port)
    ok = first(trace, "SIP/2.0 200 OK")
    assert (ok.transport, ok.source, ok.destination) == ("TLS", invite.destination, invite.source)
    assert "m=audio " in ok.body and "RTP/AVP" in ok.body
    log = call.ivr.log()
    assert f"event='sip_connection_opened' transport='TLS' peer='{invite.source}'" in log
    call_id = re.search(r"^Call-ID: (\S+)$", invite.text, re.M)
    assert call_id and f"event='answered' call_id='{call_id.group(1)}'" in log


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_baresip_agent_801_registered_over_a_stream_is_rung_on_it_and_serves_a_senior_caller(
        bench: Bench, transport: str) -> None:
    call = bench.result(f"agent-{transport}")
    phone, ivr = call.phone, call.ivr
    registered = seen(phone, "REGISTER_OK")
    assert registered is not None, f"{phone.events}\n{phone.log()[-2500:]}"
    assert seen(phone, "CALL_ESTABLISHED") is not None
    assert call.caller is not None
    assert call.agent_bye, "the IVR saw the agent's BYE"
    assert call.caller_rc == 0, f"SIPp: {call.caller.errors()}"
    row = wait_for_row(ivr, f"1-{call.caller.proc.pid}@127.0.0.1")
    assert (row["caller"], row["tier"], row["seat_group"], row["agent_number"]) == (SENIOR, "senior", "senior", "801")
    assert (row["outcome"], row["hangup_by"], row["survey_score"]) == ("completed", "agent", 1)
    assert row["talk_s"] > 0
    assert "bridged" in [k for k, _ in crm_events(ivr, row["sip_call_id"])]


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_baresip_agent_801_is_rung_on_the_connection_it_registered_over(bench: Bench, transport: str) -> None:
    call = bench.result(f"agent-{transport}")
    phone, ivr = call.phone, call.ivr
    assert seen(phone, "CALL_ESTABLISHED") is not None, f"{phone.events}\n{phone.log()[-2500:]}"
    trace = sip_trace(phone)
    register = first(trace, "REGISTER sip:")
    invite = first(trace, "INVITE sip:801-")
    assert register.transport == invite.transport == transport.upper()
    assert (invite.source, invite.destination) == (register.destination, register.source), \
        "the INVITE came back on the registration's connection"
    assert f";transport={transport} SIP/2.0" in invite.first_line
    assert "王总" in invite.text  # the screen-pop: the senior customer's name
    log = ivr.log()
    assert f"event='agent_registered' agent='801' contact='{register.source}'" in log
    assert log.count("event='sip_connection_opened'") == 1, "one connection for registering and ringing"


# --- SRTP ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Media:
    """A caller's call as the SDP in baresip's trace set it up: offer, answer and their RTP ports."""

    offer: str
    answer: str
    phone_port: int
    ivr_port: int

    def wire(self, bench: Bench) -> tuple[list[bytes], list[bytes]]:
        """Its RTP as captured on lo: from the IVR to baresip, and from baresip to the IVR."""
        capture = bench.wire()
        return capture.rtp(self.ivr_port, self.phone_port), capture.rtp(self.phone_port, self.ivr_port)


def media_of(call: Call) -> Media:
    trace = sip_trace(call.phone)
    offer, answer = first(trace, "INVITE sip:95000@").body, first(trace, "SIP/2.0 200 OK").body
    phone_port = int(re.search(r"^m=audio (\d+) ", offer, re.M).group(1))  # type: ignore[union-attr]
    ivr_port = int(re.search(r"^m=audio (\d+) ", answer, re.M).group(1))  # type: ignore[union-attr]
    return Media(offer, answer, phone_port, ivr_port)


def prompt_frames(call: Call, prompt: str | None = None) -> set[bytes]:
    """The IVR's pre-encoded 20 ms G.711 frames (PCMU and PCMA) of one prompt, or of every prompt."""
    library = PromptLibrary(ivr_prompts(call.ivr.log_path.parent), {0: get_codec(0).encode, 8: get_codec(8).encode})
    prompts = [prompt] if prompt else list(library.prompts)
    return {frame for p in prompts for pt in (0, 8) for frame in library.frames(p, pt) if len(frame) == G711_FRAME}


def unprotect(packets: list[bytes], inline: str) -> list[bytes]:
    """SRTP packets decrypted and authenticated with an a=crypto line's key; raises on any that fails."""
    key = base64.b64decode(inline.split("|")[0], validate=True)  # master key||salt, before any |lifetime|MKI
    session = Session(policy=Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND,
                                    srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
    return [session.unprotect(p) for p in packets]


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_baresip_srtp_mandatory_call_is_answered_savp_and_no_g711_crosses_the_wire(bench: Bench, mode: str) -> None:
    call = bench.result(f"srtp-{mode}")
    phone = call.phone
    established = seen(phone, "CALL_ESTABLISHED")
    assert established is not None, f"{[(e['type'], e.get('param')) for e in phone.events]}\n{phone.log()[-3000:]}"
    media = media_of(call)
    assert re.search(r"^m=audio \d+ RTP/SAVP ", media.offer, re.M), media.offer
    assert re.search(r"^m=audio \d+ RTP/SAVP ", media.answer, re.M), media.answer
    offered = {tag: (suite, inline) for tag, suite, inline in CRYPTO.findall(media.offer)}
    answered = CRYPTO.findall(media.answer)
    assert len(answered) == 1, answered
    tag, suite, ivr_inline = answered[0]
    assert suite == "AES_CM_128_HMAC_SHA1_80" and offered[tag][0] == suite, (answered, offered)
    assert f"srtp: audio: SRTP is Enabled (cryptosuite={suite})" in phone.log()
    row = wait_for_row(call.ivr, established["id"])
    assert (row["outcome"], row["hangup_by"]) == ("caller_hangup", "caller")
    # 5 s of the call on the wire: the greeting (after the ring) from the IVR, baresip's silence to it
    from_ivr, to_ivr = media.wire(bench)
    assert len(from_ivr) >= 150 and len(to_ivr) >= 150, (len(from_ivr), len(to_ivr))
    for packets in (from_ivr, to_ivr):
        assert {len(p) for p in packets} == {12 + G711_FRAME + SRTP_TAG}, "20 ms of G.711 and an 80-bit tag each"
    prompts = prompt_frames(call)
    assert len(prompts) > 1000
    clear = [p for p in from_ivr if p[12:12 + G711_FRAME] in prompts | SILENCE]
    assert not clear, f"{len(clear)} packets from the IVR carry a prompt's G.711 in clear"
    assert not [p for p in to_ivr if p[12:12 + G711_FRAME] in SILENCE], "baresip's silence in clear"
    # and what did cross is SRTP under the SDP's keys: the greeting with the IVR's, the silence with baresip's
    greeting = prompt_frames(call, greeting_prompt_id(row["greeting"])) - SILENCE
    spoken = [p[12:] for p in unprotect(from_ivr, ivr_inline)]
    assert len([f for f in spoken if f in greeting]) >= 100, "the greeting, once decrypted"
    assert {p[12:] for p in unprotect(to_ivr, offered[tag][1])} <= SILENCE


def test_the_same_capture_of_a_plain_call_finds_the_greeting_in_clear(bench: Bench) -> None:
    """The control: RTP/AVP through the same capture shows the greeting's frames, so the SRTP tests can fail."""
    call = bench.result("plain")
    established = seen(call.phone, "CALL_ESTABLISHED")
    assert established is not None
    media = media_of(call)
    assert re.search(r"^m=audio \d+ RTP/AVP ", media.answer, re.M) and "a=crypto" not in media.answer
    row = wait_for_row(call.ivr, established["id"])
    from_ivr, to_ivr = media.wire(bench)
    assert {len(p) for p in from_ivr} == {12 + G711_FRAME}
    greeting = prompt_frames(call, greeting_prompt_id(row["greeting"])) - SILENCE
    heard = [p for p in from_ivr if p[12:] in greeting]
    assert len(heard) >= 100, f"{len(heard)} of {len(from_ivr)} packets carry greeting frames in clear"
    assert [p for p in to_ivr if p[12:] in SILENCE], "baresip's silence in clear"


@pytest.mark.parametrize(("scenario", "reason"), [
    ("srtp-off", r"secure media \(RTP/SAVP\) offered but \[media\] srtp = off"),
    ("plain-required", r"plain media \(RTP/AVP\) offered but \[media\] srtp = required"),
], ids=["srtp-off", "plain-required"])
def test_baresip_call_the_srtp_mode_cannot_honour_is_refused_488(bench: Bench, scenario: str, reason: str) -> None:
    call = bench.result(scenario)
    phone = call.phone
    assert seen(phone, "CALL_ESTABLISHED") is None
    closed = seen(phone, "CALL_CLOSED")
    assert closed is not None and closed["param"] == "488 Not Acceptable Here", phone.events
    assert "session closed: 488 Not Acceptable Here" in phone.log()
    log = call.ivr.log()
    rejected = rf"event='invite_rejected' call_id='{closed['id']}' status=488 reason='{reason}'"
    assert re.search(rejected, log), log[-2000:]
    assert not crm_rows(call.ivr, f"sip_call_id = '{closed['id']}'")
    offer = first(sip_trace(phone), "INVITE sip:95000@").body
    phone_port = int(re.search(r"^m=audio (\d+) ", offer, re.M).group(1))  # type: ignore[union-attr]
    if isinstance(bench.capture, LoopbackCapture):  # the refusal itself is checked without the wire too
        bench.capture.sync()
        assert not [d for d in bench.capture.datagrams if d.destination == phone_port], "no media for a refused call"
