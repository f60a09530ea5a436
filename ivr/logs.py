"""Structured logs: one event per line, always with the call's Call-ID when there is one."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import structlog
from structlog.typing import Processor


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

    def allow(self, now: float) -> int | None:
        """None: drop this line; else how many were suppressed before it (and reset)."""
        second = int(now)
        if second != self._window:
            self._window, self._count = second, 0
        self._count += 1
        if self._count > self.per_second:
            self.suppressed += 1
            return None
        suppressed, self.suppressed = self.suppressed, 0
        return suppressed

    def filter(self, record: logging.LogRecord) -> bool:
        """The stdlib side: aiosipua's "Failed to parse SIP message" lines."""
        if not record.getMessage().startswith("Failed to parse SIP message"):
            return True
        suppressed = self.allow(record.created)
        if suppressed is None:
            return False
        record.exc_info = None
        record.exc_text = None
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} more suppressed)"
        return True

    def __call__(self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """The structlog side: the engine's own bad-input events."""
        if event_dict.get("event") not in self.EVENTS:
            return event_dict
        suppressed = self.allow(time.time())
        if suppressed is None:
            raise structlog.DropEvent
        if suppressed:
            event_dict["suppressed_before"] = suppressed
        return event_dict


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's fast file logger, with a name for the `logger=` field."""

    def __init__(self, file: object, name: str) -> None:
        super().__init__(file)  # type: ignore[arg-type]
        self.name = name


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """One renderer on stderr for our structlog events and the libraries' stdlib logging.

    Our own events go through structlog's native path (a filtering bound logger
    writing straight to stderr): the stdlib route cost about 15 % of the event
    loop at 100 calls/s with info-level logging (py-spy). Libraries' stdlib
    records get the same processors and renderer through ProcessorFormatter.
    """
    renderer = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if fmt == "json"
        else structlog.processors.KeyValueRenderer(
            key_order=["timestamp", "level", "event", "call_id"], drop_missing=True)
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    flood = BadDatagramFilter()
    stream = sys.stderr
    structlog.configure(
        processors=[*shared, flood, structlog.processors.format_exc_info, renderer],
        logger_factory=lambda *names: _NamedWriteLogger(stream, names[0] if names else ""),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.format_exc_info, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("alembic", "sqlalchemy.engine"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("aiosipua.transport").addFilter(flood)
