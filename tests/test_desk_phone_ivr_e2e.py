"""End to end with the real IVR: the desk page is agent 801's phone, from 上线 to a caller's hang-up.

The IVR (run_ivr.py) listens for SIP over WebSocket (`[websocket]`, the desk's origin allowed)
and takes the desk's derived credentials (`[browser_phone]`); the desk (`python -m desk`) runs on
the same sip.conf; headless Chromium with a fake microphone runs the page's JsSIP. The agent
clicks 上线 and the IVR binds 801 to that WebSocket; a SIPp caller (a senior customer) is routed
to 801, the page rings, 接听 answers with Chromium's own WebRTC (DTLS-SRTP, ICE against the
IVR's ICE-lite), the IVR bridges the call, and 挂断 ends it as the agent's hang-up.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, free_port, load_customers, sipp
from .test_desk_e2e import login, start_desk
from .test_desk_phone_e2e import chromium, go_online
from .test_e2e_monitoring import wait_for_log
from .test_e2e_sip import crm_rows

pytestmark = pytest.mark.e2e
CUSTOMER, NAME = "13800000001", "赵丽华"  # the first number of loadtest/scenarios/callers.csv
SCREENSHOT = ROOT / "var" / "screenshots" / "desk-phone.png"  # docs/screenshots/ has a copy
RINGING_SCREENSHOT = SCREENSHOT.with_name("desk-phone-ringing.png")  # docs/screenshots/ too
TOKEN_SECRET = "ivr-e2e-token-secret-0123456789abcdef0123456"


@pytest.fixture
def webrtc_browser() -> Iterator[Any]:
    """Chromium whose WebRTC may use loopback candidates (the IVR's media is on 127.0.0.1)."""
    yield from chromium("--use-fake-ui-for-media-stream", "--allow-loopback-in-peer-connection",
                        "--disable-features=WebRtcHideLocalIpsWithMdns")


def browser_phone_ivr(ivr_factory: Any, tmp_path: Path) -> tuple[Any, str, int]:
    """The IVR with the desk's page as agent 801's phone (WebSocket, derived credentials) and a senior customer;
    the IVR, the desk's base URL and its port (the desk reads the same sip.conf)."""
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    load_customers(tmp_path, db_url, f"phone,name,assets,volume\n{CUSTOMER},{NAME},9000000,0\n")
    ws_port, desk_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    base = f"http://127.0.0.1:{desk_port}"
    ivr = ivr_factory(db_url=db_url, extra=(
        f"[websocket]\nenabled = yes\nport = {ws_port}\norigins = {base}\n"
        f"[browser_phone]\nws_url = ws://127.0.0.1:{ws_port}/sip\ntoken_secret = {TOKEN_SECRET}\n"
        "[801]\ntype = agent\nseat_group = senior\nhost = dynamic\nsecret = pw801-ivr-e2e\nname = 张敏\n"
        "phone = browser\n[queues]\nwrap_up_seconds = 0\n[survey]\ntimeout_seconds = 2\n"
        f"[desk]\nport = {desk_port}\nsecret_key = e2e-secret-key-0123456789abcdef0123456789\n"
    ))
    return ivr, base, desk_port


def test_the_desk_page_registers_with_the_ivr_over_websocket_answers_a_routed_caller_and_hangs_up(
    ivr_factory, webrtc_browser: Any, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver = webrtc_browser

    def wait(timeout: float, condition: Any) -> None:
        WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(WebDriverException,)).until(condition)

    def text(element_id: str) -> str:
        return str(driver.find_element("id", element_id).text)

    ivr, base, desk_port = browser_phone_ivr(ivr_factory, tmp_path)
    desk = start_desk(tmp_path / "sip.conf", desk_port, tmp_path / "desk.log")  # the IVR's file: one for both
    caller = None
    try:
        login(driver, base, "801", "pw801-ivr-e2e")
        go_online(driver, registered_within=15)
        wait_for_log(ivr, r"event='agent_registered' agent='801'")

        caller = sipp(tmp_path, "survey_caller", ivr.port, extra=("-d", "30000"), timeout_s=120)
        wait(40, lambda d: text("phone-call").startswith("来电"))
        wait(5, lambda d: d.find_element("id", "pop-name").text == NAME)  # desk.js's screen-pop, as before
        RINGING_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(RINGING_SCREENSHOT))  # ringing: 来电, the pop, 接听
        driver.find_element("id", "phone-answer").click()
        wait(15, lambda d: text("phone-call").startswith("通话中"))
        wait_for_log(ivr, r"event='webrtc_connected'")
        wait_for_log(ivr, r"event='bridged'")
        wait(5, lambda d: d.find_element("id", "phone-timer").is_displayed())
        time.sleep(2)
        assert text("phone-timer") >= "00:01"
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOT))  # in the call: the pop, 通话中, the timer
        driver.find_element("id", "phone-hangup").click()
        wait(10, lambda d: text("phone-call") == "通话已结束")
        # the caller is now in the survey (its row ends with it): the agent's hang-up is on the row already
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not [r for r in crm_rows(ivr) if r["hangup_by"] == "agent"]:
            time.sleep(0.1)
        (row,) = crm_rows(ivr)
        assert (row["agent_number"], row["hangup_by"], row["tier"]) == ("801", "agent", "senior"), dict(row)
        assert row["talk_s"] >= 1
        assert text("phone-state") == "已注册"  # ready for the next call
    finally:
        if caller is not None and caller.proc.poll() is None:
            caller.proc.kill()
        desk.terminate()
        desk.wait(10)
