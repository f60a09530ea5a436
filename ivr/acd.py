"""Automatic call distribution: one queue per seat group, agents and their states.

Sans-IO like the call flow: methods take the current time and return
decisions; the engine adapter dials agents and reports back. Rules:

- Each seat group has one FIFO queue; a caller joins the queue of the group
  that serves their tier ([001]: senior -> 高级坐席组 …).
- An offered call goes to the longest-idle available agent of its group.
- A ringing agent who does not answer within the ring time is skipped: the
  call goes back to the head of its queue and the agent to the back of the
  idle order, so the next agent is tried.
- Overflow: a caller who has waited `overflow_after_seconds` may also be
  offered to the configured next group (senior > middle > junior, never
  upward), except complaints unless `complaints_overflow` allows it.
- After a call an agent is in wrap-up for `wrap_up_seconds`, then available.
- A caller transferred to a named agent waits in that agent's own queue
  (`agent_queue("802")`): offered to that agent only, once available.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ivr.config import AgentConfig, QueueConfig

AGENT_QUEUE = "agent:"  # prefix of a queue of one agent's own (a transfer to that agent by name)


def agent_queue(number: str) -> str:
    """The queue of callers transferred to agent `number` by name."""
    return AGENT_QUEUE + number


class AgentState(enum.Enum):
    LOGGED_OUT = "logged_out"
    AVAILABLE = "available"
    RINGING = "ringing"
    TALKING = "talking"
    WRAP_UP = "wrap_up"
    PAUSED = "paused"


class AcdError(Exception):
    """An agent state change that is not allowed (e.g. answering while logged out)."""


@dataclass
class Seat:
    number: str
    seat_group: str
    state: AgentState = AgentState.LOGGED_OUT
    idle_since: datetime | None = None
    contact: tuple[str, int] | None = None
    contact_uri: str | None = None  # the Contact URI the phone registered: the Request-URI to ring it at
    path: tuple[str, ...] = ()  # RFC 3327 Path it registered through: the Route set to ring it with
    call_id: str | None = None
    wrap_up_until: datetime | None = None


@dataclass
class Waiting:
    call_id: str
    seat_group: str
    service: str
    joined_at: datetime


@dataclass(frozen=True, slots=True)
class Offer:
    """Ring `agent` for `call_id` (the agent is now RINGING)."""

    call_id: str
    agent: str
    seat_group: str
    contact: tuple[str, int]
    contact_uri: str | None = None
    path: tuple[str, ...] = ()  # the pre-loaded Route set (the Path the phone registered through)


@dataclass
class Acd:
    settings: QueueConfig
    seats: dict[str, Seat] = field(default_factory=dict)
    queues: dict[str, list[Waiting]] = field(default_factory=dict)

    shared = False  # see ivr.shared_acd: agents in the database, claimed by several workers

    def __post_init__(self) -> None:
        self._ringing: dict[str, Waiting] = {}  # call_id -> the caller an agent is being rung for

    @classmethod
    def from_agents(cls, agents: tuple[AgentConfig, ...], settings: QueueConfig, groups: tuple[str, ...]) -> Acd:
        return cls(settings, {a.number: Seat(a.number, a.seat_group) for a in agents}, {g: [] for g in groups})

    # --- agents -------------------------------------------------------------------

    def login(self, number: str, contact: tuple[str, int], at: datetime, until: datetime | None = None,
              uri: str | None = None, path: tuple[str, ...] = ()) -> None:
        """The agent's phone is reachable at `contact` (until `until`, when it registered, as `uri`, through `path`)."""
        seat = self.seats[number]
        seat.contact, seat.contact_uri, seat.path = contact, uri, path
        if seat.state is AgentState.LOGGED_OUT:
            seat.state, seat.idle_since = AgentState.AVAILABLE, at

    def logout(self, number: str) -> None:
        seat = self.seats[number]
        seat.contact = seat.contact_uri = None
        seat.path = ()
        if seat.state in (AgentState.AVAILABLE, AgentState.PAUSED, AgentState.WRAP_UP):
            seat.state = AgentState.LOGGED_OUT
        # a ringing or talking agent finishes that call; released() logs them out then

    def pause(self, number: str, paused: bool, at: datetime) -> None:
        seat = self.seats[number]
        if paused and seat.state is AgentState.AVAILABLE:
            seat.state = AgentState.PAUSED
        elif not paused and seat.state is AgentState.PAUSED:
            seat.state, seat.idle_since = AgentState.AVAILABLE, at

    def answered(self, number: str) -> None:
        seat = self.seats[number]
        if seat.state is not AgentState.RINGING:
            raise AcdError(f"agent {number} answered while {seat.state.value}")
        seat.state = AgentState.TALKING

    def no_answer(self, number: str, at: datetime) -> Waiting | None:
        """The agent did not answer: back of the idle order; the call back to the head of its queue."""
        seat = self.seats[number]
        waiting = self._ringing.pop(seat.call_id or "", None)
        seat.call_id = None
        if seat.state is AgentState.RINGING:
            seat.state = AgentState.AVAILABLE if seat.contact else AgentState.LOGGED_OUT
            seat.idle_since = at
        if waiting is not None:
            self.queues[waiting.seat_group].insert(0, waiting)
        return waiting

    def released(self, number: str, at: datetime) -> float:
        """The agent's call ended: wrap-up begins. Returns the wrap-up seconds."""
        seat = self.seats[number]
        self._ringing.pop(seat.call_id or "", None)
        seat.call_id = None
        if seat.contact is None:
            seat.state = AgentState.LOGGED_OUT
            return 0.0
        seat.state = AgentState.WRAP_UP
        seat.wrap_up_until = at + timedelta(seconds=self.settings.wrap_up_seconds)
        return self.settings.wrap_up_seconds

    def wrap_up_done(self, number: str, at: datetime) -> None:
        seat = self.seats[number]
        if seat.state is AgentState.WRAP_UP:
            seat.state, seat.idle_since, seat.wrap_up_until = AgentState.AVAILABLE, at, None

    # --- callers --------------------------------------------------------------------

    def join(self, call_id: str, seat_group: str, service: str, at: datetime) -> None:
        self.queues.setdefault(seat_group, []).append(Waiting(call_id, seat_group, service, at))

    def leave(self, call_id: str) -> str | None:
        """Remove a caller who hung up; returns the agent being rung for them, if any."""
        for queue in self.queues.values():
            for index, waiting in enumerate(queue):
                if waiting.call_id == call_id:
                    del queue[index]
                    return None
        if call_id in self._ringing:
            self._ringing.pop(call_id)
            for seat in self.seats.values():
                if seat.call_id == call_id:
                    seat.call_id = None
                    seat.state = AgentState.AVAILABLE if seat.contact else AgentState.LOGGED_OUT
                    return seat.number
        return None

    def position(self, call_id: str) -> int | None:
        """1 for the caller at the head of their queue; None if not waiting."""
        for queue in self.queues.values():
            for index, waiting in enumerate(queue):
                if waiting.call_id == call_id:
                    return index + 1
        return None

    def waiting(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def assign(self, at: datetime, resting: frozenset[str] = frozenset()) -> list[Offer]:
        """Match waiting callers, oldest first, to the longest-idle available agents not `resting`."""
        offers: list[Offer] = []
        everyone = sorted((w for q in self.queues.values() for w in q), key=lambda w: w.joined_at)
        for waiting in everyone:
            seat = self._pick(waiting, at, resting)
            if seat is None or seat.contact is None:
                continue
            self.queues[waiting.seat_group].remove(waiting)
            seat.state, seat.call_id = AgentState.RINGING, waiting.call_id
            self._ringing[waiting.call_id] = waiting
            offers.append(Offer(waiting.call_id, seat.number, seat.seat_group, seat.contact, seat.contact_uri,
                                seat.path))
        return offers

    def _groups_for(self, waiting: Waiting, at: datetime) -> list[str]:
        groups = [waiting.seat_group]
        s = self.settings
        may_overflow = s.overflow_after_seconds > 0 and (waiting.service != "complaint" or s.complaints_overflow)
        if may_overflow and at - waiting.joined_at >= timedelta(seconds=s.overflow_after_seconds):
            group = waiting.seat_group
            while group in s.overflow and s.overflow[group] not in groups:
                group = s.overflow[group]
                groups.append(group)
        return groups

    def _pick(self, waiting: Waiting, at: datetime, resting: frozenset[str]) -> Seat | None:
        if waiting.seat_group.startswith(AGENT_QUEUE):  # that agent or nobody: no overflow
            seat = self.seats.get(waiting.seat_group.removeprefix(AGENT_QUEUE))
            free = seat is not None and seat.state is AgentState.AVAILABLE and seat.number not in resting
            return seat if free else None
        for group in self._groups_for(waiting, at):
            idle = [s for s in self.seats.values()
                    if s.seat_group == group and s.state is AgentState.AVAILABLE and s.number not in resting]
            if idle:
                return min(idle, key=lambda s: (s.idle_since or at, s.number))
        return None

    # --- the AgentPool surface (ivr.agents): the same calls in one process and in a cluster

    def start(self, agents: tuple[AgentConfig, ...], at: datetime) -> None:
        """Before the first call: a static contact (host = … in sip.conf) is always logged in."""
        for agent in agents:
            if agent.host is not None:
                self.login(agent.number, agent.host, at)

    def close(self, at: datetime) -> None:
        """At shut-down; nothing to hand back in one process."""

    async def refresh(self, at: datetime) -> None:
        """Once a second; in one process the seats are already the truth."""

    async def claim(self, at: datetime, resting: frozenset[str] = frozenset()) -> list[Offer]:
        """Agents for the waiting callers, oldest first, none of `resting`; the agents are now ringing."""
        return self.assign(at, resting)

    async def set_paused(self, number: str, paused: bool, at: datetime) -> str:
        """Pause or resume; returns the agent's state afterwards."""
        self.pause(number, paused, at)
        return self.seats[number].state.value

    def describe(self) -> list[str]:
        """One line per agent, for the CLI and the log."""
        return [
            f"{s.number} {s.seat_group} {s.state.value}" + (f" call={s.call_id}" if s.call_id else "")
            for s in sorted(self.seats.values(), key=lambda s: (s.seat_group, s.number))
        ]
