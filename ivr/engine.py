"""The engine adapter: aiosipua (SIP) and aiortp (RTP) on one side, the call flow on the other.

This is the only module that imports the SIP/RTP libraries. It turns SIP
dialogs, RTP audio and DTMF into `ivr.events`, feeds them to each call's
`CallFlow`, and carries out the actions that come back. Library quirks are
worked around here, each once, with a comment naming the version and the
symptom (search for "aiosipua 0.7.1" / "aiortp 0.8.0").

Media (`ivr.media`): every answered call is served by one shared 20 ms
media clock, not a timer per call: prompt frames that were encoded once at
start-up (`prompts.library`), silence when nothing plays. Inbound audio is
decoded and run through VAD only while the flow listens (`Listen(True)`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from aiosipua import (
    SdpNegotiationError,
    SipRequest,
    build_sdp,
    negotiate_sdp,
    parse_address,
    parse_auth,
    parse_uri,
)

from crm_bridge.customers import CallerDirectory
from crm_bridge.writer import CrmWriter
from ivr.acd import Acd, Offer
from ivr.callflow import CallFlow, CallFlowError
from ivr.config import Config
from ivr.events import (
    Aborted,
    Action,
    AgentAnswered,
    AgentHungUp,
    AgentNoAnswer,
    AgentRinging,
    AnnouncePosition,
    Answer,
    Bridge,
    CallerIdentified,
    HangUpAgent,
    JoinQueue,
    LeaveQueue,
    OpenTicket,
    QueuePosition,
    RecordSurvey,
    RelayDigit,
    Unbridge,
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
from ivr.guard import SourceGuard, Verdict
from ivr.media import CODEC_NAMES, SAMPLES_PER_FRAME, SILENCE_FRAMES, MediaClock, RtpPortPool, RtpSession, StrictRtpSession, open_rtp
from ivr.metrics import Metrics
from ivr.registrar import Challenge, Refused, Registered, Registrar
from ivr.sanity import check_request
from ivr.service import SEAT_GROUPS
from ivr.shared_acd import SharedAcd
from ivr.sip.endpoint import Address, Headers, InboundCall, OutboundCall, SipEndpoint
from ivr.vad import SpeechDetector
from prompts.library import PromptLibrary

log = structlog.get_logger("ivr.engine")

# aiosipua 0.7.1 leaves rejected INVITEs in SipUAS._calls until an ACK that a
# scanner never sends; forget them after Timer H (64 x T1 = 32 s).
LAG_PROBE_S = 0.05
FULL_GC_EVERY_S = 600.0  # see run_ivr.py: the full GC pass is the engine's to schedule
# Agents dial these from their registered phone to pause (not offered calls) or resume.
FEATURE_CODES = {"*46": True, "*47": False}
LOOKUP_TIMEOUT_S = 2.0  # a caller the CRM cannot name in time is served as unknown


def utc_now() -> datetime:
    return datetime.now(UTC)


class Leg:
    """One caller's call: its SIP dialog, RTP session, flow, timers and playback."""

    def __init__(self, engine: Engine, call: InboundCall) -> None:
        self.engine = engine
        self.call = call
        self.call_id = call.call_id
        self.log = log.bind(call_id=self.call_id)
        self.flow = CallFlow(self.call_id, engine.config.flow, engine.greeter)
        self.rtp: RtpSession | None = None
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
        self.max_duration: asyncio.TimerHandle | None = None
        self.agent: AgentLeg | None = None
        self._last_ts = self.ts_offset

    def next_timestamp(self) -> int:
        """RTP timestamp for a relayed frame: follows the media clock, never repeats."""
        clock = (self.ts_offset + self.engine.pacer.tick * SAMPLES_PER_FRAME) & 0xFFFFFFFF
        ahead = (clock - self._last_ts) & 0xFFFFFFFF
        self._last_ts = clock if 0 < ahead < 0x80000000 else (self._last_ts + SAMPLES_PER_FRAME) & 0xFFFFFFFF
        return self._last_ts

    # --- events in ----------------------------------------------------------------

    def dispatch(self, event: Event) -> None:
        if self.closed:
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

    def relay_to_agent(self, pcm: bytes, _timestamp: int) -> None:
        agent = self.agent
        if agent is not None and agent.rtp is not None:
            agent.rtp.send_audio_pcm(pcm, agent.next_timestamp())

    def relay_digit_to_caller(self, digit: str, _duration: int) -> None:
        if self.rtp is not None:
            self.rtp.send_dtmf(digit)

    def relay_to_caller(self, pcm: bytes, _timestamp: int) -> None:
        if self.rtp is not None:
            self.rtp.send_audio_pcm(pcm, self.next_timestamp())

    # --- actions out ----------------------------------------------------------------

    def execute(self, action: Action) -> None:
        match action:
            case RecordEvent():
                self.engine.writer.submit(action)
                self.log.info(action.kind, **({"detail": action.detail} if action.detail else {}))
            case RecordCall(record=record):
                self.engine.writer.submit(action)
                if record.ended_at is not None:
                    metrics = self.engine.metrics
                    metrics.calls.labels(record.outcome or "unknown").inc()
                    if record.queue_wait_s is not None and record.seat_group:
                        metrics.queue_wait.labels(record.seat_group).observe(record.queue_wait_s)
            case Ring():
                self.call.ringing()  # nothing after a CANCEL's 487
            case Answer():
                self.call.accept(self.sdp_answer)
                self.engine.pacer.serve(self)  # from now on RTP flows: prompts, else keep-alive silence
            case Reject(status=status, reason=reason):
                self.call.reject(status, reason)
            case Play(prompt=prompt):
                self.frames = self.engine.prompts.frames(prompt, self.payload_type)
                self.frame_index = 0
                self.prompt = prompt
                self.engine.pacer.serve(self)
            case StopPlayback():
                self.frames, self.prompt = (), None  # the clock goes on with keep-alive frames
            case StartTimer(timer=name, seconds=seconds):
                self.cancel_timer(name)
                self.timers[name] = asyncio.get_running_loop().call_later(seconds, self.fire_timer, name)
            case CancelTimer(timer=name):
                self.cancel_timer(name)
            case Listen(on=on):
                self.listen(on)
            case HangUp():
                self.call.hangup()
            case JoinQueue(seat_group=group, service=service):
                self.engine.acd.join(self.call_id, group, service, utc_now())
                self.engine.assign()
            case LeaveQueue():
                self.engine.leave_queue(self)
            case AnnouncePosition():
                position = self.engine.acd.position(self.call_id) or 1
                asyncio.get_running_loop().call_soon(self.dispatch, QueuePosition(utc_now(), position))
            case Bridge():
                if self.agent is not None and self.agent.rtp is not None and self.rtp is not None:
                    self.rtp.on_audio = self.relay_to_agent
                    self.agent.rtp.on_audio = self.relay_to_caller
                    self.agent.rtp.on_dtmf = self.relay_digit_to_caller
                    self.engine.pacer.stop(self)  # the agent's audio paces the caller's stream now
            case Unbridge():
                if self.rtp is not None:
                    self.rtp.on_audio = None
                    self.engine.pacer.serve(self)
                if self.agent is not None and self.agent.rtp is not None:
                    self.agent.rtp.on_audio = None
                    self.agent.rtp.on_dtmf = None
            case RelayDigit(digit=digit):
                if self.agent is not None and self.agent.rtp is not None:
                    self.agent.rtp.send_dtmf(digit)
            case HangUpAgent():
                if self.agent is not None:
                    self.engine.end_agent_leg(self.agent, hang_up=True)
            case RecordSurvey() | OpenTicket():
                self.engine.writer.submit(action)
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
        """Send this tick's frame on the shared clock; True once the prompt has played out."""
        rtp = self.rtp
        if rtp is None:
            return False
        timestamp = (self.ts_offset + tick * SAMPLES_PER_FRAME) & 0xFFFFFFFF
        if self.frame_index < len(self.frames):
            rtp.send_audio(self.frames[self.frame_index], timestamp)
            self.frame_index += 1
            return False
        rtp.send_audio(SILENCE_FRAMES[self.payload_type], timestamp)  # keep-alive: never a gap in RTP
        return self.prompt is not None

    async def close_media(self) -> None:
        if self.media_starting:
            return  # Engine._start_leg closes it when the bind completes
        rtp, self.rtp = self.rtp, None
        if rtp is not None:
            await rtp.close()
        if isinstance(rtp, StrictRtpSession) and (rtp.stray or rtp.malformed):
            self.log.warning("rtp_dropped", stray=rtp.stray, malformed=rtp.malformed, expected_from=rtp.expected_from)
        self.engine._release_port(self)


class AgentLeg:
    """The IVR's call to an agent (UAC side of the B2BUA) for one caller."""

    def __init__(self, caller: Leg, offer: Offer) -> None:
        self.caller = caller
        self.offer = offer
        self.agent = offer.agent
        self.rtp: RtpSession | None = None
        self.rtp_port: int | None = None
        self.out: OutboundCall | None = None
        self.ring_timer: asyncio.TimerHandle | None = None
        self.answered = False
        self.ended = False
        self.ts_offset = random.getrandbits(32)
        self._ts = self.ts_offset

    def next_timestamp(self) -> int:
        self._ts = (self._ts + SAMPLES_PER_FRAME) & 0xFFFFFFFF
        return self._ts


class Engine:
    """The hotline's SIP endpoint: answers INVITEs and runs a CallFlow per call."""

    def __init__(
        self,
        config: Config,
        prompts: PromptLibrary,
        writer: CrmWriter,
        greeter: Greeter,
        directory: CallerDirectory | None = None,
        acd: Acd | None = None,
    ) -> None:
        self.config = config
        self.prompts = prompts
        self.writer = writer
        self.greeter = greeter
        self.directory = directory
        self.legs: dict[str, Leg] = {}
        self.agent_legs: dict[str, AgentLeg] = {}  # by the agent call's Call-ID
        # One process: agents in memory. Workers behind a balancer: a SharedAcd (ivr.shared_acd).
        self.acd = acd or Acd.from_agents(config.agents, config.queues, tuple(SEAT_GROUPS))
        # Workers that share agents share the nonce key, so a challenge from one is answered to any.
        secret = config.cluster.secret.encode() if config.cluster.shared_agents else None
        self.registrar = Registrar({a.number: a.secret for a in config.agents if a.secret}, key=secret)
        self.guard = SourceGuard(config.limits)
        self.loop_lag = 0.0  # how late the event loop ran a 50 ms timer, last time it looked
        self.max_loop_lag = config.limits.max_loop_lag_ms / 1000
        self.metrics = Metrics()
        self.metrics.watch(self)
        self.registrations: dict[str, asyncio.TimerHandle] = {}
        self._wrap_up: dict[str, asyncio.TimerHandle] = {}
        self._assign_task: asyncio.Task[None] | None = None
        self._claiming = self._claim_again = self._refreshing = False
        self._states: dict[str, str] = {}
        self._status_dirty = True
        self.status_file = config.status_file
        self.pacer = MediaClock()
        self.ports = RtpPortPool(*config.general.rtp_ports)
        self.accepting = True
        self._tasks: set[asyncio.Task[None]] = set()
        g = config.general
        self.endpoint = SipEndpoint(g.bind, g.port, self, user_agent=g.user_agent, advertised=g.advertised_ip, transports=g.transports, tls_port=g.tls_port, tls_certificate=str(g.tls_certificate or ""), tls_key=str(g.tls_key or ""), idle_seconds=g.tcp_idle_seconds, max_connections=g.max_connections)

    @property
    def media_ip(self) -> str:
        g = self.config.general
        return g.advertised_ip or g.bind

    async def start(self) -> None:
        await self.endpoint.start()
        g = self.config.general
        log.info("listening", bind=g.bind, port=g.port, numbers=sorted(g.numbers), rtp_ports=list(g.rtp_ports))
        if isinstance(self.acd, SharedAcd):
            await asyncio.to_thread(self.acd.start, self.config.agents, utc_now())
        else:
            for agent in self.config.agents:
                if agent.host is not None:  # a static contact is always logged in
                    self.acd.login(agent.number, agent.host, utc_now())
        log.info("seat_groups", agents=self.acd.describe())
        self.publish_states()
        # overflow eligibility grows with waiting time: re-run the ACD every second
        self._assign_task = asyncio.get_running_loop().create_task(self._assign_every_second())
        self._lag_task = asyncio.get_running_loop().create_task(self._watch_loop_lag())

    async def drain(self, limit_s: float, hurry: asyncio.Event) -> int:
        """Take no new calls (503) and wait for the calls up to finish, at most `limit_s`.

        Returns how many calls were still up when the wait ended.
        """
        self.accepting = False
        deadline = asyncio.get_running_loop().time() + limit_s
        while self.legs and not hurry.is_set():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(hurry.wait(), timeout=min(0.2, left))
            except TimeoutError:
                pass
        return len(self.legs)

    async def stop(self) -> None:
        """End every call politely (BYE or 503), close media, stop listening."""
        self.accepting = False
        if self._assign_task is not None:
            self._assign_task.cancel()
            self._lag_task.cancel()
        for leg in list(self.legs.values()):
            leg.dispatch(Aborted(utc_now(), "shutdown"))
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self.pacer.close()
        await asyncio.sleep(0.05)  # let the last BYEs leave the socket
        await self.endpoint.stop()
        if isinstance(self.acd, SharedAcd):
            await asyncio.to_thread(self.acd.close, utc_now())

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- SIP callbacks --------------------------------------------------------------

    def screen(self, request: SipRequest, source: Address, request_line: str) -> bool:
        """Limits and RFC 3261 checks for a request off the wire; answers what it refuses."""
        if not self._admit(request, source):
            return False
        refusal = check_request(request, request_line)
        if refusal is not None:
            log.warning("sip_bad_request", source=f"{source[0]}:{source[1]}", method=request.method[:20],
                        status=refusal.status, error=refusal.why)
            if request.method != "ACK":
                self._refuse(request, source, refusal.status, refusal.reason, refusal.headers)
            return False
        return True

    def _admit(self, request: SipRequest, addr: tuple[str, int]) -> bool:
        """Per-source limits, the auth ban and draining; answers what it refuses."""
        if request.method == "INVITE" and ";tag=" not in (request.get_header("to") or "") and (
            self.loop_lag > self.max_loop_lag or not self.guard.admit_call()
        ):
            # overload control: beyond the configured call rate, or while the event loop
            # is behind (the machine cannot keep up, whatever the configuration says),
            # refuse new calls at once and cheaply instead of letting transactions pile
            # up until everything times out
            self._refuse(request, addr, 503, "Service Unavailable", {"Retry-After": "2"})
            return False
        verdict = self.guard.admit(request.method, addr[0])
        if verdict is Verdict.ADMIT:
            if request.method == "OPTIONS" and not self.accepting:
                # a load balancer probing with OPTIONS takes this worker out of rotation
                self._refuse(request, addr, 503, "Service Unavailable", {"Retry-After": "30"})
                return False
            return True
        if verdict is Verdict.REFUSE:
            self._refuse(request, addr, 503, "Service Unavailable", {"Retry-After": "5"})
        # DROP and BANNED: no answer at all, so a password guesser learns nothing more
        return False

    def _refuse(self, request: SipRequest, source: Address, status: int, reason: str, headers: dict[str, str]) -> None:
        self.metrics.refused.labels(str(status)).inc()
        if not request.via:
            return
        try:
            self.endpoint.reply(request, source, status, reason, headers)
        except Exception:  # noqa: BLE001 — headers too broken to build an answer from: dropped (the caller logged it)
            pass

    def _reject(self, call: InboundCall, status: int, reason: str, why: str, retry_after: int | None = None,
                headers: dict[str, str] | None = None) -> None:
        self.metrics.refused.labels(str(status)).inc()
        headers = dict(headers or {})
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        call.reject(status, reason, headers)
        log.info("invite_rejected", call_id=call.call_id, status=status, reason=why, source=f"{call.source_addr[0]}:{call.source_addr[1]}")

    def on_invite(self, call: InboundCall) -> None:
        self.metrics.invites.inc()
        if not self.accepting:
            self._reject(call, 503, "Service Unavailable", "shutting down", retry_after=30)
            return
        if len(self.legs) >= self.config.general.max_calls:
            self._reject(call, 503, "Service Unavailable", "max_calls reached", retry_after=5)
            return
        callee = parse_uri(call.invite.uri).user or ""
        if callee in FEATURE_CODES and self._feature_code(call, FEATURE_CODES[callee]):
            return
        if callee not in self.config.general.numbers:
            self._reject(call, 404, "Not Found", f"unknown number {callee!r}")
            return
        content_type = (call.invite.content_type or "").split(";")[0].strip().lower()
        if call.invite.body and content_type != "application/sdp":
            self._reject(call, 415, "Unsupported Media Type", f"body of type {content_type[:40]!r}",
                         headers={"Accept": "application/sdp"})
            return
        accept = call.invite.get_header("accept")
        if accept is not None and not {"application/sdp", "application/*", "*/*"} & {
            a.split(";")[0].strip().lower() for a in accept.split(",")
        }:
            self._reject(call, 406, "Not Acceptable", f"Accept {accept[:40]!r} excludes application/sdp",
                         headers={"Accept": "application/sdp"})
            return
        if call.sdp_offer is None:
            self._reject(call, 488, "Not Acceptable Here", "no SDP offer (late offer is not supported)")
            return
        secure = [m.proto for m in call.sdp_offer.media if m.media == "audio" and "SAVP" in m.proto.upper()]
        if secure:
            # RFC 4568: an answer must keep the offer's profile; answering RTP/SAVP without keys
            # would send the caller's audio in clear under a secure label. Refuse instead.
            self._reject(call, 488, "Not Acceptable Here", f"secure media ({secure[0]}) is not offered by this IVR")
            return
        if not len(self.ports):
            self._reject(call, 503, "Service Unavailable", "RTP port range exhausted")
            return
        leg = Leg(self, call)
        offer = call.sdp_offer
        dtmf_pt = next(
            (c.payload_type for c in (offer.audio.codecs if offer.audio else []) if (c.encoding_name or "").lower() == "telephone-event"),
            101,
        )
        try:
            # the codec is chosen now (a 488 must not wait for a socket); the answer is
            # written again once the RTP port is bound (see _start_leg)
            _, leg.payload_type = self._answer_sdp(offer, 0, dtmf_pt)
            remote = offer.rtp_address
            if remote is None:
                raise SdpNegotiationError("offer has no audio address")
        except SdpNegotiationError as exc:
            self._reject(call, 488, "Not Acceptable Here", str(exc))
            return
        self.legs[call.call_id] = leg
        leg.max_duration = asyncio.get_running_loop().call_later(
            self.config.general.max_call_seconds, lambda: leg.dispatch(Aborted(utc_now(), "max_call_seconds reached"))
        )
        leg.media_starting = True
        caller = _user(call.caller)
        leg.dispatch(Invited(utc_now(), caller, callee))
        self._spawn(self._start_leg(leg, offer, remote, dtmf_pt))
        if self.directory is not None:
            try:
                profile = self.directory.lookup_now(caller)
            except Exception as exc:  # the CRM being down must not stop the call: unknown = junior
                leg.log.warning("caller_lookup_failed", error=str(exc))
                return
            if profile is not None:
                leg.dispatch(CallerIdentified(utc_now(), profile.tier, profile.known))
            else:
                self._spawn(self._identify(leg, caller))

    async def _identify(self, leg: Leg, caller: str) -> None:
        """Look the caller up in the CRM while it rings (crm_bridge.customers.CallerDirectory)."""
        assert self.directory is not None
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                profile = await self.directory.lookup(caller)
        except Exception as exc:  # the CRM being down or slow must not stop the call: unknown = junior
            leg.log.warning("caller_lookup_failed", error=str(exc) or type(exc).__name__)
            return
        if not leg.closed:
            leg.dispatch(CallerIdentified(utc_now(), profile.tier, profile.known))

    def _answer_sdp(self, offer: Any, port: int, dtmf_pt: int) -> tuple[Any, int]:
        return negotiate_sdp(offer, local_ip=self.media_ip, rtp_port=port,
                             supported_codecs=self.config.general.payload_types, dtmf_payload_type=dtmf_pt)

    async def _start_leg(self, leg: Leg, offer: Any, remote: tuple[str, int], dtmf_pt: int) -> None:
        try:
            rtp, leg.rtp_port = await open_rtp(self.ports, self.config.general.bind, remote, leg.payload_type,
                                               dtmf_payload_type=dtmf_pt, strict=self.config.general.rtp_strict)
        except (OSError, RuntimeError) as exc:
            leg.media_starting = False
            leg.log.error("rtp_bind_failed", error=str(exc))
            leg.dispatch(Aborted(utc_now(), f"no RTP port: {exc}"))
            return
        leg.media_starting = False
        if leg.closed:  # CANCELled while the socket was being bound
            await rtp.close()
            self._release_port(leg)
            return
        leg.sdp_answer, _ = self._answer_sdp(offer, leg.rtp_port, dtmf_pt)
        leg.rtp = rtp
        rtp.on_dtmf = leg.on_dtmf
        if leg.deferred_timer is not None:
            leg.fire_timer(leg.deferred_timer)

    def _feature_code(self, call: InboundCall, pause: bool) -> bool:
        """An agent's phone dialled *46/*47: pause or resume that agent. False if not an agent's phone."""
        try:
            phone = self._phone_address(call.source_addr, parse_address(call.invite.get_header("contact") or "").uri)
        except Exception:
            return False
        agent = next((s.number for s in self.acd.seats.values() if s.contact == phone), None)
        if agent is None:
            return False
        if isinstance(self.acd, SharedAcd):
            # the answer waits for the database, so it tells the state every worker now sees
            self._spawn(self._shared_feature_code(call, agent, pause))
            return True
        self.acd.pause(agent, pause, utc_now())
        self._feature_code_done(call, agent, pause, self.acd.seats[agent].state.value)
        return True

    async def _shared_feature_code(self, call: InboundCall, agent: str, pause: bool) -> None:
        assert isinstance(self.acd, SharedAcd)
        try:
            state = await self.acd.set_paused(agent, pause, utc_now())
        except Exception as exc:  # the database is away: say so rather than guess
            log.warning("agent_pause_failed", agent=agent, error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            self._reject(call, 503, "Agent State Unavailable", "feature code: database unavailable")
            return
        self._feature_code_done(call, agent, pause, state)

    def _feature_code_done(self, call: InboundCall, agent: str, pause: bool, state: str) -> None:
        log.info("agent_pause" if pause else "agent_resume", agent=agent, state=state)
        self.publish_states()
        # no media needed: the final response's reason phrase tells the phone the new state
        self._reject(call, 480, f"Agent {agent} {state.replace('_', ' ')}", "feature code")
        if not pause:
            self.assign()

    def on_bye(self, call: InboundCall | OutboundCall) -> None:
        if isinstance(call, InboundCall):
            leg = self.legs.get(call.call_id)
            if leg is not None:
                leg.dispatch(HungUp(utc_now()))
            return
        agent_leg = self.agent_legs.get(call.call_id)
        if agent_leg is not None:  # the agent hung up
            self.end_agent_leg(agent_leg, hang_up=False)
            agent_leg.caller.dispatch(AgentHungUp(utc_now()))

    def on_cancel(self, call: InboundCall) -> None:
        leg = self.legs.get(call.call_id)
        if leg is not None and leg.flow.record is not None:
            leg.dispatch(Cancelled(utc_now()))

    def on_ack_timeout(self, call: InboundCall) -> None:
        leg = self.legs.get(call.call_id)
        if leg is not None:
            leg.dispatch(Aborted(utc_now(), "no ACK for 200 OK"))

    def on_info(self, call: InboundCall, request: SipRequest) -> None:
        digit = _info_digit(request)
        leg = self.legs.get(call.call_id)
        if digit is not None and leg is not None:
            leg.dispatch(Digit(utc_now(), digit, "info"))

    # --- registrar (agents' softphones) ------------------------------------------------

    def on_register(self, request: SipRequest, source: Address) -> tuple[int, str, Headers]:
        # retransmissions never get here: the transaction layer answers them with the
        # response already sent, so their credentials never count as a replay
        return self._register_decision(request, source)

    def _phone_address(self, source: tuple[str, int], contact: Any) -> tuple[str, int]:
        """Where an agent's phone is: where its request came from (works through NAT, RFC 3581's
        spirit) — unless it came through the balancer in front; then its Contact URI says."""
        if source[0] in self.config.limits.trusted and contact.host:
            return (contact.host, contact.port or 5060)
        return source

    def _register_decision(self, request: SipRequest, addr: tuple[str, int]) -> tuple[int, str, Headers]:
        raw_auth = request.get_header("authorization")
        params = parse_auth(raw_auth).params if raw_auth else None
        expires_raw = request.get_header("expires")
        contact: tuple[str, int] | None = None
        contact_raw = (request.get_header("contact") or "").strip()
        if contact_raw == "*":
            expires: int | None = 0
        else:
            try:
                address = parse_address(contact_raw)
                raw = address.params.get("expires") or expires_raw
                expires = int(raw) if raw else None
            except Exception:
                return 400, "Bad Contact", []
            contact = self._phone_address(addr, address.uri)
        decision = self.registrar.register(request.method, params, contact, expires, request_uri=request.uri)
        match decision:
            case Challenge(headers=challenges):
                # RFC 7616 §3.7: one challenge per algorithm, the preferred (SHA-256) first
                return 401, "Unauthorized", [("WWW-Authenticate", h) for h in challenges]
            case Refused(user=user, reason=reason):
                self.guard.auth_failed(addr[0], addr[1], user, reason)
                return 403, "Forbidden", []
            case Registered(agent=agent, contact=where, expires=granted):
                uri = contact_raw[: contact_raw.index(">") + 1] if ">" in contact_raw else contact_raw.split(";")[0]
                self._bind_agent(agent, where, granted, uri.strip().removeprefix("<").removesuffix(">") or None)
                if where is None:
                    return 200, "OK", []
                return 200, "OK", [("Contact", f"{uri};expires={granted}")]
        raise AssertionError(decision)

    def _bind_agent(self, agent: str, contact: tuple[str, int] | None, expires: int, uri: str | None = None) -> None:
        old = self.registrations.pop(agent, None)
        if old is not None:
            old.cancel()
        if contact is None:
            self.acd.logout(agent)
            log.info("agent_unregistered", agent=agent)
            self.publish_states()
            return
        self.acd.login(agent, contact, utc_now(), until=utc_now() + timedelta(seconds=expires), uri=uri)
        self.registrations[agent] = asyncio.get_running_loop().call_later(expires, self._expire_agent, agent)
        log.info("agent_registered", agent=agent, contact=f"{contact[0]}:{contact[1]}", expires=expires)
        self.assign()

    def _expire_agent(self, agent: str) -> None:
        self.registrations.pop(agent, None)
        self.acd.logout(agent)
        self.publish_states()
        log.info("agent_registration_expired", agent=agent)

    # --- ACD and agent legs ------------------------------------------------------------

    async def _watch_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            self.loop_lag = loop.time() - started - LAG_PROBE_S

    async def _assign_every_second(self) -> None:
        last_full_gc = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            self.guard.expire()
            # the full GC pass run_ivr.py took off automatic: when idle, else every 10 minutes
            idle_for = time.monotonic() - last_full_gc
            if (not self.legs and idle_for >= 10) or idle_for >= FULL_GC_EVERY_S:
                started = time.perf_counter()
                found = gc.collect()
                last_full_gc = time.monotonic()
                log.debug("gc_full", unreachable=found, ms=round(1000 * (time.perf_counter() - started), 1), calls=len(self.legs))
            if isinstance(self.acd, SharedAcd) and not self._refreshing:
                self._spawn(self._refresh_agents())
            if self.acd.waiting():
                self.assign()
            if self.status_file is not None and (self._status_dirty or self.legs):
                self._status_dirty = False
                write_status(self.status_file, self.acd, len(self.legs), self.pacer)

    def publish_states(self) -> None:
        """Log each agent whose state changed since the last call; mark the status file stale."""
        for seat in self.acd.seats.values():
            state = seat.state.value
            if self._states.get(seat.number) != state:
                self._states[seat.number] = state
                log.info("agent_state", agent=seat.number, seat_group=seat.seat_group, state=state, call_id=seat.call_id)
        self._status_dirty = True

    async def _refresh_agents(self) -> None:
        assert isinstance(self.acd, SharedAcd)
        self._refreshing = True
        try:
            await self.acd.refresh(utc_now())
        finally:
            self._refreshing = False
        self.publish_states()

    def assign(self) -> None:
        if isinstance(self.acd, SharedAcd):
            # a claim is a database round trip: one at a time, and once more if asked meanwhile
            if self._claiming:
                self._claim_again = True
            else:
                self._claiming = True
                self._spawn(self._claim_shared())
            return
        try:
            self._ring(self.acd.assign(utc_now()))
        finally:
            self.publish_states()

    async def _claim_shared(self) -> None:
        assert isinstance(self.acd, SharedAcd)
        try:
            while True:
                self._claim_again = False
                self._ring(await self.acd.claim(utc_now()))
                if not self._claim_again:
                    break
        finally:
            self._claiming = False
            self.publish_states()

    def _ring(self, offers: list[Offer]) -> None:
        for offer in offers:
            leg = self.legs.get(offer.call_id)
            if leg is None or leg.closed:
                self.acd.no_answer(offer.agent, utc_now())
                continue
            agent_leg = AgentLeg(leg, offer)
            leg.agent = agent_leg
            self._spawn(self._ring_agent(agent_leg))

    async def _ring_agent(self, agent_leg: AgentLeg) -> None:
        caller, offer = agent_leg.caller, agent_leg.offer
        g = self.config.general
        try:
            agent_leg.rtp, agent_leg.rtp_port = await open_rtp(self.ports, g.bind, offer.contact, caller.payload_type,
                                                               strict=False)
        except (OSError, RuntimeError) as exc:
            caller.log.error("agent_leg_failed", agent=offer.agent, error=str(exc))
            self._agent_no_answer(agent_leg, f"media: {exc}")
            return
        if agent_leg.ended or caller.closed:
            self.end_agent_leg(agent_leg, hang_up=False)
            return
        sdp = build_sdp(self.media_ip, agent_leg.rtp_port, caller.payload_type, CODEC_NAMES[caller.payload_type])
        record = caller.flow.record
        caller_number = record.caller if record else "ivr"
        out = self.endpoint.invite(
            from_uri=f"sip:{caller_number}@{self.endpoint.host}:{g.port}", from_display=None,
            # RFC 3261 §10.2.1: a registered phone is reached at the Contact URI it registered
            request_uri=offer.contact_uri or f"sip:{offer.agent}@{offer.contact[0]}:{offer.contact[1]}",
            destination=offer.contact, sdp=sdp,
        )
        agent_leg.out = out
        self.agent_legs[out.call_id] = agent_leg
        out.on_answer = lambda _out: self._agent_answered(agent_leg)
        out.on_rejected = lambda _out, code, reason: self._agent_no_answer(agent_leg, f"{code} {reason}")
        agent_leg.ring_timer = asyncio.get_running_loop().call_later(
            self.config.queues.ring_agent_seconds, self._agent_no_answer, agent_leg, "no answer"
        )
        caller.dispatch(AgentRinging(utc_now(), offer.agent))

    def _agent_answered(self, agent_leg: AgentLeg) -> None:
        if agent_leg.ended:
            return
        if agent_leg.ring_timer is not None:
            agent_leg.ring_timer.cancel()
        out = agent_leg.out
        assert out is not None
        answer = out.sdp_answer
        remote = answer.rtp_address if answer is not None else None
        if remote is not None and agent_leg.rtp is not None:
            agent_leg.rtp.update_remote(remote)
        agent_leg.answered = True
        self.acd.answered(agent_leg.agent)
        self.publish_states()
        agent_leg.caller.dispatch(AgentAnswered(utc_now(), agent_leg.agent, agent_leg.offer.seat_group))

    def _agent_no_answer(self, agent_leg: AgentLeg, why: str) -> None:
        if agent_leg.ended or agent_leg.answered:
            return
        agent_leg.caller.log.info("agent_not_answering", agent=agent_leg.agent, reason=why)
        self.end_agent_leg(agent_leg, hang_up=True, release=False)
        self.acd.no_answer(agent_leg.agent, utc_now())
        agent_leg.caller.dispatch(AgentNoAnswer(utc_now(), agent_leg.agent))
        self.assign()

    def end_agent_leg(self, agent_leg: AgentLeg, *, hang_up: bool, release: bool = True) -> None:
        """Tear down the agent's leg; BYE (or CANCEL while ringing) when `hang_up`."""
        if agent_leg.ended:
            return
        agent_leg.ended = True
        if agent_leg.ring_timer is not None:
            agent_leg.ring_timer.cancel()
        out = agent_leg.out
        if out is not None:
            if hang_up:
                if agent_leg.answered:
                    out.hangup()
                else:
                    out.cancel()
            self.agent_legs.pop(out.call_id, None)
        if agent_leg.caller.agent is agent_leg:
            agent_leg.caller.agent = None
        if release and agent_leg.answered:
            wrap_up = self.acd.released(agent_leg.agent, utc_now())
            self._wrap_up[agent_leg.agent] = asyncio.get_running_loop().call_later(wrap_up, self._wrap_up_done, agent_leg.agent)
            self.publish_states()
        self._spawn(self._close_agent_media(agent_leg))

    async def _close_agent_media(self, agent_leg: AgentLeg) -> None:
        if agent_leg.rtp is not None:
            rtp, agent_leg.rtp = agent_leg.rtp, None
            await rtp.close()
        if agent_leg.rtp_port is not None:
            self.ports.release(agent_leg.rtp_port)
            agent_leg.rtp_port = None

    def _wrap_up_done(self, agent: str) -> None:
        self._wrap_up.pop(agent, None)
        self.acd.wrap_up_done(agent, utc_now())
        self.assign()

    def leave_queue(self, leg: Leg) -> None:
        self.acd.leave(leg.call_id)
        if leg.agent is not None:  # an agent was being rung for this caller
            agent_leg = leg.agent
            self.end_agent_leg(agent_leg, hang_up=True, release=False)

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
        if leg.max_duration is not None:
            leg.max_duration.cancel()
        for name in list(leg.timers):
            leg.cancel_timer(name)
        self.pacer.stop(leg)
        self.legs.pop(leg.call_id, None)
        self._spawn(leg.close_media())


def write_status(path: Path, acd: Acd, calls: int = 0, pacer: MediaClock | None = None) -> None:
    """Agents and queues as JSON for `python -m ivr status`; replaced atomically."""
    status = {
        "written_at": utc_now().isoformat(),
        "agents": [
            {"agent": s.number, "seat_group": s.seat_group, "state": s.state.value, "call_id": s.call_id,
             "idle_since": s.idle_since.isoformat() if s.idle_since else None}
            for s in sorted(acd.seats.values(), key=lambda s: (s.seat_group, s.number))
        ],
        "queues": {group: [w.call_id for w in waiting] for group, waiting in acd.queues.items()},
        "calls": calls,
        "pacer": pacer.stats() if pacer is not None else {},
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, ensure_ascii=False, indent=1), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        log.warning("status_file_failed", path=str(path), error=str(exc))


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
