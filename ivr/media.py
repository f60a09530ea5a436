"""Media: RTP sessions, the RTP port pool and the one 20 ms media clock.

This is the only module that imports aiortp. Everything the call legs send
goes through the `MediaClock`: one task ticks every 20 ms and asks each call
it serves for its next frame — a prompt frame encoded once at start-up, or,
when nothing plays, a keep-alive frame of silence, so that no call is ever
without RTP for longer than a packet time (phones and SBCs drop calls whose
RTP stops). A call whose audio is relayed (bridged to an agent) is not
served by the clock: the far end's packets pace it.

RTP ports come from a pool over the configured range. Another process on the
same host (a second IVR worker, anything else) may hold a port of the range:
binding then moves on to the next free port instead of refusing the call.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import aiortp
import structlog
from aiortp.codecs import get_codec
from aiortp.packet import is_rtcp
from aiortp.sender import RtpSender
from aiortp.transport import RtpTransport

from ivr.srtp import SrtpContext, SrtpError
from ivr.webrtc import AnswerError, PeerState, WebRtcPeer, classify, local_certificate, offer_sdp, parse_answer

log = structlog.get_logger("ivr.media")

PTIME = 0.020
SAMPLES_PER_FRAME = 160
CODEC_NAMES = {0: "PCMU", 8: "PCMA"}
# One frame of digital silence per payload type (G.711 encodings of sample 0).
SILENCE_FRAMES = {0: b"\xff" * SAMPLES_PER_FRAME, 8: b"\xd5" * SAMPLES_PER_FRAME}
TICK_SWITCH_INTERVAL_S = 0.05  # other threads wait for a media tick (see MediaClock._run)
BIND_ATTEMPTS = 32  # ports tried before a call is refused for want of media

_RTP_HEADER = struct.Struct("!BBHII")  # V=2 P X CC, M PT, sequence, timestamp, SSRC (RFC 3550 §5.1)
_SEQ_TS_SSRC = struct.Struct("!HII")  # the same header from its third byte on
PayloadSink = Callable[[bytes, int], None]  # a received packet's payload as it came, and its sequence number


class _Seen:
    """The two fields of a received packet that aiortp's receive statistics read; one per session, reused."""

    __slots__ = ("sequence_number", "timestamp")

    def __init__(self) -> None:
        self.sequence_number = self.timestamp = 0


def _closed_transport(_data: bytes, _addr: tuple[str, int]) -> None:
    """What a closed session's transports call with a datagram still queued: nothing."""


class CycleFreeRtpSession(aiortp.RTPSession):
    """An aiortp session that leaves no reference cycles behind once closed.

    aiortp 0.8.0 wires a session to its parts with bound methods (its two
    transports and its DTMF receiver call back into it) and keeps the uvloop
    transports, which point back at their protocols: a closed session is a knot
    of cycles that only Python's full garbage collection frees, and with it the
    call leg its on_audio/on_dtmf name, every object of the call. The IVR runs
    that collection only when no call is up (ivr.gcpolicy), so cut the knot here.
    """

    payload_sink: PayloadSink | None = None
    """Set by a bridge (`ivr.bridge`): each plain audio packet's payload goes there, undecoded; see _handle_rtp."""
    _seen: _Seen | None = None

    def _handle_rtp(self, data: bytes, addr: tuple[str, int]) -> None:
        """A bridged leg's audio packets straight to the bridge: no packet object, no jitter buffer, no decoding.

        aiortp 0.8.0 turns every received packet into an RtpPacket, passes it
        through its jitter buffer and decodes it to PCM: for a bridge carrying
        G.711 from one phone to another that is most of the call's CPU (600
        streams: a quarter of a core), and the PCM was encoded again to send.
        With a `payload_sink` set, a packet of the session's own payload type
        with a plain 12-byte header (version 2, no padding, extension or CSRC)
        gives the sink its payload and sequence number; receive statistics
        (RTCP reports) and address latching are kept. Anything else (RFC 4733
        digits, comfort noise, unusual headers) takes aiortp's full path.
        Reordering is the sink's business (`ivr.bridge` drops late packets).
        """
        sink = self.payload_sink
        if sink is None or data[0] != 0x80 or data[1] & 0x7F != self._payload_type or len(data) <= 12:
            super()._handle_rtp(data, addr)
            return
        seq, timestamp, ssrc = _SEQ_TS_SSRC.unpack_from(data, 2)
        if ssrc != self._remote_ssrc:
            self._remote_ssrc_changed(ssrc)
        if addr != self._remote_addr:
            self._latch_rtp_addr(addr)
        seen = self._seen
        if seen is None:
            seen = self._seen = _Seen()
        seen.sequence_number, seen.timestamp = seq, timestamp
        self._stream_stats.add(seen)  # type: ignore[union-attr, arg-type]  # set by _remote_ssrc_changed
        sink(data[12:], seq)

    @property
    def packets_heard(self) -> int:
        """RTP packets taken in so far, audio, comfort noise (RFC 3389) and digits alike, on either path above:
        what the media watch (`ivr.agents`) counts, so a phone with silence suppression is still heard."""
        stats = self._stream_stats
        return stats.packets_received if stats is not None else 0

    def send_audio(self, payload: bytes, timestamp: int) -> None:
        """aiortp's send_audio without building an RtpPacket object per packet.

        The media clock sends one packet per call every 20 ms (1000 calls: 50k a
        second); aiortp 0.8.0 spends as long on the packet object as on the
        sendto itself. Same bytes on the wire (RTP version 2, no marker, no
        extension, the sender's sequence and SSRC) and the same counters for its
        RTCP reports; through the session's transport, so SRTP still protects it.
        aiortp's own path stays for what this skips: NACK history, duplicate
        sending and paced mode, none of which the IVR turns on.
        """
        sender, transport = self._sender, self._rtp_transport
        if sender is None or transport is None or self._closed:
            return
        if sender._enable_history or sender._duplicate_tx or self._paced_sender is not None:
            super().send_audio(payload, timestamp)
            return
        seq = sender._sequence_number
        header = _RTP_HEADER.pack(0x80, sender._payload_type, seq, timestamp, sender._ssrc)
        transport.send(header + payload, self._remote_addr)
        sender._sequence_number = (seq + 1) & 0xFFFF
        sender._packets_sent += 1
        sender._octets_sent += len(payload)
        sender._last_rtp_timestamp = timestamp

    async def close(self) -> None:
        await super().close()
        self.on_audio = self.on_dtmf = self.payload_sink = None
        for transport in (self._rtp_transport, self._rtcp_transport):
            if transport is not None:
                transport._on_rtp = transport._on_rtcp = _closed_transport
                transport._transport = None
                vars(transport).pop("send", None)  # SrtpRtpSession's wrapper, which holds the session
        self._rtp_transport = self._rtcp_transport = None
        self._rtcp_task = None
        self._dtmf_receiver._on_dtmf = _closed_transport  # type: ignore[assignment]


RtpSession = CycleFreeRtpSession  # every session the IVR opens is one (open_rtp, open_webrtc)


class StrictRtpSession(CycleFreeRtpSession):
    """An RTP session that takes media only from the address the caller's SDP named.

    aiortp 0.8.0 takes RTP from any source, and a packet with a new SSRC
    resets its jitter buffer; it also logs a warning for every datagram it
    cannot parse, RTP or RTCP. So a stranger spraying the RTP port range could
    inject audio (fake speech that defeats the silent-call routine, fake
    digits) or flood the log. Filtering in the session's own handlers (rather
    than wrapping them once `create` returns) covers the first datagram too:
    the socket receives while `create` is still binding the RTCP port. Drops
    are counted; the leg logs the counts once when it closes. (aiortp's
    transport still answers STUN binding requests from anyone, before these
    handlers; a reply is no larger than the request.)
    """

    stray = malformed = 0  # per session once incremented

    def _handle_rtp(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr != self._remote_addr:
            self.stray += 1
        elif len(data) < 12 or data[0] >> 6 != 2:  # not RTP version 2
            self.malformed += 1
        else:
            super()._handle_rtp(data, addr)

    def _handle_rtcp(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr != self._remote_rtcp_addr and addr != self._remote_addr:  # RTCP on port + 1, or muxed
            self.stray += 1
        else:
            super()._handle_rtcp(data, addr)

    @property
    def expected_from(self) -> str:
        remote = self._remote_addr
        assert remote is not None  # set when the session is created
        return f"{remote[0]}:{remote[1]}"


class SrtpRtpSession(CycleFreeRtpSession):
    """An RTP session whose every datagram is SRTP/SRTCP on the wire (RFC 3711, keys from `ivr.srtp`).

    Received datagrams are authenticated and decrypted before aiortp parses
    them; one that fails (wrong key, forged, replayed) is dropped and counted
    in `unauthenticated`. Sent datagrams are protected in aiortp's transport.
    Until `attach_srtp` gives the keys, nothing is taken in and nothing goes
    out: never a clear datagram on the wire.
    """

    _srtp: SrtpContext | None = None
    unauthenticated = unprotectable = 0  # per session once incremented

    _clear = False

    def attach_srtp(self, srtp: SrtpContext) -> None:
        self._srtp = srtp

    def go_clear(self) -> None:
        """The peer answered our SRTP offer in plain RTP and that is allowed: datagrams pass as they are."""
        self._clear = True

    async def _bind_transports(self, local_addr: tuple[str, int], remote_addr: tuple[str, int]) -> None:
        await super()._bind_transports(local_addr, remote_addr)
        # aiortp 0.8.0 sends every RTP packet (RtpSender, DTMF, NACK resends) and every
        # RTCP report and BYE through RtpTransport.send and has no SRTP of its own: wrap
        # that one method on both sockets, before anything is sent (the RTCP loop starts
        # in the call above but first sends seconds later).
        for transport in (self._rtp_transport, self._rtcp_transport):
            assert transport is not None
            transport.send = self._protecting(transport.send)  # type: ignore[method-assign]

    def _protecting(self, send: Callable[..., None]) -> Callable[..., None]:
        def protected_send(data: bytes, addr: tuple[str, int] | None = None) -> None:
            if self._clear:
                send(data, addr)
                return
            if self._srtp is None:
                return
            try:
                wire = self._srtp.protect_rtcp(data) if is_rtcp(data) else self._srtp.protect(data)
            except SrtpError:
                self.unprotectable += 1
                return
            send(wire, addr)
        return protected_send

    def _handle_rtp(self, data: bytes, addr: tuple[str, int]) -> None:
        if (plain := self._unprotected(data, rtcp=False)) is not None:
            super()._handle_rtp(plain, addr)

    def _handle_rtcp(self, data: bytes, addr: tuple[str, int]) -> None:
        if (plain := self._unprotected(data, rtcp=True)) is not None:
            super()._handle_rtcp(plain, addr)

    def _unprotected(self, data: bytes, *, rtcp: bool) -> bytes | None:
        """The clear datagram, or None (counted) when it fails authentication or replay checks."""
        if self._clear:
            return data
        if self._srtp is not None:
            try:
                return self._srtp.unprotect_rtcp(data) if rtcp else self._srtp.unprotect(data)
            except SrtpError:
                pass
        self.unauthenticated += 1
        return None


class StrictSrtpRtpSession(StrictRtpSession, SrtpRtpSession):
    """SRTP from the SDP's address only: strangers are dropped before any decryption is tried."""


def g711_encoders(payload_types: list[int]) -> dict[int, Callable[[bytes], bytes]]:
    """aiortp's G.711 encoders, for the prompt library to pre-encode with."""
    return {pt: get_codec(pt).encode for pt in payload_types}


class RtpPortPool:
    """Even RTP ports from the configured range, handed out round-robin.

    A port that would not bind (held by another process) goes to the back of
    the queue like a released one: the other process may have let it go by
    the time it comes round again. `bind_retries` counts such moves.
    """

    def __init__(self, first: int, last: int) -> None:
        self._free: deque[int] = deque(range(first + first % 2, last - 1, 2))
        self.bind_retries = 0

    def acquire(self) -> int:
        if not self._free:
            raise RuntimeError("RTP port range exhausted")
        return self._free.popleft()

    def release(self, port: int) -> None:
        self._free.append(port)

    def __len__(self) -> int:
        return len(self._free)


async def open_rtp(
    pool: RtpPortPool,
    bind: str,
    remote: tuple[str, int],
    payload_type: int,
    *,
    dtmf_payload_type: int = 101,
    strict: bool = True,
    srtp: SrtpContext | None = None,
    secure: bool = False,
) -> tuple[RtpSession, int]:
    """Bind an RTP session on the next free port of the pool; returns it and its port.

    With `srtp`, the session speaks SRTP/SRTCP with those keys (SrtpRtpSession); with `secure`
    it is an SrtpRtpSession whose keys come later (an offer of ours awaiting its answer).
    Raises RuntimeError when the range is exhausted and OSError when no port
    of `BIND_ATTEMPTS` would bind.
    """
    session_class: type[RtpSession]
    if srtp is not None or secure:
        session_class = StrictSrtpRtpSession if strict else SrtpRtpSession
    else:
        session_class = StrictRtpSession if strict else CycleFreeRtpSession
    error: OSError | None = None
    for _ in range(min(BIND_ATTEMPTS, max(1, len(pool)))):
        port = pool.acquire()
        try:
            session = await session_class.create(
                local_addr=(bind, port), remote_addr=remote, payload_type=payload_type,
                dtmf_payload_type=dtmf_payload_type,
            )
        except OSError as exc:
            # held by another process (a second worker on this host): try the next port
            pool.release(port)
            pool.bind_retries += 1
            error = exc
            log.info("rtp_port_busy", port=port, error=str(exc))
            continue
        assert isinstance(session, CycleFreeRtpSession)  # aiortp's create is typed as returning its base class
        if isinstance(session, SrtpRtpSession) and srtp is not None:
            session.attach_srtp(srtp)
        return session, port
    raise OSError(f"no RTP port of the range would bind ({error})")


class Served(Protocol):
    """A call leg the media clock sends for."""

    def send_next_frame(self, tick: int) -> bool:
        """Send this tick's frame; True when a prompt has just played out."""
        ...

    def prompt_done(self) -> None:
        ...


class MediaClock:
    """One media clock for all calls: every 20 ms, the next frame of each call it serves.

    Deadlines are absolute (start + n x 20 ms), so a late wake-up is caught up
    on the next tick instead of drifting; after a stall of more than 200 ms the
    clock re-anchors rather than bursting.
    """

    def __init__(self) -> None:
        self._served: dict[Served, None] = {}
        self._task: asyncio.Task[None] | None = None
        self.tick = 0
        self.late_ticks = 0
        # wake-up lateness of the last ticks (s): the send-pacing jitter of every prompt
        self.lateness: deque[float] = deque(maxlen=3000)
        self.worst_lateness = 0.0  # since start: a stall the quantiles of the last minute may miss

    def serve(self, leg: Served) -> None:
        self._served[leg] = None
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="media-clock")

    def stop(self, leg: Served) -> None:
        self._served.pop(leg, None)

    def __len__(self) -> int:
        return len(self._served)

    def lateness_quantiles(self, quantiles: tuple[float, ...]) -> list[float]:
        """Wake-up lateness (s) at each quantile of the recent ticks; 0.0 before the first tick."""
        late = sorted(self.lateness)
        if not late:
            return [0.0] * len(quantiles)
        return [late[min(len(late) - 1, int(q * len(late)))] for q in quantiles]

    def stats(self) -> dict[str, float | int]:
        if not self.lateness:
            return {"ticks": self.tick, "served": len(self._served)}
        p50, p99, worst = self.lateness_quantiles((0.5, 0.99, 1.0))
        return {"ticks": self.tick, "served": len(self._served), "resyncs": self.late_ticks,
                "samples": len(self.lateness), "lateness_ms_p50": round(1000 * p50, 3),
                "lateness_ms_p99": round(1000 * p99, 3), "lateness_ms_max": round(1000 * worst, 3),
                "lateness_ms_max_ever": round(1000 * self.worst_lateness, 3)}

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            late = loop.time() - deadline
            if self._served:  # a late tick with no call to send for (an idle full GC) delays nobody
                self.lateness.append(late)
                if late > self.worst_lateness:
                    self.worst_lateness = late
            self.tick += 1
            # A tick sends every served call's frame: about 8 ms for 500 calls. A
            # thread that wants the GIL meanwhile (the CRM writer) would get it every
            # switch interval and stretch the tick for the calls sent last, which the
            # far end hears as jitter. Hold on to it for the tick, then give it back.
            interval = sys.getswitchinterval()
            sys.setswitchinterval(TICK_SWITCH_INTERVAL_S)
            try:
                finished = [leg for leg in self._served if leg.send_next_frame(self.tick)]
            finally:
                sys.setswitchinterval(interval)
            for leg in finished:
                leg.prompt_done()
            deadline += PTIME
            delay = deadline - loop.time()
            if delay < -0.2:
                deadline = loop.time()
                self.late_ticks += 1
            await asyncio.sleep(max(0.0, delay))


# --- browser agent legs: DTLS-SRTP, ICE-lite, rtcp-mux on one port (ivr.webrtc) -------------------


class WebRtcFailed(Exception):
    """A browser leg's media could not be set up (bad answer, ICE or DTLS failure, wrong fingerprint)."""


class _MuxTransport(RtpTransport):
    """One UDP socket for STUN, DTLS and SRTP/SRTCP: every datagram goes to the session's demultiplexer.

    aiortp's own transport answers any STUN request without MESSAGE-INTEGRITY,
    which a browser ignores; here STUN goes to the ICE-lite agent instead.
    """

    def __init__(self, session: WebRtcSession) -> None:
        super().__init__(on_rtp=session._handle_rtp, on_rtcp=session._handle_rtcp)
        self._demux: Callable[[bytes, tuple[str, int]], None] = session._datagram

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._demux(data, addr)

    def send_raw(self, data: bytes, addr: tuple[str, int]) -> None:
        """STUN and DTLS: on the wire as they are (never through the SRTP wrapper on `send`)."""
        if self._transport is not None:
            self._transport.sendto(data, addr)


class WebRtcSession(SrtpRtpSession):
    """An RTP session to a browser: to the rest of the IVR, an RtpSession like any other.

    `send_audio`, `send_audio_pcm`, `on_audio`, `on_dtmf`, `close` are
    aiortp's, through SrtpRtpSession's protection, so the media clock and the
    bridge carry it unchanged. Underneath, one socket (rtcp-mux) is shared by
    the ICE-lite agent and the DTLS handshake (`ivr.webrtc.WebRtcPeer`, run on
    the event loop one datagram or timer at a time, never on the media clock)
    and by SRTP. Until ICE has a consented address and the handshake has
    given keys from a certificate matching the browser's a=fingerprint,
    nothing is sent and no RTP is taken in (the clock's frames are dropped, as
    SrtpRtpSession does without keys).
    """

    peer: WebRtcPeer
    offer: str = ""  # our SDP offer
    _answer_sdp = ""
    connect_timeout = 10.0  # seconds from the answer to keys; then the leg fails
    on_failed: Callable[[str], None] | None = None  # the signalling side ends the leg
    handshake_seconds: float | None = None  # answer taken -> keys exported
    stray = 0  # SRTP from an address ICE did not select, or before the keys
    log: structlog.typing.FilteringBoundLogger = log  # the call's logger (call_id bound) once open_webrtc sets it
    dtls_step_max = 0.0  # CPU seconds: the most one DTLS datagram's handling took on the event loop

    async def _bind_transports(self, local_addr: tuple[str, int], remote_addr: tuple[str, int]) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._remote_addr = self._remote_rtcp_addr = remote_addr  # placeholder until ICE selects one
        transport = _MuxTransport(self)
        await loop.create_datagram_endpoint(lambda: transport, local_addr=local_addr)
        try:
            self._loopback_only = ipaddress.ip_address(local_addr[0]).is_loopback
        except ValueError:  # a host name: resolved by the socket, not a loopback literal
            self._loopback_only = False
        self._rtp_transport = self._rtcp_transport = transport  # rtcp-mux: one socket for both
        transport.send = self._protecting(transport.send)  # type: ignore[method-assign]
        self.peer = WebRtcPeer(local_certificate(), transport.send_raw)
        self.peer.on_connected = self._connected
        self.peer.on_failed = self._failed
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._answered_at = 0.0
        self._ready: asyncio.Future[None] = loop.create_future()
        self._sender = RtpSender(transport=transport, payload_type=self._payload_type, ssrc=self._ssrc,
                                 clock_rate=self._clock_rate, enable_history=self._nack_retransmit,
                                 duplicate_tx=self._duplicate_tx)
        self._rtcp_task = asyncio.create_task(self._run_rtcp())

    @property
    def state(self) -> str:
        return self.peer.state.value

    def accept_answer(self, sdp: str) -> None:
        """Take the browser's SDP answer (its fingerprint, ICE credentials, DTLS role).

        Raises WebRtcFailed (and fails the session) when the answer cannot carry
        the call; otherwise the handshake proceeds on its own: await `connected()`.
        The same answer again (a retransmitted 200 OK) is ignored; a different
        one (renegotiation) raises WebRtcFailed and leaves the session as it was.
        """
        if self.peer.answer is not None:
            if sdp == self._answer_sdp:
                return
            raise WebRtcFailed("a second, different SDP answer: renegotiation is not supported")
        self._answer_sdp = sdp
        try:
            answer = parse_answer(sdp, self._payload_type)
            self.peer.accept(answer)
        except AnswerError as exc:
            self.peer.fail(f"unusable SDP answer: {exc}")
            raise WebRtcFailed(str(exc)) from None
        loop = asyncio.get_running_loop()
        self._answered_at = time.perf_counter()  # uvloop's loop.time() counts whole milliseconds
        if self.peer.state not in (PeerState.CONNECTED, PeerState.FAILED):
            self._deadline = loop.call_later(self.connect_timeout, self._timed_out)
        self._arm()

    async def connected(self) -> None:
        """Return once media can flow; raise WebRtcFailed with the reason when it never will."""
        await asyncio.shield(self._ready)

    def _timed_out(self) -> None:
        what = "ICE (no connectivity check from the browser)" if not self.peer.consented else "the DTLS handshake"
        self.peer.fail(f"{what} did not complete within {self.connect_timeout:g} s")

    def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        kind = classify(data)
        if kind == "rtp":
            if self._srtp is None or addr != self._remote_addr:
                self.stray += 1
            elif 192 <= data[1] <= 223:  # RTCP packet types 192-223 (RFC 5761 §4)
                self._handle_rtcp(data, addr)
            else:
                self._handle_rtp(data, addr)
        elif kind == "stun":
            if self._loopback_only and not ipaddress.ip_address(addr[0]).is_loopback:
                # Media bound to a loopback address serves a browser on this host. Chromium there also
                # checks from its other host candidates (the machine's LAN address); answering would
                # run the call's media over that address instead of the loopback pair it also checks.
                self.stray += 1
                return
            self.peer.stun(data, addr)
            if self.peer.selected is not None and self._srtp is not None:
                self._remote_addr = self._remote_rtcp_addr = self.peer.selected  # the browser re-nominated
            elif self._timer is None:
                self._arm()  # as the DTLS client, the first check starts our handshake
        elif kind == "dtls":
            started = time.thread_time()  # CPU, not wall: a shared host's scheduler would blur the measure
            self.peer.dtls(data, addr)
            self._arm()
            step = time.thread_time() - started
            if step > self.dtls_step_max:  # the longest the handshake held the event loop at once
                self.dtls_step_max = step
        else:
            self.stray += 1

    def _arm(self) -> None:
        """(Re)start the DTLS retransmission timer from OpenSSL's own timeout."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        timeout = self.peer.next_timeout()
        if timeout is not None and self._loop is not None:
            self._timer = self._loop.call_later(max(timeout, 0.001), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.peer.timer()
        self._arm()

    def _connected(self, srtp: SrtpContext, addr: tuple[str, int]) -> None:
        self._remote_addr = self._remote_rtcp_addr = addr
        self.attach_srtp(srtp)
        self._stop_timers()
        self.handshake_seconds = time.perf_counter() - self._answered_at
        if not self._ready.done():
            self._ready.set_result(None)
        self.log.info("webrtc_connected", remote=f"{addr[0]}:{addr[1]}", handshake_ms=round(
            1000 * (self.handshake_seconds or 0.0), 1))

    def _failed(self, reason: str) -> None:
        self._srtp = None  # nothing more in or out
        self._stop_timers()
        if not self._ready.done():
            self._ready.set_exception(WebRtcFailed(reason))
            self._ready.exception()  # retrieved: nobody awaiting is not an error here
        self.log.warning("webrtc_failed", reason=reason, state_reached=(
            "dtls" if self.peer.consented else "no ICE check"), stun_rejected=self.peer.stun_rejected)
        if self.on_failed is not None:
            self.on_failed(reason)

    def _stop_timers(self) -> None:
        for handle in (self._timer, self._deadline):
            if handle is not None:
                handle.cancel()
        self._timer = self._deadline = None

    def _on_closing(self) -> None:
        self._stop_timers()
        self.peer.close()  # close_notify before aiortp's BYE and the socket close
        if not self._ready.done():
            self._ready.set_exception(WebRtcFailed("closed"))
            self._ready.exception()

    async def close(self) -> None:
        transport = self._rtp_transport
        await super().close()
        self.on_failed = None
        if isinstance(transport, _MuxTransport):
            transport._demux = _closed_transport  # the socket's last reference back to the session


async def open_webrtc(
    pool: RtpPortPool,
    bind: str,
    payload_type: int,
    *,
    address: str | None = None,
    dtmf_payload_type: int = 101,
    call_log: structlog.typing.FilteringBoundLogger | None = None,
) -> tuple[WebRtcSession, int, str]:
    """Bind a browser leg's media on the next free port; returns the session, its port and our SDP offer.

    `address` is what the offer names (the candidate and c= line), `bind` by
    default; `call_log` is the call's logger (its call_id bound) for the
    session's webrtc_connected / webrtc_failed lines. Send the offer in the agent leg's INVITE, pass the browser's
    answer to `session.accept_answer`, then `await session.connected()`.
    Raises RuntimeError when the range is exhausted and OSError when no port
    of `BIND_ATTEMPTS` would bind.
    """
    error: OSError | None = None
    for _ in range(min(BIND_ATTEMPTS, max(1, len(pool)))):
        port = pool.acquire()
        try:
            session = await WebRtcSession.create(
                local_addr=(bind, port), remote_addr=("0.0.0.0", 0), payload_type=payload_type,
                dtmf_payload_type=dtmf_payload_type,
            )
        except OSError as exc:
            pool.release(port)
            pool.bind_retries += 1
            error = exc
            log.info("rtp_port_busy", port=port, error=str(exc))
            continue
        assert isinstance(session, WebRtcSession)
        if call_log is not None:
            session.log = call_log
        session.offer = offer_sdp(address=address or bind, port=port, payload_type=payload_type,
                                  ufrag=session.peer.ufrag, pwd=session.peer.pwd,
                                  fingerprint=session.peer.certificate.fingerprint, ssrc=session._ssrc,
                                  dtmf_payload_type=dtmf_payload_type)
        return session, port, session.offer
    raise OSError(f"no RTP port of the range would bind ({error})")
