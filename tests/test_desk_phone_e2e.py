"""End to end in a real browser: the desk page registers its seat over SIP WebSocket with the desk's credentials.

Headless Chromium (Debian's `chromium` + `chromium-driver`, fake microphone) drives the desk
(`python -m desk`, as tests/test_desk_e2e.py starts it) with its real JsSIP. The SIP WebSocket
server is a small one in this test (the `websockets` package, `sip` subprotocol, RFC 7118) whose
REGISTERs go through the IVR's own `RegisterHandler` and `Registrar`: the first REGISTER is
challenged (401, MD5 as a browser seat is), the second must carry the authorization user the
desk issued and a digest that the registrar validates with the derived password. Logging out
must un-REGISTER the seat (Expires: 0).
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
from aiosipua import SipMessage, SipRequest, parse_auth

from ivr.phone_credentials import BrowserCredentials, derive_password
from ivr.registrar import RegisterHandler, Registrar

from .conftest import ROOT, free_port
from .test_desk_e2e import CHROMIUM_FLAGS, login, start_desk

pytestmark = pytest.mark.e2e
TOKEN_SECRET = "e2e-token-secret-0123456789abcdef0123456789"
LIFETIME = 1800
SCREENSHOT = ROOT / "docs" / "screenshots" / "desk-phone.png"


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

    def __post_init__(self) -> None:
        registrar = Registrar({"801": "pw801-phone-e2e"}, policies={"801": "md5"},
                              browser=BrowserCredentials(TOKEN_SECRET, ["801"], LIFETIME))
        self.handler = RegisterHandler(
            registrar, (), lambda host, port, user, reason: self.refusals.append(f"{user}: {reason}"),
            lambda agent, where, expires, uri: self.bindings.append((agent, where)),
        )

    def serve(self, ws: Any) -> None:
        self.origins.append(ws.request.headers.get("Origin"))
        self.subprotocols.append(ws.subprotocol)
        for frame in ws:
            request = SipMessage.parse(frame.encode() if isinstance(frame, str) else frame)
            if not isinstance(request, SipRequest) or request.method != "REGISTER":
                continue
            self.authorizations.append(request.get_header("authorization"))
            status, reason, headers = self.handler.handle(request, ws.remote_address[:2])
            self.answers.append(status)
            ws.send(response(request, status, reason, headers))


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


@pytest.fixture
def phone_browser() -> Iterator[Any]:
    """The desk e2e's Chromium, with a fake microphone that is allowed without asking."""
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.fail("chromium / chromium-driver not installed: scripts/bootstrap.sh installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="desk-phone-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    flags = (*CHROMIUM_FLAGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             "--autoplay-policy=user-gesture-required", f"--user-data-dir={profile}")
    for flag in flags:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_the_browser_agent_goes_online_registers_with_issued_credentials_and_logging_out_unregisters(
    sip_websocket: FakeSipWebSocket, phone_browser: Any, tmp_path: Path
) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver, fake = phone_browser, sip_websocket
    desk_port = free_port(socket.SOCK_STREAM)
    conf = tmp_path / "sip.conf"
    conf.write_text(
        f"[general]\ntimezone = Asia/Shanghai\n[database]\nurl = sqlite:///{tmp_path / 'crm.db'}\n"
        f"[browser_phone]\nws_url = ws://127.0.0.1:{fake.port}/sip\ntoken_secret = {TOKEN_SECRET}\n"
        f"credential_seconds = {LIFETIME}\n"
        "[801]\ntype = agent\nseat_group = senior\nsecret = pw801-phone-e2e\nname = 张敏\nphone = browser\n"
        f"[desk]\nport = {desk_port}\nsecret_key = e2e-secret-key-0123456789abcdef0123456789\n",
        encoding="utf-8",
    )
    desk = start_desk(conf, desk_port, tmp_path / "desk.log")
    base = f"http://127.0.0.1:{desk_port}"

    def wait(timeout: float, condition: Any) -> None:
        WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(WebDriverException,)).until(condition)

    def phone_state() -> str:
        return str(driver.find_element("id", "phone-state").text)

    try:
        login(driver, base, "801", "pw801-phone-e2e")
        wait(5, lambda d: "801号 张敏" in d.page_source)
        assert phone_state() == "离线" and not fake.answers  # nothing registers before the click
        started = time.time()
        driver.find_element("id", "phone-online").click()
        wait(15, lambda d: phone_state() == "已注册")

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
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOT))

        driver.find_element("css selector", "header form button").click()  # 退出
        wait(10, lambda d: "/login" in d.current_url)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and fake.bindings[-1][1] is not None:
            time.sleep(0.05)
        assert fake.bindings[-1] == ("801", None), fake.bindings  # Expires: 0 went out before the page left
    finally:
        desk.terminate()
        desk.wait(10)
