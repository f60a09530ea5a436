"""Live monitoring: a supervisor listens to an agent's call, coaches the agent (whisper) or joins it (barge).

As Asterisk's ChanSpy and FreeSWITCH's eavesdrop do, on the bridge seam
(`ivr.bridge`). A supervisor's session is a `Monitor`:

- it is a bridge **tap**: each 20 ms tick it gets the caller's and the
  agent's frames in step, mixes them (numpy, `ivr.bridge.mix`) and sends the
  mix to the supervisor's phone, encoded once with that session's codec;
- the supervisor's own audio goes into a small buffer (`SupervisorVoice`)
  that is an **injection** of the bridge: heard by the agent alone in
  whisper mode (`Hears.AGENT`), by both in barge mode (`Hears.BOTH`); in
  listen mode there is no injection and the supervisor's RTP is not even
  decoded (aiortp decodes only while `on_audio` is set);
- keys 4, 5 and 6 on the supervisor's phone (RFC 4733) switch to listen,
  whisper and barge: `bridge.inject(voice, hears)` again, or
  `remove_injection`.

A supervisor reaches a call two ways: by dialling a feature code from their
own registered phone (`*222801` listen to agent 801, `*223801` whisper,
`*224801` barge: `[monitoring]` prefixes), or from the desk's button, which
queues a `monitor` command that the IVR takes once a second and answers by
ringing the supervisor's registered phone, attached to the call on answer.
Only the agents named in `[monitoring] supervisors` may monitor; anyone else
dialling a code gets 403.

When the monitored bridge ends, the supervisor stays on the line (silence)
while the caller waits for another agent (a transfer): the next bridge of the
same caller takes the supervisor's tap again, so the supervisor follows the
caller. Once the caller is no longer on the way to an agent (hung up, in the
survey), the IVR hangs up the supervisor's call. Every session is written to
the CRM (`monitoring_sessions`, and each mode it entered in
`monitoring_mode_changes`) through the durable write path.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import structlog
from aiosipua import SdpNegotiationError, build_sdp, negotiate_sdp, parse_address

from crm_bridge.records import RecordMonitoring, RecordMonitoringMode
from crm_bridge.writer import CrmWriter
from ivr.agents import Agents
from ivr.bridge import FRAME_BYTES, MAX_BUFFERED_FRAMES, Hears, MediaBridge, mix
from ivr.callflow import State
from ivr.config import Config, MonitoringConfig
from ivr.events import utc_now
from ivr.leg import Leg
from ivr.media import CODEC_NAMES, SAMPLES_PER_FRAME, SILENCE_FRAMES, MediaClock, RtpPortPool, RtpSession, open_rtp
from ivr.registrar import phone_address
from ivr.sip.calls import InboundCall, OutboundCall
from ivr.sip.endpoint import SipEndpoint
from ivr.srtp import SrtpRefused, negotiate_srtp

log = structlog.get_logger("ivr.monitoring")


class Mode(enum.Enum):
    LISTEN = "listen"  # hears both sides, heard by nobody
    WHISPER = "whisper"  # heard by the agent alone (coaching)
    BARGE = "barge"  # heard by both: a three-way conversation


MODE_KEYS = {"4": Mode.LISTEN, "5": Mode.WHISPER, "6": Mode.BARGE}  # the supervisor's keys during monitoring
HEARS = {Mode.WHISPER: Hears.AGENT, Mode.BARGE: Hears.BOTH}  # who hears the supervisor; listen: nobody
# a caller in these states is on the way to (or with) an agent: the supervisor waits and follows
FOLLOW_STATES = frozenset({State.BRIDGED, State.TRANSFERRING, State.QUEUED, State.ANNOUNCING})
CHECK_EVERY_TICKS = 10  # while waiting between bridges: look at the caller's state every 200 ms


@dataclass(frozen=True, slots=True)
class FeatureCode:
    """A dialled monitoring code: the mode and the agent's number after the prefix."""

    mode: Mode
    agent: str


def parse_feature_code(callee: str, settings: MonitoringConfig) -> FeatureCode | None:
    """`*222801` -> listen to 801 (with the default prefixes); None when `callee` starts with no prefix.

    The agent part is returned as dialled: checking it names an agent is the caller's job (404).
    """
    for prefix, mode in ((settings.listen_prefix, Mode.LISTEN), (settings.whisper_prefix, Mode.WHISPER),
                         (settings.barge_prefix, Mode.BARGE)):
        if callee.startswith(prefix):
            return FeatureCode(mode, callee[len(prefix):])
    return None


def refusal(settings: MonitoringConfig, supervisor: str | None, agent: str) -> str | None:
    """Why `supervisor` may not monitor `agent` (None: they may)."""
    if supervisor is None:
        return "not a registered agent phone"
    if supervisor not in settings.supervisors:
        return f"{supervisor} is not a supervisor"
    if supervisor == agent:
        return "a supervisor cannot monitor their own calls"
    return None


class SupervisorVoice:
    """What the supervisor says, waiting for the bridge's tick (an injection); at most 80 ms are kept."""

    __slots__ = ("buffer",)

    def __init__(self) -> None:
        self.buffer = bytearray()

    def put(self, pcm: bytes, _timestamp: int) -> None:
        buffer = self.buffer
        buffer += pcm
        excess = len(buffer) - MAX_BUFFERED_FRAMES * FRAME_BYTES
        if excess > 0:
            drop = -(-excess // FRAME_BYTES) * FRAME_BYTES  # whole frames, oldest first
            del buffer[:drop]

    def next_frame(self) -> bytes | None:
        if len(self.buffer) < FRAME_BYTES:
            return None
        frame = bytes(self.buffer[:FRAME_BYTES])
        del self.buffer[:FRAME_BYTES]
        return frame


def _beep_frames(hz: float = 1000.0, ms: int = 200, dbfs: float = -18.0) -> tuple[bytes, ...]:
    samples = SAMPLES_PER_FRAME * ms // 20
    t = np.arange(samples) / 8000.0
    tone = (10 ** (dbfs / 20) * 32767 * np.sin(2 * math.pi * hz * t)).astype("<i2").tobytes()
    return tuple(tone[i:i + FRAME_BYTES] for i in range(0, len(tone), FRAME_BYTES))


BEEP = _beep_frames()


class Beep:
    """A short tone injected to the agent once when monitoring starts ([monitoring] beep)."""

    __slots__ = ("index",)

    def __init__(self) -> None:
        self.index = 0

    def next_frame(self) -> bytes | None:
        if self.index >= len(BEEP):
            return None
        self.index += 1
        return BEEP[self.index - 1]


class Monitor:
    """One supervisor's monitoring session: a tap on the bridge, their voice an injection; see the module docstring."""

    def __init__(self, owner: Monitoring, call: InboundCall | OutboundCall, supervisor: str, agent: str,
                 mode: Mode, via: str, caller: Leg) -> None:
        self.owner = owner
        self.call = call
        self.call_id = call.call_id
        self.supervisor = supervisor
        self.agent = agent
        self.mode = mode
        self.via = via
        self.caller = caller  # the monitored caller's leg: followed from agent to agent
        self.log = log.bind(call_id=caller.call_id, monitor_call_id=call.call_id, supervisor=supervisor, agent=agent)
        self.rtp: RtpSession | None = None
        self.rtp_port: int | None = None
        self.payload_type = caller.payload_type
        self.bridge: MediaBridge | None = None
        self.voice = SupervisorVoice()
        self.beep: Beep | None = None
        self.started_at: datetime | None = None  # once attached the first time (and recorded)
        self.ended = False
        self.ring_timer: asyncio.TimerHandle | None = None
        self.frames_sent = 0
        self._ts = random.getrandbits(32)

    def next_timestamp(self) -> int:
        self._ts = (self._ts + SAMPLES_PER_FRAME) & 0xFFFFFFFF
        return self._ts

    # --- the tap: on the media clock --------------------------------------------------------

    def frame(self, caller: bytes, agent: bytes) -> None:
        """Both parties' frames of this tick: their mix to the supervisor (one encode)."""
        rtp = self.rtp
        if rtp is not None:
            rtp.send_audio_pcm(mix(caller, agent), self.next_timestamp())
            self.frames_sent += 1

    def close(self) -> None:
        """The bridge ended: wait on the line (silence) for the caller's next agent, or the end of the call."""
        self.bridge = None
        if not self.ended:
            self.owner.pacer.serve(self)

    # --- between bridges: served by the media clock ------------------------------------------

    def send_next_frame(self, tick: int) -> bool:
        rtp = self.rtp
        if rtp is not None and not self.ended:
            rtp.send_audio(SILENCE_FRAMES[self.payload_type], self.next_timestamp())
        if tick % CHECK_EVERY_TICKS == 0 and not self.ended and (
                self.caller.closed or self.caller.flow.state not in FOLLOW_STATES):
            # not now: ending stops the clock serving us, and the clock is iterating
            asyncio.get_running_loop().call_soon(self.end, "call ended")
        return False

    def prompt_done(self) -> None:
        """Nothing plays to a supervisor: the media clock's `Served` protocol asks anyway."""

    # --- attaching and modes ------------------------------------------------------------------

    def attach(self, bridge: MediaBridge) -> None:
        """Tap `bridge` (a first bridge, or the caller's next one) in the current mode."""
        self.owner.pacer.stop(self)  # the bridge's ticks send to the supervisor now
        self.bridge = bridge
        bridge.add_tap(self)
        agent = getattr(bridge.agent, "agent", self.agent)
        first = self.started_at is None
        if first:
            self.started_at = utc_now()
            self.record()
            self.owner.writer.submit(RecordMonitoringMode(self.call_id, self.started_at, self.mode.value))
            if self.owner.settings.beep:
                self.beep = Beep()
                bridge.inject(self.beep, Hears.AGENT)
        elif agent != self.agent:
            self.log.info("monitoring_followed", to_agent=agent)
        self._apply_mode()
        self.log.info("monitoring_attached" if first else "monitoring_reattached", mode=self.mode.value,
                      via=self.via)

    def set_mode(self, mode: Mode) -> None:
        if mode is self.mode or self.ended:
            return
        self.mode = mode
        self._apply_mode()
        if self.started_at is not None:
            at = utc_now()
            self.record()
            self.owner.writer.submit(RecordMonitoringMode(self.call_id, at, mode.value))
        self.log.info("monitoring_mode", mode=mode.value)

    def _apply_mode(self) -> None:
        hears = HEARS.get(self.mode)
        if self.rtp is not None:
            # listen: the supervisor's audio is not even decoded; else it feeds the injection
            self.rtp.on_audio = self.voice.put if hears is not None else None
        self.voice.buffer.clear()
        bridge = self.bridge
        if bridge is None:
            return
        if hears is None:
            bridge.remove_injection(self.voice)
        else:
            bridge.inject(self.voice, hears)

    def on_digit(self, digit: str, _duration: int) -> None:
        """RFC 4733 from the supervisor's phone: 4 listen, 5 whisper, 6 barge."""
        mode = MODE_KEYS.get(digit)
        if mode is not None:
            self.set_mode(mode)

    def record(self) -> None:
        assert self.started_at is not None
        self.owner.writer.submit(RecordMonitoring(
            session_key=self.call_id, sip_call_id=self.caller.call_id, agent_number=self.agent,
            supervisor=self.supervisor, via=self.via, mode=self.mode.value, started_at=self.started_at,
            ended_at=utc_now() if self.ended else None, end_reason=self.end_reason if self.ended else None,
        ))

    end_reason = ""

    def end(self, reason: str, *, hang_up: bool = True) -> None:
        """End the session: off the bridge, BYE (CANCEL while ringing) when `hang_up`, media closed, recorded."""
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        self.owner.pacer.stop(self)
        if self.ring_timer is not None:
            self.ring_timer.cancel()
        bridge, self.bridge = self.bridge, None
        if bridge is not None:
            bridge.remove_injection(self.voice)
            if self.beep is not None:
                bridge.remove_injection(self.beep)
            bridge.remove_tap(self)
        if self.rtp is not None:
            self.rtp.on_audio = self.rtp.on_dtmf = None
        if hang_up:
            if isinstance(self.call, OutboundCall) and self.started_at is None:
                self.call.cancel()
            else:
                self.call.hangup()
        if self.started_at is not None:
            self.record()
        self.log.info("monitoring_ended", reason=reason, mode=self.mode.value, frames_sent=self.frames_sent)
        self.owner.forget(self)


class Monitoring:
    """The IVR's monitoring sessions, by the supervisor's Call-ID; what the engine calls."""

    def __init__(self, config: Config, endpoint: SipEndpoint, ports: RtpPortPool, pacer: MediaClock,
                 legs: Mapping[str, Leg], agents: Agents, writer: CrmWriter,
                 spawn: Callable[[Coroutine[Any, Any, None]], None], media_ip: str) -> None:
        self.config = config
        self.settings = config.monitoring
        self.endpoint = endpoint
        self.ports = ports
        self.pacer = pacer
        self.legs = legs
        self.agents = agents
        self.writer = writer
        self.spawn = spawn
        self.media_ip = media_ip
        self.sessions: dict[str, Monitor] = {}

    def talking_with(self, agent: str) -> Leg | None:
        """The caller's leg bridged to `agent` now, if any."""
        return next((leg for leg in self.legs.values()
                     if leg.bridge is not None and leg.agent is not None and leg.agent.agent == agent
                     and not leg.closed), None)

    # --- (a) a feature code from the supervisor's phone ---------------------------------------

    def feature_code(self, call: InboundCall, callee: str) -> bool:
        """An INVITE to `callee`: True when it was a monitoring code (answered or refused here)."""
        code = parse_feature_code(callee, self.settings)
        if code is None:
            return False
        try:
            contact = parse_address(call.invite.get_header("contact") or "").uri
            phone = phone_address(call.source_addr, contact, self.config.limits.trusted)
            supervisor = self.agents.agent_at(phone)
        except Exception:
            supervisor = None
        why = refusal(self.settings, supervisor, code.agent)
        if why is not None:
            return self._refuse(call, 403, "Forbidden", why, supervisor, code)
        if code.agent not in self.agents.pool.seats:
            return self._refuse(call, 404, "No Such Agent", "unknown agent", supervisor, code)
        caller = self.talking_with(code.agent)
        if caller is None:
            return self._refuse(call, 480, "Agent Not In A Call", "agent not talking", supervisor, code)
        offer = call.sdp_offer
        if offer is None or offer.rtp_address is None:
            return self._refuse(call, 488, "Not Acceptable Here", "no SDP offer", supervisor, code)
        dtmf_pt = next((c.payload_type for c in (offer.audio.codecs if offer.audio else [])
                        if (c.encoding_name or "").lower() == "telephone-event"), 101)
        try:
            answer = negotiate_sdp(offer, local_ip=self.media_ip, rtp_port=0,
                                   supported_codecs=self.config.general.payload_types, dtmf_payload_type=dtmf_pt)
            answer_sdp, payload_type = answer
            answer_sdp, srtp = negotiate_srtp(offer, answer_sdp, self.config.media.srtp)
        except (SdpNegotiationError, SrtpRefused) as exc:
            return self._refuse(call, 488, "Not Acceptable Here", str(exc)[:80], supervisor, code)
        assert supervisor is not None
        monitor = Monitor(self, call, supervisor, code.agent, code.mode, "phone", caller)
        monitor.payload_type = payload_type
        self.sessions[call.call_id] = monitor
        self.spawn(self._answer(monitor, answer_sdp, offer.rtp_address, dtmf_pt, srtp))
        return True

    def _refuse(self, call: InboundCall, status: int, reason: str, why: str, supervisor: str | None,
                code: FeatureCode) -> bool:
        call.reject(status, reason)
        log.warning("monitoring_refused", call_id=call.call_id, supervisor=supervisor, agent=code.agent[:32],
                    mode=code.mode.value, status=status, reason=why)
        return True

    async def _answer(self, monitor: Monitor, answer: Any, remote: tuple[str, int], dtmf_pt: int,
                      srtp: Any) -> None:
        g = self.config.general
        try:
            monitor.rtp, monitor.rtp_port = await open_rtp(self.ports, g.bind, remote, monitor.payload_type,
                                                           dtmf_payload_type=dtmf_pt, strict=g.rtp_strict, srtp=srtp)
        except (OSError, RuntimeError) as exc:
            assert isinstance(monitor.call, InboundCall)
            monitor.call.reject(503, "Service Unavailable")
            monitor.log.error("monitoring_media_failed", error=str(exc))
            monitor.end("no RTP port", hang_up=False)
            return
        if monitor.ended:  # the supervisor gave up meanwhile
            self.spawn(self._close_media(monitor))
            return
        assert answer.audio is not None
        answer.audio.port = monitor.rtp_port
        assert isinstance(monitor.call, InboundCall)
        monitor.call.accept(answer)
        self._start(monitor)

    def _start(self, monitor: Monitor) -> None:
        assert monitor.rtp is not None
        monitor.rtp.on_dtmf = monitor.on_digit
        bridge = monitor.caller.bridge
        if bridge is None or monitor.caller.closed:
            monitor.end("call ended")
            return
        monitor.attach(bridge)

    # --- (b) the desk's button: ring the supervisor's phone ----------------------------------

    def from_desk(self, supervisor: str, agent: str, mode: str) -> str | None:
        """A desk `monitor` command: ring `supervisor`'s registered phone into `agent`'s call. Why not, or None."""
        why = refusal(self.settings, supervisor, agent)
        try:
            wanted = Mode(mode)
        except ValueError:
            why = f"unknown mode {mode[:16]!r}"
            wanted = Mode.LISTEN
        seat = self.agents.pool.seats.get(supervisor)
        caller = self.talking_with(agent)
        if why is None and (seat is None or seat.contact is None):
            why = f"{supervisor}'s phone is not registered"
        if why is None and caller is None:
            why = "agent not talking"
        if why is not None:
            log.warning("monitoring_refused", supervisor=supervisor, agent=agent, mode=mode[:16], via="desk",
                        reason=why)
            return why
        assert seat is not None and seat.contact is not None and caller is not None
        self.spawn(self._ring(supervisor, seat.contact, seat.contact_uri, agent, wanted, caller, seat.path))
        return None

    async def _ring(self, supervisor: str, contact: tuple[str, int], contact_uri: str | None, agent: str,
                    mode: Mode, caller: Leg, path: tuple[str, ...] = ()) -> None:
        g = self.config.general
        try:
            rtp, port = await open_rtp(self.ports, g.bind, contact, caller.payload_type, strict=False)
        except (OSError, RuntimeError) as exc:
            log.error("monitoring_media_failed", supervisor=supervisor, agent=agent, error=str(exc))
            return
        sdp = build_sdp(self.media_ip, port, caller.payload_type, CODEC_NAMES[caller.payload_type])
        out = self.endpoint.invite(
            from_uri=f"sip:monitor-{agent}@{self.endpoint.host}:{g.port}", from_display=f"Monitor {agent}",
            request_uri=contact_uri or f"sip:{supervisor}@{contact[0]}:{contact[1]}", destination=contact, sdp=sdp,
            route=path,
        )
        monitor = Monitor(self, out, supervisor, agent, mode, "desk", caller)
        monitor.rtp, monitor.rtp_port = rtp, port
        self.sessions[out.call_id] = monitor
        out.on_answer = lambda _out: self._desk_answered(monitor)
        out.on_rejected = lambda _out, code, reason: monitor.end(f"supervisor's phone: {code} {reason}"[:64],
                                                                 hang_up=False)
        monitor.ring_timer = asyncio.get_running_loop().call_later(
            self.config.queues.ring_agent_seconds, monitor.end, "supervisor did not answer")
        monitor.log.info("monitoring_ringing", mode=mode.value)

    def _desk_answered(self, monitor: Monitor) -> None:
        if monitor.ended:
            return
        if monitor.ring_timer is not None:
            monitor.ring_timer.cancel()
        assert isinstance(monitor.call, OutboundCall) and monitor.rtp is not None
        answer = monitor.call.sdp_answer
        remote = answer.rtp_address if answer is not None else None
        if remote is not None:
            monitor.rtp.update_remote(remote)
        self._start(monitor)

    # --- what the engine tells ------------------------------------------------------------------

    def bridged(self, leg: Leg) -> None:
        """A bridge hook: a caller bridged to their next agent takes back the supervisors waiting on them."""
        if leg.bridge is None:
            return
        for monitor in list(self.sessions.values()):
            if monitor.caller is leg and monitor.bridge is None and monitor.started_at is not None \
                    and not monitor.ended:
                monitor.attach(leg.bridge)

    def hung_up(self, call: InboundCall | OutboundCall, why: str = "supervisor hung up") -> bool:
        """A BYE (or CANCEL) from a supervisor's phone; False when the call is not a monitoring session."""
        monitor = self.sessions.get(call.call_id)
        if monitor is None:
            return False
        monitor.end(why, hang_up=False)
        return True

    def forget(self, monitor: Monitor) -> None:
        self.sessions.pop(monitor.call_id, None)
        self.spawn(self._close_media(monitor))

    async def _close_media(self, monitor: Monitor) -> None:
        rtp, monitor.rtp = monitor.rtp, None
        if rtp is not None:
            await rtp.close()
        if monitor.rtp_port is not None:
            self.ports.release(monitor.rtp_port)
            monitor.rtp_port = None

    def stop(self) -> None:
        """Shutdown: every supervisor is hung up."""
        for monitor in list(self.sessions.values()):
            monitor.end("shutdown")

