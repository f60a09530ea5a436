"""Digest authentication of agents' REGISTERs (RFC 7616): challenge, accept, refuse, expire, replay.

Expected responses are computed here with hashlib from RFC 7616 3.4.1:
response = H(H(user:realm:password):nonce:nc:cnonce:qop:H(method:uri)).
"""

from __future__ import annotations

import hashlib

import pytest
from aiosipua import SipMessage, SipRequest, parse_address

from ivr.registrar import (
    DEFAULT_EXPIRES,
    MAX_EXPIRES,
    NONCE_TTL_S,
    REALM,
    Challenge,
    Refused,
    Registered,
    RegisterHandler,
    Registrar,
    phone_address,
)
from ivr.sip.endpoint import StreamAddress

PHONE = ("127.0.0.1", 5090)
URI = "sip:127.0.0.1:5060"
HASHES = {"SHA-256": "sha256", "MD5": "md5"}


def h(algorithm: str, text: str) -> str:
    return hashlib.new(HASHES[algorithm], text.encode()).hexdigest()


def param(header: str, name: str) -> str:
    return header.split(f'{name}="')[1].split('"')[0]


def answer(challenge: Challenge, user: str, password: str, *, nc: str = "00000001", uri: str = URI,
           algorithm: str = "SHA-256", cnonce: str = "abc", method: str = "REGISTER") -> dict[str, str]:
    (header,) = [x for x in challenge.headers if f"algorithm={algorithm}" in x]
    nonce = param(header, "nonce")
    ha1, ha2 = h(algorithm, f"{user}:{REALM}:{password}"), h(algorithm, f"{method}:{uri}")
    response = h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
    return {"username": user, "realm": REALM, "nonce": nonce, "uri": uri, "response": response,
            "algorithm": algorithm, "qop": "auth", "nc": nc, "cnonce": cnonce}


def challenged(reg: Registrar, expires: int | None = 300) -> Challenge:
    challenge = reg.register("REGISTER", None, PHONE, expires, request_uri=URI)
    assert isinstance(challenge, Challenge)
    return challenge


def test_the_challenge_offers_sha256_first_then_md5_with_one_nonce_and_qop_auth() -> None:
    challenge = challenged(Registrar({"801": "s3cret"}))
    sha, md5 = challenge.headers
    assert sha.startswith(f'Digest realm="{REALM}", ') and "algorithm=SHA-256" in sha and 'qop="auth"' in sha
    assert md5.startswith(f'Digest realm="{REALM}", ') and "algorithm=MD5" in md5 and 'qop="auth"' in md5
    assert param(sha, "nonce") == param(md5, "nonce")
    assert "stale" not in sha + md5
    # a sender that can put only one header on the 401 gets the MD5 one every phone supports
    assert challenge.header == md5


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_register_is_challenged_then_accepted_with_the_right_password(algorithm: str) -> None:
    reg = Registrar({"801": "s3cret"}, clock=lambda: 1000.0)
    good = answer(challenged(reg), "801", "s3cret", algorithm=algorithm)
    assert reg.register("REGISTER", good, PHONE, 300, request_uri=URI) == Registered("801", PHONE, 300)


def test_a_response_without_algorithm_is_md5() -> None:
    reg = Registrar({"801": "s3cret"})
    md5 = answer(challenged(reg), "801", "s3cret", algorithm="MD5")
    del md5["algorithm"]
    assert reg.register("REGISTER", md5, PHONE, 300, request_uri=URI) == Registered("801", PHONE, 300)


@pytest.mark.parametrize(("algorithm", "expected"), [
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
])
def test_the_arithmetic_of_these_tests_gives_rfc_7616s_example_responses(algorithm: str, expected: str) -> None:
    # RFC 7616 3.9.1 (Mufasa); the registrar's nonces are its own, so its vectors check this file's helper
    nonce, cnonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    ha1 = h(algorithm, "Mufasa:http-auth@example.org:Circle of Life")
    ha2 = h(algorithm, "GET:/dir/index.html")
    assert h(algorithm, f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}") == expected


def test_a_response_computed_step_by_step_is_accepted() -> None:
    # the same arithmetic as answer(), spelled out once for SHA-256 with a fixed nonce
    reg = Registrar({"801": "s3cret"}, key=b"k" * 32, clock=lambda: 1000.0)
    nonce = param(challenged(reg).headers[0], "nonce")
    ha1 = hashlib.sha256(f"801:{REALM}:s3cret".encode()).hexdigest()
    ha2 = hashlib.sha256(f"REGISTER:{URI}".encode()).hexdigest()
    response = hashlib.sha256(f"{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}".encode()).hexdigest()
    auth = {"username": "801", "realm": REALM, "nonce": nonce, "uri": URI, "response": response.upper(),
            "algorithm": "SHA-256", "qop": "auth", "nc": "00000001", "cnonce": "0a4f113b"}
    assert reg.register("REGISTER", auth, PHONE, None, request_uri=URI) == Registered("801", PHONE, DEFAULT_EXPIRES)


def test_wrong_password_unknown_agent_and_unsupported_algorithm_are_refused() -> None:
    reg = Registrar({"801": "s3cret"})
    challenge = challenged(reg)
    assert reg.register("REGISTER", answer(challenge, "801", "guess"), PHONE, 300) == Refused("801", "wrong password")
    assert reg.register("REGISTER", answer(challenge, "999", "x"), PHONE, 300) == Refused("999", "unknown agent")
    sha512 = answer(challenge, "801", "s3cret") | {"algorithm": "SHA-512-256"}
    assert reg.register("REGISTER", sha512, PHONE, 300) == Refused("801", "unsupported algorithm SHA-512-256")
    # a response to the SHA-256 challenge sent as MD5 does not verify
    assert reg.register("REGISTER", answer(challenge, "801", "s3cret") | {"algorithm": "MD5"}, PHONE, 300) == \
        Refused("801", "wrong password")


def test_a_response_without_qop_auth_is_refused() -> None:
    reg = Registrar({"801": "s3cret"})
    challenge = challenged(reg)
    good = answer(challenge, "801", "s3cret")
    # RFC 2069 style: response = H(HA1:nonce:HA2), no qop, nc or cnonce
    ha1, ha2 = h("SHA-256", f"801:{REALM}:s3cret"), h("SHA-256", f"REGISTER:{URI}")
    legacy = {k: v for k, v in good.items() if k not in ("qop", "nc", "cnonce")}
    legacy["response"] = h("SHA-256", f"{ha1}:{legacy['nonce']}:{ha2}")
    assert reg.register("REGISTER", legacy, PHONE, 300, request_uri=URI) == Refused("801", "qop=auth required")
    assert reg.register("REGISTER", good | {"qop": "auth-int"}, PHONE, 300, request_uri=URI) == \
        Refused("801", "qop=auth required")
    assert isinstance(reg.register("REGISTER", good, PHONE, 300, request_uri=URI), Registered)


def test_the_uri_must_be_the_request_uri() -> None:
    reg = Registrar({"801": "s3cret"})
    challenge = challenged(reg)
    # correctly hashed, but for another request target
    other = answer(challenge, "801", "s3cret", uri="sip:elsewhere.example")
    assert reg.register("REGISTER", other, PHONE, 300, request_uri=URI) == Refused("801", "uri is not the Request-URI")
    good = answer(challenge, "801", "s3cret")
    assert reg.register("REGISTER", good, PHONE, 300, request_uri=URI) == Registered("801", PHONE, 300)


def test_without_a_request_uri_the_uri_is_not_checked() -> None:
    # the engine does not pass request_uri yet
    reg = Registrar({"801": "s3cret"})
    other = answer(challenged(reg), "801", "s3cret", uri="sip:elsewhere.example")
    assert reg.register("REGISTER", other, PHONE, 300) == Registered("801", PHONE, 300)


def test_the_nonce_count_must_grow_so_replays_are_refused() -> None:
    reg = Registrar({"801": "s3cret"})
    challenge = challenged(reg)
    good = answer(challenge, "801", "s3cret", nc="00000002")
    assert isinstance(reg.register("REGISTER", good, PHONE, 300, request_uri=URI), Registered)
    assert reg.register("REGISTER", good, PHONE, 300, request_uri=URI) == Refused("801", "replayed credentials")
    # a lower count, even with a new cnonce, is a replay too
    lower = answer(challenge, "801", "s3cret", nc="00000001", cnonce="new")
    assert reg.register("REGISTER", lower, PHONE, 300, request_uri=URI) == Refused("801", "replayed credentials")
    # the next request of the same client counts up: accepted (counts are hex)
    for nc in ("00000003", "0000000a"):
        later = answer(challenge, "801", "s3cret", nc=nc)
        assert isinstance(reg.register("REGISTER", later, PHONE, 300, request_uri=URI), Registered)
    # each nonce counts on its own
    fresh = answer(challenged(reg), "801", "s3cret", nc="00000001")
    assert isinstance(reg.register("REGISTER", fresh, PHONE, 300, request_uri=URI), Registered)
    bad = answer(challenge, "801", "s3cret", nc="zz")
    assert reg.register("REGISTER", bad, PHONE, 300, request_uri=URI) == Refused("801", "bad nonce count")


def test_a_refused_response_does_not_use_up_its_nonce_count() -> None:
    reg = Registrar({"801": "s3cret"})
    challenge = challenged(reg)
    assert reg.register("REGISTER", answer(challenge, "801", "guess"), PHONE, 300) == Refused("801", "wrong password")
    assert isinstance(reg.register("REGISTER", answer(challenge, "801", "s3cret"), PHONE, 300), Registered)


def test_forged_nonce_is_refused_and_expired_nonce_is_answered_stale() -> None:
    now = [1000.0]
    reg = Registrar({"801": "s3cret"}, clock=lambda: now[0])
    challenge = challenged(reg)
    forged_challenge = Challenge(('Digest nonce="1000.00:0000", algorithm=SHA-256',))
    forged = answer(forged_challenge, "801", "s3cret")
    assert reg.register("REGISTER", forged, PHONE, 300, request_uri=URI) == Refused("801", "bad nonce or realm")
    now[0] += NONCE_TTL_S + 1
    stale = reg.register("REGISTER", answer(challenge, "801", "s3cret"), PHONE, 300, request_uri=URI)
    assert isinstance(stale, Challenge) and len(stale.headers) == 2
    assert all(x.endswith("stale=true") for x in stale.headers)
    assert param(stale.headers[0], "nonce") != param(challenge.headers[0], "nonce")
    # the phone retries on the new nonce without asking its user
    retry = answer(stale, "801", "s3cret")
    assert reg.register("REGISTER", retry, PHONE, 300, request_uri=URI) == Registered("801", PHONE, 300)
    # stale=true only when the response was right: a wrong password on an old nonce is refused
    wrong = answer(challenge, "801", "guess")
    assert reg.register("REGISTER", wrong, PHONE, 300, request_uri=URI) == Refused("801", "wrong password")


def test_expires_is_honoured_within_bounds_and_zero_unregisters() -> None:
    reg = Registrar({"801": "s3cret"})
    for asked, granted in [(None, DEFAULT_EXPIRES), (10_000, MAX_EXPIRES), (120, 120)]:
        challenge = challenged(reg, asked)
        result = reg.register("REGISTER", answer(challenge, "801", "s3cret"), PHONE, asked, request_uri=URI)
        assert result == Registered("801", PHONE, granted)
    challenge = challenged(reg, 0)
    assert reg.register("REGISTER", answer(challenge, "801", "s3cret"), PHONE, 0) == Registered("801", None, 0)


# --- weaker policies for phones that cannot follow RFC 7616 ([801] digest = md5 | legacy) ---------------------


def test_a_strict_agent_refuses_rfc2069_and_a_uri_with_extra_parameters() -> None:
    reg = Registrar({"811": "pw"})
    creds = answer(challenged(reg), "811", "pw", algorithm="MD5")
    assert isinstance(reg.register("REGISTER", {**creds, "uri": URI + ";transport=UDP"}, PHONE, 300, request_uri=URI),
                      Refused)
    bare = {k: v for k, v in creds.items() if k not in ("qop", "nc", "cnonce")}
    assert reg.register("REGISTER", bare, PHONE, 300, request_uri=URI) == Refused("811", "qop=auth required")


def test_digest_md5_offers_md5_alone_and_stays_strict_otherwise() -> None:
    reg = Registrar({"801": "pw"}, policies={"801": "md5"})
    challenge = reg.register("REGISTER", None, PHONE, 300, request_uri=URI, user="801")
    assert isinstance(challenge, Challenge) and len(challenge.headers) == 1 and "algorithm=MD5" in challenge.headers[0]
    creds = answer(challenge, "801", "pw", algorithm="MD5")
    assert isinstance(reg.register("REGISTER", creds, PHONE, 300, request_uri=URI, user="801"), Registered)
    again = reg.register("REGISTER", None, PHONE, 300, request_uri=URI, user="802")  # another agent: both
    assert isinstance(again, Challenge) and len(again.headers) == 2


def test_digest_legacy_takes_rfc2069_once_per_nonce_and_a_uri_differing_in_parameters() -> None:
    reg = Registrar({"811": "pw"}, policies={"811": "legacy"})
    challenge = reg.register("REGISTER", None, PHONE, 300, request_uri=URI, user="811")
    assert isinstance(challenge, Challenge)
    nonce = param(challenge.headers[0], "nonce")
    uri = URI + ";transport=UDP"  # as pyVoIP 1.6.8 sends it
    ha1, ha2 = h("MD5", f"811:{REALM}:pw"), h("MD5", f"REGISTER:{uri}")
    creds = {"username": "811", "realm": REALM, "nonce": nonce, "uri": uri, "algorithm": "MD5",
             "response": h("MD5", f"{ha1}:{nonce}:{ha2}")}
    assert isinstance(reg.register("REGISTER", creds, PHONE, 300, request_uri=URI, user="811"), Registered)
    # no nonce count: the same nonce again is answered with a fresh challenge, not accepted
    assert isinstance(reg.register("REGISTER", creds, PHONE, 300, request_uri=URI, user="811"), Challenge)
    wrong = {**creds, "response": h("MD5", f"{h('MD5', f'811:{REALM}:guess')}:{nonce}:{ha2}")}
    assert reg.register("REGISTER", wrong, PHONE, 300, request_uri=URI, user="811") == Refused("811", "wrong password")
    other = {**creds, "uri": "sip:elsewhere.example"}
    assert isinstance(reg.register("REGISTER", other, PHONE, 300, request_uri=URI, user="811"), Refused)


# --- RegisterHandler: the REGISTER request in, the response out ---------------------------


def register_request(contact: str, authorization: str | None = None) -> SipRequest:
    text = (f"REGISTER {URI} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1\r\n"
            f"From: <sip:801@127.0.0.1>;tag=1\r\nTo: <sip:801@127.0.0.1>\r\nCall-ID: r1\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: {contact}\r\n" + (f"Authorization: {authorization}\r\n" if authorization else "")
            + "Content-Length: 0\r\n\r\n")
    request = SipMessage.parse(text.encode())
    assert isinstance(request, SipRequest)
    return request


def test_the_handler_challenges_binds_and_reports_refusals() -> None:
    failed: list[tuple[str, int, str, str]] = []
    bound: list[tuple[str, tuple[str, int] | None, int, str | None, tuple[str, ...]]] = []
    handler = RegisterHandler(Registrar({"801": "s3cret"}), frozenset({"10.0.0.5"}),
                              lambda *a: failed.append(a), lambda *a: bound.append(a))
    contact = "<sip:801@192.0.2.7:5070>;expires=300"
    status, _, headers = handler.handle(register_request(contact), ("10.0.0.5", 5060))
    assert status == 401 and [name for name, _ in headers] == ["WWW-Authenticate", "WWW-Authenticate"]
    challenge = Challenge(tuple(value for _, value in headers))
    good = answer(challenge, "801", "s3cret")
    authorization = "Digest " + ", ".join(
        f"{k}={v}" if k in ("algorithm", "qop", "nc") else f'{k}="{v}"' for k, v in good.items())
    # through the trusted balancer in front: the phone is where its Contact says
    assert handler.handle(register_request(contact, authorization), ("10.0.0.5", 5060)) == (
        200, "OK", [("Contact", "<sip:801@192.0.2.7:5070>;expires=300")])
    assert bound == [("801", ("192.0.2.7", 5070), 300, "sip:801@192.0.2.7:5070", ())]
    wrong = authorization.replace(good["response"], "0" * 64)
    assert handler.handle(register_request(contact, wrong), ("198.51.100.9", 5062))[:2] == (403, "Forbidden")
    assert failed == [("198.51.100.9", 5062, "801", "wrong password")]
    assert handler.handle(register_request("<sip:801@192.0.2.7>;expires=soon"), ("198.51.100.9", 5062)) == (400, "Bad Contact", [])


def test_a_phone_is_where_its_request_came_from_unless_a_trusted_balancer_sent_it() -> None:
    contact = parse_address("<sip:801@192.0.2.7:5070>").uri
    assert phone_address(("198.51.100.9", 5062), contact, frozenset({"10.0.0.5"})) == ("198.51.100.9", 5062)
    assert phone_address(("10.0.0.5", 5060), contact, frozenset({"10.0.0.5"})) == ("192.0.2.7", 5070)
    named = parse_address("<sip:801@phone-801.example.com:5070>").uri  # no DNS on the call path: a name is no address
    assert phone_address(("10.0.0.5", 5060), named, frozenset({"10.0.0.5"})) == ("10.0.0.5", 5060)


def test_a_browser_is_reached_down_its_websocket_even_from_a_trusted_address() -> None:
    browser = parse_address("<sip:801@df7jal23ls0d.invalid;transport=ws>").uri
    for transport in ("WS", "WSS"):
        connection = StreamAddress("127.0.0.1", 50123, transport)
        where = phone_address(connection, browser, frozenset({"127.0.0.1"}))
        assert where == ("127.0.0.1", 50123) and isinstance(where, StreamAddress) and where.transport == transport


# --- Path (RFC 3327): a browser behind Kamailio's WebSocket -------------------------------

BALANCER = ("10.77.0.2", 5060)
FLOW = "<sip:10.77.0.2:5060;lr;received=sip:10.77.0.20:40312%3Btransport%3Dws>"
BROWSER = "<sip:801@df7jal23ls0d.invalid;transport=ws>;expires=300"


def path_register(contact: str, *, path: tuple[str, ...] = (FLOW,), supported: str | None = "path, outbound",
                  authorization: str | None = None, expires: str | None = None) -> SipRequest:
    extra = "".join(f"Path: {entry}\r\n" for entry in path)
    extra += f"Supported: {supported}\r\n" if supported else ""
    extra += f"Expires: {expires}\r\n" if expires is not None else ""
    return register_request(contact + "\r\n" + extra.rstrip("\r\n"), authorization)


def authorized(handler: RegisterHandler, request: SipRequest) -> str:
    """The Authorization header that answers the handler's challenge to `request` (nc 1, a fresh nonce)."""
    _, _, headers = handler.handle(request, BALANCER)
    good = answer(Challenge(tuple(value for _, value in headers)), "801", "s3cret")
    return "Digest " + ", ".join(f"{k}={v}" if k in ("algorithm", "qop", "nc") else f'{k}="{v}"'
                                 for k, v in good.items())


def path_handler() -> tuple[RegisterHandler, list[tuple[object, ...]]]:
    bound: list[tuple[object, ...]] = []
    paths: dict[str, tuple[str, ...]] = {}

    def bind(agent: str, where: object, expires: int, uri: object, path: tuple[str, ...]) -> None:
        bound.append((agent, where, expires, uri, path))
        paths[agent] = path

    handler = RegisterHandler(Registrar({"801": "s3cret"}), frozenset({BALANCER[0]}), lambda *a: None, bind,
                              lambda agent: paths.get(agent, ()))
    return handler, bound


def test_a_path_from_the_trusted_balancer_is_stored_echoed_when_supported_and_names_the_first_hop() -> None:
    handler, bound = path_handler()
    second = "<sip:192.0.2.50:5080;lr>"
    request = path_register(BROWSER, path=(FLOW, second))
    status, _, headers = handler.handle(path_register(BROWSER, path=(FLOW, second), authorization=authorized(
        handler, request)), BALANCER)
    assert status == 200
    # §5.3: the stored Path, in order, back to a phone that supports it
    assert headers == [("Contact", "<sip:801@df7jal23ls0d.invalid;transport=ws>;expires=300"),
                       ("Path", FLOW), ("Path", second)]
    # rung at its first hop (the balancer), the Contact as Request-URI, the whole Path as the Route set
    assert bound == [("801", ("10.77.0.2", 5060), 300, "sip:801@df7jal23ls0d.invalid;transport=ws", (FLOW, second))]


def test_a_path_is_stored_but_not_echoed_to_a_phone_that_does_not_say_it_supports_path() -> None:
    handler, bound = path_handler()
    request = path_register(BROWSER, supported=None)
    status, _, headers = handler.handle(path_register(BROWSER, supported=None, authorization=authorized(
        handler, request)), BALANCER)
    assert status == 200 and [name for name, _ in headers] == ["Contact"]
    assert bound[-1][4] == (FLOW,)


def test_a_path_from_an_untrusted_source_is_ignored() -> None:
    handler, bound = path_handler()
    phone = ("198.51.100.9", 5062)
    contact = "<sip:801@198.51.100.9:5062>;expires=300"
    request = path_register(contact, path=("<sip:203.0.113.66;lr>",))
    _, _, headers = handler.handle(request, phone)
    good = answer(Challenge(tuple(value for _, value in headers)), "801", "s3cret")
    authorization = "Digest " + ", ".join(f"{k}={v}" if k in ("algorithm", "qop", "nc") else f'{k}="{v}"'
                                          for k, v in good.items())
    status, _, headers = handler.handle(path_register(contact, path=("<sip:203.0.113.66;lr>",),
                                                      authorization=authorization), phone)
    assert status == 200 and "Path" not in dict(headers)
    assert bound == [("801", phone, 300, "sip:801@198.51.100.9:5062", ())], "rung where it sent from, no Route"


def test_the_balancers_unregister_of_a_closed_websocket_logs_out_only_the_binding_of_that_connection() -> None:
    handler, bound = path_handler()
    handler.handle(path_register(BROWSER, authorization=authorized(handler, path_register(BROWSER))), BALANCER)
    # the page reloaded: a new WebSocket, a new flow, registered before the old connection's close is seen
    new_flow = FLOW.replace("40312", "40999")
    handler.handle(path_register(BROWSER, path=(new_flow,), authorization=authorized(
        handler, path_register(BROWSER, path=(new_flow,)))), BALANCER)
    closed_old = path_register("*", expires="0")  # no credentials: Kamailio does not know the password
    assert handler.handle(closed_old, BALANCER)[0] == 401, "not the flow bound now: challenged as any REGISTER"
    assert bound[-1][4] == (new_flow,)
    closed_new = path_register("*", path=(new_flow.replace("%3b", "%3B"),), expires="0")
    assert handler.handle(closed_new, BALANCER) == (200, "OK", [])
    assert bound[-1] == ("801", None, 0, None, ())
    # only the trusted balancer may say so
    handler.handle(path_register(BROWSER, authorization=authorized(handler, path_register(BROWSER))), BALANCER)
    assert handler.handle(path_register("*", expires="0"), ("198.51.100.9", 5062))[0] == 401
    assert bound[-1][4] == (FLOW,)


def test_path_helpers_split_what_they_join_and_find_the_flow() -> None:
    from ivr.registrar import first_hop, join_path, path_flow, split_path

    path = (FLOW, '<sip:"odd,host"@10.1.1.1;lr>', "<sip:10.1.1.2;lr>")
    assert split_path(join_path(path)) == path and split_path(None) == () and join_path(()) is None
    assert path_flow(FLOW) == "sip:10.77.0.20:40312;transport=ws" and path_flow("<sip:10.1.1.1;lr>") == ""
    assert first_hop((FLOW,), ("10.9.9.9", 5060)) == ("10.77.0.2", 5060)
    assert first_hop(("<sip:proxy.example.com;lr>",), ("10.9.9.9", 5060)) == ("10.9.9.9", 5060), "no DNS"
    assert first_hop(("<sip:[2001:db8::2];lr>",), ("10.9.9.9", 5060)) == ("2001:db8::2", 5060)


def test_an_invite_to_a_phone_with_a_path_carries_it_as_route_and_goes_to_its_first_hop() -> None:
    import asyncio

    from aiosipua.sdp import parse_sdp

    from ivr.sip.endpoint import SipEndpoint

    class Owner:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(name)

    async def place() -> tuple[SipRequest, object, SipRequest]:
        endpoint = SipEndpoint("10.77.0.11", 5060, Owner(), user_agent="test")  # type: ignore[arg-type]
        sdp = parse_sdp("v=0\r\no=- 1 1 IN IP4 10.77.0.11\r\ns=-\r\nc=IN IP4 10.77.0.11\r\nt=0 0\r\n"
                        "m=audio 20000 RTP/AVP 8\r\n")
        call = endpoint.invite(from_uri="sip:ivr@10.77.0.11:5060", from_display=None,
                               request_uri="sip:801@df7jal23ls0d.invalid;transport=ws", destination=("10.77.0.2", 5060),
                               sdp=sdp, route=(FLOW, "<sip:10.1.1.1;lr>"))
        sent = call.invite
        cancelled: list[SipRequest] = []
        endpoint.send_request = lambda request, destination: cancelled.append(request)  # type: ignore[method-assign, assignment, return-value]
        call.cancel()
        await endpoint.stop()
        return sent, call.destination, cancelled[0]

    invite, destination, cancel = asyncio.run(place())
    assert invite.uri == "sip:801@df7jal23ls0d.invalid;transport=ws", "the registered Contact is the Request-URI"
    assert list(invite.headers.get("route")) == [FLOW, "<sip:10.1.1.1;lr>"], "the Path, in order, pre-loaded"
    assert destination == ("10.77.0.2", 5060)
    assert list(cancel.headers.get("route")) == [FLOW, "<sip:10.1.1.1;lr>"], "CANCEL takes the INVITE's route"
