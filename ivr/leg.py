"""One call's leg: the adapter between a call's `CallFlow` and its SIP call and media.

A leg turns what happens on its call (audio and DTMF from its RTP session,
its timers, a prompt played out) into `ivr.events`, feeds them to the call's
flow, and carries out the actions that come back: on its SIP call (ring,
answer, reject, hang up), on media, on the agents (queue, whisper, bridge)
and towards the CRM writer and the callback dialler. The engine creates a leg
per call and dispatches SIP events to it; the leg reaches the engine's parts
through `Host`.

Media (`ivr.media`): every answered call is served by one shared 20 ms
media clock, not a timer per call: prompt frames that were encoded once at
start-up (`prompts.library`), silence when nothing plays. Inbound audio is
decoded and run through VAD only while the flow listens (`Listen(True)`).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Protocol

import structlog
from aiosipua import SdpMessage

from crm_bridge.writer import CrmWriter
from ivr.agents import AgentLeg, Agents
from ivr.bridge import MediaBridge
from ivr.callflow import CallFlow, CallFlowBug, CallFlowError, FlowSettings
from ivr.config import Config
from ivr.events import (
    Aborted,
    Action,
    AnnouncePosition,
    Answer,
    Bridge,
    CancelTimer,
    DialCustomer,
    Digit,
    Event,
    HangUp,
    HangUpAgent,
    JoinQueue,
    LeaveQueue,
    Listen,
    Music,
    OpenTicket,
    Play,
    PromptFinished,
    QueuePosition,
    RecordCall,
    RecordEvent,
    RecordSurvey,
    RecordSurveyAnswer,
    RecordSurveyRun,
    Reject,
    RelayDigit,
    RequestCallback,
    Ring,
    SpeechStarted,
    StartTimer,
    StopPlayback,
    TimerFired,
    Unbridge,
    Whisper,
    utc_now,
)
from ivr.greeting import Greeter
from ivr.media import (
    SAMPLES_PER_FRAME,
    SILENCE_FRAMES,
    MediaClock,
    RtpPortPool,
    RtpSession,
    SrtpRtpSession,
    StrictRtpSession,
)
from ivr.metrics import Metrics
from ivr.sip.calls import InboundCall
from ivr.srtp import SrtpContext
from ivr.vad import SpeechDetector
from prompts.library import PromptLibrary
from prompts.music import MusicCursor, MusicOnHold

log = structlog.get_logger("ivr.leg")  # a call's lines, each with its call_id


class Call(Protocol):
    """A leg's SIP call: an `InboundCall` (a caller), or the customer's side of a callback (`ivr.dialler`)."""

    @property
    def call_id(self) -> str: ...

    def hangup(self) -> None: ...


class Dialling(Protocol):
    """The callback dialler (`ivr.dialler.Dialler`), as a leg's actions reach it."""

    def request(self, action: RequestCallback, leg_log: Any) -> None: ...

    def dial(self, leg: Leg) -> None: ...

    def attempt_ended(self, leg: Leg, outcome: str, answered: bool) -> None: ...


class Host(Protocol):
    """What a leg asks of the engine that runs it (`ivr.engine.Engine`)."""

    @property
    def config(self) -> Config: ...
    @property
    def flow_settings(self) -> FlowSettings: ...
    @property
    def greeter(self) -> Greeter: ...
    @property
    def prompts(self) -> PromptLibrary: ...
    @property
    def music(self) -> MusicOnHold | None: ...
    @property
    def pacer(self) -> MediaClock: ...
    @property
    def ports(self) -> RtpPortPool: ...
    @property
    def agents(self) -> Agents: ...
    @property
    def dialler(self) -> Dialling: ...
    @property
    def writer(self) -> CrmWriter: ...
    @property
    def metrics(self) -> Metrics: ...

    def release(self, leg: Leg) -> None:
        """The flow has ended: free the leg's timers, playback, media and SIP state."""
        ...

    def bridged(self, leg: Leg) -> None:
        """The caller and the agent talk now (`leg.bridge`): where recorders and listeners attach."""
        ...


class Leg:
    """One caller's call: its SIP dialog, RTP session, flow, timers and playback."""

    def __init__(self, engine: Host, call: Call) -> None:
        self.engine = engine
        self.call = call
        self.call_id = call.call_id
        self.log = log.bind(call_id=self.call_id)
        self.flow = CallFlow(self.call_id, engine.flow_settings, engine.greeter)
        self.rtp: RtpSession | None = None
        self.rtp_port: int | None = None
        self.sdp_answer: SdpMessage | None = None
        self.srtp: SrtpContext | None = None  # the call's SRTP keys (RFC 4568); None: plain RTP
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
        self.agent: AgentLeg | None = None  # the agent being rung for this caller, or talking
        self.bridge: MediaBridge | None = None  # while the caller talks with the agent
        self.customer_name: str | None = None  # from the CRM, for the agent's screen-pop
        self._last_ts = self.ts_offset
        # hold music: the shared pre-encoded loop, and where this caller is in it (resumes after announcements)
        self.music: MusicCursor | None = engine.music.cursor() if engine.music is not None else None
        self.music_on = False
        self.callback: int | None = None  # the callback request this call dials (a CustomerCall)
        self.customer_timer: asyncio.TimerHandle | None = None

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
        except CallFlowBug:  # a handler broke the transition table: end the call, keep its record
            self.log.exception("call_flow_bug", event=type(event).__name__)
            if not isinstance(event, Aborted):
                self.dispatch(Aborted(utc_now(), "call flow bug"))
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

    def relay_digit_to_caller(self, digit: str, _duration: int) -> None:
        if self.rtp is not None:
            self.rtp.send_dtmf(digit)

    def unbridge(self) -> None:
        """End the bridge (hang-up, transfer): the clock serves the caller again, and the agent until released."""
        bridge, self.bridge = self.bridge, None
        if bridge is not None:
            self.engine.pacer.stop(bridge)
            bridge.close()
            if self.rtp is not None:
                self.engine.pacer.serve(self)
            agent = bridge.agent
            if isinstance(agent, AgentLeg) and not agent.ended:
                self.engine.pacer.serve(agent)
        if self.agent is not None and self.agent.rtp is not None:
            self.agent.rtp.on_dtmf = None

    # --- actions out ----------------------------------------------------------------

    def execute(self, action: Action) -> None:
        match action:
            case RecordEvent():
                self.engine.writer.submit(action)
                self.log.info(action.kind, **({"detail": action.detail} if action.detail else {}))
            case RecordCall(record=record):
                self.engine.writer.submit(action)
                if record.ended_at is not None and self.callback is not None:
                    self.engine.dialler.attempt_ended(self, record.outcome or "", record.answered_at is not None)
                if record.ended_at is not None:
                    metrics = self.engine.metrics
                    metrics.calls.labels(record.outcome or "unknown").inc()
                    if record.queue_wait_s is not None and record.seat_group:
                        metrics.queue_wait.labels(record.seat_group).observe(record.queue_wait_s)
            case Ring():
                assert isinstance(self.call, InboundCall)  # a callback's customer leg is dialled, never rung
                self.call.ringing()  # nothing after a CANCEL's 487
            case Answer():
                assert isinstance(self.call, InboundCall)
                self.call.accept(self.sdp_answer)
                self.engine.pacer.serve(self)  # from now on RTP flows: prompts, else keep-alive silence
            case Reject(status=status, reason=reason):
                assert isinstance(self.call, InboundCall)
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
                if self.customer_timer is not None:
                    self.customer_timer.cancel()
                self.call.hangup()
            case JoinQueue(seat_group=group, service=service):
                self.engine.agents.join(self, group, service)
            case LeaveQueue():
                self.engine.agents.leave(self)
            case AnnouncePosition():
                position = self.engine.agents.position(self) or 1
                online, wait = self.engine.agents.expected_wait(self, position)
                asyncio.get_running_loop().call_soon(self.dispatch, QueuePosition(utc_now(), position, online, wait))
            case Music(on=on):
                self.music_on = on
                if on:
                    self.engine.pacer.serve(self)
            case RequestCallback():
                self.engine.dialler.request(action, self.log)
            case Whisper(prompts=prompts):
                if self.agent is not None:
                    frames = tuple(f for p in prompts for f in self.engine.prompts.frames(p, self.payload_type))
                    self.engine.agents.whisper(self.agent, frames)
            case DialCustomer():
                self.engine.dialler.dial(self)
            case Bridge():
                if self.agent is not None and self.agent.rtp is not None and self.rtp is not None:
                    self.bridge = MediaBridge(self, self.agent, self.log)
                    self.bridge.connect()
                    self.agent.rtp.on_dtmf = self.relay_digit_to_caller
                    # the bridge sends both sides from now on, one frame a tick each
                    self.engine.pacer.stop(self)
                    self.engine.pacer.stop(self.agent)
                    self.engine.pacer.serve(self.bridge)
                    self.engine.bridged(self)
            case Unbridge():
                self.unbridge()
            case RelayDigit(digit=digit):
                if self.agent is not None and self.agent.rtp is not None:
                    self.agent.rtp.send_dtmf(digit)
            case HangUpAgent():
                if self.agent is not None:
                    self.engine.agents.end_leg(self.agent, hang_up=True)
            case RecordSurvey() | OpenTicket() | RecordSurveyAnswer() | RecordSurveyRun():
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
        if self.music_on and self.music is not None:
            rtp.send_audio(self.music.next_frame(self.payload_type), timestamp)  # between announcements
        else:
            rtp.send_audio(SILENCE_FRAMES[self.payload_type], timestamp)  # keep-alive: never a gap in RTP
        return self.prompt is not None

    def release_port(self) -> None:
        if self.rtp_port is not None:
            self.engine.ports.release(self.rtp_port)
            self.rtp_port = None

    async def close_media(self) -> None:
        if self.media_starting:
            return  # Engine._start_leg closes it when the bind completes
        rtp, self.rtp = self.rtp, None
        if rtp is not None:
            await rtp.close()
        if isinstance(rtp, StrictRtpSession) and (rtp.stray or rtp.malformed):
            self.log.warning("rtp_dropped", stray=rtp.stray, malformed=rtp.malformed, expected_from=rtp.expected_from)
        if isinstance(rtp, SrtpRtpSession) and (rtp.unauthenticated or rtp.unprotectable):
            self.log.warning("srtp_dropped", unauthenticated=rtp.unauthenticated, unprotectable=rtp.unprotectable)
        self.release_port()
