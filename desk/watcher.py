"""One watcher per desk process: reads what changed in the CRM once per tick and fans it out to the agents' pages.

Each open agent page holds an event stream (`/desk/events`, SSE) that needs
two things: the screen-pop when the IVR rings that agent's phone (an
`agent_rung` call event), and the agent's state about once a second. Polled
per page, the CRM's load grows with the number of pages (300 agents at 250 ms
are 1200 queries a second). Here one task asks once per tick for every
`agent_rung` event since the last one it saw, for all agents at once, and
puts each into the queues of the pages subscribed for that agent; once a
second it reads the agents' states once (`AgentStates.read`: the status file,
or one query with shared agents) and hands each page its agent's view. The
CRM sees the same queries whether one page is open or a thousand.

A page subscribes with the last event id it has shown (the id its HTML was
rendered after); events between that and the watcher's cursor are caught up
for it in the watcher's own next tick, so the order of pops holds. The watcher
runs while at least one page is subscribed and stops with the last.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import structlog
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from crm_bridge.models import CallEvent, aware
from desk.queries import AgentStates, AgentView

log = structlog.get_logger("desk.watcher")
T = TypeVar("T")
STATE_EVERY_S = 1.0
QUEUE_LIMIT = 100  # items a page has not taken yet; beyond this the page is too slow and loses old states


@dataclass(frozen=True, slots=True)
class Pop:
    """The IVR rang the agent's phone for call `call_id` (call event `event_id`)."""

    event_id: int
    call_id: int


@dataclass(frozen=True, slots=True)
class State:
    view: AgentView


@dataclass(eq=False)
class Subscription:
    """One open page of `agent`: what the watcher found for it, in order."""

    agent: str
    after: int  # the last event id the page has (pops after it are due)
    queue: asyncio.Queue[Pop | State] = field(default_factory=asyncio.Queue)
    caught_up: bool = False

    def put(self, item: Pop | State) -> None:
        if isinstance(item, Pop):
            if item.event_id <= self.after:
                return
            self.after = item.event_id
        elif self.queue.qsize() >= QUEUE_LIMIT:
            return  # a page that does not read gets no more states; its pops still queue
        self.queue.put_nowait(item)


def agent_rung_since(engine: Engine, after_id: int,
                     agent: str | None = None) -> list[tuple[int, int, str, datetime]]:
    """(event id, call id, agent, when) of each `agent_rung` event after `after_id`: of one agent or all."""
    query = select(CallEvent.id, CallEvent.call_id, CallEvent.detail, CallEvent.at).where(
        CallEvent.id > after_id, CallEvent.kind == "agent_rung")
    if agent is not None:
        query = query.where(CallEvent.detail == f"agent={agent}")
    with Session(engine) as s:
        return [(r[0], r[1], r[2].removeprefix("agent="), aware(r[3]))
                for r in s.execute(query.order_by(CallEvent.id)).all()]


def last_event_id(engine: Engine) -> int:
    with Session(engine) as s:
        return s.scalar(select(func.max(CallEvent.id))) or 0


class DeskWatcher:
    """See the module docstring. `tick_s`: how often the CRM is asked for new pops ([desk] poll_ms)."""

    def __init__(self, engine: Engine, states: AgentStates, tick_s: float) -> None:
        self.engine = engine
        self.states = states
        self.tick_s = tick_s
        self.subscriptions: set[Subscription] = set()
        self.cursor: int | None = None  # the last event id every page has been given
        self._task: asyncio.Task[None] | None = None
        self._next_state = 0.0

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(partial(fn, *args))

    def subscribe(self, agent: str, after: int) -> Subscription:
        subscription = Subscription(agent, after)
        self.subscriptions.add(subscription)
        self._next_state = 0.0  # a new page gets its agent's state at the next tick
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.subscriptions.discard(subscription)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.subscriptions:
                try:
                    await self.tick(loop.time())
                except Exception as exc:  # the CRM away: pages keep their stream, the next tick retries
                    log.warning("desk_watch_failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                await asyncio.sleep(self.tick_s)
        finally:
            self._task = None
            self.cursor = None  # with nobody watching, the next page starts from its own event id

    async def tick(self, now: float) -> None:
        """One round: catch new pages up, one query for new pops, the states once a second."""
        if self.cursor is None:
            self.cursor = await self._db(last_event_id, self.engine)
        cursor = self.cursor
        for subscription in [s for s in self.subscriptions if not s.caught_up]:
            subscription.caught_up = True
            if subscription.after < cursor:  # rung between its page's rendering and now: once, for that page
                for event_id, call_id, _, _ in await self._db(agent_rung_since, self.engine, subscription.after,
                                                              subscription.agent):
                    if event_id <= cursor:
                        subscription.put(Pop(event_id, call_id))
        for event_id, call_id, agent, at in await self._db(agent_rung_since, self.engine, cursor):
            self.cursor = max(self.cursor, event_id)
            self.states.rung(agent, at)
            self._next_state = 0.0  # the card says ringing with the pop, not up to a second later
            for subscription in self.subscriptions:
                if subscription.agent == agent:
                    subscription.put(Pop(event_id, call_id))
        if now >= self._next_state:
            self._next_state = now + STATE_EVERY_S
            views = await self._db(self.states.read)
            for subscription in self.subscriptions:
                view = views.get(subscription.agent)
                if view is not None:
                    subscription.put(State(view))
