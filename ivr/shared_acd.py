"""Agents shared by several IVR workers: their state lives in the CRM database.

Behind a SIP load balancer each worker has its own callers, but the agents
are everyone's. With `[cluster] shared_agents = yes` the `Acd` keeps this
worker's queue in memory as before, and everything about agents goes through
the `agents` table (see `crm_bridge.models.Agent`):

- An offer is an atomic claim: one `UPDATE … WHERE number = (SELECT …
  FOR UPDATE SKIP LOCKED) AND state = 'available' RETURNING`, so two workers
  never ring the same agent. On SQLite, writes are serialised and the single
  statement is atomic by itself.
- Callers waiting on any worker are listed in `acd_queue`; a worker does not
  claim an agent of a group while an older caller of that group waits on
  another live worker, so the oldest caller across workers is served first.
- Each worker beats in `acd_workers` every second. Agents held by a worker
  that stopped beating (killed, cut off) are freed, and its queue entries
  dropped; wrap-ups and registrations that ran out are ended by whoever sees
  them first.

All database work runs on one thread, in the order it was asked for, so the
event loop never waits for the database and a later change never overtakes
an earlier one. A change that fails because the database is away is retried
until it goes through; a claim that fails is simply tried again on the next
tick, the callers staying queued meanwhile.

`seats` is this worker's copy of the agents table, refreshed every second
and patched by its own changes: it feeds the log, the status file, metrics
and feature codes, never a decision.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import ColumnElement, Connection, Engine, case, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from tenacity import Retrying, retry_if_exception, stop_when_event_set, wait_exponential

from crm_bridge.models import AcdWaiting, AcdWorker, Agent, table_of
from ivr.acd import Acd, AgentState, Offer, Seat, Waiting
from ivr.config import AgentConfig, QueueConfig
from ivr.registrar import join_path, split_path

log = structlog.get_logger("ivr.shared_acd")

agents = table_of(Agent)
workers = table_of(AcdWorker)
waiting_table = table_of(AcdWaiting)

AVAILABLE, RINGING, TALKING, WRAP_UP, PAUSED, LOGGED_OUT = (
    s.value for s in (AgentState.AVAILABLE, AgentState.RINGING, AgentState.TALKING, AgentState.WRAP_UP,
                      AgentState.PAUSED, AgentState.LOGGED_OUT)
)
# free an agent: available if their phone is registered, else logged out
FREED = case((agents.c.contact_host.is_(None), LOGGED_OUT), else_=AVAILABLE)


# a claimed agent's row: number, seat group, contact host and port, contact URI, Path
ClaimedSeat = tuple[str, str, str, int, str | None, str | None]


def _offerable(resting: frozenset[str]) -> list[ColumnElement[bool]]:
    """The agents a call may be offered to: available, registered, and not resting on this worker."""
    where = [agents.c.state == AVAILABLE, agents.c.contact_host.is_not(None)]
    if resting:
        where.append(agents.c.number.not_in(sorted(resting)))
    return where


class SharedAcd(Acd):
    shared = True

    def __init__(self, settings: QueueConfig, groups: tuple[str, ...], db: Engine, worker: str, *,
                 worker_timeout_s: float = 10.0) -> None:
        super().__init__(settings, {}, {g: [] for g in groups})
        self.db = db
        self.worker = worker
        self.worker_timeout = timedelta(seconds=worker_timeout_s)
        self._offered: dict[str, str] = {}  # agent -> the call_id this worker rang them for
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="shared-acd")
        self._closing = threading.Event()
        self.pending = 0  # changes not yet in the database
        self.claims_failed = 0

    # --- start and stop ---------------------------------------------------------------

    def start(self, agents_config: tuple[AgentConfig, ...], at: datetime) -> None:
        """Blocking, before the first call: list the agents, take over this worker's leftovers."""
        self.seats = {a.number: Seat(a.number, a.seat_group) for a in agents_config}
        self._run(self._start_db, agents_config, at)
        for agent in agents_config:
            if agent.host is not None:  # a static contact is always logged in
                self.login(agent.number, agent.host, at)
        self._run(lambda conn: None)  # wait for those logins
        self.apply_snapshot(self._run(self._snapshot_db, at))

    def _start_db(self, conn: Connection, agents_config: tuple[AgentConfig, ...], at: datetime) -> None:
        known = set(conn.scalars(select(agents.c.number)))
        for agent in agents_config:
            if agent.number not in known:  # sync_seat_groups adds them in the CRM; this covers a race with it
                conn.execute(insert(agents).values(number=agent.number, name=agent.name, seat_group=agent.seat_group))
        # This worker restarted: the calls it held are gone.
        self._free_calls_of(conn, [self.worker], at)
        conn.execute(delete(workers).where(workers.c.worker == self.worker))
        conn.execute(insert(workers).values(worker=self.worker, started_at=at, seen_at=at))

    def close(self, at: datetime, timeout_s: float = 10.0) -> None:
        """Blocking, at shut-down: wait for pending changes, leave the worker list.

        If the database is away, give up after `timeout_s`: the other workers
        free this worker's agents once its heartbeat is `worker_timeout` old.
        """
        leaving = self._thread.submit(self._transaction, self._leave_db, (at,))
        try:
            leaving.result(timeout_s)
        except (SQLAlchemyError, TimeoutError) as exc:
            self._closing.set()  # stop retrying queued changes
            log.warning("shared_acd_left_uncleanly", pending=self.pending,
                        error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                        note="the other workers free this worker's agents after worker_timeout_seconds")
        self._thread.shutdown(wait=False, cancel_futures=True)

    def _leave_db(self, conn: Connection, at: datetime) -> None:
        self._free_calls_of(conn, [self.worker], at)
        conn.execute(delete(workers).where(workers.c.worker == self.worker))

    @staticmethod
    def _free_calls_of(conn: Connection, names: Any, at: datetime) -> None:
        """Free the agents held by the workers `names` (a list, or a select of names), drop their queue entries."""
        theirs = agents.c.worker.in_(names)
        conn.execute(update(agents).where(theirs, agents.c.state.in_((RINGING, TALKING)))
                     .values(state=FREED, call_id=None, idle_since=at, state_changed_at=at))
        conn.execute(update(agents).where(theirs).values(worker=None))
        conn.execute(delete(waiting_table).where(waiting_table.c.worker.in_(names)))

    # --- the database thread ------------------------------------------------------------

    def _run(self, op: Callable[..., Any], *args: Any) -> Any:
        """Run `op(conn, *args)` in one transaction on the database thread and wait for it."""
        return self._thread.submit(self._transaction, op, args).result()

    def _transaction(self, op: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        with self.db.begin() as conn:
            return op(conn, *args)

    def _change(self, op: Callable[..., Any], *args: Any) -> None:
        """Queue a change; retried while the database is away, in order with every other change."""
        self.pending += 1
        future = self._thread.submit(self._retrying, op, args)
        future.add_done_callback(self._changed)

    def _changed(self, _future: Future[None]) -> None:
        self.pending -= 1

    def _retrying(self, op: Callable[..., Any], args: tuple[Any, ...]) -> None:
        retrying = Retrying(
            retry=retry_if_exception(
                lambda exc: isinstance(exc, SQLAlchemyError) and not isinstance(exc, IntegrityError)),
            wait=wait_exponential(multiplier=0.2, max=5),
            stop=stop_when_event_set(self._closing),
            before_sleep=lambda state: log.warning(
                "shared_acd_retry", change=op.__name__, attempt=state.attempt_number,
                error=str(state.outcome.exception()).splitlines()[0] if state.outcome else "",
            ),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._transaction(op, args)
        except Exception as exc:  # a bug or a constraint: say so, keep the thread alive
            log.error("shared_acd_change_failed", change=op.__name__, error=f"{type(exc).__name__}: {exc}")

    # --- agents -------------------------------------------------------------------------

    def login(self, number: str, contact: tuple[str, int], at: datetime, until: datetime | None = None,
              uri: str | None = None, path: tuple[str, ...] = ()) -> None:
        seat = self._seat(number)
        seat.contact, seat.contact_uri, seat.path = contact, uri, path
        if seat.state is AgentState.LOGGED_OUT:
            seat.state, seat.idle_since = AgentState.AVAILABLE, at
        self._change(self._login_db, number, contact, at, until, uri, path)

    @staticmethod
    def _login_db(conn: Connection, number: str, contact: tuple[str, int], at: datetime, until: datetime | None,
                  uri: str | None, path: tuple[str, ...] = ()) -> None:
        logged_out = agents.c.state == LOGGED_OUT
        conn.execute(
            update(agents).where(agents.c.number == number).values(
                contact_host=contact[0], contact_port=contact[1], contact_uri=uri, registered_until=until,
                contact_path=join_path(path),
                state=case((logged_out, AVAILABLE), else_=agents.c.state),
                idle_since=case((logged_out, at), else_=agents.c.idle_since),
                state_changed_at=case((logged_out, at), else_=agents.c.state_changed_at),
            )
        )

    def logout(self, number: str) -> None:
        self._seat(number)
        super().logout(number)
        self._change(self._logout_db, number)

    @staticmethod
    def _logout_db(conn: Connection, number: str) -> None:
        idle = agents.c.state.in_((AVAILABLE, PAUSED, WRAP_UP))
        conn.execute(
            update(agents).where(agents.c.number == number).values(
                contact_host=None, contact_port=None, contact_uri=None, contact_path=None, registered_until=None,
                state=case((idle, LOGGED_OUT), else_=agents.c.state),  # ringing or talking: finish that call
            )
        )

    def pause(self, number: str, paused: bool, at: datetime) -> None:
        self._seat(number)
        super().pause(number, paused, at)
        self._change(self._pause_db, number, paused, at)

    async def set_paused(self, number: str, paused: bool, at: datetime) -> str:
        """Pause or resume now, after every change queued before; returns the agent's state in the database."""
        self._seat(number)
        super().pause(number, paused, at)
        loop = asyncio.get_running_loop()
        state: str = await loop.run_in_executor(self._thread, self._transaction, self._paused_state_db,
                                                (number, paused, at))
        self._seat(number).state = AgentState(state)
        return state

    def _paused_state_db(self, conn: Connection, number: str, paused: bool, at: datetime) -> str:
        self._pause_db(conn, number, paused, at)
        state: str = conn.execute(select(agents.c.state).where(agents.c.number == number)).scalar_one()
        return state

    @staticmethod
    def _pause_db(conn: Connection, number: str, paused: bool, at: datetime) -> None:
        row = agents.c.number == number
        if paused:
            conn.execute(update(agents).where(row, agents.c.state == AVAILABLE)
                         .values(state=PAUSED, state_changed_at=at))
        else:
            conn.execute(update(agents).where(row, agents.c.state == PAUSED)
                         .values(state=AVAILABLE, idle_since=at, state_changed_at=at))

    def answered(self, number: str) -> None:
        self._seat(number).state = AgentState.TALKING
        call_id = self._offered.get(number)
        self._change(self._set_db, number, call_id, {"state": TALKING})

    @staticmethod
    def _set_db(conn: Connection, number: str, call_id: str | None, values: dict[str, Any]) -> None:
        conn.execute(update(agents).where(agents.c.number == number, agents.c.call_id == call_id).values(**values))

    def no_answer(self, number: str, at: datetime) -> Waiting | None:
        call_id = self._offered.pop(number, None)
        waiting = self._ringing.pop(call_id, None) if call_id else None
        seat = self._seat(number)
        if seat.state is AgentState.RINGING:
            seat.state = AgentState.AVAILABLE if seat.contact else AgentState.LOGGED_OUT
        seat.call_id, seat.idle_since = None, at
        self._change(self._free_db, number, call_id, at)
        if waiting is not None:
            self.queues[waiting.seat_group].insert(0, waiting)
            self._change(self._join_db, waiting, self.worker)
        return waiting

    @staticmethod
    def _free_db(conn: Connection, number: str, call_id: str | None, at: datetime) -> None:
        conn.execute(
            update(agents).where(agents.c.number == number, agents.c.call_id == call_id)
            .values(state=FREED, call_id=None, worker=None, idle_since=at, state_changed_at=at)
        )

    def released(self, number: str, at: datetime) -> float:
        call_id = self._offered.pop(number, None)
        if call_id:
            self._ringing.pop(call_id, None)
        seat = self._seat(number)
        seat.call_id = None
        wrap_up = self.settings.wrap_up_seconds
        seat.state = AgentState.WRAP_UP if seat.contact else AgentState.LOGGED_OUT
        self._change(self._released_db, number, call_id, at, at + timedelta(seconds=wrap_up))
        return wrap_up if seat.contact else 0.0

    @staticmethod
    def _released_db(conn: Connection, number: str, call_id: str | None, at: datetime, until: datetime) -> None:
        conn.execute(
            update(agents).where(agents.c.number == number, agents.c.call_id == call_id).values(
                state=case((agents.c.contact_host.is_(None), LOGGED_OUT), else_=WRAP_UP),
                call_id=None, worker=None, wrap_up_until=until, state_changed_at=at,
            )
        )

    def wrap_up_done(self, number: str, at: datetime) -> None:
        self._seat(number)
        super().wrap_up_done(number, at)
        self._change(self._wrap_up_done_db, number, at)

    @staticmethod
    def _wrap_up_done_db(conn: Connection, number: str, at: datetime) -> None:
        conn.execute(update(agents).where(agents.c.number == number, agents.c.state == WRAP_UP)
                     .values(state=AVAILABLE, idle_since=at, wrap_up_until=None, state_changed_at=at))

    def _seat(self, number: str) -> Seat:
        return self.seats.setdefault(number, Seat(number, ""))

    # --- callers ------------------------------------------------------------------------

    def join(self, call_id: str, seat_group: str, service: str, at: datetime) -> None:
        super().join(call_id, seat_group, service, at)
        self._change(self._join_db, self.queues[seat_group][-1], self.worker)

    @staticmethod
    def _join_db(conn: Connection, waiting: Waiting, worker: str) -> None:
        conn.execute(delete(waiting_table).where(waiting_table.c.call_id == waiting.call_id))
        conn.execute(insert(waiting_table).values(call_id=waiting.call_id, worker=worker, seat_group=waiting.seat_group,
                                                  service=waiting.service, joined_at=waiting.joined_at))

    def leave(self, call_id: str) -> str | None:
        for queue in self.queues.values():
            for index, waiting in enumerate(queue):
                if waiting.call_id == call_id:
                    del queue[index]
                    self._change(self._unqueue_db, call_id)
                    return None
        if self._ringing.pop(call_id, None) is None:
            return None
        agent = next((a for a, c in self._offered.items() if c == call_id), None)
        if agent is not None:
            del self._offered[agent]
            seat = self._seat(agent)
            seat.call_id, seat.state = None, AgentState.AVAILABLE if seat.contact else AgentState.LOGGED_OUT
            self._change(self._free_db, agent, call_id, datetime.now(UTC))
        return agent

    @staticmethod
    def _unqueue_db(conn: Connection, call_id: str) -> None:
        conn.execute(delete(waiting_table).where(waiting_table.c.call_id == call_id))

    def assign(self, at: datetime, resting: frozenset[str] = frozenset()) -> list[Offer]:
        raise TypeError("shared agents are claimed with `await claim(at)`")

    async def claim(self, at: datetime, resting: frozenset[str] = frozenset()) -> list[Offer]:
        """Claim agents for this worker's waiting callers, oldest first, none of `resting` (agents this worker
        leaves out for now); the agents are now ringing."""
        wanted = sorted((w for q in self.queues.values() for w in q), key=lambda w: w.joined_at)
        if not wanted:
            return []
        asks = [(w.call_id, w.seat_group, w.joined_at, self._groups_for(w, at)) for w in wanted]
        loop = asyncio.get_running_loop()
        try:
            claimed = await loop.run_in_executor(self._thread, self._claim_db, asks, at, resting)
        except SQLAlchemyError as exc:
            self.claims_failed += 1
            log.warning("shared_acd_claim_failed", waiting=len(asks), error=str(exc).splitlines()[0])
            return []
        offers = []
        by_call = {w.call_id: w for w in wanted}
        for call_id, (number, group, host, port, uri, path) in claimed:
            waiting = by_call[call_id]
            queue = self.queues[waiting.seat_group]
            if waiting not in queue:  # hung up while the claim ran: give the agent back
                self._change(self._free_db, number, call_id, at)
                continue
            queue.remove(waiting)
            self._ringing[call_id] = waiting
            self._offered[number] = call_id
            seat = self._seat(number)
            seat.seat_group, seat.state, seat.call_id, seat.contact = group, AgentState.RINGING, call_id, (host, port)
            seat.contact_uri, seat.path = uri, split_path(path)
            offers.append(Offer(call_id, number, group, (host, port), uri, seat.path))
        return offers

    def _claim_db(self, asks: list[tuple[str, str, datetime, list[str]]], at: datetime,
                  resting: frozenset[str]) -> list[tuple[str, ClaimedSeat]]:
        """One short transaction per claim, so a claim holds its row lock only for itself."""
        with self.db.begin() as conn:
            free = dict(conn.execute(
                select(agents.c.seat_group, func.count()).where(*_offerable(resting)).group_by(agents.c.seat_group)
            ).tuples().all())
        claimed: list[tuple[str, ClaimedSeat]] = []
        alive_since = at - self.worker_timeout
        for call_id, home, joined, groups in asks:
            if not any(free.get(g, 0) > 0 for g in groups):
                continue
            with self.db.begin() as conn:
                if free.get(home, 0) > 0 and self._older_elsewhere(conn, home, joined, alive_since):
                    groups = [g for g in groups if g != home]  # another worker's older caller goes first
                for group in groups:
                    if free.get(group, 0) <= 0:
                        continue
                    row = conn.execute(self._claim_statement(conn, group, call_id, at, resting)).first()
                    if row is None:
                        free[group] = 0  # taken meanwhile by another worker
                        continue
                    free[group] -= 1
                    conn.execute(delete(waiting_table).where(waiting_table.c.call_id == call_id))
                    claimed.append((call_id, (row.number, row.seat_group, row.contact_host, row.contact_port,
                                              row.contact_uri, row.contact_path)))
                    break
        return claimed

    def _older_elsewhere(self, conn: Connection, group: str, joined: datetime, alive_since: datetime) -> bool:
        live = select(workers.c.worker).where(workers.c.seen_at >= alive_since)
        return conn.execute(
            select(waiting_table.c.call_id).where(
                waiting_table.c.seat_group == group, waiting_table.c.joined_at < joined,
                waiting_table.c.worker != self.worker, waiting_table.c.worker.in_(live),
            ).limit(1)
        ).first() is not None

    def _claim_statement(self, conn: Connection, group: str, call_id: str, at: datetime,  # type: ignore[no-untyped-def]
                         resting: frozenset[str]):
        longest_idle = (
            select(agents.c.number)
            .where(agents.c.seat_group == group, *_offerable(resting))
            .order_by(agents.c.idle_since, agents.c.number).limit(1)
            .with_for_update(skip_locked=True)  # PostgreSQL: a row another worker is claiming is passed over
            .scalar_subquery()
        )
        return (
            update(agents).where(agents.c.number == longest_idle, agents.c.state == AVAILABLE)
            .values(state=RINGING, call_id=call_id, worker=self.worker, state_changed_at=at)
            .returning(agents.c.number, agents.c.seat_group, agents.c.contact_host, agents.c.contact_port,
                       agents.c.contact_uri, agents.c.contact_path)
        )

    # --- every second -------------------------------------------------------------------

    async def refresh(self, at: datetime) -> None:
        """Beat, tidy what stopped workers left, and refresh `seats` from the table."""
        loop = asyncio.get_running_loop()
        try:
            rows = await loop.run_in_executor(self._thread, self._transaction, self._snapshot_db, (at,))
        except SQLAlchemyError as exc:
            log.warning("shared_acd_refresh_failed", error=str(exc).splitlines()[0])
            return
        self.apply_snapshot(rows)

    def _snapshot_db(self, conn: Connection, at: datetime) -> list[Any]:
        beat = conn.execute(update(workers).where(workers.c.worker == self.worker).values(seen_at=at)).rowcount
        if not beat:  # removed as silent by another worker (a long pause): join again
            conn.execute(insert(workers).values(worker=self.worker, started_at=at, seen_at=at))
        silent = workers.c.seen_at < at - self.worker_timeout
        if conn.execute(select(func.count()).select_from(workers).where(silent)).scalar():
            for worker in conn.scalars(select(workers.c.worker).where(silent)).all():
                log.warning("worker_presumed_gone", worker=worker, agents_freed=True)
            self._free_calls_of(conn, select(workers.c.worker).where(silent), at)
            conn.execute(delete(workers).where(silent))
        conn.execute(update(agents).where(agents.c.state == WRAP_UP, agents.c.wrap_up_until < at - timedelta(seconds=1))
                     .values(state=AVAILABLE, idle_since=at, wrap_up_until=None, state_changed_at=at))
        ran_out = agents.c.registered_until < at
        conn.execute(
            update(agents).where(ran_out).values(
                contact_host=None, contact_port=None, contact_uri=None, contact_path=None, registered_until=None,
                state=case((agents.c.state.in_((AVAILABLE, PAUSED, WRAP_UP)), LOGGED_OUT), else_=agents.c.state),
            )
        )
        return list(conn.execute(select(agents.c.number, agents.c.seat_group, agents.c.state, agents.c.contact_host,
                                        agents.c.contact_port, agents.c.contact_uri, agents.c.contact_path,
                                        agents.c.call_id,
                                        agents.c.idle_since)))

    def apply_snapshot(self, rows: Iterable[Any]) -> None:
        for row in rows:
            seat = self._seat(row.number)
            seat.seat_group = row.seat_group
            seat.state = AgentState(row.state)
            seat.contact = (row.contact_host, row.contact_port) if row.contact_host else None
            seat.contact_uri = row.contact_uri
            seat.path = split_path(row.contact_path)
            seat.call_id = row.call_id
            seat.idle_since = row.idle_since
