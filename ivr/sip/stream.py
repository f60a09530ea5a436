"""SIP message framing on a byte stream (TCP, TLS), without I/O.

Over UDP a datagram is a message. On a stream, RFC 3261 §18.3 frames each
message by its Content-Length, which is therefore mandatory there: a message
without one cannot be delimited, so it is answered 400 and the connection
closed. Between messages a peer may send CRLFs: a double CRLF is an RFC 5626
§3.5.1 keep-alive ping, which we answer with one CRLF (the pong); lone CRLFs
are ignored (§7.5).

A `StreamFramer` is fed the bytes of one connection and hands back events:
`Framed` (one whole message), `Ping`, or `Broken` (the connection must be
closed; `status` 400 when the peer deserves an answer first). It also keeps
the two clocks that protect the endpoint from peers that hold a connection
without finishing anything: `expired(now)` says why a connection should go —
no complete message for `idle_seconds`, or a message started and not
finished within `message_seconds` of its first byte (slow-loris senders).
Limits are per message: headers at most `max_headers` bytes, a whole message
at most `max_message` bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

MAX_HEADERS: Final = 16 * 1024
MAX_MESSAGE: Final = 64 * 1024
MESSAGE_SECONDS: Final = 10.0
PONG: Final = b"\r\n"
PING: Final = b"\r\n\r\n"

_END_OF_HEADERS: Final = b"\r\n\r\n"
# "Content-Length" or its compact form "l" (§7.3.3), at the start of a header line.
_CONTENT_LENGTH: Final = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Framed:
    """One whole message: headers, blank line and exactly Content-Length bytes of body."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """A CRLFCRLF keep-alive (RFC 5626 §3.5.1): answer with `PONG`."""


@dataclass(frozen=True, slots=True)
class Broken:
    """The stream cannot be read on: close it, after a `status` answer when there is one."""

    reason: str
    head: bytes = b""  # the message head, to build the 400 from
    status: int | None = None


StreamEvent = Framed | Ping | Broken


class StreamFramer:
    """Splits one connection's bytes into SIP messages; see the module docstring."""

    def __init__(self, now: float, *, idle_seconds: float, message_seconds: float = MESSAGE_SECONDS,
                 max_headers: int = MAX_HEADERS, max_message: int = MAX_MESSAGE) -> None:
        self.idle_seconds = idle_seconds
        self.message_seconds = message_seconds
        self.max_headers = max_headers
        self.max_message = max_message
        self._buffer = bytearray()
        self._last_complete = now  # the connection's opening counts as activity
        self._started: float | None = None  # first byte of the message being received
        self.broken = False
        self.messages = 0

    def feed(self, data: bytes, now: float) -> list[StreamEvent]:
        """Take the bytes that arrived; the events they complete, in order."""
        if self.broken:
            return []
        self._buffer += data
        events: list[StreamEvent] = []
        while self._buffer and not self.broken:
            event = self._next(now)
            if event is None:
                break
            events.append(event)
        if self._buffer and self._started is None and not self.broken:
            self._started = now
        return events

    def expired(self, now: float, *, busy: bool = False) -> str | None:
        """Why the connection should be closed now, or None; a `busy` one (a call on it) is never idle."""
        if self._started is not None and now - self._started >= self.message_seconds:
            return f"message incomplete {self.message_seconds:g} s after its first byte"
        if not busy and now - self._last_complete >= self.idle_seconds:
            return f"idle for {self.idle_seconds:g} s"
        return None

    def _next(self, now: float) -> StreamEvent | None:
        buffer = self._buffer
        if buffer.startswith(b"\r\n"):
            if buffer.startswith(_END_OF_HEADERS):
                del buffer[:4]
                self._completed(now)
                return Ping()
            if len(buffer) < 4 and _END_OF_HEADERS.startswith(bytes(buffer)):
                return None  # maybe the start of a ping
            del buffer[:2]  # a lone CRLF between messages, or a pong
            if not buffer:
                self._started = None
                return None
            return self._next(now)
        end = buffer.find(_END_OF_HEADERS, 0, self.max_headers + 4)
        if end < 0:
            if len(buffer) > self.max_headers:
                return self._broken(f"headers over {self.max_headers} bytes")
            return None
        head = bytes(buffer[: end + 2])
        lengths = _CONTENT_LENGTH.findall(b"\r\n" + head)
        if not lengths:
            return self._broken("no Content-Length on a stream (RFC 3261 §18.3)", head, 400)
        if len(set(v.strip() for v in lengths)) > 1 or not lengths[0].strip().isdigit():
            return self._broken("Content-Length unusable", head, 400)
        size = end + 4 + int(lengths[0].strip())
        if size > self.max_message:
            return self._broken(f"message of {size} bytes over {self.max_message}")
        if len(buffer) < size:
            return None
        message = bytes(buffer[:size])
        del buffer[:size]
        self._completed(now)
        self._started = now if buffer else None
        self.messages += 1
        return Framed(message)

    def _completed(self, now: float) -> None:
        self._last_complete = now
        self._started = None

    def _broken(self, reason: str, head: bytes = b"", status: int | None = None) -> Broken:
        self.broken = True
        self._buffer.clear()
        return Broken(reason, head, status)
