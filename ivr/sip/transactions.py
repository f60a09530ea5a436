"""SIP transactions (RFC 3261 §17, as amended by RFC 6026), without I/O.

Theory of operation
-------------------

A transaction is one request and every response to it, plus the
retransmissions that make that exchange survive a lossy UDP path. This
module keeps every transaction of one SIP endpoint in a `SipTransactions`
object, which has four doors and nothing else:

1. Receive: the owner parses a datagram and calls `receive_request` or
   `receive_response` with the message, the address it came from and `now`.
   Back comes an event for the TU (the layer above: dialogs and call flow)
   or None when the message was absorbed.
2. Respond / send: the TU answers a `ServerTransaction` with `respond`, or
   starts a `ClientTransaction` with `send_request` (and `send_ack` for the
   ACK to a 2xx, which RFC 3261 leaves outside the INVITE transaction).
3. Datagrams: everything to put on the wire collects in an outbox that the
   owner drains with `datagrams_to_send`. A message is serialised once; its
   retransmissions reuse the bytes.
4. Timers: `get_timer` is the earliest deadline of all transactions; the
   owner calls `handle_timer(now)` when it passes. Retransmissions go out
   and the timeouts the TU must act on come back. One loop timer serves the
   whole endpoint, and tests drive the timers with a float they advance.

The TU never sees a retransmission. A retransmitted request matches its
server transaction (§17.2.3) and is answered from the cached last response;
a retransmitted response matches its client transaction (§17.1.3) and is
swallowed (re-sending our ACK where one is owed). Without this, a request
repeated 500 ms later looks like a new call, and a repeated BYE after our
200 finds the dialog gone and earns a 481.

RFC 6026 changes one thing in RFC 3261: a 2xx to an INVITE no longer ends
the INVITE transaction. Both sides enter ACCEPTED for 64*T1, so that an
INVITE retransmission crossing our 200 is absorbed instead of starting a
second call, and a retransmitted 2xx still finds its client transaction,
which re-sends the ACK the TU gave it. The server side retransmits the 2xx itself (§13.3.1.4) until the
ACK arrives (`AckReceived`, once) or Timer L ends the wait.

Everything that moves a transaction between states is in the tables below
(`_SERVER_INVITE` …): (state, stimulus) -> (next state, effect). A stimulus
the table does not list is ignored when it comes from the network and
raises `SipProtocolError` when the TU caused it (a second final response).
Whether an ACK or a 2xx repeats one already delivered is decided before
the look-up (`ACK_AGAIN`, `SUCCESS_AGAIN`). RFC 6026 keeps one ACCEPTED
state before and after the ACK to our 2xx, so that ACK is the one stimulus
with a side effect outside the tables: it stops the 2xx retransmissions,
and Timer L then ends the transaction without a TransactionTimeout.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from aiosipua.message import SipMessage, SipRequest, SipResponse

Address = tuple[str, int]
TransactionKey = tuple[str, ...]

# §8.1.1.7: a branch that starts with this was built by an RFC 3261 element
# and is unique on its own; anything else gets the RFC 2543 matching rules.
MAGIC_COOKIE: Final = "z9hG4bK"


class SipProtocolError(Exception):
    """The TU asked for something its transaction cannot do in its state."""


class Overloaded(Exception):
    """The transaction table is full: answer the request 503 statelessly."""


@dataclass(frozen=True, slots=True)
class Timers:
    """RFC 3261 §17 timer base values in seconds (Table 4)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    # §16.6 Timer C (> 3 min), borrowed for a client INVITE stuck in
    # PROCEEDING (counted from the first provisional): §17.1.1.2 runs no
    # timer there, and a lost final response would hold it for ever.
    c: float = 180.0


class State(Enum):
    TRYING = "Trying"
    CALLING = "Calling"
    PROCEEDING = "Proceeding"
    ACCEPTED = "Accepted"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


class Stimulus(Enum):
    """What can happen to a transaction; timers by their RFC letters."""

    REQUEST = "request"  # the request (again) from the network
    ACK = "ACK"
    ACK_AGAIN = "ACK again"  # an ACK to a 2xx that was already delivered
    PROVISIONAL = "1xx"
    SUCCESS = "2xx"
    SUCCESS_AGAIN = "2xx again"  # same To tag as a 2xx already delivered
    FAILURE = "300-699"
    A = "A"
    B = "B"
    C = "C"
    D = "D"
    E = "E"
    F = "F"
    G = "G"  # also the 2xx retransmission in ACCEPTED (§13.3.1.4, same schedule)
    H = "H"
    I = "I"
    J = "J"
    K = "K"
    L = "L"
    M = "M"


class Effect(Enum):
    SEND = "send"  # the TU's response goes out
    DELIVER = "deliver"  # pass the message up to the TU
    ABSORB = "absorb"  # a duplicate: swallow it
    RESEND = "resend"  # re-send what this transaction last sent
    TIMEOUT = "timeout"  # end, and tell the TU (TransactionTimeout)
    EXPIRE = "expire"  # end quietly


_S, _X = State, Stimulus
Table = dict[tuple[State, Stimulus], tuple[State, Effect]]

# RFC 3261 figure 7 with RFC 6026 §7.1.
_SERVER_INVITE: Final[Table] = {
    (_S.PROCEEDING, _X.REQUEST): (_S.PROCEEDING, Effect.RESEND),  # the last provisional, if any
    (_S.PROCEEDING, _X.PROVISIONAL): (_S.PROCEEDING, Effect.SEND),
    (_S.PROCEEDING, _X.SUCCESS): (_S.ACCEPTED, Effect.SEND),
    (_S.PROCEEDING, _X.FAILURE): (_S.COMPLETED, Effect.SEND),
    (_S.ACCEPTED, _X.REQUEST): (_S.ACCEPTED, Effect.ABSORB),  # the TU has it already
    (_S.ACCEPTED, _X.ACK): (_S.ACCEPTED, Effect.DELIVER),
    (_S.ACCEPTED, _X.ACK_AGAIN): (_S.ACCEPTED, Effect.ABSORB),
    (_S.ACCEPTED, _X.G): (_S.ACCEPTED, Effect.RESEND),
    (_S.ACCEPTED, _X.L): (_S.TERMINATED, Effect.TIMEOUT),  # quiet once ACKed
    (_S.COMPLETED, _X.REQUEST): (_S.COMPLETED, Effect.RESEND),
    (_S.COMPLETED, _X.ACK): (_S.CONFIRMED, Effect.ABSORB),
    (_S.COMPLETED, _X.G): (_S.COMPLETED, Effect.RESEND),
    (_S.COMPLETED, _X.H): (_S.TERMINATED, Effect.TIMEOUT),
    (_S.CONFIRMED, _X.REQUEST): (_S.CONFIRMED, Effect.ABSORB),
    (_S.CONFIRMED, _X.ACK): (_S.CONFIRMED, Effect.ABSORB),
    (_S.CONFIRMED, _X.I): (_S.TERMINATED, Effect.EXPIRE),
}

# RFC 3261 figure 8.
_SERVER_NON_INVITE: Final[Table] = {
    (_S.TRYING, _X.REQUEST): (_S.TRYING, Effect.ABSORB),  # nothing to repeat yet
    (_S.TRYING, _X.PROVISIONAL): (_S.PROCEEDING, Effect.SEND),
    (_S.TRYING, _X.SUCCESS): (_S.COMPLETED, Effect.SEND),
    (_S.TRYING, _X.FAILURE): (_S.COMPLETED, Effect.SEND),
    (_S.PROCEEDING, _X.REQUEST): (_S.PROCEEDING, Effect.RESEND),
    (_S.PROCEEDING, _X.PROVISIONAL): (_S.PROCEEDING, Effect.SEND),
    (_S.PROCEEDING, _X.SUCCESS): (_S.COMPLETED, Effect.SEND),
    (_S.PROCEEDING, _X.FAILURE): (_S.COMPLETED, Effect.SEND),
    (_S.COMPLETED, _X.REQUEST): (_S.COMPLETED, Effect.RESEND),  # never a second answer (481)
    (_S.COMPLETED, _X.J): (_S.TERMINATED, Effect.EXPIRE),
}

# RFC 3261 figure 5 with RFC 6026 §8.4.
_CLIENT_INVITE: Final[Table] = {
    (_S.CALLING, _X.A): (_S.CALLING, Effect.RESEND),
    (_S.CALLING, _X.B): (_S.TERMINATED, Effect.TIMEOUT),
    (_S.CALLING, _X.PROVISIONAL): (_S.PROCEEDING, Effect.DELIVER),
    (_S.CALLING, _X.SUCCESS): (_S.ACCEPTED, Effect.DELIVER),
    (_S.CALLING, _X.FAILURE): (_S.COMPLETED, Effect.DELIVER),  # and the layer ACKs
    (_S.PROCEEDING, _X.PROVISIONAL): (_S.PROCEEDING, Effect.DELIVER),
    (_S.PROCEEDING, _X.SUCCESS): (_S.ACCEPTED, Effect.DELIVER),
    (_S.PROCEEDING, _X.FAILURE): (_S.COMPLETED, Effect.DELIVER),
    (_S.PROCEEDING, _X.C): (_S.TERMINATED, Effect.TIMEOUT),
    (_S.ACCEPTED, _X.SUCCESS): (_S.ACCEPTED, Effect.DELIVER),  # another fork answered
    (_S.ACCEPTED, _X.SUCCESS_AGAIN): (_S.ACCEPTED, Effect.RESEND),  # the TU's ACK
    (_S.ACCEPTED, _X.M): (_S.TERMINATED, Effect.EXPIRE),
    (_S.COMPLETED, _X.FAILURE): (_S.COMPLETED, Effect.RESEND),  # our ACK again
    (_S.COMPLETED, _X.D): (_S.TERMINATED, Effect.EXPIRE),
}

# RFC 3261 figure 6.
_CLIENT_NON_INVITE: Final[Table] = {
    (_S.TRYING, _X.E): (_S.TRYING, Effect.RESEND),
    (_S.TRYING, _X.F): (_S.TERMINATED, Effect.TIMEOUT),
    (_S.TRYING, _X.PROVISIONAL): (_S.PROCEEDING, Effect.DELIVER),
    (_S.TRYING, _X.SUCCESS): (_S.COMPLETED, Effect.DELIVER),
    (_S.TRYING, _X.FAILURE): (_S.COMPLETED, Effect.DELIVER),
    (_S.PROCEEDING, _X.E): (_S.PROCEEDING, Effect.RESEND),
    (_S.PROCEEDING, _X.F): (_S.TERMINATED, Effect.TIMEOUT),
    (_S.PROCEEDING, _X.PROVISIONAL): (_S.PROCEEDING, Effect.DELIVER),
    (_S.PROCEEDING, _X.SUCCESS): (_S.COMPLETED, Effect.DELIVER),
    (_S.PROCEEDING, _X.FAILURE): (_S.COMPLETED, Effect.DELIVER),
    (_S.COMPLETED, _X.K): (_S.TERMINATED, Effect.EXPIRE),
}


@dataclass(frozen=True, slots=True)
class _Machine:
    """One kind of transaction: its transitions and the timers of each state.

    Entering a state starts the timers listed for it that are not running
    yet and cancels the others, so E and F carry on from TRYING into
    PROCEEDING as §17.1.2.2 wants.
    """

    name: str
    table: Table
    running: dict[State, tuple[Stimulus, ...]]


SERVER_INVITE: Final = _Machine(
    "INVITE server",
    _SERVER_INVITE,
    {_S.ACCEPTED: (_X.G, _X.L), _S.COMPLETED: (_X.G, _X.H), _S.CONFIRMED: (_X.I,)},
)
SERVER_NON_INVITE: Final = _Machine("non-INVITE server", _SERVER_NON_INVITE, {_S.COMPLETED: (_X.J,)})
CLIENT_INVITE: Final = _Machine(
    "INVITE client",
    _CLIENT_INVITE,
    {_S.CALLING: (_X.A, _X.B), _S.PROCEEDING: (_X.C,), _S.ACCEPTED: (_X.M,), _S.COMPLETED: (_X.D,)},
)
CLIENT_NON_INVITE: Final = _Machine(
    "non-INVITE client",
    _CLIENT_NON_INVITE,
    {_S.TRYING: (_X.E, _X.F), _S.PROCEEDING: (_X.E, _X.F), _S.COMPLETED: (_X.K,)},
)

# Hop-by-hop retransmissions that a reliable transport makes unnecessary
# (§17.1.1.2, §17.1.2.2, §17.2.1). The 2xx retransmission in ACCEPTED is
# end-to-end (§13.3.1.4: a proxy may forward our TCP 200 over UDP) and stays.
_HOP_BY_HOP: Final = {(_S.CALLING, _X.A), (_S.TRYING, _X.E), (_S.PROCEEDING, _X.E), (_S.COMPLETED, _X.G)}
# Wait states that exist only to absorb UDP retransmissions: zero over TCP.
_UDP_WAITS: Final = {_X.D, _X.I, _X.J, _X.K}


def _duration(timers: Timers, timer: Stimulus) -> float:
    """Initial duration of a timer (RFC 3261 Table 4, RFC 6026 §8.11)."""
    if timer in (_X.A, _X.E, _X.G):
        return timers.t1
    if timer is _X.C:
        return timers.c
    if timer is _X.D:
        return max(32.0, 64 * timers.t1)
    if timer in (_X.I, _X.K):
        return timers.t4
    return 64 * timers.t1  # B, F, H, J, L, M


# --- Header syntax on the hot path --------------------------------------------


@dataclass(frozen=True, slots=True)
class TopVia:
    """What matching and response routing need from a Via value."""

    transport: str
    host: str
    port: int
    branch: str
    rport: str | None  # "" when present without a value (RFC 3581 request)
    received: str | None

    @property
    def sent_by(self) -> str:
        return f"{self.host}:{self.port}"


def parse_top_via(value: str) -> TopVia | None:
    """Parse one Via value ("SIP/2.0/UDP host:port;branch=…"); None if malformed."""
    head, _, params = value.partition(";")
    protocol, _, sent_by = head.strip().rpartition(" ")
    transport = protocol.rpartition("/")[2].strip().upper()
    sent_by = sent_by.strip()
    if sent_by.startswith("["):  # IPv6 reference
        end = sent_by.find("]")
        host, port_text = sent_by[: end + 1], sent_by[end + 2 :]
    else:
        host, _, port_text = sent_by.partition(":")
    if not protocol or not host:
        return None
    try:
        port = int(port_text) if port_text else (5061 if transport == "TLS" else 5060)
    except ValueError:
        return None
    branch, rport, received = "", None, None
    for param in params.split(";"):
        name, _, val = param.partition("=")
        name = name.strip().lower()
        if name == "branch":
            branch = val.strip()
        elif name == "rport":
            rport = val.strip()
        elif name == "received":
            received = val.strip()
    return TopVia(transport, host.lower(), port, branch, rport, received)


def header_tag(value: str | None) -> str:
    """The tag parameter of a From/To value, "" when absent."""
    if not value:
        return ""
    # Header params follow the ">" of a name-addr; an addr-spec cannot hold
    # ";" in its URI (§20.10), so there every ";" starts a header param.
    gt = value.rfind(">")
    for param in (value[gt + 1 :] if gt >= 0 else value).split(";")[1:]:
        name, _, val = param.partition("=")
        if name.strip().lower() == "tag":
            return val.strip()
    return ""


def cseq_number(message: SipMessage) -> int | None:
    """The CSeq sequence number, None if missing or not a number."""
    raw = message.headers.get_first("cseq")
    if raw is None:
        return None
    number = raw.strip().partition(" ")[0]
    return int(number) if number.isdigit() else None


def _cseq_method(message: SipMessage) -> str:
    raw = message.headers.get_first("cseq") or ""
    return raw.strip().rpartition(" ")[2].strip()


def _top_via(message: SipMessage) -> TopVia | None:
    raw = message.headers.get_first("via")
    return parse_top_via(raw) if raw else None


def _server_key(request: SipRequest, via: TopVia, method: str) -> TransactionKey | None:
    """§17.2.3; ACK passes method "INVITE" to find the INVITE it acknowledges."""
    if via.branch.startswith(MAGIC_COOKIE):
        # §17.2.3 matches on branch, sent-by and method. The Call-ID is added because a
        # retransmission always repeats it, while a client that reuses a branch for a new
        # request (some do) would otherwise get the answer to its earlier one.
        return (via.branch, via.sent_by, request.headers.get_first("call-id") or "", method)
    # RFC 2543 peers: the To tag is left out because the ACK to a non-2xx
    # carries the tag we added, which the INVITE did not have.
    number = cseq_number(request)
    call_id = request.headers.get_first("call-id")
    if number is None or call_id is None:
        return None
    via_text = request.headers.get_first("via") or ""
    from_tag = header_tag(request.headers.get_first("from"))
    return ("", call_id, str(number), from_tag, via_text.strip(), request.uri, method)


def _ack_key(message: SipMessage) -> tuple[str, int, str, str] | None:
    """The fields that tie an ACK to the 2xx it acknowledges (§17.2.3 leaves this to the core)."""
    call_id = message.headers.get_first("call-id")
    number = cseq_number(message)
    if call_id is None or number is None:
        return None
    headers = message.headers
    return (call_id, number, header_tag(headers.get_first("from")), header_tag(headers.get_first("to")))


def _classify(status: int) -> Stimulus | None:
    if 100 <= status <= 199:
        return _X.PROVISIONAL
    if 200 <= status <= 299:
        return _X.SUCCESS
    if 300 <= status <= 699:
        return _X.FAILURE
    return None


# --- Transactions and events --------------------------------------------------


@dataclass(eq=False, slots=True, kw_only=True)
class _Transaction:
    key: TransactionKey
    request: SipRequest
    state: State
    reliable: bool
    machine: _Machine = field(repr=False)
    # timer -> heap sequence number of its live entry (others are stale)
    _timers: dict[Stimulus, int] = field(default_factory=dict, repr=False)
    _interval: float = field(default=0.0, repr=False)  # next A/E/G gap


@dataclass(eq=False, slots=True, kw_only=True)
class ServerTransaction(_Transaction):
    """A request from the network and our responses to it; `source` is where they go."""

    source: Address
    last_response: SipResponse | None = None
    _response_bytes: bytes = field(default=b"", repr=False)
    _ack_key: tuple[str, int, str, str] | None = field(default=None, repr=False)
    _acked: bool = field(default=False, repr=False)


@dataclass(eq=False, slots=True, kw_only=True)
class ClientTransaction(_Transaction):
    """A request we sent; `final_response` is the first final that came back."""

    destination: Address
    final_response: SipResponse | None = None
    _request_bytes: bytes = field(default=b"", repr=False)
    _ack_bytes: bytes = field(default=b"", repr=False)  # our ACK to a non-2xx
    # To tag of each 2xx delivered -> the TU's ACK for it, once given
    _acks: dict[str, tuple[bytes, Address] | None] = field(default_factory=dict, repr=False)


AnyTransaction = ServerTransaction | ClientTransaction


@dataclass(frozen=True, slots=True)
class RequestReceived:
    request: SipRequest
    source: Address
    transaction: ServerTransaction
    cancels: ServerTransaction | None  # for CANCEL: the INVITE it names (§9.2)


@dataclass(frozen=True, slots=True)
class AckReceived:
    request: SipRequest
    source: Address
    transaction: ServerTransaction | None  # None: no INVITE awaits this ACK


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    response: SipResponse
    transaction: ClientTransaction


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    transaction: AnyTransaction
    timer: str  # "B"/"F"/"C": no final (act as 408); "H"/"L": our final never ACKed


_HeapEntry = tuple[float, int, Stimulus, AnyTransaction]


def _acked(transaction: AnyTransaction) -> bool:
    # Timer L ends ACCEPTED either way; only an unACKed 2xx concerns the TU.
    return isinstance(transaction, ServerTransaction) and transaction._acked


class SipTransactions:
    """Every SIP transaction of one endpoint; see the module docstring."""

    def __init__(self, *, timers: Timers = Timers(), max_transactions: int = 50_000) -> None:
        self.timers = timers
        self.max_transactions = max_transactions
        self._server: dict[TransactionKey, ServerTransaction] = {}
        self._client: dict[TransactionKey, ClientTransaction] = {}
        self._accepted: dict[tuple[str, int, str, str], ServerTransaction] = {}
        self._outbox: list[tuple[bytes, Address]] = []
        self._heap: list[_HeapEntry] = []
        self._sequence = 0
        self._live_timers = 0
        self._last_matched: tuple[SipRequest, TopVia | None, TransactionKey | None] | None = None

    def __len__(self) -> int:
        return len(self._server) + len(self._client)

    def is_retransmission(self, request: SipRequest) -> bool:
        """True when `request` repeats one a server transaction already holds (O(1), nothing changes)."""
        if request.method == "ACK":
            return False
        _, key = self._matching(request)
        return key is not None and key in self._server

    def _matching(self, request: SipRequest) -> tuple[TopVia | None, TransactionKey | None]:
        """The top Via and server key of a request; the endpoint asks twice per message, parsed once."""
        last = self._last_matched
        if last is not None and last[0] is request:
            return last[1], last[2]
        via = _top_via(request)
        key = _server_key(request, via, request.method) if via is not None else None
        self._last_matched = (request, via, key)
        return via, key

    # --- door 1: receive ------------------------------------------------------

    def receive_request(
        self, request: SipRequest, source: Address, now: float, *, reliable: bool = False
    ) -> RequestReceived | AckReceived | None:
        """Match a request (§17.2.3); None when it was absorbed.

        A request without a usable top Via or CSeq is dropped: check
        `aiosipua.message.missing_required_headers` first to answer 400.
        """
        if request.method == "ACK":
            via = _top_via(request)
            return self._receive_ack(request, source, via, now) if via is not None else None
        via, key = self._matching(request)
        self._last_matched = None  # holds no message beyond this call
        if via is None or key is None:
            return None
        known = self._server.get(key)
        if known is not None:
            if self._step(known, _X.REQUEST, now) is Effect.RESEND and known._response_bytes:
                self._outbox.append((known._response_bytes, known.source))
            return None
        if len(self) >= self.max_transactions:
            raise Overloaded(f"{len(self)} transactions open")
        invite = request.method == "INVITE"
        transaction = ServerTransaction(
            key=key,
            request=request,
            state=_S.PROCEEDING if invite else _S.TRYING,
            reliable=reliable,
            source=source,
            machine=SERVER_INVITE if invite else SERVER_NON_INVITE,
        )
        self._server[key] = transaction
        cancels = self._server.get(key[:-1] + ("INVITE",)) if request.method == "CANCEL" else None
        return RequestReceived(request, source, transaction, cancels)

    def _receive_ack(
        self, request: SipRequest, source: Address, via: TopVia, now: float
    ) -> AckReceived | None:
        key = _server_key(request, via, "INVITE")
        transaction = self._server.get(key) if key is not None else None
        if transaction is None:
            # The ACK to a 2xx is a transaction of its own (new branch).
            ack_key = _ack_key(request)
            transaction = self._accepted.get(ack_key) if ack_key is not None else None
            if transaction is None:
                return AckReceived(request, source, None)
        stimulus = _X.ACK_AGAIN if transaction._acked else _X.ACK
        if self._step(transaction, stimulus, now) is not Effect.DELIVER:
            return None
        transaction._acked = True
        self._cancel(transaction, _X.G)  # §13.3.1.4: the ACK ends the 2xx retransmissions
        return AckReceived(request, source, transaction)

    def receive_response(self, response: SipResponse, source: Address, now: float) -> ResponseReceived | None:
        """Match a response to our request (§17.1.3); None when absorbed or stray."""
        via = _top_via(response)
        if via is None:
            return None
        transaction = self._client.get((via.branch, _cseq_method(response)))
        stimulus = _classify(response.status_code)
        if transaction is None or stimulus is None:
            return None
        invite = transaction.machine is CLIENT_INVITE
        to_tag = header_tag(response.headers.get_first("to"))
        if stimulus is _X.SUCCESS and invite and to_tag in transaction._acks:
            stimulus = _X.SUCCESS_AGAIN
        effect = self._step(transaction, stimulus, now)
        if effect is Effect.RESEND:
            ack = transaction._acks.get(to_tag) if stimulus is _X.SUCCESS_AGAIN else None
            if ack is not None:
                self._outbox.append(ack)
            elif stimulus is _X.FAILURE:
                self._outbox.append((transaction._ack_bytes, transaction.destination))
            return None
        if effect is not Effect.DELIVER:
            return None
        if stimulus is not _X.PROVISIONAL and transaction.final_response is None:
            transaction.final_response = response
        if invite and stimulus is _X.SUCCESS:
            transaction._acks[to_tag] = None  # the TU's ACK comes through send_ack
        elif invite and stimulus is _X.FAILURE:
            transaction._ack_bytes = bytes(_ack_for_failure(transaction.request, response))
            self._outbox.append((transaction._ack_bytes, transaction.destination))
        return ResponseReceived(response, transaction)

    # --- door 2: respond and send ---------------------------------------------

    def respond(self, transaction: ServerTransaction, response: SipResponse, now: float) -> None:
        """Send the TU's response on its transaction; raises SipProtocolError on misuse."""
        stimulus = _classify(response.status_code)
        step = transaction.machine.table.get((transaction.state, stimulus)) if stimulus else None
        if stimulus is None or step is None or step[1] is not Effect.SEND:
            raise SipProtocolError(
                f"cannot send {response.status_code} to {transaction.request.method} "
                f"in state {transaction.state.name}"
            )
        transaction.last_response = response
        # §18.2.2 with RFC 3581: over UDP the reply goes where the request came from.
        transaction._response_bytes = bytes(response)
        self._outbox.append((transaction._response_bytes, transaction.source))
        if stimulus is _X.SUCCESS and transaction.machine is SERVER_INVITE:
            transaction._ack_key = _ack_key(response)
            if transaction._ack_key is not None:
                self._accepted[transaction._ack_key] = transaction
        self._step(transaction, stimulus, now)

    def send_request(
        self, request: SipRequest, destination: Address, now: float, *, reliable: bool = False
    ) -> ClientTransaction:
        """Start a client transaction; the request carries its top Via with a fresh z9hG4bK branch."""
        via = _top_via(request)
        if via is None or not via.branch.startswith(MAGIC_COOKIE):
            raise SipProtocolError("a request we send needs a top Via with a z9hG4bK branch")
        if request.method == "ACK":
            raise SipProtocolError("an ACK is not a transaction: use send_ack or send_stateless")
        key = (via.branch, request.method)
        if key in self._client:
            raise SipProtocolError(f"branch {via.branch} already used for a {request.method}")
        invite = request.method == "INVITE"
        transaction = ClientTransaction(
            key=key,
            request=request,
            state=_S.CALLING if invite else _S.TRYING,
            reliable=reliable,
            destination=destination,
            machine=CLIENT_INVITE if invite else CLIENT_NON_INVITE,
            _request_bytes=bytes(request),
        )
        self._client[key] = transaction
        self._outbox.append((transaction._request_bytes, destination))
        self._enter(transaction, transaction.state, now)
        return transaction

    def send_ack(self, transaction: ClientTransaction, ack: SipRequest, destination: Address) -> None:
        """Send the TU's ACK to a 2xx, and re-send it for every retransmission of that 2xx."""
        to_tag = header_tag(ack.headers.get_first("to"))
        if transaction.machine is not CLIENT_INVITE or to_tag not in transaction._acks:
            raise SipProtocolError("send_ack acknowledges a 2xx delivered on a client INVITE")
        datagram = (bytes(ack), destination)
        transaction._acks[to_tag] = datagram
        self._outbox.append(datagram)

    def send_stateless(self, message: SipRequest | SipResponse, destination: Address) -> None:
        self._outbox.append((bytes(message), destination))

    # --- door 3: datagrams ----------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        outbox, self._outbox = self._outbox, []
        return outbox

    # --- door 4: timers -------------------------------------------------------

    def get_timer(self) -> float | None:
        heap = self._heap
        while heap and not self._is_live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> list[TransactionTimeout]:
        timeouts: list[TransactionTimeout] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if not self._is_live(entry):
                continue
            _, _, timer, transaction = entry
            del transaction._timers[timer]
            self._live_timers -= 1
            effect = self._step(transaction, timer, now)
            if effect is Effect.RESEND:
                self._retransmit(transaction, timer, now)
            elif effect is Effect.TIMEOUT and not _acked(transaction):
                timeouts.append(TransactionTimeout(transaction, timer.value))
        return timeouts

    # --- the machine ----------------------------------------------------------

    def _step(self, transaction: AnyTransaction, stimulus: Stimulus, now: float) -> Effect | None:
        """Apply one table row; None (and no change) when the table has none."""
        step = transaction.machine.table.get((transaction.state, stimulus))
        if step is None:
            return None
        next_state, effect = step
        if next_state is not transaction.state:
            self._enter(transaction, next_state, now)
        return effect

    def _enter(self, transaction: AnyTransaction, state: State, now: float) -> None:
        transaction.state = state
        if state is _S.TERMINATED:
            self._forget(transaction)
            return
        running = transaction.machine.running.get(state, ())
        for timer in [t for t in transaction._timers if t not in running]:
            self._cancel(transaction, timer)
        zero: Stimulus | None = None
        for timer in running:
            if timer in transaction._timers:
                continue
            if transaction.reliable and (state, timer) in _HOP_BY_HOP:
                continue
            delay = 0.0 if transaction.reliable and timer in _UDP_WAITS else _duration(self.timers, timer)
            if timer in (_X.A, _X.E, _X.G):
                transaction._interval = delay
            if delay <= 0:
                zero = timer
            else:
                self._schedule(transaction, timer, now + delay)
        if zero is not None:  # a wait that is zero over TCP: leave the state at once
            self._step(transaction, zero, now)

    def _retransmit(self, transaction: AnyTransaction, timer: Stimulus, now: float) -> None:
        if isinstance(transaction, ServerTransaction):
            self._outbox.append((transaction._response_bytes, transaction.source))
        else:
            self._outbox.append((transaction._request_bytes, transaction.destination))
        if timer is _X.A:  # §17.1.1.2: Timer A doubles without a cap
            transaction._interval *= 2
        elif timer is _X.E and transaction.state is _S.PROCEEDING:  # §17.1.2.2
            transaction._interval = self.timers.t2
        else:  # E in TRYING, G: double up to T2
            transaction._interval = min(2 * transaction._interval, self.timers.t2)
        self._schedule(transaction, timer, now + transaction._interval)

    def _forget(self, transaction: AnyTransaction) -> None:
        self._live_timers -= len(transaction._timers)
        transaction._timers.clear()
        if isinstance(transaction, ServerTransaction):
            self._server.pop(transaction.key, None)
            if transaction._ack_key is not None:
                self._accepted.pop(transaction._ack_key, None)
        else:
            self._client.pop(transaction.key, None)

    def _schedule(self, transaction: AnyTransaction, timer: Stimulus, deadline: float) -> None:
        self._sequence += 1
        if timer not in transaction._timers:
            self._live_timers += 1
        transaction._timers[timer] = self._sequence
        heapq.heappush(self._heap, (deadline, self._sequence, timer, transaction))
        # Lazy deletion leaves cancelled entries behind; rebuild before they dominate.
        if len(self._heap) > 2 * self._live_timers + 1024:
            self._heap = [entry for entry in self._heap if self._is_live(entry)]
            heapq.heapify(self._heap)

    def _cancel(self, transaction: AnyTransaction, timer: Stimulus) -> None:
        if transaction._timers.pop(timer, None) is not None:
            self._live_timers -= 1

    @staticmethod
    def _is_live(entry: _HeapEntry) -> bool:
        _, sequence, timer, transaction = entry
        return transaction._timers.get(timer) == sequence


def _ack_for_failure(invite: SipRequest, response: SipResponse) -> SipRequest:
    """§17.1.1.3: the ACK the INVITE client transaction sends for a 300-699."""
    ack = SipRequest(method="ACK", uri=invite.uri)
    headers, original = ack.headers, invite.headers
    top_via = original.get_first("via")
    if top_via is not None:
        headers.append("Via", top_via)
    for route in original.get("route"):
        headers.append("Route", route)
    for name in ("From", "Call-ID"):
        value = original.get_first(name)
        if value is not None:
            headers.set_single(name, value)
    to = response.headers.get_first("to")
    if to is not None:
        headers.set_single("To", to)
    headers.set_single("CSeq", f"{cseq_number(invite) or 0} ACK")
    headers.set_single("Max-Forwards", "70")
    return ack
