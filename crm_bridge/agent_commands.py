"""Commands from the agent desk to the IVR: pause, resume, end wrap-up, and a supervisor's monitor.

The IVR holds agent state (in memory, or in the `agents` table when workers
share agents), so the desk — a separate process — never changes it. It adds a
row to `agent_commands`; the IVR's one-second loop calls `take_pending` and
applies what it gets exactly as it applies the phone's *46 / *47. A command
is claimed by one conditional UPDATE per row (`… WHERE taken_at IS NULL`), so
two workers polling together never both apply it. A command nobody took
within `max_age` is stale (the agent pressed the button while no IVR ran) and
is marked `expired` instead of being applied much later.

`monitor` (the wallboard's and call page's button, supervisors only) names
the agent whose call is monitored, the supervisor whose registered phone the
IVR rings into it and the mode (listen, whisper, barge): `ivr.monitoring`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, select, update
from sqlalchemy.orm import Session

from crm_bridge.models import AGENT_COMMANDS, MONITORING_MODES, AgentCommand

EXPIRED = "expired"


def request_command(
    engine: Engine, agent: str, command: str, *, requested_by: str | None = None, now: datetime | None = None,
    supervisor: str | None = None, mode: str | None = None,
) -> int:
    """Queue `command` for `agent`; returns the row id. A `monitor` command needs `supervisor` and `mode`."""
    if command not in AGENT_COMMANDS:
        raise ValueError(f"unknown agent command {command!r}; one of {', '.join(AGENT_COMMANDS)}")
    if command == "monitor" and (not supervisor or mode not in MONITORING_MODES):
        raise ValueError(f"a monitor command names the supervisor's phone and a mode ({', '.join(MONITORING_MODES)})")
    with Session(engine) as s, s.begin():
        row = AgentCommand(
            agent=agent, command=command, requested_at=now or datetime.now(UTC), requested_by=requested_by,
            supervisor=supervisor, mode=mode,
        )
        s.add(row)
        s.flush()
        return row.id


def take_pending(
    engine: Engine,
    *,
    taken_by: str = "ivr",
    agents: Iterable[str] | None = None,
    now: datetime | None = None,
    max_age: timedelta = timedelta(seconds=60),
) -> list[AgentCommand]:
    """Claim the commands not yet taken (oldest first) and mark them taken; each is returned to one caller only.

    `agents`: only commands for these seat numbers (a worker with its own agents); None takes all.
    """
    now = now or datetime.now(UTC)
    query = select(AgentCommand.id, AgentCommand.requested_at).where(AgentCommand.taken_at.is_(None))
    if agents is not None:
        query = query.where(AgentCommand.agent.in_(list(agents)))
    claimed: list[AgentCommand] = []
    with Session(engine, expire_on_commit=False) as s, s.begin():
        for command_id, requested_at in s.execute(query.order_by(AgentCommand.requested_at, AgentCommand.id)).all():
            stale = _aware(requested_at) < now - max_age
            result = s.execute(
                update(AgentCommand)
                .where(AgentCommand.id == command_id, AgentCommand.taken_at.is_(None))
                .values(taken_at=now, taken_by=EXPIRED if stale else taken_by)
            )
            won = cast(CursorResult[Any], result).rowcount  # an UPDATE's result is a CursorResult
            if won == 1 and not stale:
                claimed.append(s.get_one(AgentCommand, command_id))
    return claimed


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)  # SQLite hands back naive datetimes (stored as UTC)
