"""Callback dialling: the IVR calls customers back as `ivr.callbacks` schedules them.

A caller's flow asks for a callback (`request`); open requests the CRM kept
across a restart come back at start (`restore`). Once a second the engine
asks `dial_due`: a due request whose seat group has a free agent (and no
caller waiting) is taken, and a call leg is started for it with a
`CustomerCall`. Its flow rings an agent first, whispers to them, then asks
for the customer (`DialCustomer`): `dial` INVITEs the stored number at
`[callbacks] gateway` with the leg's own RTP session. The customer's answer,
refusal or silence for `CUSTOMER_RING_S` goes back to the flow; when the
attempt's call ends, its outcome goes to the scheduler (`attempt_ended`:
completed, retried later, or closed). Every change of a request is written
to the CRM as its row (`callback_row`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from aiosipua import build_sdp

from crm_bridge.writer import CrmWriter
from ivr.acd import AgentState
from ivr.agents import AgentPool
from ivr.callbacks import CallbackError, CallbackRequest, CallbackScheduler
from ivr.callflow import State
from ivr.config import Config
from ivr.events import CallbackStarted, CustomerAnswered, CustomerFailed, RecordCallback, RequestCallback, utc_now
from ivr.leg import Leg
from ivr.media import CODEC_NAMES, RtpPortPool, open_rtp
from ivr.sip.calls import OutboundCall
from ivr.sip.dialogs import new_call_id
from ivr.sip.endpoint import Address, SipEndpoint

log = structlog.get_logger("ivr.dialler")

CUSTOMER_RING_S = 30.0  # a called-back customer who has not answered by then: no_answer
# a called-back customer's final response -> the attempt's outcome (ivr.callbacks.OUTCOMES)
_CUSTOMER_REFUSALS = {486: "busy", 600: "busy", 603: "declined", 408: "no_answer", 480: "no_answer", 487: "no_answer"}


class CustomerCall:
    """The customer's side of a callback, as a leg drives a call: the INVITE to the gateway once dialled."""

    def __init__(self, call_id: str, number: str, gateway: Address) -> None:
        self.call_id = call_id
        self.caller = number
        self.source_addr = gateway
        self.out: OutboundCall | None = None

    def hangup(self) -> None:
        if self.out is not None:
            if self.out.final:
                self.out.hangup()
            else:
                self.out.cancel()  # still ringing


def callback_row(request: CallbackRequest) -> RecordCallback:
    """The CRM row of a callback request; its key is the Call-ID of the call that asked."""
    return RecordCallback(
        request_key=request.call_ids[0], number=request.number, tier=request.tier, service=request.service,
        seat_group=request.seat_group, requested_at=request.requested_at, due_at=request.due_at,
        status=request.status, attempts=request.attempts, result=request.result, call_ids=" ".join(request.call_ids),
    )


class Dialler:
    """Callback requests in, calls to customers out: see the module docstring."""

    def __init__(
        self,
        config: Config,
        endpoint: SipEndpoint,
        scheduler: CallbackScheduler,
        writer: CrmWriter,
        acd: AgentPool,
        ports: RtpPortPool,
        media_ip: str,
        legs: dict[str, Leg],
        new_leg: Callable[[CustomerCall], Leg],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        """`legs`: the engine's calls by Call-ID, where an attempt's leg is added; `new_leg`: a leg for a
        customer's call; `spawn`: runs a coroutine as the engine's task."""
        self.config = config
        self.endpoint = endpoint
        self.scheduler = scheduler
        self.writer = writer
        self.acd = acd
        self.ports = ports
        self.media_ip = media_ip
        self.legs = legs
        self.new_leg = new_leg
        self.spawn = spawn

    def request(self, action: RequestCallback, leg_log: Any) -> None:
        """A caller asked to be called back: keep the request for the dialler, and its row in the CRM."""
        try:
            request = self.scheduler.request(action.number, tier=action.tier, service=action.service,
                                             seat_group=action.seat_group, call_id=action.sip_call_id, now=action.at,
                                             due_at=action.due_at)
        except CallbackError as exc:  # the flow offers callbacks only to diallable numbers: a bug if seen
            leg_log.warning("callback_refused", reason=str(exc))
            return
        self.writer.submit(callback_row(request))
        leg_log.info("callback_stored", callback=request.id, seat_group=request.seat_group,
                     due_at=request.due_at.isoformat())

    def restore(self, requests: list[RecordCallback]) -> None:
        """Open requests the CRM kept across a restart: dialled again like new ones (their rows are updated)."""
        for request in requests:
            restored = self.scheduler.restore_record(request)
            self.writer.submit(callback_row(restored))
        if requests:
            log.info("callbacks_restored", count=len(requests))

    def dial_due(self) -> None:
        """Once a second: a due callback request whose seat group has a free agent (and no caller waiting) is taken."""
        gateway = self.config.callbacks.gateway
        if gateway is None:
            return  # [callbacks] gateway unset: requests are kept (and in the CRM) but not dialled
        now = utc_now()
        free = {s.seat_group for s in self.acd.seats.values() if s.state is AgentState.AVAILABLE}
        free -= {group for group, waiting in self.acd.queues.items() if waiting}  # callers on the line go first
        request = self.scheduler.next_due(now, free)
        if request is None:
            return
        call_id = new_call_id(self.endpoint.host)
        request = self.scheduler.attempt_started(request.id, call_id, now)
        self.writer.submit(callback_row(request))
        leg = self.new_leg(CustomerCall(call_id, request.number, gateway))
        leg.callback = request.id
        self.legs[call_id] = leg
        leg.log.info("callback_attempt", callback=request.id, attempt=request.attempts, seat_group=request.seat_group)
        callee = min(self.config.general.numbers) if self.config.general.numbers else ""
        leg.dispatch(CallbackStarted(now, request.number, callee, request.tier, request.service, request.seat_group))

    def dial(self, leg: Leg) -> None:
        """The flow asks for the customer (`DialCustomer`), once the agent has heard the whisper."""
        self.spawn(self._dial_customer(leg))

    async def _dial_customer(self, leg: Leg) -> None:
        """INVITE the callback's stored number through the gateway, with its own RTP session."""
        assert leg.callback is not None and isinstance(leg.call, CustomerCall)
        # the guard of ivr.callbacks: only the stored number of the request being dialled, nothing a caller typed
        number = self.scheduler.number_to_dial(leg.callback)
        gateway = leg.call.source_addr
        g = self.config.general
        try:
            rtp, leg.rtp_port = await open_rtp(self.ports, g.bind, gateway, leg.payload_type, strict=False)
        except (OSError, RuntimeError) as exc:
            leg.log.error("callback_media_failed", error=str(exc))
            leg.dispatch(CustomerFailed(utc_now(), "failed"))
            return
        if leg.closed:
            await rtp.close()
            leg.release_port()
            return
        leg.rtp = rtp
        rtp.on_dtmf = leg.on_dtmf
        sdp = build_sdp(self.media_ip, leg.rtp_port, leg.payload_type, CODEC_NAMES[leg.payload_type])
        callee = leg.flow.record.callee if leg.flow.record else ""
        out = self.endpoint.invite(
            from_uri=f"sip:{callee}@{self.endpoint.host}:{g.port}", from_display=None,
            request_uri=f"sip:{number}@{gateway[0]}:{gateway[1]}", destination=gateway, sdp=sdp,
            headers={"Call-ID": leg.call_id},
        )
        leg.call.out = out
        out.on_answer = lambda _out: self._customer_answered(leg, out)
        out.on_rejected = lambda _out, code, reason: self._customer_refused(leg, code, reason)
        leg.customer_timer = asyncio.get_running_loop().call_later(CUSTOMER_RING_S, self._customer_refused, leg, 0,
                                                                   "no answer")

    def _customer_answered(self, leg: Leg, out: OutboundCall) -> None:
        if leg.customer_timer is not None:
            leg.customer_timer.cancel()
        remote = out.sdp_answer.rtp_address if out.sdp_answer is not None else None
        if remote is not None and leg.rtp is not None:
            leg.rtp.update_remote(remote)
        leg.dispatch(CustomerAnswered(utc_now()))

    def _customer_refused(self, leg: Leg, status: int, reason: str) -> None:
        if leg.customer_timer is not None:
            leg.customer_timer.cancel()
        if leg.flow.state is not State.DIALLING:
            return  # our own CANCEL's 487, or an answer already taken
        if status == 0 and isinstance(leg.call, CustomerCall) and leg.call.out is not None:
            leg.call.out.cancel()
        outcome = "no_answer" if status == 0 else _CUSTOMER_REFUSALS.get(status, "failed")
        leg.log.info("customer_not_reached", status=status, reason=reason, outcome=outcome)
        leg.dispatch(CustomerFailed(utc_now(), outcome, status))

    def attempt_ended(self, leg: Leg, outcome: str, answered: bool) -> None:
        """The attempt's call has ended: the request completes, waits for its retry, or closes."""
        request_id, leg.callback = leg.callback, None
        assert request_id is not None
        attempt = outcome.removeprefix("callback_") if outcome.startswith("callback_") else "failed"
        if answered or attempt == "completed":
            attempt = "answered"
        try:
            request = self.scheduler.attempt_result(request_id, attempt, utc_now())
        except CallbackError as exc:
            leg.log.error("callback_result_refused", reason=str(exc))
            return
        self.writer.submit(callback_row(request))
        leg.log.info("callback_result", callback=request.id, attempt=request.attempts, status=request.status,
                     result=request.result or "", due_at=request.due_at.isoformat())
