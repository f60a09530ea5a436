"""Structured logs: one event per line, always with the call's Call-ID when there is one."""

from __future__ import annotations

import logging
import sys

import structlog


class BadDatagramFilter(logging.Filter):
    """Keep a flood of malformed SIP from flooding the log.

    aiosipua 0.7.1 logs every datagram it cannot parse at WARNING with a full
    traceback, and the engine logs each request it answers with 400: a
    scanner or fuzzer could fill the disk that way. Let through `per_second`
    such lines a second, without the traceback, and report how many were
    suppressed in the next line that gets through.
    """

    EVENTS = ("sip_bad_request", "sip_bad_response")

    def __init__(self, per_second: int = 5) -> None:
        super().__init__()
        self.per_second = per_second
        self._window = 0
        self._count = 0
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        event = record.msg.get("event") if isinstance(record.msg, dict) else None
        if event not in self.EVENTS and not (event is None and record.getMessage().startswith("Failed to parse SIP message")):
            return True
        second = int(record.created)
        if second != self._window:
            self._window, self._count = second, 0
        self._count += 1
        if self._count > self.per_second:
            self.suppressed += 1
            return False
        record.exc_info = None
        record.exc_text = None
        if self.suppressed:
            if isinstance(record.msg, dict):
                record.msg["suppressed_before"] = self.suppressed
            else:
                record.msg = f"{record.msg} ({self.suppressed} more suppressed)"
            self.suppressed = 0
        return True


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """Route structlog and the libraries' stdlib logging through one renderer on stderr."""
    renderer = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if fmt == "json"
        else structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event", "call_id"], drop_missing=True)
    )
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, structlog.processors.format_exc_info, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("alembic", "sqlalchemy.engine"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    flood = BadDatagramFilter()
    logging.getLogger("aiosipua.transport").addFilter(flood)
    logging.getLogger("ivr.engine").addFilter(flood)
