"""The endpoint's connections: a TCP or TLS one here, a WebSocket one in ivr.sip.websocket.

Both kinds carry their peer's `StreamAddress`, take `write` and `shut`, and
tell their owner, the endpoint (`ivr.sip.endpoint.SipEndpoint`), when they
are made, when bytes arrive and when they are lost; the endpoint keeps both
in one table by the peer's plain (host, port).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Protocol

import structlog

from ivr.sip.stream import StreamFramer

log = structlog.get_logger("ivr.sip")

MAX_WRITE_BUFFER = 1024 * 1024  # bytes queued to a peer that does not read: it is dropped


class StreamAddress(tuple[str, int]):
    """A peer's (host, port) on a TCP, TLS or WebSocket connection; equal to the plain pair, plus its transport."""

    transport: str  # "TCP", "TLS", "WS" or "WSS"

    def __new__(cls, host: str, port: int, transport: str) -> StreamAddress:
        self = super().__new__(cls, (host, port))
        self.transport = transport
        return self


class ConnectionGone(Exception):
    """A request for a peer reachable only over a connection that has closed (RFC 5626's flow is gone)."""


class ConnectionOwner(Protocol):
    """What a TCP or TLS connection tells the endpoint."""

    keepalive_seconds: float

    def connection_made(self, connection: StreamConnection) -> None: ...

    def stream_received(self, connection: StreamConnection, data: bytes) -> None: ...

    def connection_lost(self, connection: StreamConnection, exc: Exception | None) -> None: ...

    def close_connection(self, connection: StreamConnection, reason: str, *, abort: bool = False) -> None: ...


class StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection, accepted or opened by us: its framer and the peer at the other end."""

    def __init__(self, endpoint: ConnectionOwner, transport_name: str, address: StreamAddress | None = None) -> None:
        self.endpoint = endpoint
        self.transport_name = transport_name
        self.transport: asyncio.Transport | None = None
        self.outbound = address is not None  # we are connecting to `address`
        self.address = address or StreamAddress("", 0, transport_name)
        self.framer: StreamFramer | None = None
        self.closing: str | None = None  # why we closed it
        self.pending: list[bytes] = []  # written while our connect is under way
        self.pinged = 0.0  # when we last sent a keep-alive ping

    @property
    def peer(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.outbound:
            peer = transport.get_extra_info("peername") or ("", 0)
            self.address = StreamAddress(str(peer[0]), int(peer[1]), self.transport_name)
            self.pinged = asyncio.get_running_loop().time()
            detect_half_open(transport.get_extra_info("socket"), self.endpoint.keepalive_seconds)
        self.endpoint.connection_made(self)

    def data_received(self, data: bytes) -> None:
        self.endpoint.stream_received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.endpoint.connection_lost(self, exc)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None and self.outbound and self.closing is None:
            self.pending.append(data)
            return
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.endpoint.close_connection(self, f"peer not reading ({MAX_WRITE_BUFFER} bytes queued)", abort=True)

    def shut(self, abort: bool = False) -> None:
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()


def detect_half_open(sock: Any, seconds: float) -> None:
    """Kernel keep-alives on an accepted connection, and a bound on unacknowledged data (Linux's
    TCP_USER_TIMEOUT): a peer that vanished without a FIN is found in about `seconds`, not hours."""
    if sock is None or not seconds:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(seconds)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(seconds) // 3))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))
    except OSError as exc:
        log.warning("sip_keepalive_unavailable", error=str(exc))
