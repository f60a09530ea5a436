"""Follow-up calls on the wire: the CRM's due follow-ups dialled through the gateway, one `FollowupFlow` each.

Once a second the engine calls `tick` (while it accepts calls). Every
`[followup] scan_seconds` the triggers are scanned (`crm_bridge.followups.scan`);
every second, as many due follow-ups as the pacing allows are claimed
(`claim`: atomically, inside the calling window, with the per-customer
rules). The pacing (`ivr.campaign.Pacer`) allows at most `max_concurrent`
calls up and `calls_per_second` new ones a second, and none while more than
`queue_threshold` inbound callers wait for an agent or the IVR is
overloaded: inbound callers first.

Each claimed follow-up gets a `FollowupCall`: its flow is started with the
script composed for it (`ivr.followup_flow.script_for`); when the flow asks
to dial, the do-not-call list is checked once more (`attempt_call`), an RTP
session is bound and the number is INVITEd at the gateway with the hotline's
number as caller ID. The answer, refusal or `ring_seconds` of ringing go to
the flow; prompts are played on the shared media clock (pre-rendered
frames only); RFC 4733 keys come back as `Digit`. When the flow ends, its
outcome goes to the CRM (`finish`), in a thread. A customer who presses 0
is handed, call and RTP session, to a `FollowupLeg`: the callback flow of
`ivr.callflow` queues them for the ticket's agent or seat group.

Database work runs in one thread of its own (`_db_thread`, in turn); a CRM that is away
costs follow-ups, never the calls in progress.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

import structlog
from aiosipua import build_sdp
from sqlalchemy import Engine as Database

from crm_bridge import followups
from crm_bridge.followups import Claimed, FollowupRules
from ivr.acd import AgentState, agent_queue
from ivr.agents import AgentPool
from ivr.callflow import State as CallState
from ivr.campaign import CallingWindow, Pacer
from ivr.config import Config
from ivr.dialler import CustomerCall
from ivr.events import (
    Aborted,
    Action,
    CallbackStarted,
    CancelTimer,
    CustomerAnswered,
    CustomerFailed,
    DialCustomer,
    Digit,
    Event,
    HangUp,
    HungUp,
    Play,
    PromptFinished,
    RecordEvent,
    StartTimer,
    StopPlayback,
    TimerFired,
    utc_now,
)
from ivr.followup_flow import (
    DialFollowup,
    FlowAction,
    FlowEvent,
    FollowupEnded,
    FollowupFlow,
    FollowupFlowBug,
    FollowupFlowError,
    FollowupStarted,
    FollowupStep,
    State,
    TransferToAgent,
    script_for,
)
from ivr.greeting import HolidayCalendar
from ivr.leg import Leg
from ivr.media import CODEC_NAMES, SAMPLES_PER_FRAME, SILENCE_FRAMES, MediaClock, RtpPortPool, RtpSession, open_rtp
from ivr.service import SEAT_GROUPS
from ivr.sip.calls import OutboundCall
from ivr.sip.dialogs import new_call_id
from ivr.sip.endpoint import Address, SipEndpoint
from prompts.library import PromptLibrary

T = TypeVar("T")
log = structlog.get_logger("ivr.followup")
TRANSFER_SERVICE = "after_sales"  # a follow-up put through to an agent: 售后服务 (never "complaint": no new ticket)
DEFAULT_GROUP = "junior"  # the seat group of a follow-up whose ticket or call names none

# a customer's final response -> how the attempt failed (as ivr.dialler maps a callback's)
_REFUSALS = {486: "busy", 600: "busy", 603: "declined", 408: "no_answer", 480: "no_answer", 487: "no_answer"}


def rules_for(config: Config, calendar: HolidayCalendar) -> FollowupRules:
    """`[followup]` as the CRM side applies it; the calendar is the greeting's (holidays, 调休)."""
    f = config.followup
    window = CallingWindow(start=f.calling_hours[0], end=f.calling_hours[1], zone=config.general.zone,
                           day_off=calendar.is_day_off, on_holidays=f.call_on_holidays,
                           on_weekends=f.call_on_weekends)
    return FollowupRules(window=window, on_resolved=f.on_resolved, on_wrap_up=f.on_wrap_up, on_daily=f.on_daily,
                         wrap_up_code=f.wrap_up_code, delay=timedelta(seconds=f.delay_seconds), daily_at=f.daily_at,
                         min_gap=timedelta(seconds=f.min_gap_seconds), daily_cap=f.daily_cap,
                         max_attempts=f.max_attempts, retry_seconds=f.retry_seconds)


class FollowupCall:
    """One follow-up call: its flow, the INVITE to the gateway, its RTP session, timers and playback."""

    def __init__(self, dialler: FollowupDialler, claimed: Claimed, call_id: str) -> None:
        self.dialler = dialler
        self.claimed = claimed
        self.call_id = call_id
        self.log = log.bind(call_id=call_id, followup=claimed.id, kind=claimed.kind)
        self.flow = FollowupFlow()
        self.out: OutboundCall | None = None
        self.rtp: RtpSession | None = None
        self.rtp_port: int | None = None
        self.payload_type = dialler.payload_type
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.ring_timer: asyncio.TimerHandle | None = None
        self.frames: tuple[bytes, ...] = ()
        self.frame_index = 0
        self.prompt: str | None = None
        self.ts_offset = random.getrandbits(32)
        self.closed = False
        self.report = True  # False: the row was closed at dial time (do-not-call), nothing to finish

    # --- events in ---------------------------------------------------------------------

    def dispatch(self, event: FlowEvent) -> None:
        if self.closed:
            return
        try:
            actions = self.flow.handle(event)
        except FollowupFlowError as exc:
            self.log.warning("event_not_allowed", event=type(event).__name__, state=exc.state.value)
            return
        except FollowupFlowBug:
            self.log.exception("followup_flow_bug", event=type(event).__name__)
            if not isinstance(event, Aborted):
                self.dispatch(Aborted(utc_now(), "flow bug"))
            return
        for action in actions:
            try:
                self.execute(action)
            except Exception:  # an adapter failure must not lose the follow-up's result
                self.log.exception("followup_action_failed", action=type(action).__name__)
        if self.flow.ended:
            self.dialler.release(self)

    def on_dtmf(self, digit: str, _duration: int) -> None:
        self.dispatch(Digit(utc_now(), digit, "rfc4733"))

    def fire_timer(self, name: str) -> None:
        self.timers.pop(name, None)
        self.dispatch(TimerFired(utc_now(), name))

    # --- actions out -------------------------------------------------------------------

    def execute(self, action: FlowAction) -> None:
        pacer = self.dialler.pacer
        match action:
            case FollowupStep(kind=kind, detail=detail):
                self.log.info(kind, **({"detail": detail} if detail else {}))
            case DialFollowup():
                self.dialler.spawn(self.dialler.dial(self))
            case Play(prompt=prompt):
                self.frames = self.dialler.prompts.frames(prompt, self.payload_type)
                self.frame_index, self.prompt = 0, prompt
                pacer.serve(self)
            case StopPlayback():
                self.frames, self.prompt = (), None
            case StartTimer(timer=name, seconds=seconds):
                self.cancel_timer(name)
                self.timers[name] = asyncio.get_running_loop().call_later(seconds, self.fire_timer, name)
            case CancelTimer(timer=name):
                self.cancel_timer(name)
            case HangUp():
                self.hang_up()
            case FollowupEnded():
                self.dialler.ended(self, action)
            case TransferToAgent():
                self.dialler.transfer(self)
            case _:
                raise TypeError(f"unknown action {action!r}")

    def hang_up(self) -> None:
        if self.ring_timer is not None:
            self.ring_timer.cancel()
        if self.out is not None:
            if self.out.final:
                self.out.hangup()
            else:
                self.out.cancel()

    def cancel_timer(self, name: str) -> None:
        handle = self.timers.pop(name, None)
        if handle is not None:
            handle.cancel()

    # --- the media clock (ivr.media.Served) ------------------------------------------------

    def send_next_frame(self, tick: int) -> bool:
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

    def prompt_done(self) -> None:
        prompt, self.prompt = self.prompt, None
        if prompt is not None:
            self.dispatch(PromptFinished(utc_now(), prompt))


class FollowupLeg(Leg):
    """A follow-up call the customer asked to hand to an agent (pressed 0), run by the callback flow.

    `CallbackStarted` queues it for an agent of the group (or the ticket's agent by name); the agent
    is rung and hears the whisper ("…回拨。"); then the flow asks for the customer, who is on the line
    already: answered at once, "您好,801号客服为您服务", bridged. Meanwhile the customer hears the hold
    music. A customer who hangs up while no agent has answered ends the attempt (the callback flow
    itself takes no BYE before it has dialled).
    """

    def dispatch(self, event: Event) -> None:
        if isinstance(event, HungUp) and self.flow.state is CallState.DIALLING:
            super().dispatch(Aborted(event.at, "customer hung up while waiting for an agent"))
            return
        super().dispatch(event)

    def execute(self, action: Action) -> None:
        if isinstance(action, DialCustomer):
            self.music_on = False
            asyncio.get_running_loop().call_soon(self.dispatch, CustomerAnswered(utc_now()))
            return
        super().execute(action)


class FollowupDialler:
    """Due follow-ups in, calls to customers out: see the module docstring."""

    def __init__(
        self,
        config: Config,
        endpoint: SipEndpoint,
        db: Database,
        prompts: PromptLibrary,
        pacer: MediaClock,
        ports: RtpPortPool,
        media_ip: str,
        calendar: HolidayCalendar,
        departments: tuple[str, ...],
        worker: str,
        *,
        inbound_waiting: Callable[[], int],
        overloaded: Callable[[], bool],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        acd: AgentPool | None = None,
        legs: dict[str, Leg] | None = None,
        new_leg: Callable[[CustomerCall], Leg] | None = None,
    ) -> None:
        """`acd`, `legs`, `new_leg`: the engine's agents, calls and a leg factory, for a customer who
        presses 0 (None: no transfer; the ticket is flagged for an agent to call back)."""
        self.config = config
        self.endpoint = endpoint
        self.db = db
        self.prompts = prompts
        self.pacer = pacer
        self.ports = ports
        self.media_ip = media_ip
        self.departments = departments
        self.worker = worker
        self.inbound_waiting = inbound_waiting
        self.overloaded = overloaded
        self.spawn = spawn
        self.acd = acd
        self.legs = legs
        self.new_leg = new_leg
        f = config.followup
        self.rules = rules_for(config, calendar)
        self.pacing = Pacer(f.max_concurrent, f.calls_per_second, f.queue_threshold)
        self.gateway: Address | None = f.gateway or config.callbacks.gateway
        numbers = sorted(config.general.numbers)
        self.caller_id = f.caller_id or (numbers[0] if numbers else "")
        self.payload_type = config.general.payload_types[0]
        self.calls: dict[str, FollowupCall] = {}
        self._working = False
        # One thread for all follow-up database work, not the loop's default pool: a burst of calls ending
        # together had six threads running SQLAlchemy at once, each taking the GIL in turn before the event
        # loop got it back (the media clock woke 8-16 ms late at p99 while follow-ups ran).
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="followups-db")
        self._next_scan = 0.0
        self.started = 0  # calls started since the start (for the log and tests)

    async def start(self) -> None:
        """Rows this worker was dialling when it last stopped are due again."""
        try:
            released = await self._in_db_thread(followups.release_claims, self.db, self.worker)
        except Exception as exc:  # the CRM is away: the next start tries again
            log.warning("followup_release_failed", error=_first_line(exc))
            return
        if released:
            log.info("followups_released", count=released, worker=self.worker)

    def tick(self) -> None:
        """Once a second: scan the triggers now and then, and claim what may be dialled now."""
        if self._working:
            return
        now = time.monotonic()
        scan = now >= self._next_scan
        allowed = 0
        if self.gateway is not None:
            allowed = self.pacing.may_start(now, len(self.calls), self.inbound_waiting(), self.overloaded())
        if not scan and allowed <= 0:
            return
        if scan:
            self._next_scan = now + self.config.followup.scan_seconds
        self._working = True
        self.spawn(self._work(scan, allowed))

    async def _work(self, scan: bool, allowed: int) -> None:
        claimed: list[Claimed] = []
        try:
            if scan:
                added = await self._in_db_thread(followups.scan, self.db, self.rules)
                if added:
                    log.info("followups_scheduled", count=added)
            if allowed > 0:
                claimed = await self._in_db_thread(followups.claim, self.db, self.rules, self.worker, allowed)
        except Exception as exc:  # the CRM is away: follow-ups wait, calls do not
            log.warning("followups_unavailable", error=_first_line(exc))
        finally:
            self._working = False
        for item in claimed:
            self.pacing.started()
            self._start(item)

    def _start(self, claimed: Claimed) -> None:
        call = FollowupCall(self, claimed, new_call_id(self.endpoint.host))
        self.calls[call.call_id] = call
        self.started += 1
        call.log.info("followup_attempt", attempt=claimed.attempt, ticket=claimed.ticket_id)
        transfer = self.config.followup.agent_transfer and self.new_leg is not None
        script = script_for(claimed.kind, claimed.month, claimed.day, claimed.department, self.departments,
                            timeout_seconds=self.config.followup.answer_seconds, transfer=transfer)
        call.dispatch(FollowupStarted(utc_now(), claimed.id, claimed.number, script))

    async def dial(self, call: FollowupCall) -> None:
        """The do-not-call list once more, then the INVITE with its own RTP session."""
        assert self.gateway is not None
        gateway = self.gateway
        try:
            go = await self._in_db_thread(followups.attempt_call, self.db, call.claimed.id, call.call_id)
        except Exception as exc:
            call.log.warning("followup_check_failed", error=_first_line(exc))
            go = None
        if not go:
            if go is False:
                call.report = False  # closed as on_do_not_call (or taken back): nothing to finish
                call.log.info("followup_not_dialled", reason="on the do-not-call list or no longer claimed")
            call.dispatch(CustomerFailed(utc_now(), "failed"))
            return
        g = self.config.general
        try:
            rtp, call.rtp_port = await open_rtp(self.ports, g.bind, gateway, call.payload_type, strict=False)
        except (OSError, RuntimeError) as exc:
            call.log.error("followup_media_failed", error=str(exc))
            call.dispatch(CustomerFailed(utc_now(), "failed"))
            return
        if call.closed:
            await rtp.close()
            self._release_port(call)
            return
        call.rtp = rtp
        rtp.on_dtmf = call.on_dtmf
        sdp = build_sdp(self.media_ip, call.rtp_port, call.payload_type, CODEC_NAMES[call.payload_type])
        # the number is the claimed row's, as the CRM holds it (checked diallable by the claim), nothing else
        out = self.endpoint.invite(
            from_uri=f"sip:{self.caller_id}@{self.endpoint.host}:{g.port}", from_display=None,
            request_uri=f"sip:{call.claimed.number}@{gateway[0]}:{gateway[1]}", destination=gateway, sdp=sdp,
            headers={"Call-ID": call.call_id},
        )
        call.out = out
        out.on_answer = lambda _out: self._answered(call, out)
        out.on_rejected = lambda _out, code, reason: self._refused(call, code, reason)
        call.ring_timer = asyncio.get_running_loop().call_later(self.config.followup.ring_seconds, self._refused,
                                                                call, 0, "no answer")
        call.log.info("customer_dialled", gateway=f"{gateway[0]}:{gateway[1]}")

    def _answered(self, call: FollowupCall, out: OutboundCall) -> None:
        if call.ring_timer is not None:
            call.ring_timer.cancel()
        remote = out.sdp_answer.rtp_address if out.sdp_answer is not None else None
        if remote is not None and call.rtp is not None:
            call.rtp.update_remote(remote)
        call.dispatch(CustomerAnswered(utc_now()))

    def _refused(self, call: FollowupCall, status: int, reason: str) -> None:
        if call.ring_timer is not None:
            call.ring_timer.cancel()
        if call.flow.state is not State.DIALLING:
            return  # our own CANCEL's 487, or an answer already taken
        if status == 0 and call.out is not None:
            call.out.cancel()
        outcome = "no_answer" if status == 0 else _REFUSALS.get(status, "failed")
        call.dispatch(CustomerFailed(utc_now(), outcome, status))

    def hung_up(self, out: OutboundCall) -> bool:
        """A BYE from the gateway: True when it ends one of the follow-up calls."""
        call = self.calls.get(out.call_id)
        if call is None:
            return False
        call.dispatch(HungUp(utc_now()))
        return True

    def ended(self, call: FollowupCall, result: FollowupEnded) -> None:
        call.log.info("followup_result", outcome=result.outcome,
                      answers=" ".join(f"{q}={k}" for q, k in result.answers))
        if call.report:
            self.spawn(self._finish(call, result))

    async def _finish(self, call: FollowupCall, result: FollowupEnded) -> None:
        for delay in (0.0, 1.0, 5.0, 30.0):  # a short outage of the CRM must not lose the answer
            await asyncio.sleep(delay)
            try:
                row = await self._in_db_thread(followups.finish, self.db, result.followup, result.outcome, self.rules,
                                              result.at, result.answers)
            except Exception as exc:
                call.log.warning("followup_finish_failed", error=_first_line(exc))
                continue
            call.log.info("followup_stored", status=row.status, result=row.result or "", attempts=row.attempts,
                          due_at=row.due_at.isoformat())
            return
        call.log.error("followup_finish_lost", outcome=result.outcome)

    def queue_for(self, claimed: Claimed) -> str:
        """The ticket's agent when free right now (one process only), else the ticket's seat group."""
        acd = self.acd
        group = claimed.seat_group if claimed.seat_group in SEAT_GROUPS else DEFAULT_GROUP
        if acd is None or acd.shared or claimed.agent_number is None:
            return group
        seat = acd.seats.get(claimed.agent_number)
        return agent_queue(seat.number) if seat is not None and seat.state is AgentState.AVAILABLE else group

    def transfer(self, call: FollowupCall) -> None:
        """The customer pressed 0: the call, its SIP dialog and RTP session, go to a leg queued for an agent."""
        if self.new_leg is None or self.legs is None or call.out is None or call.out.ended or call.rtp is None:
            call.log.warning("followup_transfer_failed", reason="no call to hand over")
            call.hang_up()
            return
        assert self.gateway is not None
        customer = CustomerCall(call.call_id, call.claimed.number, self.gateway)
        customer.out = call.out
        leg = self.new_leg(customer)
        leg.rtp, leg.rtp_port, leg.payload_type = call.rtp, call.rtp_port, call.payload_type
        call.rtp = call.rtp_port = None  # the leg owns them now: its release closes them
        call.out = None
        self.pacer.stop(call)
        self.calls.pop(call.call_id, None)
        assert leg.rtp is not None
        leg.rtp.on_dtmf = leg.on_dtmf
        self.legs[leg.call_id] = leg
        queue = self.queue_for(call.claimed)
        now = utc_now()
        leg.dispatch(CallbackStarted(now, call.claimed.number, self.caller_id, "junior", TRANSFER_SERVICE, queue))
        # the agent's screen-pop names the ticket: this event, on the transferred call's row
        detail = f"ticket={call.claimed.ticket_id or ''} followup={call.claimed.id} queue={queue}"
        leg.execute(RecordEvent(leg.call_id, now, "followup_transfer", detail))
        leg.music_on = True  # hold music until the agent is put through
        self.pacer.serve(leg)

    def release(self, call: FollowupCall) -> None:
        if call.closed:
            return
        call.closed = True
        for name in list(call.timers):
            call.cancel_timer(name)
        if call.ring_timer is not None:
            call.ring_timer.cancel()
        self.pacer.stop(call)
        self.calls.pop(call.call_id, None)
        self.spawn(self._close_media(call))

    async def _close_media(self, call: FollowupCall) -> None:
        rtp, call.rtp = call.rtp, None
        if rtp is not None:
            await rtp.close()
        self._release_port(call)

    def _release_port(self, call: FollowupCall) -> None:
        if call.rtp_port is not None:
            self.ports.release(call.rtp_port)
            call.rtp_port = None

    def stop(self) -> None:
        """Shutting down: every follow-up call ends (BYE or CANCEL); its attempt is reported as cut off."""
        for call in list(self.calls.values()):
            call.dispatch(Aborted(utc_now(), "shutdown"))

    async def _in_db_thread(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, partial(function, *args))


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
