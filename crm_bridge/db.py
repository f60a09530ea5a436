"""Database connections for the CRM bridge: engine set-up, migrations, reconciliation."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import ColumnElement, Engine, create_engine, event, func, or_, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from crm_bridge.models import Agent, Call, CallEvent, SeatGroup

log = structlog.get_logger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL, a busy timeout and enforced foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 5})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            # WAL: readers (ops reports) never block the writer, and vice versa.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


# pg_advisory_xact_lock key for migrations ("hotline" in ASCII): one process migrates at a time
MIGRATION_LOCK = 0x686F746C696E65


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision.

    Workers started together (systemctl start hotline-ivr@1 hotline-ivr@2) would
    otherwise both create the tables of an empty PostgreSQL CRM and one would
    fail on a duplicate; the lock makes the second wait and find the schema done.
    """
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def reconcile_interrupted(engine: Engine, now: datetime | None = None, *, webhook: bool = False,
                          worker: str | None = None) -> int:
    """Close calls left open by a crash: outcome `failed`, ended at their last event.

    Run at start-up, before any new call: a row of this `worker` still open
    then belongs to the process that died mid-call. Calls of other workers
    sharing the CRM are theirs and in progress; rows without a worker (older
    ones) count as this worker's. Returns how many calls were closed.
    """
    now = now or datetime.now(UTC)
    mine: ColumnElement[bool] = Call.ended_at.is_(None)
    if worker is not None:
        mine = mine & or_(Call.ivr_worker == worker, Call.ivr_worker.is_(None))
    with Session(engine) as s, s.begin():
        open_calls = s.scalars(select(Call).where(mine)).all()
        for call in open_calls:
            last = s.scalar(select(func.max(CallEvent.at)).where(CallEvent.call_id == call.id))
            ended = last or call.started_at
            s.execute(
                update(Call)
                .where(Call.id == call.id)
                .values(ended_at=ended, outcome="failed", hangup_by=call.hangup_by or "ivr")
            )
            s.add(CallEvent(call_id=call.id, at=now, kind="reconciled", detail="call was open when the IVR stopped"))
        if webhook and open_calls:
            from crm_bridge.writer import add_deliveries

            add_deliveries(s, [c.sip_call_id for c in open_calls])
    if open_calls:
        log.warning("calls_reconciled", count=len(open_calls))
    return len(open_calls)


def sync_seat_groups(engine: Engine, agents, seat_groups: Mapping[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Mirror the seat groups (name -> label) and the configured agents into the CRM (sip.conf is the source)."""
    with Session(engine) as s, s.begin():
        if engine.dialect.name == "postgresql":  # workers starting together: merge is read-then-insert
            s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        for name, label in seat_groups.items():
            s.merge(SeatGroup(name=name, label=label))
        s.flush()
        for agent in agents:
            s.merge(Agent(number=agent.number, name=agent.name, seat_group=agent.seat_group))
