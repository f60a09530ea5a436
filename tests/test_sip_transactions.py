"""The SIP transaction layer on a fake clock: which datagrams leave at which time, which events come up.

Every scenario is a script of (time, action) steps. `Harness.run` advances
a float clock through the layer's own deadlines and the script, and writes
one line per observable thing:

    "<= INVITE"      an event for the TU (RequestReceived / AckReceived / ResponseReceived)
    "absorbed ACK"   a message the layer swallowed (receive returned None)
    "-> SIP/2.0 486 Busy Here"   a datagram out (its first line)
    "timeout H"      a TransactionTimeout
    "open 1"         how many transactions the layer holds

With T1 = 0.5 s, T2 = 4 s, T4 = 5 s: retransmissions at 0.5, 1.5, 3.5, 7.5,
then every 4 s (capped timers), and 64*T1 = 32 s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from aiosipua.message import SipMessage, SipRequest, SipResponse

from ivr.sip.dialogs import make_response
from ivr.sip.transactions import (
    CLIENT_INVITE,
    CLIENT_NON_INVITE,
    SERVER_INVITE,
    SERVER_NON_INVITE,
    AckReceived,
    Address,
    ClientTransaction,
    Overloaded,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    SipProtocolError,
    SipTransactions,
    State,
    Timers,
    TransactionTimeout,
    _Machine,
    parse_top_via,
)

PEER: Address = ("192.0.2.10", 5060)
IVR_VIA = "SIP/2.0/UDP 192.0.2.1:5060;branch={branch};rport"
PEER_VIA = "SIP/2.0/UDP 192.0.2.10:5060;branch={branch};rport"


def wire(message: SipRequest | SipResponse) -> SipRequest | SipResponse:
    """What the peer would read: serialise and parse again."""
    return SipMessage.parse(bytes(message))


def peer_request(
    method: str,
    *,
    branch: str = "z9hG4bKpeer1",
    cseq: int = 1,
    to_tag: str = "",
    call_id: str = "call-1@192.0.2.10",
    via: str | None = None,
    uri: str = "sip:hotline@192.0.2.1",
) -> SipRequest:
    """A request from the caller's phone, as parsed off the wire."""
    to = "<sip:hotline@192.0.2.1>" + (f";tag={to_tag}" if to_tag else "")
    text = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: {via or PEER_VIA.format(branch=branch)}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@192.0.2.10>;tag=alice1\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:alice@192.0.2.10:5060>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    request = SipMessage.parse(text.encode())
    assert isinstance(request, SipRequest)
    return request


def our_request(method: str, *, branch: str = "z9hG4bKivr1", cseq: int = 1, to_tag: str = "") -> SipRequest:
    """A request the TU built, with its top Via and branch."""
    request = SipRequest(method=method, uri="sip:agent@192.0.2.10:5060")
    request.headers.append("Via", IVR_VIA.format(branch=branch))
    request.headers.append("Route", "<sip:proxy.example.net;lr>")
    request.headers.set_single("Max-Forwards", "70")
    request.headers.set_single("From", "<sip:hotline@192.0.2.1>;tag=ivr1")
    request.headers.set_single("To", "<sip:agent@192.0.2.10>" + (f";tag={to_tag}" if to_tag else ""))
    request.headers.set_single("Call-ID", "out-1@192.0.2.1")
    request.headers.set_single("CSeq", f"{cseq} {method}")
    return request


def answer(request: SipRequest, status: int, reason: str, to_tag: str = "agent1") -> SipResponse:
    """The peer's response to `request`, as parsed off the wire."""
    response = wire(make_response(request, status, reason, to_tag=to_tag))
    assert isinstance(response, SipResponse)
    return response


@dataclass
class Harness:
    """Drives one SipTransactions through a script on a fake clock."""

    timers: Timers = field(default_factory=Timers)
    max_transactions: int = 50_000
    now: float = 0.0
    log: list[tuple[float, str]] = field(default_factory=list)
    layer: SipTransactions = field(init=False)
    server: list[ServerTransaction] = field(default_factory=list)  # in order of arrival
    client: list[ClientTransaction] = field(default_factory=list)  # in order of sending
    events: list[object] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.layer = SipTransactions(timers=self.timers, max_transactions=self.max_transactions)

    def run(self, script: list[tuple[float, Step]], until: float) -> list[tuple[float, str]]:
        for at, step in sorted(script, key=lambda item: item[0]):
            self.advance(at)
            step(self)
            self.flush()
        self.advance(until)
        return self.log

    def advance(self, to: float) -> None:
        while (deadline := self.layer.get_timer()) is not None and deadline <= to:
            self.now = deadline
            for timeout in self.layer.handle_timer(deadline):
                self.events.append(timeout)
                self.note(f"timeout {timeout.timer}")
            self.flush()
        self.now = to

    def flush(self) -> None:
        for data, _address in self.layer.datagrams_to_send():
            self.note("-> " + data.split(b"\r\n", 1)[0].decode())

    def note(self, what: str) -> None:
        self.log.append((round(self.now, 3), what))


Step = Callable[[Harness], None]


# --- script steps -----------------------------------------------------------


def arrives(message: SipRequest | SipResponse, *, reliable: bool = False) -> Step:
    def step(h: Harness) -> None:
        event: RequestReceived | AckReceived | ResponseReceived | None
        if isinstance(message, SipRequest):
            event = h.layer.receive_request(message, PEER, h.now, reliable=reliable)
        else:
            event = h.layer.receive_response(message, PEER, h.now)
        name = message.method if isinstance(message, SipRequest) else str(message.status_code)
        if event is None:
            h.note(f"absorbed {name}")
            return
        h.events.append(event)
        h.note(f"<= {name}")
        if isinstance(event, RequestReceived):
            h.server.append(event.transaction)

    return step


def responds(status: int, reason: str, *, to_tag: str = "ivr9", index: int = -1) -> Step:
    def step(h: Harness) -> None:
        transaction = h.server[index]
        h.layer.respond(transaction, make_response(transaction.request, status, reason, to_tag=to_tag), h.now)

    return step


def sends(request: SipRequest, *, reliable: bool = False) -> Step:
    def step(h: Harness) -> None:
        h.client.append(h.layer.send_request(request, PEER, h.now, reliable=reliable))

    return step


def acks_2xx(ack: SipRequest) -> Step:
    def step(h: Harness) -> None:
        h.layer.send_ack(h.client[-1], ack, PEER)

    return step


def count(h: Harness) -> None:
    h.note(f"open {len(h.layer)}")


def invite_from_peer(**kw: object) -> SipRequest:
    return peer_request("INVITE", **kw)  # type: ignore[arg-type]


INVITE = peer_request("INVITE")
ACK_NON_2XX = peer_request("ACK", to_tag="ivr9")  # same branch as the INVITE
ACK_2XX = peer_request("ACK", branch="z9hG4bKpeer1ack", to_tag="ivr9")
BYE = peer_request("BYE", branch="z9hG4bKbye1", cseq=2, to_tag="ivr9")
OUR_INVITE = our_request("INVITE")
OUR_BYE = our_request("BYE", branch="z9hG4bKivrbye", cseq=2, to_tag="agent1")
OUR_ACK_2XX = our_request("ACK", branch="z9hG4bKivrack", to_tag="agent1")

INV = "INVITE sip:agent@192.0.2.10:5060 SIP/2.0"
BYE_LINE = "BYE sip:agent@192.0.2.10:5060 SIP/2.0"
ACK_LINE = "ACK sip:agent@192.0.2.10:5060 SIP/2.0"
R486 = "SIP/2.0 486 Busy Here"
R200 = "SIP/2.0 200 OK"


def every(times: list[float], what: str) -> list[tuple[float, str]]:
    return [(t, what) for t in times]


CAPPED = [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]  # T1 doubling, capped at T2, to 64*T1

# One case per RFC 3261 / RFC 6026 timer: (timer, script, until, expected log).
TIMER_CASES: list[tuple[str, list[tuple[float, Step]], float, list[tuple[float, str]]]] = [
    (
        "A: INVITE retransmitted at T1, 2T1 … until a provisional arrives",
        [(0.0, sends(OUR_INVITE)), (2.0, arrives(answer(OUR_INVITE, 100, "Trying", to_tag="")))],
        60.0,
        [(0.0, f"-> {INV}"), (0.5, f"-> {INV}"), (1.5, f"-> {INV}"), (2.0, "<= 100")],
    ),
    (
        "A: uncapped doubling, B: timeout at 64*T1",
        [(0.0, sends(OUR_INVITE)), (32.1, count)],
        40.0,
        every([0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5], f"-> {INV}") + [(32.0, "timeout B"), (32.1, "open 0")],
    ),
    (
        "B: over TCP no Timer A, still 64*T1",
        [(0.0, sends(OUR_INVITE, reliable=True))],
        40.0,
        [(0.0, f"-> {INV}"), (32.0, "timeout B")],
    ),
    (
        "C: client INVITE stuck in PROCEEDING gives up after Timer C",
        [(0.0, sends(OUR_INVITE)), (0.2, arrives(answer(OUR_INVITE, 180, "Ringing")))],
        200.0,
        [(0.0, f"-> {INV}"), (0.2, "<= 180"), (180.2, "timeout C")],
    ),
    (
        "D: a 486 is ACKed, re-ACKed on retransmission, absorbed for 32 s",
        [
            (0.0, sends(OUR_INVITE)),
            (0.2, arrives(answer(OUR_INVITE, 486, "Busy Here"))),
            (10.0, arrives(answer(OUR_INVITE, 486, "Busy Here"))),
            (32.1, count),
            (32.3, count),
        ],
        40.0,
        [
            (0.0, f"-> {INV}"),
            (0.2, "<= 486"),
            (0.2, f"-> {ACK_LINE}"),
            (10.0, "absorbed 486"),
            (10.0, f"-> {ACK_LINE}"),
            (32.1, "open 1"),
            (32.3, "open 0"),
        ],
    ),
    (
        "E: BYE retransmitted at T1 doubling, stops at the 200, K then ends it",
        [(0.0, sends(OUR_BYE)), (2.0, arrives(answer(OUR_BYE, 200, "OK"))), (6.9, count), (7.1, count)],
        40.0,
        every([0.0, 0.5, 1.5], f"-> {BYE_LINE}") + [(2.0, "<= 200"), (6.9, "open 1"), (7.1, "open 0")],
    ),
    (
        "E: in PROCEEDING the BYE is retransmitted every T2",
        [
            (0.0, sends(OUR_BYE)),
            (1.0, arrives(answer(OUR_BYE, 100, "Trying", to_tag=""))),
            (10.0, arrives(answer(OUR_BYE, 200, "OK"))),
        ],
        40.0,
        every([0.0, 0.5], f"-> {BYE_LINE}")
        + [(1.0, "<= 100")]
        + every([1.5, 5.5, 9.5], f"-> {BYE_LINE}")
        + [(10.0, "<= 200")],
    ),
    (
        "F: BYE unanswered: retransmissions capped at T2, timeout at 64*T1",
        [(0.0, sends(OUR_BYE))],
        40.0,
        every([0.0, *CAPPED], f"-> {BYE_LINE}") + [(32.0, "timeout F")],
    ),
    (
        "G: a 486 is retransmitted until the ACK, which is absorbed",
        [(0.0, arrives(INVITE)), (0.0, responds(486, "Busy Here")), (2.0, arrives(ACK_NON_2XX))],
        6.0,
        [(0.0, "<= INVITE"), *every([0.0, 0.5, 1.5], f"-> {R486}"), (2.0, "absorbed ACK")],
    ),
    (
        "H: a 486 never ACKed: G capped at T2, timeout at 64*T1",
        [(0.0, arrives(INVITE)), (0.0, responds(486, "Busy Here")), (32.1, count)],
        40.0,
        [(0.0, "<= INVITE"), *every([0.0, *CAPPED], f"-> {R486}"), (32.0, "timeout H"), (32.1, "open 0")],
    ),
    (
        "I: CONFIRMED absorbs ACKs and INVITEs for T4",
        [
            (0.0, arrives(INVITE)),
            (0.0, responds(486, "Busy Here")),
            (1.0, arrives(ACK_NON_2XX)),
            (3.0, arrives(ACK_NON_2XX)),
            (4.0, arrives(INVITE)),
            (5.9, count),
            (6.1, count),
        ],
        10.0,
        [
            (0.0, "<= INVITE"),
            *every([0.0, 0.5], f"-> {R486}"),
            (1.0, "absorbed ACK"),
            (3.0, "absorbed ACK"),
            (4.0, "absorbed INVITE"),
            (5.9, "open 1"),
            (6.1, "open 0"),
        ],
    ),
    (
        "J: a retransmitted BYE gets the cached 200 until 64*T1",
        [
            (0.0, arrives(BYE)),
            (0.0, responds(200, "OK")),
            (10.0, arrives(BYE)),
            (31.9, count),
            (32.1, count),
        ],
        40.0,
        [
            (0.0, "<= BYE"),
            (0.0, f"-> {R200}"),
            (10.0, "absorbed BYE"),
            (10.0, f"-> {R200}"),
            (31.9, "open 1"),
            (32.1, "open 0"),
        ],
    ),
    (
        "K: a retransmitted 200 to our BYE is absorbed for T4",
        [
            (0.0, sends(OUR_BYE)),
            (0.2, arrives(answer(OUR_BYE, 200, "OK"))),
            (1.0, arrives(answer(OUR_BYE, 200, "OK"))),
            (5.1, count),
            (5.3, count),
        ],
        10.0,
        [
            (0.0, f"-> {BYE_LINE}"),
            (0.2, "<= 200"),
            (1.0, "absorbed 200"),
            (5.1, "open 1"),
            (5.3, "open 0"),
        ],
    ),
    (
        "L: a 200 never ACKed is retransmitted until 64*T1, then timeout L",
        [(0.0, arrives(INVITE)), (0.0, responds(200, "OK"))],
        40.0,
        [(0.0, "<= INVITE"), *every([0.0, *CAPPED], f"-> {R200}"), (32.0, "timeout L")],
    ),
    (
        "L: after the ACK the 200 stops, and ACCEPTED ends quietly at 64*T1",
        [
            (0.0, arrives(INVITE)),
            (0.0, responds(200, "OK")),
            (1.0, arrives(ACK_2XX)),
            (2.0, arrives(ACK_2XX)),
            (3.0, arrives(INVITE)),
            (31.9, count),
            (32.1, count),
        ],
        40.0,
        [
            (0.0, "<= INVITE"),
            *every([0.0, 0.5], f"-> {R200}"),
            (1.0, "<= ACK"),
            (2.0, "absorbed ACK"),
            (3.0, "absorbed INVITE"),
            (31.9, "open 1"),
            (32.1, "open 0"),
        ],
    ),
    (
        "M: a 2xx retransmission re-sends the TU's ACK, for 64*T1",
        [
            (0.0, sends(OUR_INVITE)),
            (0.2, arrives(answer(OUR_INVITE, 200, "OK"))),
            (0.2, acks_2xx(OUR_ACK_2XX)),
            (1.0, arrives(answer(OUR_INVITE, 200, "OK"))),
            (32.1, count),
            (32.3, count),
            (33.0, arrives(answer(OUR_INVITE, 200, "OK"))),
        ],
        40.0,
        [
            (0.0, f"-> {INV}"),
            (0.2, "<= 200"),
            (0.2, f"-> {ACK_LINE}"),
            (1.0, "absorbed 200"),
            (1.0, f"-> {ACK_LINE}"),
            (32.1, "open 1"),
            (32.3, "open 0"),
            (33.0, "absorbed 200"),  # stray now: no transaction
        ],
    ),
]


@pytest.mark.parametrize(
    ("case", "script", "until", "expected"),
    TIMER_CASES,
    ids=[c[0][:1] + str(i) for i, c in enumerate(TIMER_CASES)],
)
def test_timer(
    case: str, script: list[tuple[float, Step]], until: float, expected: list[tuple[float, str]]
) -> None:
    assert Harness().run(script, until) == expected, case


# --- retransmission rules ---------------------------------------------------

RULE_CASES: list[tuple[str, list[tuple[float, Step]], list[tuple[float, str]]]] = [
    (
        "INVITE again before any response: absorbed, nothing to repeat",
        [(0.0, arrives(INVITE)), (0.3, arrives(INVITE))],
        [(0.0, "<= INVITE"), (0.3, "absorbed INVITE")],
    ),
    (
        "INVITE again in PROCEEDING gets the last provisional",
        [
            (0.0, arrives(INVITE)),
            (0.0, responds(100, "Trying")),
            (0.1, responds(180, "Ringing")),
            (0.5, arrives(INVITE)),
        ],
        [
            (0.0, "<= INVITE"),
            (0.0, "-> SIP/2.0 100 Trying"),
            (0.1, "-> SIP/2.0 180 Ringing"),
            (0.5, "absorbed INVITE"),
            (0.5, "-> SIP/2.0 180 Ringing"),
        ],
    ),
    (
        "INVITE again in ACCEPTED is absorbed without an answer (RFC 6026 §7.1)",
        [(0.0, arrives(INVITE)), (0.0, responds(200, "OK")), (0.2, arrives(INVITE))],
        [(0.0, "<= INVITE"), (0.0, f"-> {R200}"), (0.2, "absorbed INVITE"), (0.5, f"-> {R200}")],
    ),
    (
        "INVITE again in COMPLETED gets the final again",
        [(0.0, arrives(INVITE)), (0.0, responds(486, "Busy Here")), (0.2, arrives(INVITE))],
        [
            (0.0, "<= INVITE"),
            (0.0, f"-> {R486}"),
            (0.2, "absorbed INVITE"),
            (0.2, f"-> {R486}"),
            (0.5, f"-> {R486}"),
        ],
    ),
    (
        "non-INVITE again while TRYING is absorbed; in PROCEEDING gets the provisional",
        [
            (0.0, arrives(BYE)),
            (0.1, arrives(BYE)),
            (0.2, responds(100, "Trying")),
            (0.3, arrives(BYE)),
        ],
        [
            (0.0, "<= BYE"),
            (0.1, "absorbed BYE"),
            (0.2, "-> SIP/2.0 100 Trying"),
            (0.3, "absorbed BYE"),
            (0.3, "-> SIP/2.0 100 Trying"),
        ],
    ),
    (
        "an ACK that matches nothing goes up without a transaction",
        [(0.0, arrives(peer_request("ACK", branch="z9hG4bKlost", to_tag="gone")))],
        [(0.0, "<= ACK")],
    ),
    (
        "a response to nothing we sent is dropped",
        [(0.0, arrives(answer(our_request("OPTIONS", branch="z9hG4bKnever"), 200, "OK")))],
        [(0.0, "absorbed 200")],
    ),
    (
        "a late 180 after the 200 to our INVITE is absorbed",
        [
            (0.0, sends(OUR_INVITE)),
            (0.1, arrives(answer(OUR_INVITE, 200, "OK"))),
            (0.2, arrives(answer(OUR_INVITE, 180, "Ringing"))),
        ],
        [(0.0, f"-> {INV}"), (0.1, "<= 200"), (0.2, "absorbed 180")],
    ),
    (
        "a 200 from a second fork is delivered, a retransmission of it absorbed",
        [
            (0.0, sends(OUR_INVITE)),
            (0.1, arrives(answer(OUR_INVITE, 200, "OK", to_tag="fork1"))),
            (0.2, arrives(answer(OUR_INVITE, 200, "OK", to_tag="fork2"))),
            (0.3, arrives(answer(OUR_INVITE, 200, "OK", to_tag="fork2"))),
        ],
        [(0.0, f"-> {INV}"), (0.1, "<= 200"), (0.2, "<= 200"), (0.3, "absorbed 200")],
    ),
]


@pytest.mark.parametrize(
    ("case", "script", "expected"), RULE_CASES, ids=[str(i) for i in range(len(RULE_CASES))]
)
def test_retransmission_rule(
    case: str, script: list[tuple[float, Step]], expected: list[tuple[float, str]]
) -> None:
    assert Harness().run(script, until=0.9) == expected, case


# --- the field bugs ---------------------------------------------------------


def test_retransmitted_invite_200ms_later_yields_one_request_and_the_same_response() -> None:
    layer = SipTransactions()
    first = layer.receive_request(INVITE, PEER, 0.0)
    assert isinstance(first, RequestReceived)
    layer.respond(first.transaction, make_response(INVITE, 180, "Ringing", to_tag="ivr9"), 0.0)
    ((ringing, _),) = layer.datagrams_to_send()

    assert layer.receive_request(peer_request("INVITE"), PEER, 0.2) is None
    ((again, address),) = layer.datagrams_to_send()
    assert again == ringing and address == PEER
    assert b";tag=ivr9" in again

    layer.respond(first.transaction, make_response(INVITE, 200, "OK", to_tag="ivr9"), 0.3)
    ((ok, _),) = layer.datagrams_to_send()
    assert layer.receive_request(peer_request("INVITE"), PEER, 0.4) is None
    assert layer.datagrams_to_send() == []
    layer.handle_timer(0.8)
    assert layer.datagrams_to_send() == [(ok, PEER)]  # the 2xx retransmission, same bytes and tag


def test_retransmitted_bye_after_our_200_gets_the_same_200_not_481() -> None:
    layer = SipTransactions()
    event = layer.receive_request(BYE, PEER, 0.0)
    assert isinstance(event, RequestReceived)
    layer.respond(event.transaction, make_response(BYE, 200, "OK"), 0.0)
    ((ok, _),) = layer.datagrams_to_send()
    for at in (0.5, 1.5, 20.0):  # the caller missed our 200 each time
        assert (
            layer.receive_request(peer_request("BYE", branch="z9hG4bKbye1", cseq=2, to_tag="ivr9"), PEER, at)
            is None
        )
        assert layer.datagrams_to_send() == [(ok, PEER)]


def test_our_bye_is_retransmitted_until_a_response_arrives_then_stops() -> None:
    h = Harness()
    log = h.run(
        [(0.0, sends(OUR_BYE)), (4.0, arrives(answer(OUR_BYE, 481, "Call Does Not Exist")))], until=60.0
    )
    assert log == every([0.0, 0.5, 1.5, 3.5], f"-> {BYE_LINE}") + [(4.0, "<= 481")]
    assert not any(isinstance(e, TransactionTimeout) for e in h.events)


# --- ACKs, CANCEL -----------------------------------------------------------


def test_ack_to_2xx_is_delivered_once_with_its_transaction_and_stops_the_2xx() -> None:
    h = Harness()
    h.run(
        [
            (0.0, arrives(INVITE)),
            (0.0, responds(200, "OK")),
            (0.7, arrives(ACK_2XX)),
            (0.8, arrives(ACK_2XX)),
        ],
        40.0,
    )
    acks = [e for e in h.events if isinstance(e, AckReceived)]
    assert len(acks) == 1 and acks[0].transaction is h.server[0]
    assert [what for at, what in h.log if at > 0.7] == ["absorbed ACK"]


def test_ack_to_non_2xx_is_absorbed_by_the_invite_transaction() -> None:
    layer = SipTransactions()
    event = layer.receive_request(INVITE, PEER, 0.0)
    assert isinstance(event, RequestReceived)
    layer.respond(event.transaction, make_response(INVITE, 603, "Decline", to_tag="ivr9"), 0.0)
    assert layer.receive_request(ACK_NON_2XX, PEER, 0.1) is None
    assert event.transaction.state is State.CONFIRMED


def test_cancel_is_matched_to_its_invite() -> None:
    layer = SipTransactions()
    invite = layer.receive_request(INVITE, PEER, 0.0)
    assert isinstance(invite, RequestReceived)
    cancel = layer.receive_request(peer_request("CANCEL"), PEER, 1.0)
    assert isinstance(cancel, RequestReceived)
    assert cancel.cancels is invite.transaction and cancel.transaction is not invite.transaction
    other = layer.receive_request(peer_request("CANCEL", branch="z9hG4bKother"), PEER, 1.0)
    assert isinstance(other, RequestReceived) and other.cancels is None


def test_rfc2543_requests_match_without_a_branch() -> None:
    old_via = "SIP/2.0/UDP 192.0.2.10:5060"
    layer = SipTransactions()
    invite = layer.receive_request(peer_request("INVITE", via=old_via), PEER, 0.0)
    assert isinstance(invite, RequestReceived)
    assert layer.receive_request(peer_request("INVITE", via=old_via), PEER, 0.2) is None
    cancel = layer.receive_request(peer_request("CANCEL", via=old_via), PEER, 0.3)
    assert isinstance(cancel, RequestReceived) and cancel.cancels is invite.transaction
    layer.respond(
        invite.transaction, make_response(invite.request, 487, "Request Terminated", to_tag="t"), 0.4
    )
    assert layer.receive_request(peer_request("ACK", via=old_via, to_tag="t"), PEER, 0.5) is None
    assert invite.transaction.state is State.CONFIRMED


def test_client_invite_non_2xx_is_acked_per_17_1_1_3() -> None:
    layer = SipTransactions()
    transaction = layer.send_request(OUR_INVITE, PEER, 0.0)
    layer.datagrams_to_send()
    busy = answer(OUR_INVITE, 486, "Busy Here")
    event = layer.receive_response(busy, PEER, 0.1)
    assert isinstance(event, ResponseReceived) and transaction.final_response is busy
    ((ack_bytes, address),) = layer.datagrams_to_send()
    ack = SipMessage.parse(ack_bytes)
    assert isinstance(ack, SipRequest) and address == PEER
    assert ack.method == "ACK" and ack.uri == OUR_INVITE.uri
    for name in ("via", "from", "call-id", "route"):
        assert ack.headers.get(name) == OUR_INVITE.headers.get(name), name
    assert ack.get_header("to") == busy.get_header("to") and ack.get_header("cseq") == "1 ACK"
    layer.receive_response(answer(OUR_INVITE, 486, "Busy Here"), PEER, 0.6)
    assert layer.datagrams_to_send() == [(ack_bytes, PEER)]


# --- transport, bounds, misuse ----------------------------------------------

RELIABLE_CASES: list[tuple[str, list[tuple[float, Step]], list[tuple[float, str]]]] = [
    ("no Timer A", [(0.0, sends(OUR_INVITE, reliable=True))], [(0.0, f"-> {INV}")]),
    ("no Timer E", [(0.0, sends(OUR_BYE, reliable=True))], [(0.0, f"-> {BYE_LINE}")]),
    (
        "no Timer G",
        [(0.0, arrives(INVITE, reliable=True)), (0.0, responds(486, "Busy Here"))],
        [(0.0, "<= INVITE"), (0.0, f"-> {R486}")],
    ),
    (
        "Timer J is zero",
        [(0.0, arrives(BYE, reliable=True)), (0.0, responds(200, "OK")), (0.1, count)],
        [(0.0, "<= BYE"), (0.0, f"-> {R200}"), (0.1, "open 0")],
    ),
    (
        "Timer K is zero",
        [(0.0, sends(OUR_BYE, reliable=True)), (0.1, arrives(answer(OUR_BYE, 200, "OK"))), (0.2, count)],
        [(0.0, f"-> {BYE_LINE}"), (0.1, "<= 200"), (0.2, "open 0")],
    ),
    (
        "Timers D and I are zero",
        [
            (0.0, sends(OUR_INVITE, reliable=True)),
            (0.0, arrives(INVITE, reliable=True)),
            (0.0, responds(486, "Busy Here")),
            (0.1, arrives(answer(OUR_INVITE, 486, "Busy Here"))),
            (0.2, arrives(ACK_NON_2XX)),
            (0.3, count),
        ],
        [
            (0.0, f"-> {INV}"),
            (0.0, "<= INVITE"),
            (0.0, f"-> {R486}"),
            (0.1, "<= 486"),
            (0.1, f"-> {ACK_LINE}"),
            (0.2, "absorbed ACK"),
            (0.3, "open 0"),
        ],
    ),
]


@pytest.mark.parametrize(("case", "script", "expected"), RELIABLE_CASES, ids=[c[0] for c in RELIABLE_CASES])
def test_reliable_transport_disables_retransmission(
    case: str, script: list[tuple[float, Step]], expected: list[tuple[float, str]]
) -> None:
    assert Harness().run(script, until=20.0) == expected, case


def test_reliable_transport_still_retransmits_the_2xx_end_to_end() -> None:
    # §13.3.1.4: a proxy may carry our TCP 200 on over UDP.
    log = Harness().run([(0.0, arrives(INVITE, reliable=True)), (0.0, responds(200, "OK"))], until=2.0)
    assert log == [(0.0, "<= INVITE"), *every([0.0, 0.5, 1.5], f"-> {R200}")]


def test_full_table_raises_overloaded_but_still_absorbs_retransmissions() -> None:
    layer = SipTransactions(max_transactions=2)
    layer.receive_request(INVITE, PEER, 0.0)
    layer.receive_request(BYE, PEER, 0.0)
    with pytest.raises(Overloaded):
        layer.receive_request(peer_request("OPTIONS", branch="z9hG4bKopt"), PEER, 0.1)
    assert layer.receive_request(peer_request("INVITE"), PEER, 0.2) is None
    assert len(layer) == 2


def test_a_second_final_response_is_tu_misuse() -> None:
    layer = SipTransactions()
    event = layer.receive_request(INVITE, PEER, 0.0)
    assert isinstance(event, RequestReceived)
    layer.respond(event.transaction, make_response(INVITE, 200, "OK", to_tag="a"), 0.0)
    for status in (200, 486, 180):
        with pytest.raises(SipProtocolError):
            layer.respond(event.transaction, make_response(INVITE, status, "X", to_tag="a"), 0.1)
    with pytest.raises(SipProtocolError):
        layer.respond(event.transaction, make_response(INVITE, 700, "Bad", to_tag="a"), 0.1)


def test_responding_to_an_ended_transaction_is_tu_misuse() -> None:
    layer = SipTransactions()
    event = layer.receive_request(BYE, PEER, 0.0)
    assert isinstance(event, RequestReceived)
    layer.respond(event.transaction, make_response(BYE, 200, "OK"), 0.0)
    layer.handle_timer(40.0)
    assert event.transaction.state is State.TERMINATED
    with pytest.raises(SipProtocolError):
        layer.respond(event.transaction, make_response(BYE, 200, "OK"), 41.0)


@pytest.mark.parametrize(
    ("case", "misuse"),
    [
        (
            "branch without the magic cookie",
            lambda layer: layer.send_request(our_request("BYE", branch="old"), PEER, 0.0),
        ),
        ("ACK as a transaction", lambda layer: layer.send_request(our_request("ACK"), PEER, 0.0)),
        (
            "branch used twice",
            lambda layer: [layer.send_request(our_request("BYE"), PEER, 0.0) for _ in range(2)],
        ),
        (
            "send_ack before any 2xx",
            lambda layer: layer.send_ack(
                layer.send_request(our_request("INVITE"), PEER, 0.0), OUR_ACK_2XX, PEER
            ),
        ),
        (
            "send_ack on a non-INVITE",
            lambda layer: layer.send_ack(
                layer.send_request(our_request("BYE"), PEER, 0.0), OUR_ACK_2XX, PEER
            ),
        ),
    ],
)
def test_client_misuse_raises(case: str, misuse: Callable[[SipTransactions], object]) -> None:
    with pytest.raises(SipProtocolError):
        misuse(SipTransactions())


# --- the doors themselves ---------------------------------------------------


def test_reply_goes_to_the_source_address_not_the_via() -> None:
    layer = SipTransactions()
    nat: Address = ("203.0.113.7", 40123)
    event = layer.receive_request(INVITE, nat, 0.0)
    assert isinstance(event, RequestReceived) and event.source == nat
    layer.respond(event.transaction, make_response(INVITE, 100, "Trying"), 0.0)
    assert [address for _, address in layer.datagrams_to_send()] == [nat]


def test_retransmissions_reuse_the_serialised_bytes() -> None:
    layer = SipTransactions()
    layer.send_request(our_request("OPTIONS"), PEER, 0.0)
    ((first, _),) = layer.datagrams_to_send()
    layer.handle_timer(0.5)
    ((second, _),) = layer.datagrams_to_send()
    assert second is first


def test_timer_is_none_when_idle_and_handle_timer_is_a_no_op_before_the_deadline() -> None:
    layer = SipTransactions()
    assert layer.get_timer() is None and layer.handle_timer(100.0) == []
    layer.send_request(our_request("OPTIONS"), PEER, 10.0)
    layer.datagrams_to_send()
    assert layer.get_timer() == 10.5
    assert layer.handle_timer(10.4) == [] and layer.datagrams_to_send() == []


def test_cancelled_timers_do_not_pile_up_in_the_heap() -> None:
    layer = SipTransactions()
    for n in range(3000):
        request = our_request("OPTIONS", branch=f"z9hG4bK{n}")
        layer.send_request(request, PEER, 0.0)
        layer.receive_response(answer(request, 200, "OK"), PEER, 0.0)  # cancels E and F, starts K
    assert len(layer._heap) <= 2 * 3000 + 1024  # 3000 live K timers, 6000 cancelled E and F
    layer.handle_timer(10.0)
    assert len(layer) == 0 and layer.get_timer() is None


@pytest.mark.parametrize(
    ("via", "expected"),
    [
        (
            "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKa;rport",
            ("UDP", "192.0.2.10", 5070, "z9hG4bKa", "", None),
        ),
        (
            "SIP/2.0/UDP host.example.com;branch=z9hG4bKb",
            ("UDP", "host.example.com", 5060, "z9hG4bKb", None, None),
        ),
        (
            "SIP/2.0/TLS [2001:db8::1];branch=z9hG4bKc;received=10.0.0.1",
            ("TLS", "[2001:db8::1]", 5061, "z9hG4bKc", None, "10.0.0.1"),
        ),
        ("SIP/2.0/TCP [2001:db8::1]:5080;rport=1234", ("TCP", "[2001:db8::1]", 5080, "", "1234", None)),
        (
            "SIP / 2.0 / UDP Host.Example.COM:5060 ; branch=z9hG4bKd",
            ("UDP", "host.example.com", 5060, "z9hG4bKd", None, None),
        ),
    ],
)
def test_parse_top_via(via: str, expected: tuple[object, ...]) -> None:
    parsed = parse_top_via(via)
    assert parsed is not None
    assert (
        parsed.transport,
        parsed.host,
        parsed.port,
        parsed.branch,
        parsed.rport,
        parsed.received,
    ) == expected


@pytest.mark.parametrize("via", ["SIP/2.0/UDP", "SIP/2.0/UDP host:port"])
def test_parse_top_via_rejects_garbage(via: str) -> None:
    assert parse_top_via(via) is None


def test_each_fork_gets_its_own_ack_again() -> None:
    layer = SipTransactions()
    transaction = layer.send_request(OUR_INVITE, PEER, 0.0)
    for tag in ("fork1", "fork2"):
        assert isinstance(
            layer.receive_response(answer(OUR_INVITE, 200, "OK", to_tag=tag), PEER, 0.1), ResponseReceived
        )
        layer.send_ack(transaction, our_request("ACK", branch=f"z9hG4bKack{tag}", to_tag=tag), PEER)
    layer.datagrams_to_send()
    assert layer.receive_response(answer(OUR_INVITE, 200, "OK", to_tag="fork2"), PEER, 0.6) is None
    ((ack, _),) = layer.datagrams_to_send()
    assert b"tag=fork2" in ack and b"z9hG4bKackfork2" in ack


@pytest.mark.parametrize(
    "machine", [SERVER_INVITE, SERVER_NON_INVITE, CLIENT_INVITE, CLIENT_NON_INVITE], ids=lambda m: m.name
)
def test_every_timer_a_state_runs_has_a_transition(machine: _Machine) -> None:
    # A timer that fires in a state the table does not cover would be lost silently.
    for state, timers in machine.running.items():
        for timer in timers:
            assert (state, timer) in machine.table, (machine.name, state, timer)
    for (state, _stimulus), (next_state, _effect) in machine.table.items():
        assert state is not State.TERMINATED
        assert next_state is State.TERMINATED or any(s is next_state for s, _ in machine.table), next_state


def test_a_reused_branch_with_another_call_id_is_a_new_request_not_a_retransmission() -> None:
    """Some clients reuse a branch for a new request; the RFC 4475 examples all share one."""
    from aiosipua.message import SipMessage

    from ivr.sip.transactions import RequestReceived, SipTransactions

    def register(call_id: str):  # type: ignore[no-untyped-def]
        return SipMessage.parse(
            f"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw\r\n"
            f"From: <sip:w@example.com>;tag=1\r\nTo: <sip:w@example.com>\r\nCall-ID: {call_id}\r\n"
            f"CSeq: 3 REGISTER\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n".encode())

    layer = SipTransactions()
    first = layer.receive_request(register("a@x"), ("127.0.0.1", 5060), 0.0)
    second = layer.receive_request(register("b@x"), ("127.0.0.1", 5060), 0.1)
    again = layer.receive_request(register("b@x"), ("127.0.0.1", 5060), 0.2)
    assert isinstance(first, RequestReceived) and isinstance(second, RequestReceived)
    assert again is None  # the real retransmission is still absorbed


def test_a_retransmission_is_recognised_before_it_is_fed_in() -> None:
    from aiosipua.message import SipMessage

    from ivr.sip.transactions import SipTransactions

    invite = SipMessage.parse(
        b"INVITE sip:95000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-r1\r\n"
        b"From: <sip:1@x>;tag=1\r\nTo: <sip:95000@x>\r\nCall-ID: r1@x\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        b"Content-Length: 0\r\n\r\n")
    layer = SipTransactions()
    assert not layer.is_retransmission(invite)  # type: ignore[arg-type]
    layer.receive_request(invite, ("127.0.0.1", 5070), 0.0)  # type: ignore[arg-type]
    assert layer.is_retransmission(invite)  # type: ignore[arg-type]
