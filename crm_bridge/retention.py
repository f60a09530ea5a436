"""Recording retention: files older than `[recording] retention_days` are deleted and their rows marked.

`python -m crm_bridge retention [--dry-run]` runs it (daily, from a timer). A
recording is old when it started before now - retention_days. It is kept,
whatever its age, while its call has a complaint ticket that is not closed
(tickets link to calls, and recordings to calls by `sip_call_id`): the
recording is what the complaint is checked against. The next run after the
ticket is closed deletes it.

Only finished rows are considered (`complete`, `failed`, `interrupted`), never
one still being written. A row is marked `deleted` (with `deleted_at`) once
its file (and a left-over `.part`) is gone — or was already gone; a file
that cannot be deleted keeps its row as it was, is reported, and is tried
again the next day.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from sqlalchemy import Engine, exists, select, update
from sqlalchemy.orm import Session

from crm_bridge.models import Call, Recording, Ticket

log = structlog.get_logger(__name__)

FINISHED = ("complete", "failed", "interrupted")


@dataclass
class RetentionResult:
    deleted: list[str] = field(default_factory=list)  # paths (relative to the directory) deleted
    freed_bytes: int = 0
    kept_for_tickets: list[str] = field(default_factory=list)  # old, but their complaint is still open
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why) not deleted this time


def apply_retention(db: Engine, directory: Path, retention_days: int, *, now: datetime | None = None,
                    dry_run: bool = False) -> RetentionResult:
    """Delete recordings older than `retention_days` (except open complaints'); `dry_run`: only say which."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=retention_days)
    open_ticket = exists().where(Ticket.call_id == Call.id, Call.sip_call_id == Recording.sip_call_id,
                                 Ticket.status != "closed")
    old = select(Recording.id, Recording.path, open_ticket.label("kept")).where(
        Recording.state.in_(FINISHED), Recording.started_at < cutoff).order_by(Recording.started_at)
    result = RetentionResult()
    with Session(db) as s:
        rows = s.execute(old).all()
    for row_id, path, kept in rows:
        if kept:
            result.kept_for_tickets.append(path)
            continue
        files = [directory / path, directory / (path + ".part")]
        size = sum(f.stat().st_size for f in files if f.is_file())
        if dry_run:
            result.deleted.append(path)
            result.freed_bytes += size
            continue
        try:
            for f in files:
                f.unlink(missing_ok=True)
        except OSError as exc:
            result.failed.append((path, exc.strerror or str(exc)))
            log.warning("retention_delete_failed", path=path, error=exc.strerror or str(exc))
            continue
        with Session(db) as s, s.begin():
            s.execute(update(Recording).where(Recording.id == row_id).values(state="deleted", deleted_at=now))
        result.deleted.append(path)
        result.freed_bytes += size
    if not dry_run:
        log.info("retention_done", deleted=len(result.deleted), freed_bytes=result.freed_bytes,
                 kept_for_open_tickets=len(result.kept_for_tickets), failed=len(result.failed),
                 retention_days=retention_days)
    return result
