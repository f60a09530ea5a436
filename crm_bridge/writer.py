"""The CRM write path: journaled locally, then applied by a writer thread.

The call flow's `RecordCall` / `RecordEvent` / … actions are handed to
`CrmWriter.submit`, which appends the record to the local outbox (one
write(2), see `crm_bridge.outbox`) and to an in-memory queue — the event loop
(and so the RTP path) never waits on the database. A writer thread takes
everything queued, collapses the row updates of one call to the latest, and
applies the batch in one transaction: rows by upsert on `sip_call_id`,
events by insert, and the outbox checkpoint. If the database fails, the batch
is kept and retried with exponential backoff while new records keep queueing
behind it; if the process dies instead, `recover()` at the next start
replays the journal past the checkpoint.

With a webhook configured, a call's last record (its "ended" step) also puts
a delivery in `webhook_deliveries` in that same transaction, for
`crm_bridge.webhook` to push.

This is `[database] writer = thread`. The default, `writer = process`, is
`crm_bridge.writer_process.CrmWriterProcess`: the same `submit` and journal,
and this class's batches applied by a child process that tails the journal,
so none of it takes the event loop's GIL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import structlog
from sqlalchemy import Connection, Engine, Table, TextClause, bindparam, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_when_event_set, wait_exponential

from crm_bridge.models import (
    AgentStateChange,
    Call,
    Callback,
    CallEvent,
    MonitoringModeChange,
    MonitoringSession,
    OutboxCheckpoint,
    Recording,
    RecordingPause,
    Survey,
    SurveyAnswer,
    SurveyRun,
    Ticket,
    WebhookDelivery,
    table_of,
)
from crm_bridge.outbox import Outbox, Record, shallow_fields
from crm_bridge.records import (
    CallRecord,
    OpenTicket,
    RecordAgentState,
    RecordCall,
    RecordCallback,
    RecordCharacteristics,
    RecordEvent,
    RecordMonitoring,
    RecordMonitoringMode,
    RecordRecording,
    RecordRecordingPause,
    RecordSurvey,
    RecordSurveyAnswer,
    RecordSurveyRun,
)

log = structlog.get_logger(__name__)
_STOP = object()
_CALLS = table_of(Call)
_CALLBACKS = table_of(Callback)
_CALL_EVENTS = table_of(CallEvent)
_SURVEYS = table_of(Survey)
_TICKETS = table_of(Ticket)
_SURVEY_ANSWERS = table_of(SurveyAnswer)
_SURVEY_RUNS = table_of(SurveyRun)
_OUTBOX_CHECKPOINTS = table_of(OutboxCheckpoint)
_AGENT_STATES = table_of(AgentStateChange)
_MONITORING = table_of(MonitoringSession)
_MONITORING_MODES = table_of(MonitoringModeChange)
_RECORDINGS = table_of(Recording)
_RECORDING_PAUSES = table_of(RecordingPause)


def _utc(moment: datetime | None) -> datetime | None:
    return moment.astimezone(UTC) if moment is not None else None


class CrmWriter:
    """Applies call records to the CRM database off the event loop, in batches."""

    def __init__(
        self,
        engine: Engine,
        outbox: Outbox | None = None,
        *,
        batch_max: int = 1000,
        linger: float = 0.05,
        webhook: bool = False,
        on_deliveries: Callable[[], None] | None = None,
        worker: str | None = None,
        followup_on_survey: bool = False,
    ) -> None:
        self.engine = engine
        # an answer with followup = true ("需要回访请按1") schedules a follow-up call, in the same transaction
        self.followup_on_survey = followup_on_survey
        self.worker = worker  # stamped on each call row, so a restart reconciles only its own calls
        self.outbox = outbox
        # the journal whose checkpoint each batch moves (the writer process has the stream, not the Outbox)
        self.stream: str | None = outbox.stream if outbox is not None else None
        self.batch_max = batch_max
        self.linger = linger
        self.webhook = webhook
        self.on_deliveries = on_deliveries  # wakes the webhook pusher
        self._seq = outbox.last_seq if outbox is not None else 0
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()  # lists of (seq, record), or _STOP
        self._pending: list[Record] = []  # submitted in this loop iteration, not yet journaled
        self._flush_lock = threading.Lock()
        self._unbatched = 0  # records queued for the writer thread, not yet in a batch (under _flush_lock)
        self._full = threading.Event()  # set when those reach batch_max, and at close: the linger ends at once
        self._give_up = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crm-writer", daemon=True)
        self._compiled_upserts: dict[tuple[int, tuple[str, ...]], TextClause | None] = {}  # see _upsert
        self.submitted = 0
        self.written = 0
        self.failures = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, record: Record) -> None:
        """Journal and queue a record; never waits on the database.

        On the event loop, the records of one loop iteration are journaled
        together, in one write(2), at the end of that iteration (`flush`), and
        only then handed to the writer thread: one system call for all the
        records a burst of SIP messages made instead of one each. Without a
        running loop (tools, tests) each record is journaled at once.
        """
        self._pending.append(record)
        self.submitted += 1
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        """Journal what `submit` gathered and queue it for the writer thread."""
        with self._flush_lock:
            records, self._pending = self._pending, []
            if not records:
                return
            if self.outbox is not None:
                first = self.outbox.append_many(records)
            else:
                first = self._seq + 1
                self._seq += len(records)
            self._queue.put(list(enumerate(records, first)))
            self._unbatched += len(records)
            if self._unbatched >= self.batch_max:
                self._full.set()

    def recover(self) -> int:
        """Apply what the outbox holds past the CRM's checkpoint (at start-up, before `start`)."""
        if self.outbox is None:
            return 0
        with Session(self.engine) as s:
            done = s.scalar(select(OutboxCheckpoint.seq).where(OutboxCheckpoint.stream == self.outbox.stream)) or 0
        batch: list[tuple[int, Record]] = []
        count = 0
        for item in self.outbox.pending(done):
            batch.append(item)
            if len(batch) >= self.batch_max:
                self.submitted += len(batch)
                self._apply_with_retry(batch)
                count += len(batch)
                batch = []
        if batch:
            self.submitted += len(batch)
            self._apply_with_retry(batch)
            count += len(batch)
        self.outbox.applied(self.outbox.last_seq)
        if count:
            log.warning("crm_outbox_replayed", records=count, after_seq=done, stream=self.outbox.stream)
        return count

    @property
    def depth(self) -> int:
        """Records not yet in the database (queued plus in the current batch)."""
        return self.submitted - self.written

    def close(self, timeout: float = 30.0) -> int:
        """Write everything queued, then stop. Returns the count left unwritten."""
        self.flush()
        self._queue.put(_STOP)
        self._full.set()  # no linger for the last batch
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._give_up.set()
            self._thread.join(5)
        left = self.depth
        if left and self.outbox is not None:
            log.warning("crm_records_deferred", count=left, reason="database unavailable at shutdown",
                        outbox=str(self.outbox.directory), note="kept in the outbox; applied at the next start")
        elif left:
            log.error("crm_records_unwritten", count=left, reason="database unavailable at shutdown")
        if self.outbox is not None:
            self.outbox.close()
        return left

    # --- writer thread ---------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            # Gather for up to `linger` seconds: under load that turns hundreds of tiny
            # transactions a second into a few large ones (records are journaled already).
            # The thread sleeps through the linger rather than waking for each loop
            # iteration's records: every such wake-up took the GIL from the event loop,
            # hundreds of times a second under load. `flush` ends it early at batch_max.
            if item is not _STOP:
                self._full.wait(self.linger)
            batch: list[tuple[int, Record]] = []
            while True:
                if item is _STOP:
                    stopping = True
                else:
                    batch.extend(item)  # type: ignore[arg-type]
                if len(batch) >= self.batch_max or stopping:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            with self._flush_lock:
                self._unbatched -= len(batch)
                if self._unbatched < self.batch_max:
                    self._full.clear()
            if batch:
                self._apply_with_retry(batch)

    def _apply_with_retry(self, batch: list[tuple[int, Record]]) -> bool:
        """Apply a batch, retrying until it is in or `_give_up` is set; False if given up."""
        # Database errors are the expected case (server down, SQLite locked); any
        # other error is a bug, logged loudly, but the batch is still kept and
        # retried: a record is never dropped.
        retrying = Retrying(
            retry=retry_if_exception_type(Exception),
            wait=wait_exponential(multiplier=0.2, max=10),
            stop=stop_when_event_set(self._give_up),
            before_sleep=self._log_retry,
            reraise=False,
        )
        if self.outbox is not None:
            self.outbox.sync()
        try:
            for attempt in retrying:
                with attempt:
                    self._apply(batch)
        except Exception:  # tenacity.RetryError after give-up; the records stay counted as pending
            return False
        self.written += len(batch)
        if self.outbox is not None:
            self.outbox.applied(batch[-1][0])
        return True

    def _log_retry(self, state: RetryCallState) -> None:
        self.failures += 1
        exc = state.outcome.exception() if state.outcome else None
        level = log.warning if isinstance(exc, SQLAlchemyError) else log.error
        level(
            "crm_write_retry",
            attempt=state.attempt_number,
            queued=self._queue.qsize(),
            wait_s=round(state.next_action.sleep, 2) if state.next_action else None,
            error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}" if exc else "",
        )

    def _insert(self) -> Callable[[Table], postgresql.Insert | sqlite.Insert]:
        name = self.engine.dialect.name
        if name == "postgresql":
            return postgresql.insert
        if name == "sqlite":
            return sqlite.insert
        raise RuntimeError(f"unsupported CRM database dialect {name!r}; use SQLite or PostgreSQL")

    def _upsert(self, conn: Connection, stmt: postgresql.Insert | sqlite.Insert, rows: list[dict[str, object]]) -> None:
        """Execute one of the upserts below for many rows, compiled once per column set.

        SQLAlchemy never caches a dialect's INSERT … ON CONFLICT (its Insert has `inherit_cache =
        False`): executed as it is, the calls upsert was compiled again for every batch, about 0.2 ms.
        The same SQL as a text() whose parameters carry the table's column types is cached by the
        engine like any statement, and its values are bound by the same type processors (SQLite; on
        PostgreSQL the statement is executed as it is)."""
        keys = tuple(rows[0])
        if (id(stmt), keys) in self._compiled_upserts:
            sql = self._compiled_upserts[(id(stmt), keys)]
        else:
            sql = None
            table = stmt.table
            # SQLite only: PostgreSQL's compiler keeps its driver's parameter style whatever it is asked
            if isinstance(table, Table) and self.engine.dialect.name == "sqlite":
                named = stmt.compile(dialect=sqlite.dialect(paramstyle="named"), column_keys=list(keys))
                if set(named.binds) == set(keys):  # no parameter besides the rows' columns
                    sql = text(str(named)).bindparams(*(bindparam(k, type_=table.c[k].type) for k in keys))
            self._compiled_upserts[(id(stmt), keys)] = sql
        conn.execute(stmt if sql is None else sql, rows)

    @functools.cached_property
    def _upsert_calls(self) -> postgresql.Insert | sqlite.Insert:
        """INSERT … ON CONFLICT (sip_call_id) DO UPDATE, built once (and compiled once: `_upsert`)."""
        stmt = self._insert()(_CALLS)
        excluded = stmt.excluded  # a property that builds a new alias on every access
        return stmt.on_conflict_do_update(
            index_elements=[_CALLS.c.sip_call_id],
            set_={c.name: excluded[c.name] for c in _CALLS.c if c.name not in ("id", "sip_call_id")},
        )

    @functools.cached_property
    def _upsert_checkpoint(self) -> postgresql.Insert | sqlite.Insert:
        """INSERT … ON CONFLICT (stream) DO UPDATE: the outbox checkpoint a batch moves."""
        stmt = self._insert()(_OUTBOX_CHECKPOINTS)
        excluded = stmt.excluded
        return stmt.on_conflict_do_update(index_elements=[_OUTBOX_CHECKPOINTS.c.stream],
                                          set_={"seq": excluded.seq, "updated_at": excluded.updated_at})

    @functools.cached_property
    def _upsert_callbacks(self) -> postgresql.Insert | sqlite.Insert:
        """INSERT … ON CONFLICT (request_key) DO UPDATE: a callback request's row as it now stands."""
        stmt = self._insert()(_CALLBACKS)
        excluded = stmt.excluded
        return stmt.on_conflict_do_update(
            index_elements=[_CALLBACKS.c.request_key],
            set_={c.name: excluded[c.name] for c in _CALLBACKS.c if c.name not in ("id", "request_key")},
        )

    @functools.cached_property
    def _upsert_monitoring(self) -> postgresql.Insert | sqlite.Insert:
        """INSERT … ON CONFLICT (session_key) DO UPDATE: a monitoring session's row as it now stands."""
        stmt = self._insert()(_MONITORING)
        excluded = stmt.excluded
        return stmt.on_conflict_do_update(
            index_elements=[_MONITORING.c.session_key],
            set_={c.name: excluded[c.name] for c in _MONITORING.c if c.name not in ("id", "session_key")},
        )

    @functools.cached_property
    def _upsert_recordings(self) -> postgresql.Insert | sqlite.Insert:
        """INSERT … ON CONFLICT (path) DO UPDATE of the columns a RecordRecording carries (never characteristics)."""
        stmt = self._insert()(_RECORDINGS)
        excluded = stmt.excluded
        carried = [f.name for f in dataclasses.fields(RecordRecording) if f.name != "path"]
        return stmt.on_conflict_do_update(index_elements=[_RECORDINGS.c.path],
                                          set_={name: excluded[name] for name in carried})

    def _apply_recordings(self, conn: Connection, recordings: dict[str, dict[str, object]],
                          pauses: list[RecordRecordingPause]) -> None:
        if recordings:
            self._upsert(conn, self._upsert_recordings, list(recordings.values()))
        if pauses:
            paths = {p.path for p in pauses}
            ids: dict[str, int] = dict(conn.execute(  # type: ignore[arg-type]
                select(_RECORDINGS.c.path, _RECORDINGS.c.id).where(_RECORDINGS.c.path.in_(paths))).all())
            rows = [{"recording_id": ids[p.path], "paused_by": p.paused_by, "started_at": _utc(p.started_at),
                     "offset_s": p.offset_s, "duration_s": p.duration_s} for p in pauses if p.path in ids]
            if len(rows) < len(pauses):  # cannot happen: a recording's row is submitted when its file opens
                log.error("crm_pauses_without_recording", paths=sorted(paths - ids.keys()))
            if rows:
                conn.execute(insert(_RECORDING_PAUSES), rows)

    def _apply(self, batch: list[tuple[int, Record]]) -> None:
        # SQLAlchemy Core on one connection, not the ORM: the writer competes with
        # the event loop for the GIL, and the ORM's bookkeeping per row was most of
        # its cost under load (py-spy). The webhook deliveries still use the ORM.
        started = time.perf_counter()
        rows: dict[str, dict[str, object]] = {}
        callbacks: dict[str, dict[str, object]] = {}  # by request_key: the latest row of each request
        events: list[RecordEvent | RecordSurvey | OpenTicket | RecordSurveyAnswer | RecordSurveyRun] = []
        agent_states: list[dict[str, object]] = []
        sessions: dict[str, dict[str, object]] = {}  # monitoring sessions by session_key: the latest row
        modes: list[RecordMonitoringMode] = []
        recordings: dict[str, dict[str, object]] = {}  # by path: the latest row of each file
        pauses: list[RecordRecordingPause] = []
        analysed: dict[str, str] = {}  # characteristics by recording path
        calls: dict[str, CallRecord] = {}  # by sip_call_id: the latest record of each call (a call sends ~4 a batch)
        for _, record in batch:
            if isinstance(record, RecordCall):
                calls[record.record.sip_call_id] = record.record
            elif isinstance(record, RecordEvent):
                events.append(record)
            elif isinstance(record, RecordAgentState):
                agent_states.append({**shallow_fields(record), "at": _utc(record.at), "worker": self.worker})
            elif isinstance(record, RecordMonitoring):
                row = shallow_fields(record)
                row["started_at"], row["ended_at"] = _utc(record.started_at), _utc(record.ended_at)
                sessions[record.session_key] = row
            elif isinstance(record, RecordMonitoringMode):
                modes.append(record)
            elif isinstance(record, RecordRecording):
                row = shallow_fields(record)
                row["started_at"], row["ended_at"] = _utc(record.started_at), _utc(record.ended_at)
                recordings[record.path] = row
            elif isinstance(record, RecordRecordingPause):
                pauses.append(record)
            elif isinstance(record, RecordCharacteristics):
                analysed[record.path] = record.characteristics
            elif isinstance(record, RecordCallback):
                row = shallow_fields(record)
                row["requested_at"], row["due_at"] = _utc(record.requested_at), _utc(record.due_at)
                callbacks[record.request_key] = row
            else:
                events.append(record)
        for sip_call_id, call in calls.items():  # the row once per call, from its latest record only
            row = shallow_fields(call)
            for key in ("started_at", "answered_at", "ended_at"):
                row[key] = _utc(row[key])  # type: ignore[arg-type]
            row["ivr_worker"] = self.worker
            rows[sip_call_id] = row
        finished: list[str] = []
        with self.engine.begin() as conn:
            if rows:
                self._upsert(conn, self._upsert_calls, list(rows.values()))
            if callbacks:
                self._upsert(conn, self._upsert_callbacks, list(callbacks.values()))
            if agent_states:
                conn.execute(insert(_AGENT_STATES), agent_states)
            if sessions:
                self._upsert(conn, self._upsert_monitoring, list(sessions.values()))
            if modes:
                self._insert_modes(conn, modes)
            self._apply_recordings(conn, recordings, pauses)
            for path, text in analysed.items():  # after the row's own upsert above, which never carries them
                conn.execute(update(_RECORDINGS).where(_RECORDINGS.c.path == path).values(characteristics=text))
            if events:
                wanted = {e.sip_call_id for e in events}
                found = select(_CALLS.c.sip_call_id, _CALLS.c.id).where(_CALLS.c.sip_call_id.in_(wanted))
                ids: dict[str, int] = dict(conn.execute(found).all())  # type: ignore[arg-type]
                missing = wanted - ids.keys()
                if missing:  # cannot happen: a call's row is always submitted before its events
                    log.error("crm_events_without_call", sip_call_ids=sorted(missing))
                known = [e for e in events if e.sip_call_id in ids]
                steps = [{"call_id": ids[e.sip_call_id], "at": _utc(e.at), "kind": e.kind, "detail": e.detail}
                         for e in known if isinstance(e, RecordEvent)]
                if steps:
                    conn.execute(insert(_CALL_EVENTS), steps)
                surveys = [{"call_id": ids[e.sip_call_id], "at": _utc(e.at), "agent_number": e.agent_number,
                            "seat_group": e.seat_group, "score": e.score, "label": e.label}
                           for e in known if isinstance(e, RecordSurvey)]
                if surveys:
                    conn.execute(insert(_SURVEYS), surveys)
                tickets = [{"call_id": ids[e.sip_call_id], "customer_phone": e.customer_phone,
                            "agent_number": e.agent_number, "seat_group": e.seat_group, "status": "open",
                            "opened_at": _utc(e.at), "next_feedback_due": _utc(e.next_feedback_due)}
                           for e in known if isinstance(e, OpenTicket)]
                if tickets:
                    conn.execute(insert(_TICKETS), tickets)
                answers = [{"call_id": ids[e.sip_call_id], "questionnaire": e.questionnaire, "version": e.version,
                            "question": e.question, "key": e.key, "value": e.value, "label": e.label,
                            "score": e.score, "followup": e.followup, "answered_at": _utc(e.at)}
                           for e in known if isinstance(e, RecordSurveyAnswer)]
                if answers:
                    conn.execute(insert(_SURVEY_ANSWERS), answers)
                asked = sorted({e.sip_call_id for e in known if isinstance(e, RecordSurveyAnswer) and e.followup})
                if asked and self.followup_on_survey:
                    from crm_bridge.followups import request_for_call  # the follow-up schedule (crm_bridge.followups)

                    with Session(bind=conn) as s:
                        for sip_call_id in asked:
                            request_for_call(s, sip_call_id, "问卷中要求回访")
                        s.flush()
                runs = [{"call_id": ids[e.sip_call_id], "questionnaire": e.questionnaire, "version": e.version,
                         "status": e.status, "asked": e.asked, "answered": e.answered, "ended_at": _utc(e.at)}
                        for e in known if isinstance(e, RecordSurveyRun)]
                if runs:
                    conn.execute(insert(_SURVEY_RUNS), runs)
            # the "ended" step is the last record of a call, so its row and steps are all in by now
            finished = [e.sip_call_id for e in events if isinstance(e, RecordEvent) and e.kind == "ended"]
            if self.webhook and finished:
                with Session(bind=conn) as s:
                    add_deliveries(s, finished)
                    s.flush()
            if self.stream is not None:
                values = {"stream": self.stream, "seq": batch[-1][0], "updated_at": datetime.now(UTC)}
                self._upsert(conn, self._upsert_checkpoint, [values])
        if self.webhook and finished and self.on_deliveries is not None:
            self.on_deliveries()
        log.debug("crm_batch_written", rows=len(rows), events=len(events),
                  ms=round(1000 * (time.perf_counter() - started), 1))


    @staticmethod
    def _insert_modes(conn: Connection, modes: list[RecordMonitoringMode]) -> None:
        """Mode changes, each under its session's row (always submitted before its modes)."""
        keys = {m.session_key for m in modes}
        found = select(_MONITORING.c.session_key, _MONITORING.c.id).where(_MONITORING.c.session_key.in_(keys))
        ids: dict[str, int] = dict(conn.execute(found).all())  # type: ignore[arg-type]
        missing = keys - ids.keys()
        if missing:  # cannot happen: a session's row is submitted before its first mode
            log.error("crm_modes_without_session", session_keys=sorted(missing))
        rows = [{"session_id": ids[m.session_key], "at": _utc(m.at), "mode": m.mode}
                for m in modes if m.session_key in ids]
        if rows:
            conn.execute(insert(_MONITORING_MODES), rows)


def open_callbacks(engine: Engine) -> list[RecordCallback]:
    """The callback requests still pending (or cut off while dialled) in the CRM, for the IVR to take back at start."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(_CALLBACKS).where(_CALLBACKS.c.status.in_(("pending", "dialling"))).order_by(_CALLBACKS.c.id)
        ).mappings().all()
    return [
        RecordCallback(
            request_key=r["request_key"], number=r["number"], tier=r["tier"], service=r["service"],
            seat_group=r["seat_group"], requested_at=_aware(r["requested_at"]), due_at=_aware(r["due_at"]),
            status=r["status"], attempts=r["attempts"], result=r["result"], call_ids=r["call_ids"],
        )
        for r in rows
    ]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)  # SQLite keeps UTC without a zone


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def add_deliveries(s: Session, sip_call_ids: list[str]) -> None:
    """Queue a webhook push for each finished call, built from its rows as they now stand."""
    now = datetime.now(UTC)
    query = select(Call).where(Call.sip_call_id.in_(sip_call_ids)).execution_options(populate_existing=True)
    calls = s.scalars(query).all()
    by_id = {c.id: c for c in calls}
    steps: dict[int, list[dict[str, str | None]]] = {c.id: [] for c in calls}
    for e in s.scalars(select(CallEvent).where(CallEvent.call_id.in_(by_id)).order_by(CallEvent.at, CallEvent.id)):
        steps[e.call_id].append({"at": _iso(e.at), "kind": e.kind, "detail": e.detail})
    for c in calls:
        body = {
            "type": "call.finished",
            "call": {
                "sip_call_id": c.sip_call_id, "caller": c.caller, "callee": c.callee,
                "started_at": _iso(c.started_at), "answered_at": _iso(c.answered_at), "ended_at": _iso(c.ended_at),
                "greeting": c.greeting, "silent_attempts": c.silent_attempts, "outcome": c.outcome,
                "hangup_by": c.hangup_by, "tier": c.tier, "service": c.service, "seat_group": c.seat_group,
                "agent_number": c.agent_number, "queue_wait_s": c.queue_wait_s, "talk_s": c.talk_s,
                "survey_score": c.survey_score,
            },
            "events": steps[c.id],
        }
        s.add(WebhookDelivery(
            sip_call_id=c.sip_call_id, payload=json.dumps(body, ensure_ascii=False, sort_keys=True),
            created_at=now, next_attempt_at=now,
        ))
