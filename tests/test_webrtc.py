"""Browser agent legs' media: ICE-lite, DTLS-SRTP, rtcp-mux on one port.

The far end in the end-to-end tests is aiortc, a second and independent
WebRTC implementation, doing what a browser does with our offer: full ICE as
the controlling agent, DTLS as the active side, SRTP from exported keys.
Only 127.0.0.1 is used (aiortc's candidate gathering is pinned to loopback,
no STUN/TURN server).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import socket
import struct
import sys
import weakref
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aioice.ice
import numpy as np
import pytest
import structlog
import structlog.testing
from aioice import stun
from aiortp.codecs import get_codec

from ivr.bridge import MediaBridge
from ivr.media import MediaClock, RtpPortPool, WebRtcFailed, WebRtcSession, open_rtp, open_webrtc
from ivr.webrtc import (
    AnswerError,
    DtlsCertificate,
    PeerState,
    WebRtcPeer,
    classify,
    local_certificate,
    offer_sdp,
    parse_answer,
)
from tests.browser_agent import FRAME, RATE, ToneTrack, browser_answer, tone
from tests.conftest import free_port
from tests.lossy import lossy_namespace_or_skip


def energy_at(samples: np.ndarray, freq: float) -> float:
    """Share of the signal's energy within 50 Hz of `freq`."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / RATE)
    total = float(spectrum.sum())
    return float(spectrum[np.abs(freqs - freq) < 50].sum()) / total if total else 0.0


def pool() -> RtpPortPool:
    first = free_port(even=True)
    return RtpPortPool(first, first + 2)


# --- unit: demultiplexing, STUN, SDP, the fingerprint ----------------------------------------


def test_first_byte_tells_stun_dtls_and_rtp_apart() -> None:
    assert classify(bytes([0, 1]) + bytes(18)) == "stun"
    assert classify(bytes([3])) == "stun"
    assert classify(bytes([22, 0xFE, 0xFD])) == "dtls"  # handshake record, DTLS 1.2
    assert classify(bytes([20])) == "dtls" and classify(bytes([63])) == "dtls"
    assert classify(bytes([0x80, 0])) == "rtp" and classify(bytes([191])) == "rtp"
    for first in (4, 19, 64, 127, 192, 255):
        assert classify(bytes([first])) == "other"
    assert classify(b"") == "other"


def binding_request(ufrag: str, pwd: str, *, use_candidate: bool = False) -> bytes:
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST,
                           attributes={"USERNAME": f"{ufrag}:browser", "PRIORITY": 1853817087,
                                       "ICE-CONTROLLING": 12345})
    if use_candidate:
        request.attributes["USE-CANDIDATE"] = None
    request.add_message_integrity(pwd.encode())
    return bytes(request)


def test_binding_request_is_answered_with_integrity_and_fingerprint() -> None:
    sent: list[tuple[bytes, tuple[str, int]]] = []
    peer = WebRtcPeer(local_certificate(), lambda data, addr: sent.append((data, addr)))
    peer.stun(binding_request(peer.ufrag, peer.pwd, use_candidate=True), ("127.0.0.1", 5000))
    assert len(sent) == 1 and sent[0][1] == ("127.0.0.1", 5000)
    response = stun.parse_message(sent[0][0])  # raises when the FINGERPRINT is wrong
    assert "FINGERPRINT" in response.attributes
    assert response.message_class == stun.Class.RESPONSE
    assert response.check_message_integrity(peer.pwd.encode())
    assert not response.check_message_integrity(b"another password")
    assert response.attributes["XOR-MAPPED-ADDRESS"] == ("127.0.0.1", 5000)
    assert peer.selected == ("127.0.0.1", 5000) and ("127.0.0.1", 5000) in peer.consented


def test_check_without_our_password_gets_no_answer_and_no_consent() -> None:
    sent: list[bytes] = []
    peer = WebRtcPeer(local_certificate(), lambda data, addr: sent.append(data))
    peer.stun(binding_request(peer.ufrag, "not-the-password-at-all!"), ("127.0.0.1", 5000))
    peer.stun(binding_request("otheruf", peer.pwd), ("127.0.0.1", 5001))
    peer.stun(b"\x00\x01\x00\x00garbage", ("127.0.0.1", 5002))
    assert sent == [] and not peer.consented and peer.stun_rejected == 3
    peer.dtls(bytes([22]) + bytes(20), ("127.0.0.1", 5000))  # DTLS from an unconsented address
    assert peer.dtls_dropped == 1


def test_offer_is_dtls_srtp_ice_lite_rtcp_mux_g711() -> None:
    cert = local_certificate()
    sdp = offer_sdp(address="127.0.0.1", port=40000, payload_type=8, ufrag="abcd", pwd="p" * 24,
                    fingerprint=cert.fingerprint, ssrc=1234)
    lines = sdp.split("\r\n")
    assert "m=audio 40000 UDP/TLS/RTP/SAVPF 8 101" in lines
    assert lines.index("a=ice-lite") < lines.index("m=audio 40000 UDP/TLS/RTP/SAVPF 8 101")  # session level
    for line in ("a=rtcp-mux", "a=setup:actpass", "a=ice-ufrag:abcd", f"a=ice-pwd:{'p' * 24}",
                 "a=rtpmap:8 PCMA/8000", "a=rtpmap:101 telephone-event/8000", "c=IN IP4 127.0.0.1",
                 "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host", "a=sendrecv"):
        assert line in lines, line
    fingerprint = next(x for x in lines if x.startswith("a=fingerprint:"))
    assert re.fullmatch(r"a=fingerprint:sha-256 ([0-9A-F]{2}:){31}[0-9A-F]{2}", fingerprint)
    assert "crypto" not in sdp  # never SDES to a browser
    with pytest.raises(ValueError, match="PCMU"):
        offer_sdp(address="127.0.0.1", port=40000, payload_type=111, ufrag="abcd", pwd="p" * 24,
                  fingerprint=cert.fingerprint, ssrc=1)


def test_certificate_is_ecdsa_p256_and_one_per_process() -> None:
    cert = local_certificate()
    assert cert is local_certificate()
    assert cert.key.curve.name == "secp256r1"
    assert cert.fingerprint.startswith("sha-256 ")


ANSWER = """v=0\r
o=- 1 2 IN IP4 127.0.0.1\r
s=-\r
t=0 0\r
a=fingerprint:sha-256 {fp}\r
m=audio 9 UDP/TLS/RTP/SAVPF 0 101\r
c=IN IP4 0.0.0.0\r
a=ice-ufrag:brws\r
a=ice-pwd:browserpasswordbrowserpw\r
a=setup:{setup}\r
a=rtcp-mux\r
"""
FP = ":".join(["AB"] * 32)


def test_answer_gives_fingerprint_credentials_and_role() -> None:
    answer = parse_answer(ANSWER.format(fp=FP.lower(), setup="active"), 0)
    assert answer.fingerprint == FP and answer.ice_ufrag == "brws" and answer.setup == "active"
    assert answer.ice_pwd == "browserpasswordbrowserpw"
    # several hashes of the same certificate (aiortc, Firefox): the SHA-256 one is checked
    several = ANSWER.format(fp=FP, setup="passive").replace(
        f"a=fingerprint:sha-256 {FP}", "a=fingerprint:sha-384 " + ":".join(["CD"] * 48) + f"\r\na=fingerprint:sha-256 {FP}")
    assert parse_answer(several, 0).fingerprint == FP and parse_answer(several, 0).setup == "passive"


@pytest.mark.parametrize(("sdp", "why"), [
    (ANSWER.format(fp=FP, setup="actpass"), "setup"),
    (ANSWER.format(fp=FP[:-3], setup="active"), "malformed"),
    (ANSWER.format(fp=FP, setup="active").replace("a=ice-pwd:browserpasswordbrowserpw\r\n", ""), "ice-pwd"),
    (ANSWER.format(fp=FP, setup="active").replace("SAVPF 0 101", "SAVPF 8 101"), "PCMU"),
    (ANSWER.format(fp=FP, setup="active").replace("m=audio 9", "m=audio 0"), "rejected"),
    (ANSWER.format(fp=FP, setup="active").replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"), "profile"),
    (ANSWER.format(fp=FP, setup="active").replace("sha-256", "md5"), "algorithm"),
    ("v=0\r\n", "no media"),
])
def test_unusable_answer_is_refused_with_the_reason(sdp: str, why: str) -> None:
    with pytest.raises(AnswerError, match=why):
        parse_answer(sdp, 0)


def test_wrong_fingerprint_fails_the_handshake_and_gives_no_keys() -> None:
    """Two peers in memory; the browser's answer names a certificate other than the one it presents."""
    ours: WebRtcPeer
    theirs: WebRtcPeer
    us, them = ("127.0.0.1", 1), ("127.0.0.1", 2)
    ours = WebRtcPeer(local_certificate(), lambda data, _addr: theirs.dtls(data, us))
    browser_cert, impostor = DtlsCertificate.generate(), DtlsCertificate.generate()
    theirs = WebRtcPeer(browser_cert, lambda data, _addr: ours.dtls(data, them))
    failures: list[str] = []
    keys: list[object] = []
    ours.on_failed = failures.append
    ours.on_connected = lambda srtp, addr: keys.append(srtp)
    ours.consented.add(them)
    ours.selected = them
    theirs.consented.add(us)
    theirs.selected = us
    fp = impostor.fingerprint.split()[1]
    ours.accept(parse_answer(ANSWER.format(fp=fp, setup="active"), 0))  # we are the DTLS server
    theirs.accept(parse_answer(ANSWER.format(fp=local_certificate().fingerprint.split()[1], setup="passive"), 0))
    assert keys == [] and ours.state is PeerState.FAILED
    assert failures and "does not match the a=fingerprint" in failures[0]
    # refused inside the handshake: the browser got a fatal alert and failed too
    assert theirs.state is PeerState.FAILED and "alert" in theirs.failure, theirs.failure


def test_matching_fingerprint_gives_both_sides_the_same_keys() -> None:
    ours: WebRtcPeer
    theirs: WebRtcPeer
    us, them = ("127.0.0.1", 1), ("127.0.0.1", 2)
    ours = WebRtcPeer(local_certificate(), lambda data, _addr: theirs.dtls(data, us))
    browser_cert = DtlsCertificate.generate()
    theirs = WebRtcPeer(browser_cert, lambda data, _addr: ours.dtls(data, them))
    got: dict[str, Any] = {}
    ours.on_connected = lambda srtp, addr: got.setdefault("ours", srtp)
    theirs.on_connected = lambda srtp, addr: got.setdefault("theirs", srtp)
    ours.consented.add(them)
    ours.selected = them
    theirs.consented.add(us)
    theirs.selected = us
    ours.accept(parse_answer(ANSWER.format(fp=browser_cert.fingerprint.split()[1], setup="active"), 0))
    theirs.accept(parse_answer(ANSWER.format(fp=local_certificate().fingerprint.split()[1], setup="passive"), 0))
    assert ours.state is PeerState.CONNECTED and theirs.state is PeerState.CONNECTED
    packet = struct.pack("!BBHII", 0x80, 0, 1, 160, 99) + bytes(160)
    assert got["theirs"].unprotect(got["ours"].protect(packet)) == packet
    assert got["ours"].unprotect(got["theirs"].protect(packet)) == packet


# --- end to end: aiortc as the browser -------------------------------------------------------


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """aiortc's ICE gathers host candidates on 127.0.0.1 only (aioice skips loopback by default)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    yield


class Relay(asyncio.DatagramProtocol):
    """A UDP relay on 127.0.0.1 between the browser and the IVR that keeps every datagram it carries."""

    def __init__(self, ivr: tuple[str, int]) -> None:
        self.ivr = ivr
        self.browser: tuple[str, int] | None = None
        self.seen: list[tuple[str, bytes]] = []  # ("to_ivr" | "to_browser", datagram)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is None:
            return
        if addr == self.ivr:
            if self.browser is not None:
                self.seen.append(("to_browser", data))
                self.transport.sendto(data, self.browser)
        else:
            self.browser = addr
            self.seen.append(("to_ivr", data))
            self.transport.sendto(data, self.ivr)


def with_leg(body: Callable[[WebRtcSession, int, str], Awaitable[None]]) -> None:
    """Run `body` on a fresh browser leg (session, port, offer) in its own event loop; close the leg after."""
    async def run() -> None:
        session, port, offer = await open_webrtc(pool(), "127.0.0.1", 0)
        try:
            await body(session, port, offer)
        finally:
            await session.close()
    asyncio.run(run())


def test_aiortc_browser_and_ivr_hear_each_other_over_dtls_srtp() -> None:
    with_leg(_test_aiortc_browser_and_ivr_hear_each_other_over_dtls_srtp)


async def _test_aiortc_browser_and_ivr_hear_each_other_over_dtls_srtp(session: WebRtcSession, port: int, offer: str) -> None:
    loop = asyncio.get_running_loop()
    relay = Relay(("127.0.0.1", port))
    relay_transport, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=("127.0.0.1", 0))
    relay_port = relay_transport.get_extra_info("sockname")[1]
    # the browser reaches us through the relay: the offer's candidate (and c=) name the relay's port
    via_relay = offer.replace(f" {port} typ host", f" {relay_port} typ host").replace(
        f"m=audio {port} ", f"m=audio {relay_port} ")
    heard: list[bytes] = []
    session.on_audio = lambda pcm, ts: heard.append(pcm)
    pc, answer, frames = await browser_answer(via_relay, ToneTrack(600.0))
    try:
        assert "a=setup:active" in answer
        session.accept_answer(answer)
        await asyncio.wait_for(session.connected(), 10)
        assert session.state == "connected" and session.handshake_seconds is not None
        # the IVR speaks: a 1 kHz tone, 20 ms frames for 1.5 s
        clock_ts = 0
        for n in range(75):
            session.send_audio_pcm(tone(1000.0, n * FRAME).tobytes(), clock_ts)
            clock_ts += FRAME
            await asyncio.sleep(0.02)
        received: list[np.ndarray] = []
        while not frames.empty():
            frame = frames.get_nowait()
            received.append(frame.to_ndarray().reshape(-1).astype(np.int16))
    finally:
        await pc.close()
        relay_transport.close()
    at_browser = np.concatenate(received) if received else np.zeros(1, np.int16)
    assert len(at_browser) >= 40 * FRAME, f"the browser got {len(at_browser)} samples"
    assert energy_at(at_browser[-20 * FRAME:], 1000.0) > 0.8  # our tone, decoded by aiortc
    at_ivr = np.frombuffer(b"".join(heard), np.int16)
    assert len(at_ivr) >= 40 * FRAME, f"the IVR got {len(at_ivr)} samples"
    assert energy_at(at_ivr[-20 * FRAME:], 600.0) > 0.8  # the browser's tone, via our on_audio
    # what crossed the wire is SRTP: no 12-byte RTP header followed by the plain PCMU of our tone
    media = [d for way, d in relay.seen if classify(d) == "rtp" and not 192 <= d[1] <= 223]
    ours = [d for way, d in relay.seen if way == "to_browser" and classify(d) == "rtp" and not 192 <= d[1] <= 223]
    assert len(ours) >= 70 and media
    assert all(len(d) == 12 + FRAME + 10 for d in ours)  # payload + the 80-bit auth tag
    pcmu = get_codec(0)
    plain = {pcmu.encode(tone(1000.0, n * FRAME).tobytes()) for n in range(75)}
    assert not any(d[12:12 + FRAME] in plain for d in ours)
    kinds = {classify(d) for _, d in relay.seen}
    assert {"stun", "dtls", "rtp"} <= kinds


def test_browser_presenting_another_certificate_ends_the_leg_cleanly() -> None:
    with_leg(_test_browser_presenting_another_certificate_ends_the_leg_cleanly)


async def _test_browser_presenting_another_certificate_ends_the_leg_cleanly(session: WebRtcSession, port: int, offer: str) -> None:
    failures: list[str] = []
    session.on_failed = failures.append
    pc, answer, _ = await browser_answer(offer, None)
    try:
        forged = re.sub(r"a=fingerprint:sha-256 \S+", "a=fingerprint:sha-256 " + FP, answer)
        session.accept_answer(forged)
        with pytest.raises(WebRtcFailed, match="fingerprint"):
            await asyncio.wait_for(session.connected(), 10)
    finally:
        await pc.close()
    assert session.state == "failed" and failures and "fingerprint" in failures[0]
    # the clock's next frames go nowhere: no keys, and never a clear packet instead
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.setblocking(False)
    session._remote_addr = listener.getsockname()
    for n in range(3):
        session.send_audio_pcm(tone(1000.0, n * FRAME).tobytes(), n * FRAME)
    await asyncio.sleep(0.1)
    with pytest.raises(BlockingIOError):
        listener.recv(2048)
    listener.close()


def test_answer_without_our_codec_fails_at_once() -> None:
    with_leg(_test_answer_without_our_codec_fails_at_once)


async def _test_answer_without_our_codec_fails_at_once(session: WebRtcSession, port: int, offer: str) -> None:
    with pytest.raises(WebRtcFailed, match="PCMU"):
        session.accept_answer(ANSWER.format(fp=FP, setup="active").replace("SAVPF 0 101", "SAVPF 8"))
    assert session.state == "failed"
    with pytest.raises(WebRtcFailed):
        await session.connected()


def test_no_check_from_the_browser_times_out() -> None:
    with_leg(_test_no_check_from_the_browser_times_out)


async def _test_no_check_from_the_browser_times_out(session: WebRtcSession, port: int, offer: str) -> None:
    session.connect_timeout = 0.3
    session.accept_answer(ANSWER.format(fp=FP, setup="active"))
    with pytest.raises(WebRtcFailed, match="ICE"):
        await asyncio.wait_for(session.connected(), 5)


def test_handshake_stays_off_the_media_clock() -> None:
    """Handshakes while the clock serves a call: it stays on time, and no DTLS step takes long.

    The step bound is what the IVR controls (the CPU of one datagram's
    handling); the clock's median lateness is compared with its own just
    before. The far ends are the light `MiniBrowser` (aiortc's own Python work
    on this loop would be measured instead of ours). The p99 on a shared
    machine is noise; loadtest/webrtc_bench.py measures it under load.
    """
    asyncio.run(_handshakes_on_a_running_clock())


async def _handshakes_on_a_running_clock() -> None:

    class Idle:
        def send_next_frame(self, tick: int) -> bool:
            return False

        def prompt_done(self) -> None:
            pass

    clock = MediaClock()
    served = Idle()
    clock.serve(served)
    await asyncio.sleep(1.0)
    before = clock.stats()
    clock.lateness.clear()
    steps = []
    for _ in range(10):
        session, port, _ = await open_webrtc(pool(), "127.0.0.1", 0)
        browser = MiniBrowser(session, port, "active")
        await browser.connect()
        steps.append(session.dtls_step_max)
        browser.close()
        await session.close()
        await asyncio.sleep(0.05)
    during = clock.stats()
    clock.stop(served)
    await clock.close()
    assert during["ticks"] > before["ticks"] and all(0 < step < 0.020 for step in steps), steps
    assert float(during["lateness_ms_p50"]) <= float(before["lateness_ms_p50"]) + 2.0, (before, during)


class BridgeParty:
    """One side of a MediaBridge, as ivr.leg.Leg and ivr.agents.AgentLeg present themselves to it."""

    def __init__(self, rtp: Any) -> None:
        self.rtp = rtp
        self.payload_type = 0
        self.ts = 0

    def next_timestamp(self) -> int:
        self.ts = (self.ts + FRAME) & 0xFFFFFFFF
        return self.ts


def test_bridge_carries_a_browser_agent_like_any_other_agent() -> None:
    """Caller on plain RTP, agent in aiortc over DTLS-SRTP, the unchanged MediaBridge on the media clock."""
    with_leg(_bridge_to_browser)


async def _bridge_to_browser(session: WebRtcSession, port: int, offer: str) -> None:
    loop = asyncio.get_running_loop()
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind(("127.0.0.1", 0))
    phone.setblocking(False)
    caller_rtp, caller_port = await open_rtp(pool(), "127.0.0.1", phone.getsockname(), 0)
    pc, answer, frames = await browser_answer(offer, ToneTrack(600.0))
    clock = MediaClock()
    pcmu = get_codec(0)
    at_phone: list[bytes] = []
    try:
        session.accept_answer(answer)
        await asyncio.wait_for(session.connected(), 10)
        bridge = MediaBridge(BridgeParty(caller_rtp), BridgeParty(session))
        bridge.connect()
        clock.serve(bridge)
        start = loop.time()
        for n in range(100):  # the caller's phone says 1 kHz for 2 s, and keeps what it hears
            phone.sendto(struct.pack("!BBHII", 0x80, 0, n, n * FRAME, 0xCA11) + pcmu.encode(
                tone(1000.0, n * FRAME).tobytes()), ("127.0.0.1", caller_port))
            try:
                while True:
                    data = phone.recv(2048)
                    at_phone.append(pcmu.decode(data[12:]))
            except BlockingIOError:
                pass
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))
        clock.stop(bridge)
        bridge.close()
        received = [frames.get_nowait().to_ndarray().reshape(-1).astype(np.int16) for _ in range(frames.qsize())]
    finally:
        await clock.close()
        await pc.close()
        await caller_rtp.close()
        phone.close()
    at_browser = np.concatenate(received)
    assert energy_at(at_browser[-25 * FRAME:], 1000.0) > 0.8  # the caller, heard in the browser
    heard = np.frombuffer(b"".join(at_phone), np.int16)
    assert len(heard) >= 50 * FRAME
    assert energy_at(heard[-25 * FRAME:], 600.0) > 0.8  # the browser agent, heard on the caller's phone


class MiniBrowser:
    """A far end made of the sans-IO peer over a real socket: one ICE check, then DTLS in the role it answered."""

    def __init__(self, session: WebRtcSession, port: int, setup: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.ivr = ("127.0.0.1", port)
        self.session = session
        self.setup = setup
        self.cert = DtlsCertificate.generate()
        self.peer = WebRtcPeer(self.cert, lambda data, addr: self.sock.sendto(data, addr))
        self.peer.consented.add(self.ivr)
        self.peer.selected = self.ivr
        self.keys: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.peer.on_connected = lambda srtp, _addr: self.keys.set_result(srtp)
        self.rtp: list[bytes] = []
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            while True:
                data = self.sock.recv(2048)
                kind = classify(data)
                if kind == "dtls":
                    self.peer.dtls(data, self.ivr)
                elif kind == "rtp":
                    self.rtp.append(data)
        except BlockingIOError:
            pass

    def answer(self) -> str:
        return ANSWER.format(fp=self.cert.fingerprint.split()[1], setup=self.setup).replace(
            "brws", self.peer.ufrag).replace("browserpasswordbrowserpw", self.peer.pwd)

    async def connect(self) -> Any:
        self.session.accept_answer(self.answer())
        check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, attributes={
            "USERNAME": f"{self.session.peer.ufrag}:{self.peer.ufrag}", "ICE-CONTROLLING": 1, "USE-CANDIDATE": None})
        check.add_message_integrity(self.session.peer.pwd.encode())
        self.sock.sendto(bytes(check), self.ivr)
        ours = "passive" if self.setup == "active" else "active"  # the IVR's role, from the browser's side
        self.peer.accept(parse_answer(ANSWER.format(fp=self.session.peer.certificate.fingerprint.split()[1],
                                                    setup=ours), 0))
        srtp = await asyncio.wait_for(self.keys, 10)
        await asyncio.wait_for(self.session.connected(), 10)
        return srtp

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        del self.session  # this helper's own cycles (its peer's callbacks) must not keep the IVR's session


def test_browser_answering_passive_makes_the_ivr_the_dtls_client() -> None:
    with_leg(_ivr_as_dtls_client)


async def _ivr_as_dtls_client(session: WebRtcSession, port: int, offer: str) -> None:
    browser = MiniBrowser(session, port, "passive")
    try:
        srtp = await browser.connect()
        session.send_audio(b"\xff" * FRAME, 160)
        await asyncio.sleep(0.1)
    finally:
        browser.close()
    assert session.state == "connected" and browser.rtp
    session.accept_answer(browser.answer())  # the same 200 OK again: nothing changes
    with pytest.raises(WebRtcFailed, match="renegotiation"):
        session.accept_answer(browser.answer().replace("a=setup:passive", "a=setup:active"))
    assert session.state == "connected"
    plain = srtp.unprotect(browser.rtp[-1])
    assert plain[1] & 0x7F == 0 and plain[12:] == b"\xff" * FRAME


def test_browser_dtmf_is_heard_and_strangers_srtp_is_not() -> None:
    with_leg(_dtmf_and_strangers)


async def _dtmf_and_strangers(session: WebRtcSession, port: int, offer: str) -> None:
    digits: list[str] = []
    heard: list[bytes] = []
    session.on_dtmf = lambda digit, _duration: digits.append(digit)
    session.on_audio = lambda pcm, _ts: heard.append(pcm)
    browser = MiniBrowser(session, port, "active")
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    try:
        srtp = await browser.connect()
        ssrc = 0xB0B
        # before anything else, a stranger replays the browser's own SRTP from another address
        first = srtp.protect(struct.pack("!BBHII", 0x80, 0, 1, 160, ssrc) + b"\x00" * FRAME)
        stranger.sendto(first, browser.ivr)
        await asyncio.sleep(0.05)
        assert session.stray >= 1 and heard == []
        for seq, (end, duration) in enumerate([(0, 160), (0, 320), (0x80, 480), (0x80, 480), (0x80, 480)], 2):
            event = struct.pack("!BBH", 5, end | 10, duration)  # digit 5, volume 10 (RFC 4733 §2.3)
            browser.sock.sendto(srtp.protect(struct.pack("!BBHII", 0x80, 101 | (0x80 if seq == 2 else 0), seq,
                                                         160 * 2, ssrc) + event), browser.ivr)
        await asyncio.sleep(0.1)
    finally:
        browser.close()
        stranger.close()
    assert digits == ["5"]


def test_failure_is_logged_with_the_calls_id() -> None:
    async def run() -> list[dict[str, Any]]:
        call_log = structlog.get_logger("ivr.agents").bind(call_id="call-42")
        session, _, _ = await open_webrtc(pool(), "127.0.0.1", 8, call_log=call_log)
        try:
            with structlog.testing.capture_logs() as logs:
                with pytest.raises(WebRtcFailed):
                    session.accept_answer(ANSWER.format(fp=FP, setup="active"))  # PCMU answered to a PCMA offer
        finally:
            await session.close()
        return logs
    logs = asyncio.run(run())
    failed = [entry for entry in logs if entry["event"] == "webrtc_failed"]
    assert failed and failed[0]["call_id"] == "call-42" and "PCMA" in failed[0]["reason"]


class DroppingRelay(Relay):
    """The relay, dropping our first DTLS flight and every ClientHello after the first.

    So the browser's own retransmissions cannot rescue the handshake: only the
    IVR's DTLS timer, resending its lost flight, can.
    """

    def __init__(self, ivr: tuple[str, int]) -> None:
        super().__init__(ivr)
        self.dropped: list[str] = []
        self.client_hellos = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if classify(data) == "dtls":
            to_ivr = addr != self.ivr
            if to_ivr and data[0] == 22 and len(data) > 13 and data[13] == 1:  # handshake record, ClientHello
                self.client_hellos += 1
                if self.client_hellos > 1:
                    self.dropped.append("client_hello")
                    return
            if not to_ivr and "first_flight" not in self.dropped:
                self.dropped.append("first_flight")
                return
        super().datagram_received(data, addr)


def test_a_lost_dtls_flight_is_resent_on_the_ivrs_timer() -> None:
    with_leg(_lost_flight)


async def _lost_flight(session: WebRtcSession, port: int, offer: str) -> None:
    loop = asyncio.get_running_loop()
    relay = DroppingRelay(("127.0.0.1", port))
    relay_transport, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=("127.0.0.1", 0))
    relay_port = relay_transport.get_extra_info("sockname")[1]
    via_relay = offer.replace(f" {port} typ host", f" {relay_port} typ host").replace(
        f"m=audio {port} ", f"m=audio {relay_port} ")
    pc, answer, _ = await browser_answer(via_relay, None)
    try:
        session.accept_answer(answer)
        await asyncio.wait_for(session.connected(), 10)
    finally:
        await pc.close()
        relay_transport.close()
    assert "first_flight" in relay.dropped and session.state == "connected"
    assert session.handshake_seconds is not None and session.handshake_seconds > 0.5  # one timer period went by


@pytest.mark.usefixtures("namespaces_alone")  # its own network namespace (see conftest.namespaces_alone)
def test_chromium_agent_hears_the_caller_and_is_heard() -> None:
    """The real thing: headless Chromium answers our offer, in a network namespace whose only interface is lo.

    tests/chromium_webrtc_agent.py runs there (the IVR side and Selenium's
    Chromium in one process) and reports Chromium's own statistics: ICE and
    DTLS connected, the SRTP cipher, PCMU, packets received, and the loudest
    frequency of what it hears; and what the IVR heard from Chromium's 600 Hz
    oscillator.
    """
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.fail("chromium / chromium-driver not installed: scripts/bootstrap.sh installs them")
    with lossy_namespace_or_skip(0.0) as ns:
        done = ns.run(sys.executable, str(Path(__file__).with_name("chromium_webrtc_agent.py")), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in result, result
    browser = result["browser"]
    assert browser["ice"] in ("connected", "completed") and browser["dtlsState"] == "connected", browser
    assert browser["srtpCipher"] == "SRTP_AES128_CM_HMAC_SHA1_80" and browser["dtlsRole"] == "client"
    assert "audio/PCMU" in browser["codecs"]
    assert browser["packetsReceived"] >= 90 and browser["packetsSent"] >= 90, browser
    assert abs(browser["peakHz"] - 1000) < 30 and browser["peakDb"] > -60, browser  # our tone, in Chromium
    assert result["ivr_heard_samples"] >= 100 * FRAME and result["ivr_energy_at_600hz"] > 0.8, result


def test_a_closed_browser_leg_and_the_leg_it_called_back_are_freed_without_the_gc() -> None:
    """As for plain RTP sessions (ivr.gcpolicy runs the full collection only when no call is up)."""

    class Leg:
        def on_audio(self, pcm: bytes, ts: int) -> None: ...

        def on_dtmf(self, digit: str, duration: int) -> None: ...

    async def call() -> tuple[weakref.ref[object], weakref.ref[object], weakref.ref[object]]:
        session, port, _ = await open_webrtc(pool(), "127.0.0.1", 0)
        leg = Leg()
        session.on_audio, session.on_dtmf = leg.on_audio, leg.on_dtmf
        session.on_failed = lambda reason: None
        browser = MiniBrowser(session, port, "active")
        await browser.connect()
        session.send_audio(b"\xff" * FRAME, 0)
        await asyncio.sleep(0.05)
        browser.close()
        peer = weakref.ref(session.peer)
        await session.close()
        return weakref.ref(leg), weakref.ref(session), peer

    gc.collect()
    gc.disable()  # a young collection must not hide a cycle
    try:
        leg, session, peer = asyncio.run(call())
        assert leg() is None and session() is None and peer() is None, "a cycle holds the closed browser leg"
    finally:
        gc.enable()


def test_no_media_either_way_before_ice_and_dtls_complete() -> None:
    with_leg(_nothing_before_keys)


async def _nothing_before_keys(session: WebRtcSession, port: int, offer: str) -> None:
    heard: list[bytes] = []
    session.on_audio = lambda pcm, _ts: heard.append(pcm)
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.setblocking(False)
    try:
        session._remote_addr = listener.getsockname()  # where a careless session would send
        for n in range(5):  # the media clock's keep-alive frames from the agent's answer on
            session.send_audio(b"\xff" * FRAME, n * FRAME)
        listener.sendto(struct.pack("!BBHII", 0x80, 0, 1, 160, 7) + b"\x00" * FRAME, ("127.0.0.1", port))
        await asyncio.sleep(0.1)
        with pytest.raises(BlockingIOError):
            listener.recv(2048)
    finally:
        listener.close()
    assert heard == [] and session.stray == 1 and session.state == "new"


def test_media_follows_the_browsers_new_nomination() -> None:
    with_leg(_renomination)


async def _renomination(session: WebRtcSession, port: int, offer: str) -> None:
    heard: list[bytes] = []
    session.on_audio = lambda pcm, _ts: heard.append(pcm)
    browser = MiniBrowser(session, port, "active")
    moved = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the browser's new address (Wi-Fi to LTE)
    moved.bind(("127.0.0.1", 0))
    moved.setblocking(False)
    try:
        srtp = await browser.connect()
        check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, attributes={
            "USERNAME": f"{session.peer.ufrag}:{browser.peer.ufrag}", "ICE-CONTROLLING": 1, "USE-CANDIDATE": None})
        check.add_message_integrity(session.peer.pwd.encode())
        moved.sendto(bytes(check), browser.ivr)
        await asyncio.sleep(0.05)
        session.send_audio(b"\xff" * FRAME, 160)
        await asyncio.sleep(0.05)
        got = []
        with contextlib.suppress(BlockingIOError):
            while True:
                got.append(moved.recv(2048))
        media = [d for d in got if classify(d) == "rtp"]
        assert media and srtp.unprotect(media[-1])[12:] == b"\xff" * FRAME  # our audio goes to the new address
        for seq in range(1, 9):  # aiortp's jitter buffer hands frames on after a few packets
            moved.sendto(srtp.protect(struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0xB0B) + b"\xff" * FRAME),
                         browser.ivr)
        stray = session.stray
        browser.sock.sendto(srtp.protect(struct.pack("!BBHII", 0x80, 0, 9, 9 * 160, 0xB0B) + b"\xff" * FRAME),
                            browser.ivr)  # the old address is no longer the browser's
        await asyncio.sleep(0.05)
        assert session.stray == stray + 1
        new_address = moved.getsockname()
    finally:
        browser.close()
        moved.close()
    assert session._remote_addr == new_address and heard  # and its audio from there is taken


def test_media_bound_to_loopback_answers_only_loopback_checks() -> None:
    with_leg(_loopback_only)


async def _loopback_only(session: WebRtcSession, port: int, offer: str) -> None:
    answered: list[tuple[str, int]] = []
    session.peer._send = lambda _data, addr: answered.append(addr)  # noqa: SLF001 — nothing leaves the host
    session._datagram(binding_request(session.peer.ufrag, session.peer.pwd), ("192.0.2.2", 5000))  # noqa: SLF001
    assert answered == [] and session.stray == 1 and not session.peer.consented  # the host's LAN candidate
    session._datagram(binding_request(session.peer.ufrag, session.peer.pwd), ("127.0.0.1", 5000))  # noqa: SLF001
    assert answered == [("127.0.0.1", 5000)] and session.peer.selected == ("127.0.0.1", 5000)
