"""What the desk process costs the CRM, for supervisors and load tests: `GET /metrics` (Prometheus text).

    desk_crm_statements_total        SQL statements this desk process sent to the CRM (SQLAlchemy's
                                     `before_cursor_execute`, every page, stream and watcher tick)
    desk_event_streams_open{kind}    event streams open now: agent (`/desk/events`), wallboard

The statements are the point: one watcher serves every open agent page
(desk.watcher), so the rate should stay flat whether 1 or 300 agents have
their desk open; a rate that grows with the streams is a page polling the
CRM on its own. loadtest/desk_load.py reads it before and during its load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from sqlalchemy import Engine, event


class DeskMetrics:
    """One per app: counts the engine's statements; `agent_streams` says how many agent pages are open."""

    def __init__(self, engine: Engine, agent_streams: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.statements = Counter("desk_crm_statements", "SQL statements the desk sent to the CRM",
                                  registry=self.registry)
        streams = Gauge("desk_event_streams_open", "Event streams open", ["kind"], registry=self.registry)
        streams.labels("agent").set_function(lambda: float(agent_streams()))
        self.wallboards = streams.labels("wallboard")
        event.listen(engine, "before_cursor_execute", self._count)

    def _count(self, *_: Any) -> None:
        self.statements.inc()  # thread-safe: the statements run in asyncio.to_thread's workers

    def render(self) -> bytes:
        return generate_latest(self.registry)
