"""The engine adapter: aiosipua (SIP) and aiortp (RTP) on one side, the call flow on the other.

This is the only module that imports the SIP/RTP libraries. It turns SIP
dialogs, RTP audio and DTMF into `ivr.events`, feeds them to each call's
`CallFlow`, and carries out the actions that come back. Library quirks are
worked around here, each once, with a comment naming the version and the
symptom (search for "aiosipua 0.7.1" / "aiortp 0.8.0").

Media: every playing call is served by one shared 20 ms media clock
(`Pacer`), not a timer per call, and sends prompt frames that were encoded
once at start-up (`prompts.library`). Inbound audio is decoded and run
through VAD only while the flow listens (`Listen(True)`).
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiortp
import structlog
from aiortp.codecs import get_codec
from aiosipua import (
    IncomingCall,
    SdpNegotiationError,
    SipRequest,
    SipUAS,
    UdpSipTransport,
    negotiate_sdp,
    parse_uri,
)

from crm_bridge.writer import CrmWriter
from ivr.callflow import CallFlow, CallFlowError
from ivr.config import Config
from ivr.events import (
    Aborted,
    Action,
    Answer,
    Cancelled,
    CancelTimer,
    Digit,
    Event,
    HangUp,
    HungUp,
    Invited,
    Listen,
    Play,
    PromptFinished,
    RecordCall,
    RecordEvent,
    Reject,
    Ring,
    SpeechStarted,
    StartTimer,
    StopPlayback,
    TimerFired,
)
from ivr.greeting import Greeter
from ivr.vad import SpeechDetector
from prompts.library import PromptLibrary

log = structlog.get_logger("ivr.engine")

PTIME = 0.020
SAMPLES_PER_FRAME = 160
# aiosipua 0.7.1 leaves rejected INVITEs in SipUAS._calls until an ACK that a
# scanner never sends; forget them after Timer H (64 x T1 = 32 s).
REJECTED_FORGET_S = 32.0


class _UdpProtocol(asyncio.DatagramProtocol):
    """Datagram protocol for `UvloopUdpTransport`.

    aiosipua 0.7.1's own protocol asserts `isinstance(transport,
    asyncio.DatagramTransport)` in connection_made; uvloop's UDPTransport is
    not a subclass, so the assertion fails and uvloop closes the socket.
    """

    def __init__(self, owner: UvloopUdpTransport) -> None:
        self._owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._owner._udp_transport = transport  # type: ignore[assignment]  # noqa: SLF001

    def datagram_received(self, data: bytes, addr: tuple[str, int] | Any) -> None:
        self._owner._dispatch(data, (str(addr[0]), int(addr[1])))  # noqa: SLF001

    def error_received(self, exc: Exception) -> None:
        log.warning("sip_udp_error", error=str(exc))


class UvloopUdpTransport(UdpSipTransport):
    """aiosipua's UDP transport, started with a protocol that runs on uvloop."""

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), local_addr=self.local_addr)
        self._udp_transport = transport


def g711_encoders(payload_types: list[int]) -> dict[int, Callable[[bytes], bytes]]:
    """aiortp's G.711 encoders, for the prompt library to pre-encode with."""
    return {pt: get_codec(pt).encode for pt in payload_types}


def utc_now() -> datetime:
    return datetime.now(UTC)


class RtpPortPool:
    """Even RTP ports from the configured range, handed out round-robin."""

    def __init__(self, first: int, last: int) -> None:
        self._free: deque[int] = deque(range(first + first % 2, last - 1, 2))

    def acquire(self) -> int:
        if not self._free:
            raise RuntimeError("RTP port range exhausted")
        return self._free.popleft()

    def release(self, port: int) -> None:
        self._free.append(port)

    def __len__(self) -> int:
        return len(self._free)


class Pacer:
    """One media clock for all calls: every 20 ms, the next frame of each playing prompt.

    Deadlines are absolute (start + n x 20 ms), so a late wake-up is caught up
    on the next tick instead of drifting; after a stall of more than 200 ms the
    clock re-anchors rather than bursting.
    """

    def __init__(self) -> None:
        self._playing: dict[Leg, None] = {}
        self._task: asyncio.Task[None] | None = None
        self.tick = 0
        self.late_ticks = 0

    def play(self, leg: Leg) -> None:
        self._playing[leg] = None
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pacer")

    def stop(self, leg: Leg) -> None:
        self._playing.pop(leg, None)

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
            self.tick += 1
            finished = [leg for leg in self._playing if not leg.send_next_frame(self.tick)]
            for leg in finished:
                del self._playing[leg]
                leg.prompt_done()
            deadline += PTIME
            delay = deadline - loop.time()
            if delay < -0.2:
                deadline = loop.time()
                self.late_ticks += 1
            await asyncio.sleep(max(0.0, delay))


class Leg:
    """One caller's call: its SIP dialog, RTP session, flow, timers and playback."""

    def __init__(self, engine: Engine, call: IncomingCall) -> None:
        self.engine = engine
        self.call = call
        self.call_id = call.call_id
        self.log = log.bind(call_id=self.call_id)
        self.flow = CallFlow(self.call_id, engine.config.flow, engine.greeter)
        self.rtp: aiortp.RTPSession | None = None
        self.rtp_port: int | None = None
        self.sdp_answer = None
        self.payload_type = 0
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.detector = SpeechDetector(engine.config.silence.vad_aggressiveness, engine.config.silence.speech_ms)
        self.frames: tuple[bytes, ...] = ()
        self.frame_index = 0
        self.prompt: str | None = None
        self.ts_offset = random.getrandbits(32)
        self.media_starting = False
        self.deferred_timer: str | None = None
        self.closed = False

    # --- events in ----------------------------------------------------------------

    def dispatch(self, event: Event) -> None:
        if self.closed and not isinstance(event, Invited):
            return
        try:
            actions = self.flow.handle(event)
        except CallFlowError as exc:
            self.log.warning("event_not_allowed", event=type(event).__name__, state=exc.state.value)
            return
        try:
            for action in actions:
                self.execute(action)
        except Exception as exc:  # an engine failure must not lose the call's record
            self.log.exception("engine_error", action=type(action).__name__)
            if not self.flow.ended:
                self.dispatch(Aborted(utc_now(), f"engine error: {exc!r}"))
        if self.flow.ended:
            self.engine.release(self)

    def fire_timer(self, name: str) -> None:
        self.timers.pop(name, None)
        if self.rtp is None and self.media_starting:
            self.deferred_timer = name  # answer only once the RTP socket is bound
            return
        self.deferred_timer = None
        self.dispatch(TimerFired(utc_now(), name))

    def prompt_done(self) -> None:
        prompt, self.prompt = self.prompt, None
        if prompt is not None:
            self.dispatch(PromptFinished(utc_now(), prompt))

    def on_audio(self, pcm: bytes, _timestamp: int) -> None:
        if self.detector.feed(pcm):
            self.listen(False)
            self.dispatch(SpeechStarted(utc_now()))

    def on_dtmf(self, digit: str, _duration: int) -> None:
        self.dispatch(Digit(utc_now(), digit, "rfc4733"))

    # --- actions out ----------------------------------------------------------------

    def execute(self, action: Action) -> None:
        match action:
            case RecordEvent():
                self.engine.writer.submit(action)
                self.log.info(action.kind, detail=action.detail) if action.detail else self.log.info(action.kind)
            case RecordCall():
                self.engine.writer.submit(action)
            case Ring():
                self.call.ringing()
            case Answer():
                self.call.accept(self.sdp_answer)
            case Reject(status=status, reason=reason):
                self.call.reject(status, reason)
            case Play(prompt=prompt):
                self.frames = self.engine.prompts.frames(prompt, self.payload_type)
                self.frame_index = 0
                self.prompt = prompt
                self.engine.pacer.play(self)
            case StopPlayback():
                self.engine.pacer.stop(self)
                self.prompt = None
            case StartTimer(timer=name, seconds=seconds):
                self.cancel_timer(name)
                self.timers[name] = asyncio.get_running_loop().call_later(seconds, self.fire_timer, name)
            case CancelTimer(timer=name):
                self.cancel_timer(name)
            case Listen(on=on):
                self.listen(on)
            case HangUp():
                self.call.hangup()
            case _:
                raise TypeError(f"unknown action {action!r}")

    def cancel_timer(self, name: str) -> None:
        handle = self.timers.pop(name, None)
        if handle is not None:
            handle.cancel()

    def listen(self, on: bool) -> None:
        self.detector.reset()
        if self.rtp is not None:
            # aiortp 0.8.0 decodes inbound audio only when on_audio is set: no VAD, no decode.
            self.rtp.on_audio = self.on_audio if on else None

    def send_next_frame(self, tick: int) -> bool:
        """Send one frame on the shared clock; False when the prompt is done."""
        if self.frame_index >= len(self.frames) or self.rtp is None:
            return False
        timestamp = (self.ts_offset + tick * SAMPLES_PER_FRAME) & 0xFFFFFFFF
        self.rtp.send_audio(self.frames[self.frame_index], timestamp)
        self.frame_index += 1
        return True

    async def close_media(self) -> None:
        if self.media_starting:
            return  # Engine._start_leg closes it when the bind completes
        if self.rtp is not None:
            rtp, self.rtp = self.rtp, None
            await rtp.close()
        self.engine._release_port(self)


class Engine:
    """The hotline's SIP endpoint: answers INVITEs and runs a CallFlow per call."""

    def __init__(self, config: Config, prompts: PromptLibrary, writer: CrmWriter, greeter: Greeter) -> None:
        self.config = config
        self.prompts = prompts
        self.writer = writer
        self.greeter = greeter
        self.legs: dict[str, Leg] = {}
        self.pacer = Pacer()
        self.ports = RtpPortPool(*config.general.rtp_ports)
        self.accepting = True
        self._tasks: set[asyncio.Task[None]] = set()
        g = config.general
        self.transport = UvloopUdpTransport(local_addr=(g.bind, g.port))
        self.uas = SipUAS(self.transport, user_agent=g.user_agent)
        self.uas.on_invite = self._on_invite
        self.uas.on_bye = self._on_bye
        self.uas.on_cancel = self._on_cancel
        self.uas.on_ack_timeout = self._on_ack_timeout
        # aiosipua 0.7.1 SipUAS dispatches no INFO (answers 405): DTMF by SIP INFO
        # (application/dtmf-relay, application/dtmf) is handled here instead.
        self.uas._handlers["INFO"] = self._on_info  # noqa: SLF001

    @property
    def media_ip(self) -> str:
        g = self.config.general
        return g.advertised_ip or g.bind

    async def start(self) -> None:
        await self.uas.start()
        g = self.config.general
        log.info("listening", bind=g.bind, port=g.port, numbers=sorted(g.numbers), rtp_ports=list(g.rtp_ports))

    async def stop(self) -> None:
        """End every call politely (BYE or 503), close media, stop listening."""
        self.accepting = False
        for leg in list(self.legs.values()):
            leg.dispatch(Aborted(utc_now(), "shutdown"))
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self.pacer.close()
        await asyncio.sleep(0.05)  # let the last BYEs leave the socket
        await self.uas.stop()

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- SIP callbacks --------------------------------------------------------------

    def _reject(self, call: IncomingCall, status: int, reason: str, why: str) -> None:
        call.reject(status, reason)
        log.info("invite_rejected", call_id=call.call_id, status=status, reason=why, source=f"{call.source_addr[0]}:{call.source_addr[1]}")
        asyncio.get_running_loop().call_later(REJECTED_FORGET_S, self.uas._calls.pop, call.call_id, None)  # noqa: SLF001

    def _on_invite(self, call: IncomingCall) -> None:
        if not self.accepting:
            self._reject(call, 503, "Service Unavailable", "shutting down")
            return
        callee = parse_uri(call.invite.uri).user or ""
        if callee not in self.config.general.numbers:
            self._reject(call, 404, "Not Found", f"unknown number {callee!r}")
            return
        if call.sdp_offer is None:
            self._reject(call, 488, "Not Acceptable Here", "no SDP offer (late offer is not supported)")
            return
        leg = Leg(self, call)
        try:
            leg.rtp_port = self.ports.acquire()
            offer = call.sdp_offer
            dtmf_pt = next(
                (c.payload_type for c in (offer.audio.codecs if offer.audio else []) if (c.encoding_name or "").lower() == "telephone-event"),
                101,
            )
            leg.sdp_answer, leg.payload_type = negotiate_sdp(
                offer, local_ip=self.media_ip, rtp_port=leg.rtp_port,
                supported_codecs=self.config.general.payload_types, dtmf_payload_type=dtmf_pt,
            )
            remote = offer.rtp_address
            if remote is None:
                raise SdpNegotiationError("offer has no audio address")
        except SdpNegotiationError as exc:
            if leg.rtp_port is not None:
                self.ports.release(leg.rtp_port)
            self._reject(call, 488, "Not Acceptable Here", str(exc))
            return
        except RuntimeError as exc:  # port range exhausted
            self._reject(call, 503, "Service Unavailable", str(exc))
            return
        self.legs[call.call_id] = leg
        leg.media_starting = True
        leg.dispatch(Invited(utc_now(), _user(call.caller), callee))
        self._spawn(self._start_leg(leg, remote, dtmf_pt))

    async def _start_leg(self, leg: Leg, remote: tuple[str, int], dtmf_pt: int) -> None:
        try:
            rtp = await aiortp.RTPSession.create(
                local_addr=(self.config.general.bind, leg.rtp_port),
                remote_addr=remote,
                payload_type=leg.payload_type,
                dtmf_payload_type=dtmf_pt,
            )
        except OSError as exc:
            leg.media_starting = False
            leg.log.error("rtp_bind_failed", port=leg.rtp_port, error=str(exc))
            leg.dispatch(Aborted(utc_now(), f"RTP port {leg.rtp_port} unavailable"))
            self._release_port(leg)
            return
        leg.media_starting = False
        if leg.closed:  # CANCELled while the socket was being bound
            await rtp.close()
            self._release_port(leg)
            return
        leg.rtp = rtp
        rtp.on_dtmf = leg.on_dtmf
        if leg.deferred_timer is not None:
            leg.fire_timer(leg.deferred_timer)

    def _on_bye(self, call: IncomingCall, _request: SipRequest) -> None:
        leg = self.legs.get(call.call_id)
        if leg is not None:
            leg.dispatch(HungUp(utc_now()))

    def _on_cancel(self, request: SipRequest, _addr: tuple[str, int]) -> None:
        leg = self.legs.get(request.call_id or "")
        if leg is not None and leg.flow.record is not None:
            leg.dispatch(Cancelled(utc_now()))

    def _on_ack_timeout(self, call: IncomingCall) -> None:
        leg = self.legs.get(call.call_id)
        if leg is not None:
            leg.dispatch(Aborted(utc_now(), "no ACK for 200 OK"))

    def _on_info(self, request: SipRequest, addr: tuple[str, int]) -> None:
        call = self.uas.get_call(request.call_id or "")
        if call is None:
            self.uas._send_error(request, 481, "Call/Transaction Does Not Exist")  # noqa: SLF001
            return
        if not self.uas._validate_in_dialog(call.dialog, request):  # noqa: SLF001
            return
        self.transport.send_reply(call.dialog.create_response(request, 200, "OK"))
        digit = _info_digit(request)
        leg = self.legs.get(call.call_id)
        if digit is not None and leg is not None:
            leg.dispatch(Digit(utc_now(), digit, "info"))

    # --- teardown ---------------------------------------------------------------------

    def _release_port(self, leg: Leg) -> None:
        if leg.rtp_port is not None:
            self.ports.release(leg.rtp_port)
            leg.rtp_port = None

    def release(self, leg: Leg) -> None:
        """The flow has ended: free timers, playback, media and SIP state."""
        if leg.closed:
            return
        leg.closed = True
        for name in list(leg.timers):
            leg.cancel_timer(name)
        self.pacer.stop(leg)
        self.legs.pop(leg.call_id, None)
        # aiosipua 0.7.1 IncomingCall.hangup() sends BYE but leaves the call in
        # SipUAS._calls for ever; drop it once our flow is done with it.
        self.uas._calls.pop(leg.call_id, None)  # noqa: SLF001
        self._spawn(leg.close_media())


def _user(uri: str) -> str:
    """The user part of a SIP URI or name-addr ("Alice <sip:1001@host>" -> "1001")."""
    text = uri.strip()
    if "<" in text:
        text = text[text.index("<") + 1 : text.index(">") if ">" in text else None]
    try:
        return parse_uri(text).user or ""
    except Exception:
        return ""


_DTMF_KEYS = set("0123456789*#ABCD")


def _info_digit(request: SipRequest) -> str | None:
    """The key in a SIP INFO body: `Signal=5` (application/dtmf-relay) or `5` (application/dtmf)."""
    content_type = (request.content_type or "").lower()
    body = request.text.strip()
    if content_type == "application/dtmf-relay":
        for line in body.splitlines():
            key, _, value = line.partition("=")
            if key.strip().lower() == "signal" and value.strip().upper() in _DTMF_KEYS:
                return value.strip().upper()
    elif content_type == "application/dtmf" and body.upper() in _DTMF_KEYS:
        return body.upper()
    return None
