"""End to end in a real browser: the desk page registers its seat over SIP WebSocket with the desk's credentials.

Headless Chromium (Debian's `chromium` + `chromium-driver`, fake microphone) drives the desk
(`python -m desk`, as tests/test_desk_e2e.py starts it) with its real JsSIP. The SIP WebSocket
server is a small one in this test (the `websockets` package, `sip` subprotocol, RFC 7118) whose
REGISTERs go through the IVR's own `RegisterHandler` and `Registrar`: the first REGISTER is
challenged (401, MD5 as a browser seat is), the second must carry the authorization user the
desk issued and a digest that the registrar validates with the derived password. Logging out
must un-REGISTER the seat (Expires: 0). The server then offers calls (INVITE with a WebRTC audio
offer) to check the page's ringing, 接听 / 静音 / 挂断, timer and auto-answer; no media flows.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosipua import SipMessage, SipRequest, SipResponse, parse_auth

from ivr.phone_credentials import BrowserCredentials, derive_password
from ivr.registrar import RegisterHandler, Registrar

from .conftest import free_port
from .test_desk_e2e import CHROMIUM_FLAGS, login, start_desk

pytestmark = pytest.mark.e2e
TOKEN_SECRET = "e2e-token-secret-0123456789abcdef0123456789"
LIFETIME = 1800


@dataclass
class FakeSipWebSocket:
    """A SIP WebSocket server whose REGISTERs the IVR's registrar answers; records what it saw."""

    port: int
    origins: list[str | None] = field(default_factory=list)
    subprotocols: list[str | None] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    bindings: list[tuple[str, object]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    contact: str = ""  # the page's Contact URI, where an INVITE goes
    responses: list[SipResponse] = field(default_factory=list)  # the page's answers to our INVITE
    byes: list[SipRequest] = field(default_factory=list)
    connection: Any = None
    refuse_once: bool = False  # answer the first authenticated REGISTER 403, as for an expired credential

    def __post_init__(self) -> None:
        registrar = Registrar({"801": "pw801-phone-e2e"}, policies={"801": "md5"},
                              browser=BrowserCredentials(TOKEN_SECRET, ["801"], LIFETIME))
        self.handler = RegisterHandler(
            registrar, (), lambda host, port, user, reason: self.refusals.append(f"{user}: {reason}"),
            lambda agent, where, expires, uri, path: self.bindings.append((agent, where)),
        )

    def serve(self, ws: Any) -> None:
        self.origins.append(ws.request.headers.get("Origin"))
        self.subprotocols.append(ws.subprotocol)
        self.connection = ws
        for frame in ws:
            message = SipMessage.parse(frame.encode() if isinstance(frame, str) else frame)
            if isinstance(message, SipResponse):
                self.responses.append(message)
                continue
            if not isinstance(message, SipRequest):
                continue
            if message.method == "BYE":
                self.byes.append(message)
                ws.send(response(message, 200, "OK", []))
                continue
            if message.method != "REGISTER":
                continue
            self.authorizations.append(message.get_header("authorization"))
            contact = message.get_header("contact") or ""
            self.contact = contact[contact.find("<") + 1: contact.find(">")] if "<" in contact else self.contact
            if self.refuse_once and message.get_header("authorization"):
                self.refuse_once = False
                self.answers.append(403)
                ws.send(response(message, 403, "Forbidden", []))
                continue
            status, reason, headers = self.handler.handle(message, ws.remote_address[:2])
            self.answers.append(status)
            ws.send(response(message, status, reason, headers))

    def invite(self, display: str, number: str) -> None:
        """Offer the registered page a call, as the IVR offers an agent one: WebRTC audio (ICE-lite, DTLS)."""
        sdp = OFFER.replace("\n", "\r\n")
        self.connection.send(
            f"INVITE {self.contact} SIP/2.0\r\nVia: SIP/2.0/WS fake.invalid;branch=z9hG4bK-e2e-1\r\n"
            f'Max-Forwards: 70\r\nFrom: "{display}" <sip:{number}@127.0.0.1>;tag=ivr-1\r\n'
            f"To: <sip:801@127.0.0.1>\r\nCall-ID: e2e-call-1\r\nCSeq: 1 INVITE\r\n"
            "Contact: <sip:ivr@127.0.0.1;transport=ws>\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(sdp.encode())}\r\n\r\n{sdp}"
        )

    def ack(self, ok: SipResponse) -> None:
        self.connection.send(
            f"ACK {self.contact} SIP/2.0\r\nVia: SIP/2.0/WS fake.invalid;branch=z9hG4bK-e2e-ack\r\n"
            f"Max-Forwards: 70\r\nFrom: {ok.get_header('from')}\r\nTo: {ok.get_header('to')}\r\n"
            "Call-ID: e2e-call-1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        )


# What the IVR offers a browser seat: one audio stream, DTLS-SRTP over ICE(-lite), rtcp-mux, PCMU/PCMA.
# Nothing answers at the candidate: the call's signalling and the page's buttons are what is tested here.
OFFER = """v=0
o=- 1 1 IN IP4 127.0.0.1
s=-
t=0 0
m=audio 40000 UDP/TLS/RTP/SAVPF 0 8
c=IN IP4 127.0.0.1
a=ice-lite
a=ice-ufrag:e2eufrag
a=ice-pwd:e2epasswordpasswordpassword
a=fingerprint:sha-256 """ + ":".join(["AB"] * 32) + """
a=setup:actpass
a=mid:0
a=rtcp-mux
a=sendrecv
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host
a=end-of-candidates
"""


def response(request: SipRequest, status: int, reason: str, headers: list[tuple[str, str]]) -> str:
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in request.get_header_values("via")]
    to = request.get_header("to") or ""
    lines += [f"From: {request.get_header('from')}", f"To: {to}{'' if 'tag=' in to else ';tag=e2e'}",
              f"Call-ID: {request.call_id}", f"CSeq: {request.get_header('cseq')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return "\r\n".join([*lines, "Content-Length: 0", "", ""])


@pytest.fixture
def sip_websocket() -> Iterator[FakeSipWebSocket]:
    from websockets.sync.server import serve

    fake = FakeSipWebSocket(free_port(socket.SOCK_STREAM))
    server = serve(fake.serve, "127.0.0.1", fake.port, subprotocols=["sip"])  # type: ignore[list-item]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        thread.join(5)


def chromium(*flags: str) -> Iterator[Any]:
    """The desk e2e's Chromium, with a fake microphone and these flags."""
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.fail("chromium / chromium-driver not installed: scripts/bootstrap.sh installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="desk-phone-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (*CHROMIUM_FLAGS, "--use-fake-device-for-media-stream", *flags, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def phone_browser() -> Iterator[Any]:
    """The microphone is allowed without asking; sound needs a click, as in a browser out of the box."""
    yield from chromium("--use-fake-ui-for-media-stream", "--autoplay-policy=user-gesture-required")


@pytest.fixture
def browser_that_blocks_the_microphone() -> Iterator[Any]:
    """Every permission prompt answered no: what an agent who clicked 禁止 (block) has."""
    yield from chromium("--deny-permission-prompts")


def go_online(driver: Any, registered_within: float = 15) -> None:
    """Click 上线 once phone.js has enabled it (a click before would do nothing) and wait for 已注册."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def wait(timeout: float, condition: Any, what: str) -> None:
        WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(WebDriverException,)).until(
            condition, f"{what}; the phone shows {phone_seen(driver)}")

    wait(10, lambda d: d.find_element("id", "phone-online").is_enabled(), "上线 never enabled")
    driver.find_element("id", "phone-online").click()
    if registered_within:
        wait(registered_within, lambda d: d.find_element("id", "phone-state").text == "已注册", "never registered")


def phone_seen(driver: Any) -> str:
    """The phone's state and problem lines as the agent sees them: what a failed wait reports."""
    try:
        return repr((driver.find_element("id", "phone-state").text, driver.find_element("id", "phone-problem").text))
    except Exception as exc:  # noqa: BLE001 - a report of what could be seen, never the failure itself
        return f"nothing ({exc.__class__.__name__})"


def desk_with_browser_seat(fake: FakeSipWebSocket, tmp_path: Path, auto_answer: str = "no") -> tuple[Any, str]:
    desk_port = free_port(socket.SOCK_STREAM)
    conf = tmp_path / "sip.conf"
    conf.write_text(
        f"[general]\ntimezone = Asia/Shanghai\n[database]\nurl = sqlite:///{tmp_path / 'crm.db'}\n"
        f"[browser_phone]\nws_url = ws://127.0.0.1:{fake.port}/sip\ntoken_secret = {TOKEN_SECRET}\n"
        f"credential_seconds = {LIFETIME}\n"
        "[801]\ntype = agent\nseat_group = senior\nsecret = pw801-phone-e2e\nname = 张敏\nphone = browser\n"
        f"auto_answer = {auto_answer}\n"
        f"[desk]\nport = {desk_port}\nsecret_key = e2e-secret-key-0123456789abcdef0123456789\n",
        encoding="utf-8",
    )
    return start_desk(conf, desk_port, tmp_path / "desk.log"), f"http://127.0.0.1:{desk_port}"


def test_the_browser_agent_goes_online_registers_with_issued_credentials_and_logging_out_unregisters(
    sip_websocket: FakeSipWebSocket, phone_browser: Any, tmp_path: Path
) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver, fake = phone_browser, sip_websocket
    desk, base = desk_with_browser_seat(fake, tmp_path)

    def wait(timeout: float, condition: Any) -> None:
        WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(WebDriverException,)).until(condition)

    def phone_state() -> str:
        return str(driver.find_element("id", "phone-state").text)

    try:
        login(driver, base, "801", "pw801-phone-e2e")
        wait(5, lambda d: "801号 张敏" in d.page_source)
        assert phone_state() == "离线" and not fake.answers  # nothing registers before the click
        started = time.time()
        go_online(driver)

        assert fake.origins == [base]  # what an Origin allow-list on the IVR's WebSocket sees
        assert fake.subprotocols == ["sip"]
        assert fake.answers[:2] == [401, 200], (fake.answers, fake.refusals)
        assert fake.authorizations[0] is None
        assert fake.authorizations[1] is not None
        auth = parse_auth(fake.authorizations[1]).params
        user, expiry = auth["username"].split(".")
        assert user == "801" and started + LIFETIME - 5 <= int(expiry) <= time.time() + LIFETIME + 5
        assert auth["algorithm"].upper() == "MD5" and auth["qop"] == "auth"
        # the registrar took the digest: it was computed with the password derived for that user
        assert fake.bindings[0][0] == "801" and fake.bindings[0][1] is not None and not fake.refusals
        assert derive_password(TOKEN_SECRET, auth["username"]) not in driver.page_source  # not in the page
        assert driver.find_element("id", "phone-offline").is_displayed()
        assert driver.find_element("id", "phone-answer").get_attribute("disabled") is not None
        assert not driver.find_element("id", "phone-problem").is_displayed()

        driver.find_element("css selector", "header form button").click()  # 退出
        wait(10, lambda d: "/login" in d.current_url)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and fake.bindings[-1][1] is not None:
            time.sleep(0.05)
        assert fake.bindings[-1] == ("801", None), fake.bindings  # Expires: 0 went out before the page left
    finally:
        desk.terminate()
        desk.wait(10)


def test_an_offered_call_rings_in_the_page_is_answered_muted_timed_and_hung_up(
    sip_websocket: FakeSipWebSocket, phone_browser: Any, tmp_path: Path
) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver, fake = phone_browser, sip_websocket
    desk, base = desk_with_browser_seat(fake, tmp_path)

    def wait(timeout: float, condition: Any) -> None:
        WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(WebDriverException,)).until(condition)

    def text(element_id: str) -> str:
        return str(driver.find_element("id", element_id).text)

    def button(element_id: str) -> Any:
        return driver.find_element("id", element_id)

    try:
        login(driver, base, "801", "pw801-phone-e2e")
        go_online(driver)
        fake.invite("赵丽华", "13800000001")
        wait(5, lambda d: text("phone-call") == "来电:赵丽华")
        assert [r.status_code for r in fake.responses][-1] == 180  # the page rings: 180 Ringing
        assert button("phone-answer").is_enabled() and button("phone-hangup").is_enabled()
        assert not button("phone-mute").is_enabled()  # nothing to mute before the call is answered

        button("phone-answer").click()
        wait(15, lambda d: any(r.status_code == 200 for r in fake.responses))
        ok = next(r for r in fake.responses if r.status_code == 200)
        answer_sdp = ok.body.decode() if isinstance(ok.body, bytes) else str(ok.body)
        assert "m=audio" in answer_sdp and "UDP/TLS/RTP/SAVPF" in answer_sdp and "a=fingerprint:" in answer_sdp
        assert "a=setup:active" in answer_sdp  # the browser is the DTLS client towards an ICE-lite peer
        fake.ack(ok)
        wait(5, lambda d: text("phone-call") == "通话中:赵丽华" and d.find_element("id", "phone-timer").is_displayed())
        assert text("phone-timer").startswith("00:0")
        wait(5, lambda d: button("phone-mute").is_enabled())
        button("phone-mute").click()
        wait(5, lambda d: text("phone-mute") == "取消静音")
        button("phone-mute").click()
        wait(5, lambda d: text("phone-mute") == "静音")

        button("phone-hangup").click()
        wait(5, lambda d: fake.byes)
        assert fake.byes[0].call_id == "e2e-call-1"
        wait(5, lambda d: text("phone-call") == "通话已结束" and not d.find_element("id", "phone-timer").is_displayed())
        assert not button("phone-hangup").is_enabled() and text("phone-state") == "已注册"
    finally:
        desk.terminate()
        desk.wait(10)


def test_an_auto_answer_seat_answers_without_a_click(
    sip_websocket: FakeSipWebSocket, phone_browser: Any, tmp_path: Path
) -> None:

    driver, fake = phone_browser, sip_websocket
    desk, base = desk_with_browser_seat(fake, tmp_path, auto_answer="yes")
    try:
        login(driver, base, "801", "pw801-phone-e2e")
        go_online(driver)
        fake.invite("赵丽华", "13800000001")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(r.status_code == 200 for r in fake.responses):
            time.sleep(0.05)
        assert [r.status_code for r in fake.responses if r.status_code >= 180][:2] == [180, 200]
    finally:
        desk.terminate()
        desk.wait(10)


def test_a_blocked_microphone_is_explained_in_chinese_and_the_seat_stays_offline(
    sip_websocket: FakeSipWebSocket, browser_that_blocks_the_microphone: Any, tmp_path: Path
) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver, fake = browser_that_blocks_the_microphone, sip_websocket
    desk, base = desk_with_browser_seat(fake, tmp_path)
    try:
        login(driver, base, "801", "pw801-phone-e2e")
        go_online(driver, registered_within=0)
        WebDriverWait(driver, 10, ignored_exceptions=(WebDriverException,)).until(
            lambda d: d.find_element("id", "phone-problem").is_displayed())
        assert driver.find_element("id", "phone-problem").text.startswith("请允许浏览器使用麦克风")
        assert driver.find_element("id", "phone-state").text == "离线"
        assert driver.find_element("id", "phone-online").is_enabled()
        assert fake.answers == []  # never registered: no credentials were even asked for
    finally:
        desk.terminate()
        desk.wait(10)


def test_a_refused_registration_is_retried_once_with_fresh_credentials(
    sip_websocket: FakeSipWebSocket, phone_browser: Any, tmp_path: Path
) -> None:
    """A laptop that slept past its credential's expiry gets 403: the page asks the desk for a fresh one."""

    driver, fake = phone_browser, sip_websocket
    fake.refuse_once = True
    desk, base = desk_with_browser_seat(fake, tmp_path)
    try:
        login(driver, base, "801", "pw801-phone-e2e")
        go_online(driver)
        assert fake.answers == [401, 403, 401, 200]
        assert not driver.find_element("id", "phone-problem").is_displayed()
    finally:
        desk.terminate()
        desk.wait(10)
