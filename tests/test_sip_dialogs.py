"""Dialogs (RFC 3261 §12) and responses (§8.2.6): tags, route sets, CSeq, the dialog table."""

from __future__ import annotations

import pytest
from aiosipua.message import SipMessage, SipRequest, SipResponse

from ivr.sip.dialogs import (
    Dialog,
    DialogState,
    DialogTable,
    address_uri,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    without_tag,
)
from ivr.sip.transactions import Overloaded


def parse_request(text: str) -> SipRequest:
    request = SipMessage.parse(text.replace("\n", "\r\n").encode())
    assert isinstance(request, SipRequest)
    return request


def reparse(message: SipRequest | SipResponse) -> SipRequest | SipResponse:
    return SipMessage.parse(bytes(message))


# An INVITE from the caller through two record-routing proxies (p1 nearest us).
INVITE_TEXT = """INVITE sip:hotline@192.0.2.1 SIP/2.0
Via: SIP/2.0/UDP p1.example.net;branch=z9hG4bKp1
Via: SIP/2.0/UDP p2.example.net;branch=z9hG4bKp2
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKa;rport
Record-Route: <sip:p1.example.net;lr>
Record-Route: <sip:p2.example.net;lr>
Max-Forwards: 68
From: "Alice" <sip:alice@example.com>;tag=alice1
To: <sip:hotline@example.com>
Call-ID: call-1@192.0.2.10
CSeq: 7 INVITE
Contact: <sip:alice@192.0.2.10:5060;transport=udp>
Content-Length: 0

"""


def invite() -> SipRequest:
    return parse_request(INVITE_TEXT)


def tags(message: SipMessage, header: str) -> int:
    return (message.get_header(header) or "").count("tag=")


# --- make_response ----------------------------------------------------------


def test_481_to_a_bye_with_a_to_tag_has_exactly_one_tag() -> None:
    bye = parse_request(
        INVITE_TEXT.replace("INVITE sip:", "BYE sip:", 1)
        .replace("CSeq: 7 INVITE", "CSeq: 8 BYE")
        .replace("To: <sip:hotline@example.com>", "To: <sip:hotline@example.com>;tag=ivr-old")
    )
    response = reparse(make_response(bye, 481, "Call/Transaction Does Not Exist", to_tag=new_tag()))
    assert tags(response, "to") == 1
    assert response.get_header("to") == "<sip:hotline@example.com>;tag=ivr-old"


@pytest.mark.parametrize(
    ("status", "to_tag", "expected_to"),
    [
        (100, "ivr1", "<sip:hotline@example.com>"),  # 100 Trying never creates a dialog
        (180, "ivr1", "<sip:hotline@example.com>;tag=ivr1"),
        (200, "ivr1", "<sip:hotline@example.com>;tag=ivr1"),
        (486, "ivr1", "<sip:hotline@example.com>;tag=ivr1"),
        (486, None, "<sip:hotline@example.com>"),
    ],
)
def test_make_response_adds_the_to_tag_once(status: int, to_tag: str | None, expected_to: str) -> None:
    response = make_response(invite(), status, "Reason", to_tag=to_tag)
    assert response.get_header("to") == expected_to


def test_make_response_copies_vias_in_order_and_the_dialog_headers() -> None:
    request = invite()
    response = reparse(make_response(request, 200, "OK", to_tag="ivr1"))
    assert isinstance(response, SipResponse)
    assert response.headers.get("via") == request.headers.get("via")
    for name in ("from", "call-id", "cseq"):
        assert response.get_header(name) == request.get_header(name)
    assert (response.status_code, response.reason_phrase) == (200, "OK")


@pytest.mark.parametrize(
    ("method", "status", "copied"),
    [
        ("INVITE", 180, True),
        ("INVITE", 200, True),
        ("INVITE", 100, False),
        ("INVITE", 486, False),
        ("OPTIONS", 200, False),
    ],
)
def test_record_route_goes_into_dialog_creating_responses_only(
    method: str, status: int, copied: bool
) -> None:
    request = parse_request(INVITE_TEXT.replace("INVITE", method))
    response = make_response(request, status, "Reason", to_tag="ivr1")
    expected = ["<sip:p1.example.net;lr>", "<sip:p2.example.net;lr>"] if copied else []
    assert response.headers.get("record-route") == expected


def test_make_response_extra_headers_and_body() -> None:
    sdp = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"
    response = make_response(
        invite(),
        200,
        "OK",
        to_tag="t",
        headers=[("Contact", "<sip:ivr@192.0.2.1>"), ("Allow", "INVITE, ACK, BYE")],
        body=sdp,
        content_type="application/sdp",
    )
    wire = reparse(response)
    assert wire.body == sdp and wire.get_header("content-type") == "application/sdp"
    assert wire.get_header("content-length") == str(len(sdp))
    assert wire.get_header("contact") == "<sip:ivr@192.0.2.1>"


# --- identifiers ------------------------------------------------------------


def test_new_identifiers_are_unique_and_well_formed() -> None:
    assert len({new_tag() for _ in range(1000)}) == 1000
    branches = {new_branch() for _ in range(1000)}
    assert len(branches) == 1000 and all(b.startswith("z9hG4bK") for b in branches)
    call_id = new_call_id("192.0.2.1")
    assert call_id.endswith("@192.0.2.1") and call_id != new_call_id("192.0.2.1")


@pytest.mark.parametrize(
    ("value", "uri", "bare"),
    [
        (
            '"Alice" <sip:alice@example.com>;tag=a1',
            "sip:alice@example.com",
            '"Alice" <sip:alice@example.com>',
        ),
        (
            "<sip:bob@example.com;user=phone>;tag=b;x=y",
            "sip:bob@example.com;user=phone",
            "<sip:bob@example.com;user=phone>;x=y",
        ),
        ("sip:carol@example.com;tag=c", "sip:carol@example.com", "<sip:carol@example.com>"),
        ("sip:dave@example.com", "sip:dave@example.com", "<sip:dave@example.com>"),
    ],
)
def test_address_helpers(value: str, uri: str, bare: str) -> None:
    assert address_uri(value) == uri
    assert without_tag(value) == bare


# --- Dialog -----------------------------------------------------------------


def test_as_uas_takes_the_dialog_from_the_invite() -> None:
    dialog = Dialog.as_uas(invite(), "ivr1")
    assert dialog.key == ("call-1@192.0.2.10", "ivr1", "alice1")
    assert dialog.local_uri == "<sip:hotline@example.com>"
    assert dialog.remote_uri == '"Alice" <sip:alice@example.com>'
    assert dialog.remote_target == "sip:alice@192.0.2.10:5060;transport=udp"
    assert dialog.route_set == ["<sip:p1.example.net;lr>", "<sip:p2.example.net;lr>"]
    assert (dialog.remote_cseq, dialog.state) == (7, DialogState.CONFIRMED)


def _our_invite() -> SipRequest:
    return parse_request(
        """INVITE sip:agent@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKivr;rport
From: <sip:hotline@192.0.2.1>;tag=ivr1
To: "Agent 7" <sip:agent@example.com>
Call-ID: out-1@192.0.2.1
CSeq: 20 INVITE
Contact: <sip:hotline@192.0.2.1:5060>
Content-Length: 0

"""
    )


def _agent_answers(status: int) -> SipResponse:
    response = make_response(
        _our_invite(),
        status,
        "OK" if status == 200 else "Ringing",
        to_tag="agent1",
        headers=[("Contact", "<sip:agent@198.51.100.7:5062>")],
    )
    # As it comes back through p2 then p1 (p1 nearest the agent, listed first).
    response.headers.append("Record-Route", "<sip:p1.example.net;lr>")
    response.headers.append("Record-Route", "<sip:p2.example.net;lr>")
    wire = reparse(response)
    assert isinstance(wire, SipResponse)
    return wire


def test_as_uac_reverses_the_route_set_and_targets_the_contact() -> None:
    dialog = Dialog.as_uac(_our_invite(), _agent_answers(200))
    assert dialog.key == ("out-1@192.0.2.1", "ivr1", "agent1")
    assert (
        dialog.local_uri == "<sip:hotline@192.0.2.1>"
        and dialog.remote_uri == '"Agent 7" <sip:agent@example.com>'
    )
    assert dialog.remote_target == "sip:agent@198.51.100.7:5062"
    assert dialog.route_set == ["<sip:p2.example.net;lr>", "<sip:p1.example.net;lr>"]
    assert (dialog.local_cseq, dialog.remote_cseq, dialog.state) == (20, None, DialogState.CONFIRMED)


def test_early_dialog_is_confirmed_by_the_2xx() -> None:
    dialog = Dialog.as_uac(_our_invite(), _agent_answers(180))
    states = [dialog.state]
    ok = _agent_answers(200)
    ok.set_header("Contact", "<sip:agent@198.51.100.7:5070>")
    dialog.confirm(ok)
    states.append(dialog.state)
    assert states == [DialogState.EARLY, DialogState.CONFIRMED]
    assert dialog.remote_target == "sip:agent@198.51.100.7:5070"


def test_create_request_follows_the_dialog() -> None:
    dialog = Dialog.as_uac(_our_invite(), _agent_answers(200))
    ack = dialog.create_request("ACK", via="SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKack")
    info = dialog.create_request(
        "INFO",
        via="SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKinfo",
        body=b"Signal=5\r\n",
        content_type="application/dtmf-relay",
    )
    bye = dialog.create_request(
        "BYE", via="SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKbye", headers=[("Reason", "SIP;cause=200")]
    )
    assert [r.get_header("cseq") for r in (ack, info, bye)] == ["20 ACK", "21 INFO", "22 BYE"]
    wire = reparse(bye)
    assert isinstance(wire, SipRequest)
    assert wire.uri == "sip:agent@198.51.100.7:5062"
    assert wire.headers.get("route") == ["<sip:p2.example.net;lr>", "<sip:p1.example.net;lr>"]
    assert wire.get_header("from") == "<sip:hotline@192.0.2.1>;tag=ivr1"
    assert wire.get_header("to") == '"Agent 7" <sip:agent@example.com>;tag=agent1'
    assert wire.get_header("call-id") == "out-1@192.0.2.1"
    assert wire.get_header("max-forwards") == "70" and wire.get_header("reason") == "SIP;cause=200"
    assert wire.get_header("via") == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKbye"
    assert info.body == b"Signal=5\r\n" and info.get_header("content-type") == "application/dtmf-relay"


def test_create_request_uas_side_counts_from_one_and_ack_takes_a_given_cseq() -> None:
    dialog = Dialog.as_uas(invite(), "ivr1")
    bye = dialog.create_request(
        "BYE", via="SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1", contact="<sip:ivr@192.0.2.1>"
    )
    assert bye.get_header("cseq") == "1 BYE" and bye.get_header("contact") == "<sip:ivr@192.0.2.1>"
    assert bye.get_header("from") == "<sip:hotline@example.com>;tag=ivr1"
    assert bye.get_header("to") == '"Alice" <sip:alice@example.com>;tag=alice1'
    reinvite = dialog.create_request("INVITE", via="SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK2")
    ack = dialog.create_request("ACK", via="SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK3", cseq=2)
    assert (reinvite.get_header("cseq"), ack.get_header("cseq")) == ("2 INVITE", "2 ACK")


def test_create_request_strict_routing() -> None:
    dialog = Dialog.as_uas(invite(), "ivr1")
    dialog.route_set = ["<sip:strict.example.net>", "<sip:p2.example.net;lr>"]
    bye = dialog.create_request("BYE", via="SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1")
    assert bye.uri == "sip:strict.example.net"
    assert bye.headers.get("route") == [
        "<sip:p2.example.net;lr>",
        "<sip:alice@192.0.2.10:5060;transport=udp>",
    ]


def test_no_route_set_means_no_route_header() -> None:
    dialog = Dialog.as_uas(parse_request(INVITE_TEXT.replace("Record-Route", "X-Seen")), "ivr1")
    bye = dialog.create_request("BYE", via="SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1")
    assert dialog.route_set == [] and bye.headers.get("route") == []
    assert bye.uri == "sip:alice@192.0.2.10:5060;transport=udp"


def _in_dialog(method: str, cseq: int) -> SipRequest:
    return parse_request(
        INVITE_TEXT.replace("INVITE sip:", f"{method} sip:", 1).replace(
            "CSeq: 7 INVITE", f"CSeq: {cseq} {method}"
        )
    )


@pytest.mark.parametrize(
    ("remote_cseq", "method", "cseq", "status", "after"),
    [
        (7, "BYE", 8, None, 8),
        (7, "INFO", 7, None, 7),  # equal is not out of order (§12.2.2 says lower)
        (7, "BYE", 6, 500, 7),
        (7, "ACK", 3, None, 7),  # ACK and CANCEL carry their INVITE's number
        (7, "CANCEL", 3, None, 7),
        (None, "BYE", 1, None, 1),  # the peer's first request in the dialog
    ],
)
def test_check_request(
    remote_cseq: int | None, method: str, cseq: int, status: int | None, after: int | None
) -> None:
    dialog = Dialog.as_uas(invite(), "ivr1")
    dialog.remote_cseq = remote_cseq
    assert dialog.check_request(_in_dialog(method, cseq)) == status
    assert dialog.remote_cseq == after


# --- DialogTable ------------------------------------------------------------


def test_dialog_table_finds_both_directions() -> None:
    table = DialogTable()
    uas = Dialog.as_uas(invite(), "ivr1")
    uac = Dialog.as_uac(_our_invite(), _agent_answers(200))
    table.add(uas)
    table.add(uac)
    assert len(table) == 2
    assert table.get("call-1@192.0.2.10", "ivr1", "alice1") is uas

    # The caller's BYE: To tag is ours, From tag theirs.
    bye = _in_dialog("BYE", 8)
    bye.set_header("To", "<sip:hotline@example.com>;tag=ivr1")
    assert table.find_for_request(bye) is uas
    # The agent's 200 to our BYE: From tag is ours.
    our_bye = uac.create_request("BYE", via="SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKb")
    ok = reparse(make_response(our_bye, 200, "OK"))
    assert isinstance(ok, SipResponse) and table.find_for_response(ok) is uac
    # Our own request read as if it came in does not match (tags swapped).
    assert table.find_for_request(our_bye) is None

    table.remove(uas)
    assert table.find_for_request(bye) is None and len(table) == 1


def test_dialog_table_round_trip_between_two_user_agents() -> None:
    # The agent's side holds the UAS dialog of our INVITE; our in-dialog BYE finds it.
    agent_table = DialogTable()
    agent_dialog = Dialog.as_uas(_our_invite(), "agent1")
    agent_table.add(agent_dialog)
    ours = Dialog.as_uac(_our_invite(), _agent_answers(200))
    bye = reparse(ours.create_request("BYE", via="SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKb"))
    assert isinstance(bye, SipRequest)
    assert agent_table.find_for_request(bye) is agent_dialog
    assert agent_dialog.check_request(bye) is None and agent_dialog.remote_cseq == 21


def test_dialog_table_is_bounded() -> None:
    table = DialogTable(max_dialogs=1)
    first = Dialog.as_uas(invite(), "ivr1")
    table.add(first)
    table.add(first)  # the same key again replaces, it does not count twice
    with pytest.raises(Overloaded):
        table.add(Dialog.as_uas(invite(), "ivr2"))
    assert len(table) == 1 and list(table) == [first]
