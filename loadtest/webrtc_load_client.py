#!/usr/bin/env python3
"""Many browser-like agents in ONE asyncio process: the WebRTC load client of loadtest/webrtc_bridged_bench.py.

    .venv/bin/python loadtest/webrtc_load_client.py --spec '{"agents": ["6001", "6002"], "sip_port": 5060,
        "ws_port": 8089, "seconds": 120, "result": "agents.json"}'

Each agent does on the wire what a browser (JsSIP and the browser's WebRTC stack) does, and
nothing more, so a hundred cost a few percent of a core where a hundred aiortc clients (the
e2e tests' browser, tests/browser_agent.py: pure-Python RTP, a decoder thread and an encoder
executor per call) want 1.75 cores:

- SIP over a WebSocket (`websockets`, subprotocol `sip`, the desk's Origin): REGISTER with the
  digest answer (`pw<number>`, as the bench's sip.conf has it), then the IVR's INVITE is
  answered 200 OK with an SDP answer: UDP/TLS/RTP/SAVPF, the offered G.711 payload type (the
  IVR offers what the caller speaks, PCMU or PCMA), ice-ufrag/pwd of its own, one host
  candidate on 127.0.0.1, the process's certificate's `a=fingerprint:sha-256`,
  `a=setup:active`, `a=rtcp-mux` (an offer without DTLS-SRTP, G.711 or ICE credentials gets
  488). A BYE from the IVR is answered 200 OK; an agent whose `seconds` run out in a call
  sends the BYE itself. OPTIONS get 200, a second INVITE 486.
- ICE, as the controlling full agent towards the ICE-lite IVR: STUN Binding requests (aioice's
  `stun` messages) with USERNAME `ivrufrag:ourufrag`, PRIORITY, ICE-CONTROLLING, USE-CANDIDATE,
  MESSAGE-INTEGRITY with the IVR's pwd and FINGERPRINT, resent (50 ms doubling to 500 ms)
  until a response that passes the integrity check; checks from the IVR (none, it is lite)
  would be answered with our pwd.
- DTLS client (pyOpenSSL, memory BIOs, OpenSSL's own retransmission timer through
  `DTLSv1_get_timeout`/`DTLSv1_handle_timeout`), offering SRTP_AES128_CM_SHA1_80; the IVR's
  certificate must match the offer's `a=fingerprint`, then the keys are exported
  (`EXTRACTOR-dtls_srtp`, RFC 5764 §4.2: we are the client) into two pylibsrtp sessions.
- Media: ONE 20 ms timer for every agent of the process sends each connected agent's SRTP
  frame of a 1500 Hz tone (encoded once, at start, by aiortp's G.711 codec); every SRTP packet
  received is unprotected and counted, and its audio decoded through a 256-entry table
  (numpy) to tell sound from silence (`loud_frames`: the caller's speech). RTCP is neither
  sent nor required (the IVR does not ask for it); SRTCP received is checked and counted.

Prints "registered K" once every agent has tried to register (K made it), then runs until
every agent has taken one call and been hung up, or `seconds`, and writes one result per agent
to spec["result"] (JSON): agent, registered, answered, acked, frames_sent, frames_heard,
loud_frames, connect_ms (our 200 OK sent to our SRTP keys: ICE plus our side of DTLS),
hung_up, by ("ivr" or "agent"), error. One certificate (ECDSA P-256) serves the whole process.
Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import struct
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
from aioice import stun
from aiortp import get_codec
from OpenSSL import SSL
from pylibsrtp import Error as SrtpError
from pylibsrtp import Policy, Session
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Origin, Subprotocol

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run by path: the repository's packages
    sys.path.insert(0, str(ROOT))

from ivr.webrtc import DtlsCertificate, fingerprint_of  # noqa: E402 — after the path
from tests.sip_text import digest_authorization, header, header_values, reply  # noqa: E402

RATE, FRAME, PTIME = 8000, 160, 0.020
DESK = "https://desk.example.com"  # the page the bench's [websocket] origins allows
TONE_HZ = 1500.0
LOUD = 300.0  # mean |sample| above which a frame heard counts as sound (the caller's speech)
CONNECT_SECONDS = 10.0  # 200 OK to keys; the IVR gives up at 10 s too (WebRtcSession.connect_timeout)
ICE_FIRST_RTO, ICE_MAX_RTO = 0.05, 0.5
CIPHERS = b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305"
SRTP_KEY, SRTP_SALT = 16, 14
RTP_HEADER = struct.Struct("!BBHII")
G711 = {0: "PCMU", 8: "PCMA"}
PRFLX_PRIORITY = (110 << 24) | (65535 << 8) | 255  # what a check's PRIORITY says (RFC 8445 §7.1.1): a prflx's


def tone_frames(freq: float, payload_type: int) -> list[bytes]:
    """One second of the tone as 50 encoded 20 ms frames: any whole-Hz tone repeats every second."""
    t = np.arange(RATE) / RATE
    pcm = (8000.0 * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()
    encoded = get_codec(payload_type).encode(pcm)
    return [encoded[i:i + FRAME] for i in range(0, RATE, FRAME)]


def magnitude_table(payload_type: int) -> np.ndarray:
    """|sample| of each of the 256 G.711 codes: a frame's loudness is one lookup and a mean."""
    pcm = np.frombuffer(get_codec(payload_type).decode(bytes(range(256))), "<i2")
    return np.abs(pcm.astype(np.int32))


class Process:
    """What the agents share: the certificate and DTLS context, the tone, the tables, the 20 ms media timer."""

    def __init__(self) -> None:
        self.certificate = DtlsCertificate.generate()
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
        # Self-signed on both sides: whatever the IVR presents is taken in the handshake and checked
        # afterwards against its offer's a=fingerprint (RFC 8122), as a browser does.
        ctx.set_verify(SSL.VERIFY_PEER, lambda *_: True)
        ctx.use_certificate(self.certificate.cert)
        ctx.use_privatekey(self.certificate.key)
        ctx.set_cipher_list(CIPHERS)
        ctx.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80")
        self.context = ctx
        self.tones = {pt: tone_frames(TONE_HZ, pt) for pt in G711}
        self.magnitudes = {pt: magnitude_table(pt) for pt in G711}
        self.sending: dict[int, Agent] = {}  # id -> agent with SRTP keys, in a call
        self.tick = 0

    async def media_clock(self) -> None:
        """Every 20 ms, one frame for each connected agent; late ticks are skipped, never bunched."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            self.tick += 1
            due = start + self.tick * PTIME
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -PTIME:  # the process was not scheduled for a frame or more: resume from now
                self.tick = int((loop.time() - start) / PTIME)
            for agent in list(self.sending.values()):
                agent.send_frame()


class Agent(asyncio.DatagramProtocol):
    """One agent's browser: its WebSocket, its UDP socket (ICE, DTLS, SRTP on one port), its call."""

    def __init__(self, shared: Process, number: str, spec: dict[str, Any]) -> None:
        self.shared, self.number, self.spec = shared, number, spec
        self.host = f"{uuid.uuid4().hex[:12]}.invalid"
        self.contact = f"sip:{number}@{self.host};transport=ws"
        self.result: dict[str, Any] = {"agent": number, "registered": False, "frames_sent": 0, "frames_heard": 0,
                                       "loud_frames": 0}
        self.ws: ClientConnection | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.ufrag = secrets.token_hex(4)
        self.pwd = secrets.token_hex(12)
        self.tiebreaker = secrets.randbits(64)
        self.remote: tuple[str, int] = ("127.0.0.1", 0)
        self.remote_ufrag = self.remote_pwd = self.remote_fingerprint = ""
        self.payload_type = 0
        self.invite = ""  # the IVR's INVITE: the dialog, for our own BYE
        self.checks: set[bytes] = set()  # transaction ids of our Binding requests in flight
        self.ice_done = False
        self.ssl: SSL.Connection | None = None
        self.dtls_timer: asyncio.TimerHandle | None = None
        self.outbound: Session | None = None
        self.inbound: Session | None = None
        self.answered_at = 0.0
        self.connected = asyncio.get_running_loop().create_future()
        self.seq = secrets.randbelow(2**16)
        self.timestamp = secrets.randbelow(2**32)
        self.ssrc = secrets.randbits(32)
        self.marker = True

    # --- SIP over the WebSocket ---------------------------------------------------------------
    async def send(self, text: str) -> None:
        assert self.ws is not None
        await self.ws.send(text.replace("\r\n", "\n").replace("\n", "\r\n"))

    async def response(self, cseq: str, seconds: float) -> str:
        """The next response to `cseq` ("2 REGISTER"); requests before it are not expected (not registered yet)."""
        assert self.ws is not None
        async with asyncio.timeout(seconds):
            while True:
                message = await self.ws.recv()
                text = message if isinstance(message, str) else message.decode()
                if text.startswith("SIP/2.0") and header(text, "CSeq") == cseq:
                    return text

    async def register(self) -> str:
        """REGISTER and the digest answer, as tests.browser_agent.register writes them; the final status line."""
        uri = f"sip:127.0.0.1:{self.spec['sip_port']}"
        call_id, tag = f"{uuid.uuid4().hex}@127.0.0.1", uuid.uuid4().hex[:8]
        status = ""
        authorization = ""
        for cseq in (1, 2):
            auth = f"Authorization: {authorization}\n" if authorization else ""
            await self.send(f"REGISTER {uri} SIP/2.0\nVia: SIP/2.0/WS {self.host};branch=z9hG4bK{uuid.uuid4().hex}\n"
                            f"Max-Forwards: 70\nFrom: <sip:{self.number}@127.0.0.1>;tag={tag}\n"
                            f"To: <sip:{self.number}@127.0.0.1>\nCall-ID: {call_id}\nCSeq: {cseq} REGISTER\n"
                            f"Contact: <{self.contact}>\nExpires: 600\n{auth}Content-Length: 0\n\n")
            got = await self.response(f"{cseq} REGISTER", 30)
            status = got.split("\r\n", 1)[0]
            if not status.startswith("SIP/2.0 401"):
                break
            challenge = next((c for c in header_values(got, "WWW-Authenticate") if "algorithm=SHA-256" in c), "")
            authorization = digest_authorization(challenge, username=self.number, password=f"pw{self.number}",
                                                 method="REGISTER", uri=uri)
        return status

    async def run(self, registered: asyncio.Future[None]) -> None:
        end = time.monotonic() + self.spec["seconds"]
        try:
            try:
                self.ws = await connect(f"ws://127.0.0.1:{self.spec['ws_port']}/sip", subprotocols=[Subprotocol("sip")],
                                        origin=Origin(DESK), open_timeout=30)
                status = await self.register()
                self.result["registered"] = status.startswith("SIP/2.0 200")
                if not self.result["registered"]:
                    self.result["error"] = f"REGISTER: {status}"
                    return
            finally:
                registered.set_result(None)
            await self.serve(end)
        except Exception as exc:  # one agent's failure is a result, not the end of the others
            self.result.setdefault("error", f"{type(exc).__name__}: {str(exc)[:300]}")
        finally:
            self.stop_media()
            if self.ws is not None:
                await self.ws.close()

    async def serve(self, end: float) -> None:
        """The IVR's requests until its BYE (or ours, when `seconds` run out in a call)."""
        assert self.ws is not None
        while (left := end - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(left):
                    message = await self.ws.recv()
            except TimeoutError:
                break
            request = message if isinstance(message, str) else message.decode()
            method = request.split(" ", 1)[0]
            if method == "SIP/2.0":  # the answer to our BYE
                if header(request, "CSeq").endswith(" BYE"):
                    return
                continue
            if method == "INVITE" and not self.invite:
                self.invite = request
                try:
                    await self.answer(request)
                except ValueError as exc:  # an offer no browser could take: say so, as a browser does
                    await self.send(reply(request, "488 Not Acceptable Here", to_tag="browser", contact=self.contact))
                    self.result["error"] = f"the IVR's offer: {exc}"
                    return
            elif method == "ACK":
                self.result["acked"] = True
            elif method == "BYE":
                await self.send(reply(request, "200 OK", to_tag=None, contact=self.contact))
                self.result.update(hung_up=True, by="ivr")
                return
            else:  # OPTIONS; a second INVITE: a browser in a call says it is busy
                status = "200 OK" if method == "OPTIONS" else "486 Busy Here"
                to_tag = None if ";tag=" in header(request, "To") else "browser"
                await self.send(reply(request, status, to_tag=to_tag, contact=self.contact))
        if self.invite and "acked" in self.result:  # our time is up in a call: the agent hangs up
            await self.bye()

    async def bye(self) -> None:
        invite = self.invite
        target = re.search(r"<([^>]+)>", header(invite, "Contact"))
        await self.send(f"BYE {target.group(1) if target else invite.split()[1]} SIP/2.0\n"
                        f"Via: SIP/2.0/WS {self.host};branch=z9hG4bK{uuid.uuid4().hex}\nMax-Forwards: 70\n"
                        f"From: {header(invite, 'To')};tag=browser\nTo: {header(invite, 'From')}\n"
                        f"Call-ID: {header(invite, 'Call-ID')}\nCSeq: 1 BYE\nContact: <{self.contact}>\n"
                        f"Content-Length: 0\n\n")
        self.stop_media()
        try:
            await self.response("1 BYE", 5)
            self.result.update(hung_up=True, by="agent")
        except TimeoutError:
            self.result["error"] = "our BYE was not answered within 5 s"

    async def answer(self, invite: str) -> None:
        offer = invite.split("\r\n\r\n", 1)[1]
        self.read_offer(offer)
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        port = self.transport.get_extra_info("sockname")[1]
        fingerprint = self.shared.certificate.fingerprint
        sdp = "\r\n".join([
            "v=0", f"o=- {secrets.randbelow(2**62)} 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
            f"m=audio {port} UDP/TLS/RTP/SAVPF {self.payload_type} 101", "c=IN IP4 127.0.0.1", "a=mid:0",
            "a=sendrecv", "a=rtcp-mux", f"a=rtpmap:{self.payload_type} {G711[self.payload_type]}/8000",
            "a=rtpmap:101 telephone-event/8000", f"a=ice-ufrag:{self.ufrag}", f"a=ice-pwd:{self.pwd}",
            f"a=fingerprint:{fingerprint}", "a=setup:active",
            f"a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host", "a=end-of-candidates",
            f"a=ssrc:{self.ssrc} cname:{self.number}", ""])
        await self.send(reply(invite, "200 OK", to_tag="browser", contact=self.contact, body=sdp))
        self.answered_at = time.perf_counter()
        self.result["answered"] = True
        loop.create_task(self.connect())

    def read_offer(self, sdp: str) -> None:
        attrs: dict[str, str] = {}
        m_line: list[str] = []
        address = "127.0.0.1"
        for line in sdp.splitlines():
            if line.startswith("m="):
                m_line = line[2:].split()
            elif line.startswith("c="):
                address = line.split()[-1]
            elif line.startswith("a="):
                name, _, value = line[2:].partition(":")
                attrs.setdefault(name, value.strip())
        offered = [int(f) for f in m_line[3:] if f.isdigit()]
        payload_type = next((pt for pt in offered if pt in G711), None)
        if len(m_line) < 4 or m_line[2] != "UDP/TLS/RTP/SAVPF" or payload_type is None:
            raise ValueError(f"not a DTLS-SRTP G.711 offer: m={' '.join(m_line)[:80]!r}")
        algorithm, _, fingerprint = attrs.get("fingerprint", "").partition(" ")
        if algorithm.lower() != "sha-256" or not attrs.get("ice-ufrag") or not attrs.get("ice-pwd"):
            raise ValueError("the offer lacks a sha-256 a=fingerprint or ICE credentials")
        candidate = attrs.get("candidate", "").split()
        self.remote = (candidate[4], int(candidate[5])) if len(candidate) > 5 else (address, int(m_line[1]))
        self.payload_type = payload_type
        self.remote_ufrag, self.remote_pwd = attrs["ice-ufrag"], attrs["ice-pwd"]
        self.remote_fingerprint = fingerprint.strip().upper()

    # --- ICE and DTLS ------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connectivity checks until one is answered (the handshake follows from there), within CONNECT_SECONDS."""
        rto, deadline = ICE_FIRST_RTO, time.monotonic() + CONNECT_SECONDS
        while not self.ice_done and self.transport is not None and time.monotonic() < deadline:
            request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, attributes={
                "USERNAME": f"{self.remote_ufrag}:{self.ufrag}", "PRIORITY": PRFLX_PRIORITY,
                "ICE-CONTROLLING": self.tiebreaker, "USE-CANDIDATE": None})
            request.add_message_integrity(self.remote_pwd.encode())  # and FINGERPRINT after it
            self.checks.add(request.transaction_id)
            self.transport.sendto(bytes(request), self.remote)
            await asyncio.sleep(rto)
            rto = min(2 * rto, ICE_MAX_RTO)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await asyncio.shield(self.connected)
        except TimeoutError:
            if self.transport is not None:  # still in the call (a BYE before the keys is no failure of ours)
                what = "the DTLS handshake" if self.ice_done else "ICE (no answer to our connectivity checks)"
                self.fail(f"{what} did not complete within {CONNECT_SECONDS:g} s")

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data:
            return
        first = data[0]
        if 128 <= first <= 191:
            self.srtp_received(data)
        elif 20 <= first <= 63:
            self.dtls_received(data)
        elif first <= 3:
            self.stun_received(data, addr)

    def stun_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = stun.parse_message(data)
        except ValueError:
            return
        if message.message_class == stun.Class.RESPONSE and message.transaction_id in self.checks:
            if not message.check_message_integrity(self.remote_pwd.encode()):
                return  # not the IVR's (it signs with its own pwd)
            self.checks.clear()
            if not self.ice_done:  # nominated: the IVR takes media from here; we start the handshake
                self.ice_done = True
                self.ssl = SSL.Connection(self.shared.context, None)  # None: memory BIOs
                self.ssl.set_connect_state()
                self.handshake()
        elif message.message_class == stun.Class.REQUEST and message.message_method == stun.Method.BINDING:
            username = message.attributes.get("USERNAME", "")
            if (isinstance(username, str) and username.split(":", 1)[0] == self.ufrag
                    and message.check_message_integrity(self.pwd.encode()) and self.transport is not None):
                response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                                        transaction_id=message.transaction_id,
                                        attributes={"XOR-MAPPED-ADDRESS": addr})
                response.add_message_integrity(self.pwd.encode())
                self.transport.sendto(bytes(response), addr)

    def dtls_received(self, data: bytes) -> None:
        if self.ssl is None:
            return
        self.ssl.bio_write(data)
        if self.outbound is None:
            self.handshake()
            return
        try:  # after the handshake: a retransmitted flight, an alert, close_notify
            self.ssl.recv(1500)
        except SSL.Error:
            pass
        self.flush()

    def handshake(self) -> None:
        assert self.ssl is not None
        if self.dtls_timer is not None:
            self.dtls_timer.cancel()
            self.dtls_timer = None
        try:
            self.ssl.do_handshake()
        except SSL.WantReadError:
            self.flush()
            timeout = self.ssl.DTLSv1_get_timeout()
            if timeout is not None:
                self.dtls_timer = asyncio.get_running_loop().call_later(max(0.001, timeout), self.dtls_timeout)
            return
        except SSL.Error as exc:
            self.flush()
            self.fail(f"DTLS handshake failed: {exc}")
            return
        self.flush()
        self.keys()

    def dtls_timeout(self) -> None:
        """OpenSSL's retransmission timer ran out: it resends its last flight (and doubles the timer)."""
        self.dtls_timer = None
        if self.ssl is not None and self.outbound is None:
            self.ssl.DTLSv1_handle_timeout()
            self.handshake()

    def flush(self) -> None:
        while self.ssl is not None:
            try:
                data = self.ssl.bio_read(1500)
            except SSL.WantReadError:
                return
            if self.transport is not None:
                self.transport.sendto(data, self.remote)

    def keys(self) -> None:
        """The handshake is done: check the IVR's certificate against its offer, export the SRTP keys."""
        assert self.ssl is not None
        peer = self.ssl.get_peer_certificate(as_cryptography=True)
        if peer is None or fingerprint_of(peer) != self.remote_fingerprint:
            self.fail("the IVR's certificate does not match the a=fingerprint of its offer")
            return
        if self.ssl.get_selected_srtp_profile() != b"SRTP_AES128_CM_SHA1_80":
            self.fail("no SRTP profile agreed in the DTLS handshake")
            return
        km = self.ssl.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (SRTP_KEY + SRTP_SALT))
        k, s = SRTP_KEY, SRTP_SALT  # client key | server key | client salt | server salt; we are the client
        ours, theirs = km[:k] + km[2 * k:2 * k + s], km[k:2 * k] + km[2 * k + s:]
        profile = Policy.SRTP_PROFILE_AES128_CM_SHA1_80
        self.outbound = Session(Policy(key=ours, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
        self.inbound = Session(Policy(key=theirs, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
        self.result["connect_ms"] = round(1000 * (time.perf_counter() - self.answered_at), 1)
        if not self.connected.done():
            self.connected.set_result(None)
        self.shared.sending[id(self)] = self

    def fail(self, reason: str) -> None:
        self.result.setdefault("error", reason)
        if not self.connected.done():
            self.connected.set_result(None)
        self.stop_media()

    # --- media -------------------------------------------------------------------------------
    def send_frame(self) -> None:
        if self.outbound is None or self.transport is None:
            return
        frames = self.shared.tones[self.payload_type]
        header_bytes = RTP_HEADER.pack(0x80, self.payload_type | (0x80 if self.marker else 0), self.seq,
                                       self.timestamp, self.ssrc)
        self.transport.sendto(self.outbound.protect(header_bytes + frames[self.shared.tick % len(frames)]),
                              self.remote)
        self.marker = False
        self.seq = (self.seq + 1) & 0xFFFF
        self.timestamp = (self.timestamp + FRAME) & 0xFFFFFFFF
        self.result["frames_sent"] += 1

    def srtp_received(self, data: bytes) -> None:
        if self.inbound is None or len(data) < 12:
            return
        try:
            if 192 <= data[1] <= 223:  # RTCP (rtcp-mux, RFC 5761 §4)
                self.inbound.unprotect_rtcp(data)
                self.result["rtcp_heard"] = self.result.get("rtcp_heard", 0) + 1
                return
            packet = self.inbound.unprotect(data)
        except SrtpError:
            self.result["srtp_errors"] = self.result.get("srtp_errors", 0) + 1
            return
        if packet[1] & 0x7F != self.payload_type:
            return  # telephone-event, comfort noise: not a frame heard
        offset = 12 + 4 * (packet[0] & 0x0F)
        if packet[0] & 0x10 and len(packet) >= offset + 4:  # a header extension
            offset += 4 + 4 * int.from_bytes(packet[offset + 2:offset + 4], "big")
        self.result["frames_heard"] += 1
        if self.shared.magnitudes[self.payload_type][np.frombuffer(packet, np.uint8, offset=offset)].mean() > LOUD:
            self.result["loud_frames"] += 1

    def stop_media(self) -> None:
        self.shared.sending.pop(id(self), None)
        if not self.connected.done():  # the call ended before the keys: connect() stops waiting
            self.connected.set_result(None)
        if self.dtls_timer is not None:
            self.dtls_timer.cancel()
            self.dtls_timer = None
        if self.ssl is not None and self.outbound is not None:
            try:  # close_notify, as a browser closing the peer connection sends
                self.ssl.shutdown()
            except SSL.Error:
                pass
            self.flush()
        self.ssl = None
        self.outbound = self.inbound = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None


async def run(spec: dict[str, Any]) -> list[dict[str, Any]]:
    shared = Process()
    clock = asyncio.get_running_loop().create_task(shared.media_clock())
    agents = [Agent(shared, number, spec) for number in spec["agents"]]
    registered = [asyncio.get_running_loop().create_future() for _ in agents]
    tasks = [asyncio.create_task(agent.run(done)) for agent, done in zip(agents, registered, strict=True)]
    await asyncio.gather(*registered)
    print(f"registered {sum(agent.result['registered'] for agent in agents)}", flush=True)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for agent, outcome in zip(agents, results, strict=True):
        if isinstance(outcome, BaseException):  # a bug of ours: say so in the agent's result
            agent.result.setdefault("error", f"{type(outcome).__name__}: {str(outcome)[:300]}")
    clock.cancel()
    return [agent.result for agent in agents]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", required=True, help='JSON: {"agents": [...], "sip_port", "ws_port", "seconds", "result"}')
    spec = json.loads(p.parse_args().spec)
    started = time.process_time()
    results = uvloop.run(run(spec))
    cpu = time.process_time() - started
    Path(spec["result"]).write_text(json.dumps(results), encoding="utf-8")
    print(f"cpu_seconds {cpu:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
