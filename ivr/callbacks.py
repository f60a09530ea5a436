"""Callbacks: a caller who would rather not wait is called back when an agent is free.

Theory of operation. A waiting caller presses `[queues] callback_key` (or
no agent is logged in) and hears "好的,稍后给您回过去,感谢您的来电!". That
stores a `CallbackRequest` for the caller's own number, tier, service and
seat group. When an agent of that group is free, the dialler
(`ivr.dialler`) asks `next_due(now, free_groups)`, calls `attempt_started`
and dials; the outcome comes back through `attempt_result`:

    pending --attempt_started--> dialling --answered--> completed (callback_completed)
                                    |  no_answer / busy / failed, attempts left:
                                    |      pending again, due after retry_seconds · 2^(attempts-1)
                                    |  attempts used up: failed (callback_no_answer / callback_failed)
                                    |  declined: failed (callback_declined), never retried
    pending --cancel--> failed (callback_cancelled), e.g. the customer got through by calling again

No toll-fraud path: the only number this module ever hands out for dialling
is the one stored with a request, and only while that request is being
dialled (`number_to_dial`). A request is only stored for a plain domestic
number — digits, no international prefix — so a spoofed caller ID cannot
make the hotline call premium or foreign numbers. Nothing a caller dials
reaches `number_to_dial`.

Sans-IO: no clock (every call takes `now`), no database (the records are
frozen dataclasses the CRM table will mirror), no SIP.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from crm_bridge.records import RecordCallback

PENDING, DIALLING, COMPLETED, FAILED = "pending", "dialling", "completed", "failed"
OUTCOMES = ("answered", "no_answer", "busy", "declined", "failed")
# Closing reasons, as the CRM records them
COMPLETED_REASON = "callback_completed"
NO_ANSWER_REASON = "callback_no_answer"
FAILED_REASON = "callback_failed"
DECLINED_REASON = "callback_declined"
CANCELLED_REASON = "callback_cancelled"

# Domestic numbers only: 3-15 digits (E.164's maximum), not starting with the 00 international prefix.
_DIALLABLE = re.compile(r"^(?!00)[0-9]{3,15}$")


class CallbackError(ValueError):
    """A callback operation that is not allowed: unknown request, wrong state, a number that may not be dialled."""


def is_diallable(number: str) -> bool:
    """True when a callback to this caller number may be offered (domestic digits, not withheld)."""
    return bool(_DIALLABLE.match(number))


@dataclass(frozen=True, slots=True)
class CallbackRequest:
    id: int
    number: str  # the caller's own number, as the SIP From carried it
    tier: str
    service: str
    seat_group: str
    requested_at: datetime
    due_at: datetime  # not dialled before this
    status: str = PENDING
    attempts: int = 0
    result: str | None = None  # why it closed, once completed or failed
    call_ids: tuple[str, ...] = ()  # the call that asked, then each attempt's call

    @property
    def is_open(self) -> bool:
        return self.status in (PENDING, DIALLING)


class CallbackScheduler:
    """The open and closed callback requests, and the rules for dialling them."""

    def __init__(self, max_attempts: int = 3, retry_seconds: float = 300.0) -> None:
        if max_attempts < 1 or retry_seconds <= 0:
            raise ValueError("max_attempts must be at least 1 and retry_seconds positive")
        self.max_attempts = max_attempts
        self.retry = timedelta(seconds=retry_seconds)
        self._requests: dict[int, CallbackRequest] = {}
        self._next_id = 1

    def __iter__(self) -> Iterator[CallbackRequest]:
        return iter(self._requests.values())

    def restore_record(self, record: RecordCallback) -> CallbackRequest:
        """`restore` for a request as the CRM kept it (`crm_bridge.writer.open_callbacks`)."""
        return self.restore(CallbackRequest(
            id=0, number=record.number, tier=record.tier, service=record.service, seat_group=record.seat_group,
            requested_at=record.requested_at, due_at=record.due_at, status=record.status, attempts=record.attempts,
            result=record.result, call_ids=tuple(record.call_ids.split())))

    def restore(self, request: CallbackRequest) -> CallbackRequest:
        """Take back an open request the CRM kept across a restart (a new id; one cut off while dialled is pending)."""
        restored = replace(request, id=self._next_id, status=PENDING if request.is_open else request.status)
        self._next_id += 1
        self._requests[restored.id] = restored
        return restored

    def get(self, request_id: int) -> CallbackRequest:
        try:
            return self._requests[request_id]
        except KeyError:
            raise CallbackError(f"no callback request {request_id}") from None

    def open_for(self, number: str) -> CallbackRequest | None:
        return next((r for r in self._requests.values() if r.number == number and r.is_open), None)

    def request(
        self, number: str, *, tier: str, service: str, seat_group: str, call_id: str, now: datetime,
        due_at: datetime | None = None,
    ) -> CallbackRequest:
        """Store a request (or return the open one for this number: one callback per customer at a time)."""
        if not is_diallable(number):
            raise CallbackError(f"number {number!r} may not be called back (withheld, not digits, or international)")
        existing = self.open_for(number)
        if existing is not None:
            return existing
        request = CallbackRequest(
            id=self._next_id, number=number, tier=tier, service=service, seat_group=seat_group,
            requested_at=now, due_at=due_at or now, call_ids=(call_id,),
        )
        self._next_id += 1
        self._requests[request.id] = request
        return request

    def next_due(self, now: datetime, free_groups: Collection[str]) -> CallbackRequest | None:
        """The pending request to dial now: due, its seat group has a free agent; earliest due first."""
        due = [r for r in self._requests.values()
               if r.status == PENDING and r.due_at <= now and r.seat_group in free_groups]
        return min(due, key=lambda r: (r.due_at, r.requested_at, r.id), default=None)

    def next_deadline(self) -> datetime | None:
        """When the earliest pending request falls due (for the adapter's timer)."""
        return min((r.due_at for r in self._requests.values() if r.status == PENDING), default=None)

    def attempt_started(self, request_id: int, call_id: str, now: datetime) -> CallbackRequest:
        request = self.get(request_id)
        if request.status != PENDING:
            raise CallbackError(f"callback {request_id} is {request.status}, not pending")
        if request.due_at > now:
            raise CallbackError(f"callback {request_id} is not due until {request.due_at.isoformat()}")
        return self._store(replace(request, status=DIALLING, attempts=request.attempts + 1,
                                   call_ids=(*request.call_ids, call_id)))

    def number_to_dial(self, request_id: int) -> str:
        """The guard: the stored number of a request being dialled, and nothing else."""
        request = self.get(request_id)
        if request.status != DIALLING:
            raise CallbackError(f"callback {request_id} is {request.status}: nothing to dial")
        return request.number

    def attempt_result(self, request_id: int, outcome: str, now: datetime) -> CallbackRequest:
        """The dialled call's outcome: answered, no_answer, busy, declined or failed."""
        request = self.get(request_id)
        if request.status != DIALLING:
            raise CallbackError(f"callback {request_id} is {request.status}, not dialling")
        if outcome not in OUTCOMES:
            raise CallbackError(f"unknown outcome {outcome!r}; one of {', '.join(OUTCOMES)}")
        if outcome == "answered":
            return self._store(replace(request, status=COMPLETED, result=COMPLETED_REASON))
        if outcome == "declined":  # the customer refused the call: do not ring again
            return self._store(replace(request, status=FAILED, result=DECLINED_REASON))
        if request.attempts >= self.max_attempts:
            reason = FAILED_REASON if outcome == "failed" else NO_ANSWER_REASON
            return self._store(replace(request, status=FAILED, result=reason))
        backoff = self.retry * 2 ** (request.attempts - 1)  # 5, 10, 20 minutes ...
        return self._store(replace(request, status=PENDING, due_at=now + backoff))

    def cancel(self, request_id: int, reason: str = CANCELLED_REASON) -> CallbackRequest:
        request = self.get(request_id)
        if not request.is_open:
            return request
        return self._store(replace(request, status=FAILED, result=reason))

    def _store(self, request: CallbackRequest) -> CallbackRequest:
        self._requests[request.id] = request
        return request
