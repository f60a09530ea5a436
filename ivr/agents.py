"""Agents: their phones, the offers the ACD makes, and the IVR's calls to them.

The engine wires this module to the call flow; it holds everything on the
agent side of the B2BUA:

- registration bindings (a phone's REGISTER logs its agent in until it expires);
- the ACD pass: waiting callers are offered to agents (`AgentPool.claim`), once
  when something changes and once a second (overflow grows with waiting time);
- agent legs: the INVITE to the agent's phone with its own RTP session, ring
  timeout, answer, CANCEL/BYE, and wrap-up after the call;
- pause and resume (the phone's *46/*47 feature codes, the desk's buttons).

The pool is `ivr.acd.Acd` in one process or `ivr.shared_acd.SharedAcd` for
workers behind a balancer; both implement `AgentPool`, so nothing here asks
which one it has. A claim may be a database round trip: claims run one at a
time, and one more is run when something asked for a claim meanwhile.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog
from aiosipua import build_sdp

from crm_bridge.records import RecordAgentState
from ivr.acd import AgentState, Offer, Seat, Waiting
from ivr.agent_srtp import SrtpOffer, accept_answer, secure_offer, srtp_offer
from ivr.bridge import MediaBridge
from ivr.callflow import CallFlow, State
from ivr.config import AgentConfig, Config
from ivr.events import AgentAnswered, AgentHungUp, AgentNoAnswer, AgentRinging, Event, WhisperFinished, utc_now
from ivr.media import (
    CODEC_NAMES,
    SAMPLES_PER_FRAME,
    SILENCE_FRAMES,
    MediaClock,
    RtpPortPool,
    RtpSession,
    SrtpRtpSession,
    WebRtcFailed,
    WebRtcSession,
    open_rtp,
    open_webrtc,
)
from ivr.screenpop import DeskLink, desk_call_url, screen_pop
from ivr.sip.calls import OutboundCall
from ivr.sip.connections import ConnectionGone, StreamAddress
from ivr.sip.endpoint import SipEndpoint
from ivr.srtp import SrtpRefused
from ivr.waiting import SeatGroupLoad, WaitEstimator

log = structlog.get_logger("ivr.agents")


class AgentPool(Protocol):
    """Agents and their queues: one process (`Acd`) or shared by workers (`SharedAcd`)."""

    seats: dict[str, Seat]
    queues: dict[str, list[Waiting]]
    shared: bool  # agent state in the database, claimed by several workers

    def start(self, agents: tuple[AgentConfig, ...], at: datetime) -> None: ...  # blocking: run in a thread
    def close(self, at: datetime) -> None: ...  # blocking: run in a thread
    async def refresh(self, at: datetime) -> None: ...
    async def claim(self, at: datetime, resting: frozenset[str] = frozenset()) -> list[Offer]: ...
    async def set_paused(self, number: str, paused: bool, at: datetime) -> str: ...
    def login(self, number: str, contact: tuple[str, int], at: datetime, until: datetime | None = None,
              uri: str | None = None, path: tuple[str, ...] = ()) -> None: ...
    def logout(self, number: str) -> None: ...
    def answered(self, number: str) -> None: ...
    def no_answer(self, number: str, at: datetime) -> Waiting | None: ...
    def released(self, number: str, at: datetime) -> float: ...
    def wrap_up_done(self, number: str, at: datetime) -> None: ...
    def join(self, call_id: str, seat_group: str, service: str, at: datetime) -> None: ...
    def leave(self, call_id: str) -> str | None: ...
    def position(self, call_id: str) -> int | None: ...
    def waiting(self) -> int: ...
    def describe(self) -> list[str]: ...


class Caller(Protocol):
    """A caller's call as the agent side sees it (`ivr.leg.Leg`): its flow, its media's codec, the agent rung."""

    call_id: str
    flow: CallFlow
    payload_type: int
    customer_name: str | None  # from the CRM, for the agent's screen-pop
    agent: AgentLeg | None  # the agent being rung for this caller, or talking
    bridge: MediaBridge | None  # while the caller and the agent talk
    closed: bool
    log: Any  # the call's logger

    def dispatch(self, event: Event) -> None: ...


class AgentLeg:
    """The IVR's call to an agent (UAC side of the B2BUA) for one caller."""

    def __init__(self, caller: Caller, offer: Offer) -> None:
        self.caller = caller
        self.offer = offer
        self.agent = offer.agent
        self.rtp: RtpSession | None = None
        self.srtp: SrtpOffer | None = None  # the SDES keys offered to the agent's phone ([801] srtp)
        self.webrtc_offer: str | None = None  # a browser's leg: our DTLS-SRTP offer (ivr.media.open_webrtc)
        self.rtp_port: int | None = None
        self.out: OutboundCall | None = None
        self.ring_timer: asyncio.TimerHandle | None = None
        self.offered_at = time.monotonic()  # when the pool offered this caller to the agent
        self.answered = False
        self.answered_at: datetime | None = None
        self.ended = False
        self.ts_offset = random.getrandbits(32)
        self._ts = self.ts_offset
        # frames only the agent hears (a callback's whisper), sent on the media clock
        self.whisper: tuple[bytes, ...] = ()
        self.whisper_index = 0
        self.on_whispered: Callable[[], None] | None = None
        # the media watch (Agents.watch_media): on hold, frames heard at the last look, seconds with none since
        self.held = False
        self.heard = -1
        self.quiet_s = 0

    @property
    def payload_type(self) -> int:
        return self.caller.payload_type  # the agent is offered the caller's codec

    def next_timestamp(self) -> int:
        self._ts = (self._ts + SAMPLES_PER_FRAME) & 0xFFFFFFFF
        return self._ts

    def send_next_frame(self, tick: int) -> bool:
        """The media clock's tick from answer until the bridge: a whisper's frame, else silence.

        True once a whisper has played out. The agent's phone gets a frame every
        tick while the caller hears the agent's announcement, so a phone that
        ends calls without RTP never sees a silent line.
        """
        if self.rtp is None or self.ended:
            return False
        if self.whisper_index < len(self.whisper):
            self.rtp.send_audio(self.whisper[self.whisper_index], self.next_timestamp())
            self.whisper_index += 1
            return self.whisper_index == len(self.whisper)
        self.rtp.send_audio(SILENCE_FRAMES[self.payload_type], self.next_timestamp())
        return False

    def prompt_done(self) -> None:
        done, self.on_whispered = self.on_whispered, None
        if done is not None:
            done()


class Agents:
    """The agent side of the hotline; see the module docstring."""

    def __init__(self, pool: AgentPool, config: Config, endpoint: SipEndpoint, ports: RtpPortPool,
                 legs: Mapping[str, Caller], spawn: Callable[[Coroutine[Any, Any, None]], None], media_ip: str,
                 pacer: MediaClock, desk: DeskLink | None = None) -> None:
        self.pool = pool
        self.config = config
        self.endpoint = endpoint
        self.ports = ports
        self.legs = legs  # the engine's calls, by Call-ID
        self.spawn = spawn
        self.media_ip = media_ip
        self.pacer = pacer  # serves each answered agent leg until its bridge does
        self.desk = desk or DeskLink()
        self.legs_by_agent_call: dict[str, AgentLeg] = {}  # by the agent call's Call-ID
        self.srtp_modes = {a.number: a.srtp.lower() for a in config.agents}  # [801] srtp
        self.registrations: dict[str, asyncio.TimerHandle] = {}
        # agents whose phone registered over a connection (TCP, TLS, WebSocket): bound to it until it closes
        self.bound: dict[str, StreamAddress] = {}
        self._wrap_up: dict[str, asyncio.TimerHandle] = {}
        self._resting: dict[str, float] = {}  # agent -> until when (monotonic) no call is offered to them
        self._claiming = self._claim_again = self._refreshing = False
        self._states: dict[str, str] = {}
        self.dirty = True  # an agent's state changed since the status file was written
        # the expected wait: handle times (talk + wrap-up) per seat group, and when each busy agent took a call
        self.estimator = WaitEstimator(config.queues.mean_handle_seconds)
        self.busy_since: dict[str, datetime] = {}
        # each state change seen, to the CRM's agent_states log (the engine hands in its durable writer)
        self.state_log: Callable[[RecordAgentState], None] | None = None

    # --- start, stop, once a second ----------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.pool.start, self.config.agents, utc_now())
        log.info("seat_groups", agents=self.pool.describe())
        self.publish_states()

    async def close(self) -> None:
        await asyncio.to_thread(self.pool.close, utc_now())
        if not self.pool.shared and self.state_log is not None:
            # agents in memory end with this process: their time stops counting now, not at the next start
            now = utc_now()
            for seat in self.pool.seats.values():
                if self._states.get(seat.number, "logged_out") != "logged_out":
                    self._states[seat.number] = "logged_out"
                    self.state_log(RecordAgentState(seat.number, "logged_out", now, seat.seat_group))

    def tick(self) -> None:
        """The once-a-second pass: refresh shared state, offer again (overflow grows with waiting), and
        look for agents' phones gone silent."""
        if not self._refreshing:
            self.spawn(self._refresh())
        if self.pool.waiting():
            self.assign()
        if self.config.media.agent_media_timeout > 0:
            self.watch_media(self.config.media.agent_media_timeout)

    def watch_media(self, timeout_s: float) -> None:
        """Once a second: an agent's phone in talk that has sent no audio for `timeout_s` (not on hold) is
        gone, powered off or its browser vanished without a BYE (its REGISTER may even have gone to another
        worker, which alone heard its WebSocket close). The call ends as if the agent had hung up, and the
        caller is asked the survey instead of waiting in dead air. Each look reads one counter per call:
        the packets the agent's RTP session took in, comfort noise included (a phone with silence
        suppression sends that while its agent listens)."""
        for agent_leg in list(self.legs_by_agent_call.values()):
            bridge, rtp = agent_leg.caller.bridge, agent_leg.rtp
            if agent_leg.ended or agent_leg.held or rtp is None or bridge is None or bridge.agent is not agent_leg:
                agent_leg.heard, agent_leg.quiet_s = -1, 0
                continue
            heard = rtp.packets_heard
            if heard != agent_leg.heard:
                agent_leg.heard, agent_leg.quiet_s = heard, 0
                continue
            agent_leg.quiet_s += 1
            if agent_leg.quiet_s >= timeout_s:
                agent_leg.caller.log.warning("agent_media_timeout", agent=agent_leg.agent, silent_s=agent_leg.quiet_s)
                self.end_leg(agent_leg, hang_up=True)
                agent_leg.caller.dispatch(AgentHungUp(utc_now(), f"no audio from the agent's phone for "
                                                                 f"{agent_leg.quiet_s} s"))

    async def _refresh(self) -> None:
        self._refreshing = True
        try:
            await self.pool.refresh(utc_now())
        finally:
            self._refreshing = False
        if self.pool.shared:
            # A phone we ring was logged out by another worker meanwhile (the balancer's un-REGISTER of a
            # closed WebSocket goes to the worker that took its REGISTER): it cannot answer, the caller goes
            # back to the head of the queue now rather than at the end of the ring time.
            for agent_leg in [leg for leg in self.legs_by_agent_call.values() if not leg.answered]:
                seat = self.pool.seats.get(agent_leg.agent)
                if seat is not None and seat.contact is None:
                    self._no_answer(agent_leg, "unregistered")
        self.publish_states()

    def publish_states(self) -> None:
        """Log each agent whose state changed since the last call; mark the status file stale."""
        now = utc_now()
        for seat in self.pool.seats.values():
            state = seat.state.value
            if self._states.get(seat.number) != state:
                self._states[seat.number] = state
                log.info("agent_state", agent=seat.number, seat_group=seat.seat_group, state=state,
                         call_id=seat.call_id)
                if self.state_log is not None:
                    self.state_log(RecordAgentState(seat.number, state, now, seat.seat_group, seat.call_id))
        self.dirty = True

    # --- phones: registration and pause ------------------------------------------------

    def bind(self, agent: str, contact: tuple[str, int] | None, expires: int, uri: str | None = None,
             path: tuple[str, ...] = ()) -> None:
        """A REGISTER from the agent's phone: logged in at `contact` for `expires` s (None: logged out),
        reached through the proxies of `path` (RFC 3327)."""
        old = self.registrations.pop(agent, None)
        if old is not None:
            old.cancel()
        self.bound.pop(agent, None)
        if isinstance(contact, StreamAddress):
            self.bound[agent] = contact  # rung down this connection only, unbound when it closes
        if contact is None:
            self.pool.logout(agent)
            log.info("agent_unregistered", agent=agent)
            self.publish_states()
            return
        self.pool.login(agent, contact, utc_now(), until=utc_now() + timedelta(seconds=expires), uri=uri, path=path)
        self.registrations[agent] = asyncio.get_running_loop().call_later(expires, self._expire, agent)
        log.info("agent_registered", agent=agent, contact=f"{contact[0]}:{contact[1]}", expires=expires)
        self.assign()

    def connection_closed(self, address: StreamAddress) -> None:
        """A connection is gone: each agent registered over it is logged out now, and a call ringing
        there goes back to the head of its queue (a call in talk ends as if the agent hung up)."""
        for agent in [a for a, where in self.bound.items() if where == address]:
            self._connection_gone(agent, f"{address.transport} connection closed")

    def flow_closed(self, agent: str) -> None:
        """The proxy in front lost the connection the agent registered over (Kamailio's un-REGISTER of a
        closed WebSocket, ivr.registrar): as when our own connection closes (`connection_closed`)."""
        self._connection_gone(agent, "proxy's connection closed")

    def _connection_gone(self, agent: str, reason: str) -> None:
        self.bound.pop(agent, None)
        timer = self.registrations.pop(agent, None)
        if timer is not None:
            timer.cancel()
        self.pool.logout(agent)
        log.info("agent_unregistered", agent=agent, reason=reason)
        for agent_leg in [leg for leg in self.legs_by_agent_call.values() if leg.agent == agent]:
            if agent_leg.answered:
                self.end_leg(agent_leg, hang_up=False)
                agent_leg.caller.dispatch(AgentHungUp(utc_now()))
            else:
                self._no_answer(agent_leg, "connection closed")
        self.publish_states()

    def _expire(self, agent: str) -> None:
        self.registrations.pop(agent, None)
        self.bound.pop(agent, None)
        self.pool.logout(agent)
        self.publish_states()
        log.info("agent_registration_expired", agent=agent)

    def bound_path(self, agent: str) -> tuple[str, ...]:
        """The Path (RFC 3327) the agent's phone is registered through now; () for none or no such agent."""
        seat = self.pool.seats.get(agent)
        return seat.path if seat is not None else ()

    def agent_at(self, phone: tuple[str, int]) -> str | None:
        return next((s.number for s in self.pool.seats.values() if s.contact == phone), None)

    async def set_paused(self, agent: str, pause: bool) -> str:
        """Pause or resume; returns the state every worker now sees (with shared agents, after the database has it)."""
        state = await self.pool.set_paused(agent, pause, utc_now())
        log.info("agent_pause" if pause else "agent_resume", agent=agent, state=state)
        self.publish_states()
        if not pause:
            self.assign()
        return state

    # --- callers in the queues ---------------------------------------------------------

    def join(self, leg: Caller, seat_group: str, service: str) -> None:
        self.pool.join(leg.call_id, seat_group, service, utc_now())
        self.assign()

    def position(self, leg: Caller) -> int | None:
        return self.pool.position(leg.call_id)

    def _load(self, seat_group: str, now: datetime) -> SeatGroupLoad:
        """The group's agents as the estimate sees them: logged in (not paused), and how long each busy one is busy."""
        online = [s for s in self.pool.seats.values()
                  if s.seat_group == seat_group and s.state not in (AgentState.LOGGED_OUT, AgentState.PAUSED)]
        busy = tuple(
            # an agent busy on another worker (shared agents) has no start time here: counted as just started
            max(0.0, (now - self.busy_since[s.number]).total_seconds()) if s.number in self.busy_since else 0.0
            for s in online if s.state is not AgentState.AVAILABLE
        )
        return SeatGroupLoad(len(online), busy)

    def expected_wait(self, leg: Caller, position: int) -> tuple[bool, float | None]:
        """(anyone logged in to serve this caller, seconds until an agent takes them or None)."""
        now = utc_now()
        record = leg.flow.record
        group = (record.seat_group if record else None) or leg.flow.tier
        load = self._load(group, now)
        if load.agents_logged_in:
            return True, self.estimator.expected_wait(group, position, load)
        # nobody in the group: its overflow group serves the caller once overflow_after_seconds have passed
        q = self.config.queues
        seen = {group}
        overflow = q.overflow.get(group)
        while overflow is not None and overflow not in seen and q.overflow_after_seconds > 0 and (
                not record or record.service != "complaint" or q.complaints_overflow):
            load = self._load(overflow, now)
            if load.agents_logged_in:
                waited = (now - leg.flow.queued_at).total_seconds() if leg.flow.queued_at else 0.0
                wait = self.estimator.expected_wait(overflow, position, load)
                return True, None if wait is None else wait + max(0.0, q.overflow_after_seconds - waited)
            seen.add(overflow)
            overflow = q.overflow.get(overflow)
        return False, None

    def leave(self, leg: Caller) -> None:
        self.pool.leave(leg.call_id)
        if leg.agent is not None:  # an agent was being rung for this caller
            self.end_leg(leg.agent, hang_up=True, release=False)

    def assign(self) -> None:
        """Offer waiting callers to agents: one claim at a time, and once more if asked meanwhile."""
        if self._claiming:
            self._claim_again = True
            return
        self._claiming = True
        self.spawn(self._claim())

    def resting(self) -> frozenset[str]:
        """The agents whose phone refused a call at once, left out of the offers until their rest is over."""
        now = time.monotonic()
        for agent in [a for a, until in self._resting.items() if until <= now]:
            del self._resting[agent]
        return frozenset(self._resting)

    async def _claim(self) -> None:
        try:
            while True:
                self._claim_again = False
                self._ring(await self.pool.claim(utc_now(), self.resting()))
                if not self._claim_again:
                    break
        finally:
            self._claiming = False
            self.publish_states()

    # --- agent legs ----------------------------------------------------------------------

    def _ring(self, offers: list[Offer]) -> None:
        for offer in offers:
            leg = self.legs.get(offer.call_id)
            if leg is None or leg.closed:
                self.pool.no_answer(offer.agent, utc_now())
                continue
            agent_leg = AgentLeg(leg, offer)
            leg.agent = agent_leg
            self.spawn(self._ring_agent(agent_leg))

    async def _ring_agent(self, agent_leg: AgentLeg) -> None:
        caller, offer = agent_leg.caller, agent_leg.offer
        g = self.config.general
        # a page on our own WebSocket, or behind a proxy's (its Contact names the ws transport, RFC 7118 §5.2)
        browser = (isinstance(offer.contact, StreamAddress) and offer.contact.transport in ("WS", "WSS")) or (
            re.search(r";\s*transport\s*=\s*wss?\b", offer.contact_uri or "", re.I) is not None)
        agent_leg.srtp = None if browser else srtp_offer(self.srtp_modes.get(offer.agent, "off"))
        try:
            if browser:  # a page registered over a WebSocket: DTLS-SRTP with ICE-lite, what browsers speak
                session, agent_leg.rtp_port, agent_leg.webrtc_offer = await open_webrtc(
                    self.ports, g.bind, caller.payload_type, address=self.media_ip, call_log=caller.log)
                session.on_failed = lambda reason: self._webrtc_failed(agent_leg, reason)
                agent_leg.rtp = session
            else:
                agent_leg.rtp, agent_leg.rtp_port = await open_rtp(
                    self.ports, g.bind, offer.contact, caller.payload_type, strict=False,
                    secure=agent_leg.srtp is not None)
        except (OSError, RuntimeError) as exc:
            caller.log.error("agent_leg_failed", agent=offer.agent, error=str(exc))
            self._no_answer(agent_leg, f"media: {exc}")
            return
        if agent_leg.ended or caller.closed:
            self.end_leg(agent_leg, hang_up=False)
            return
        record = caller.flow.record
        caller_number = record.caller if record else "ivr"
        # the agent's phone shows who calls and why, whatever the softphone: name, tier and service
        # in the From display name, the rest in headers and a Call-Info link to the desk
        pop = screen_pop(name=caller.customer_name, tier=record.tier if record and record.tier else "junior",
                         service=record.service if record else None, caller=caller_number, call_id=caller.call_id,
                         desk_url=desk_call_url(self.desk.base_url, caller.call_id) if self.desk.base_url else None,
                         template=self.desk.template)
        try:
            out = self._invite(agent_leg, pop, caller_number)
        except ConnectionGone as exc:  # its connection closed meanwhile: never rung anywhere else
            self._no_answer(agent_leg, str(exc))
            return
        agent_leg.out = out
        self.legs_by_agent_call[out.call_id] = agent_leg
        out.on_answer = lambda _out: self._answered(agent_leg)
        out.on_rejected = lambda _out, code, reason: self._no_answer(agent_leg, f"{code} {reason}")
        agent_leg.ring_timer = asyncio.get_running_loop().call_later(
            self.config.queues.ring_agent_seconds, self._no_answer, agent_leg, "no answer"
        )
        caller.dispatch(AgentRinging(utc_now(), offer.agent))

    def _invite(self, agent_leg: AgentLeg, pop: Any, caller_number: str) -> OutboundCall:
        caller, offer = agent_leg.caller, agent_leg.offer
        g = self.config.general
        assert agent_leg.rtp_port is not None
        sdp = build_sdp(self.media_ip, agent_leg.rtp_port, caller.payload_type, CODEC_NAMES[caller.payload_type])
        return self.endpoint.invite(
            from_uri=f"sip:{caller_number}@{self.endpoint.host}:{g.port}", from_display=pop.display_name,
            headers=dict(pop.headers),
            # RFC 3261 §10.2.1: a registered phone is reached at the Contact URI it registered
            request_uri=offer.contact_uri or f"sip:{offer.agent}@{offer.contact[0]}:{offer.contact[1]}",
            destination=offer.contact, sdp=secure_offer(sdp, agent_leg.srtp), body=agent_leg.webrtc_offer,
            route=offer.path,  # RFC 3327: through the proxy the phone registered through (destination: its first hop)
        )

    def _answered(self, agent_leg: AgentLeg) -> None:
        if agent_leg.ended:
            return
        if agent_leg.ring_timer is not None:
            agent_leg.ring_timer.cancel()
        out = agent_leg.out
        assert out is not None
        answer = out.sdp_answer
        if isinstance(agent_leg.rtp, WebRtcSession):
            try:  # the browser's fingerprint, ICE credentials and DTLS role; media flows once both complete
                agent_leg.rtp.accept_answer(out.answer_text or "")
            except WebRtcFailed as exc:
                self._answer_refused(agent_leg, f"WebRTC answer: {exc}")
                return
            answer = None  # the media address is the one ICE nominates, not the answer's c= line
        elif agent_leg.srtp is not None and isinstance(agent_leg.rtp, SrtpRtpSession):
            try:
                context = accept_answer(answer, agent_leg.srtp)
            except SrtpRefused as exc:
                self._answer_refused(agent_leg, exc.reason)
                return
            if context is None:
                agent_leg.rtp.go_clear()
            else:
                agent_leg.rtp.attach_srtp(context)
        remote = answer.rtp_address if answer is not None else None
        if remote is not None and agent_leg.rtp is not None:
            agent_leg.rtp.update_remote(remote)
        agent_leg.answered = True
        self.pacer.serve(agent_leg)  # RTP to the agent from answer on: silence during the caller's announcement
        agent_leg.answered_at = self.busy_since[agent_leg.agent] = utc_now()
        self.pool.answered(agent_leg.agent)
        self.publish_states()
        agent_leg.caller.dispatch(AgentAnswered(utc_now(), agent_leg.agent, agent_leg.offer.seat_group))

    def _webrtc_failed(self, agent_leg: AgentLeg, why: str) -> None:
        """A browser leg's media failed (ICE or DTLS timed out, a certificate not matching the answer's
        fingerprint): before or at the answer, the caller goes back to the queue; in talk, the agent is
        gone as after a hang-up."""
        if agent_leg.ended:
            return
        agent_leg.caller.log.warning("agent_media_failed", agent=agent_leg.agent, reason=why)
        if not agent_leg.answered:
            self._no_answer(agent_leg, f"media: {why}")
        elif agent_leg.caller.flow.state in (State.ANNOUNCING, State.BRIDGED):
            self.end_leg(agent_leg, hang_up=True)
            agent_leg.caller.dispatch(AgentHungUp(utc_now(), f"media: {why}"))

    def _answer_refused(self, agent_leg: AgentLeg, why: str) -> None:
        """The agent's phone answered in a way the leg cannot take (clear media on a secure seat):
        hang up on it, and the caller goes back to the head of the queue as after no answer. The
        agent is paused: that phone would answer every call the same way (the agent resumes with
        *47 or the desk's button once the phone is fixed)."""
        agent_leg.caller.log.warning("agent_leg_refused", agent=agent_leg.agent, reason=why)
        agent_leg.answered = True  # a BYE for the dialog its 200 made, not a CANCEL
        self.end_leg(agent_leg, hang_up=True, release=False)
        self.pool.no_answer(agent_leg.agent, utc_now())
        agent_leg.caller.dispatch(AgentNoAnswer(utc_now(), agent_leg.agent))
        self.spawn(self._pause_then_assign(agent_leg.agent))

    async def _pause_then_assign(self, agent: str) -> None:
        try:
            await self.set_paused(agent, True)
        finally:
            self.assign()

    def _no_answer(self, agent_leg: AgentLeg, why: str) -> None:
        if agent_leg.ended or agent_leg.answered:
            return
        agent_leg.caller.log.info("agent_not_answering", agent=agent_leg.agent, reason=why)
        self.end_leg(agent_leg, hang_up=True, release=False)
        # A phone that refuses at once (486 on do-not-disturb, 404, a media error) is offered no call until
        # [queues] retry_seconds after it was rung (as Asterisk's queue retry): offered again at once, the
        # only free agent was a loop of a thousand INVITEs a second and the media clock of every call fell
        # behind. The caller goes back to the head of the queue now, for any other agent (or overflow).
        rest_until = agent_leg.offered_at + self.config.queues.retry_seconds
        if rest_until > time.monotonic():
            self._resting[agent_leg.agent] = rest_until
        self.pool.no_answer(agent_leg.agent, utc_now())
        agent_leg.caller.dispatch(AgentNoAnswer(utc_now(), agent_leg.agent))
        self.assign()

    def whisper(self, agent_leg: AgentLeg, frames: tuple[bytes, ...]) -> None:
        """Play `frames` to the agent alone on the shared media clock, then tell the caller's flow."""
        agent_leg.whisper, agent_leg.whisper_index = frames, 0

        def done() -> None:
            if not agent_leg.ended:
                agent_leg.caller.dispatch(WhisperFinished(utc_now()))

        agent_leg.on_whispered = done
        self.pacer.serve(agent_leg)

    def hung_up(self, out: OutboundCall) -> bool:
        """The agent's BYE; False when the call is not an agent leg of ours."""
        agent_leg = self.legs_by_agent_call.get(out.call_id)
        if agent_leg is None:
            return False
        self.end_leg(agent_leg, hang_up=False)
        agent_leg.caller.dispatch(AgentHungUp(utc_now()))
        return True

    def end_leg(self, agent_leg: AgentLeg, *, hang_up: bool, release: bool = True) -> None:
        """Tear down the agent's leg; BYE (or CANCEL while ringing) when `hang_up`."""
        if agent_leg.ended:
            return
        agent_leg.ended = True
        self.pacer.stop(agent_leg)
        if agent_leg.ring_timer is not None:
            agent_leg.ring_timer.cancel()
        out = agent_leg.out
        if out is not None:
            if hang_up:
                if agent_leg.answered:
                    out.hangup()
                else:
                    out.cancel()
            self.legs_by_agent_call.pop(out.call_id, None)
        if agent_leg.caller.agent is agent_leg:
            agent_leg.caller.agent = None
        if release and agent_leg.answered:
            now = utc_now()
            wrap_up = self.pool.released(agent_leg.agent, now)
            seat = self.pool.seats.get(agent_leg.agent)
            if seat is not None and agent_leg.answered_at is not None:
                # handle time = talk + wrap-up: what the next caller of this group waits behind
                self.estimator.record(seat.seat_group, (now - agent_leg.answered_at).total_seconds(), wrap_up)
            self._wrap_up[agent_leg.agent] = asyncio.get_running_loop().call_later(
                wrap_up, self._wrap_up_done, agent_leg.agent)
            self.publish_states()
        self.spawn(self._close_media(agent_leg))

    async def _close_media(self, agent_leg: AgentLeg) -> None:
        if agent_leg.rtp is not None:
            rtp, agent_leg.rtp = agent_leg.rtp, None
            await rtp.close()
        if agent_leg.rtp_port is not None:
            self.ports.release(agent_leg.rtp_port)
            agent_leg.rtp_port = None

    def end_wrap_up(self, agent: str) -> None:
        """The agent is ready before the wrap-up time is over (the desk's button)."""
        timer = self._wrap_up.pop(agent, None)
        if timer is not None:
            timer.cancel()
            self._wrap_up_done(agent)

    async def apply(self, command: str, agent: str) -> None:
        """A command from the desk: pause, resume (as *46/*47 do) or end_wrap_up."""
        if command in ("pause", "resume"):
            await self.set_paused(agent, command == "pause")
        elif command == "end_wrap_up":
            self.end_wrap_up(agent)
        self.publish_states()

    def _wrap_up_done(self, agent: str) -> None:
        self._wrap_up.pop(agent, None)
        self.busy_since.pop(agent, None)
        self.pool.wrap_up_done(agent, utc_now())
        self.assign()
