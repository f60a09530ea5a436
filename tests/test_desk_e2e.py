"""End to end in a real browser: a SIPp caller reaches a SIPp agent through the IVR, and the desk pops it.

Headless Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium,
the IVR from the conftest fixtures, the desk as its own process
(`python -m desk`) on a free loopback port, one SQLite CRM shared by both.
Screenshots go to var/screenshots/ (desk, ticket, wallboard, report).
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from .conftest import ROOT, free_port, load_customers, sipp
from .test_e2e_sip import finished, wait_for_row

pytestmark = pytest.mark.e2e
SCREENSHOTS = ROOT / "var" / "screenshots"
CUSTOMER, NAME = "13800000001", "赵丽华"  # the first number of loadtest/scenarios/callers.csv
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1366,768",
    "--lang=zh-CN",
)


@pytest.fixture
def browser() -> Iterator:
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.fail("chromium / chromium-driver not installed: scripts/bootstrap.sh installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="desk-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def start_desk(conf: Path, port: int, log: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "desk", "--config", str(conf)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=open(log, "w"),
        text=True,
    )  # noqa: SIM115
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "ready on" in line:
            break
        if not line and proc.poll() is not None:
            raise AssertionError(f"desk did not start:\n{log.read_text()}")
    for _ in range(100):  # uvicorn binds just after the line
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"desk not listening on {port}:\n{log.read_text()}")


def login(driver, base: str, username: str, password: str) -> None:  # type: ignore[no-untyped-def]
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base + "/login")
    try:
        WebDriverWait(driver, 10, ignored_exceptions=(WebDriverException,)).until(
            lambda d: d.find_element("id", "username"))
    except TimeoutException:  # say what the browser shows instead of the form (its text: an error page's code)
        shown = driver.find_element("tag name", "body").text.strip() or driver.page_source
        raise AssertionError(f"no login form at {driver.current_url}: {shown[:600]}") from None
    driver.find_element("id", "username").send_keys(username)
    driver.find_element("id", "password").send_keys(password)
    driver.find_element("id", "login-submit").click()
    # the next page load must not overtake the login's POST (it would find the browser logged out);
    # asked mid-navigation, Chromium may answer with an inspector error: ask again
    WebDriverWait(driver, 10, ignored_exceptions=(WebDriverException,)).until(
        lambda d: "/login" not in d.current_url)


def shot(driver, name: str) -> None:  # type: ignore[no-untyped-def]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / name))


def test_desk_pops_the_senior_caller_walks_a_complaint_and_the_wallboard_counts_the_call(
    ivr_factory, browser, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )
    from selenium.webdriver.support.ui import Select, WebDriverWait

    def wait(timeout: float, condition, poll: float = 0.1) -> None:  # type: ignore[no-untyped-def]
        # a form post navigates: an element found on the old page may be gone by the time it is read,
        # and Chromium may answer a read mid-navigation with an inspector error
        WebDriverWait(
            driver,
            timeout,
            poll_frequency=poll,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException, WebDriverException),
        ).until(condition)

    driver = browser
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    load_customers(tmp_path, db_url, f"phone,name,assets,volume\n{CUSTOMER},{NAME},9000000,0\n")
    agent_port, desk_port = free_port(), free_port(socket.SOCK_STREAM)
    agents = (
        f"[801]\ntype = agent\nseat_group = senior\nhost = 127.0.0.1:{agent_port}\n"
        "secret = pw801-desk-e2e\nname = 张敏\n"
        "[queues]\nwrap_up_seconds = 2\n"
    )
    desk_section = f"[desk]\nport = {desk_port}\nsecret_key = e2e-secret-key-0123456789abcdef0123456789\n"
    ivr = ivr_factory(db_url=db_url, extra=agents + desk_section)
    desk_conf = tmp_path / "sip.conf"  # one file for both: the IVR leaves [desk] to the desk
    made = subprocess.run(
        [sys.executable, "-m", "desk", "--config", str(desk_conf), "add-supervisor", "王经理"],
        cwd=ROOT,
        input="supervisor-pw\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert made.returncode == 0 and "supervisor 王经理 created" in made.stdout, made.stderr
    desk = start_desk(desk_conf, desk_port, tmp_path / "desk.log")
    base = f"http://127.0.0.1:{desk_port}"
    try:
        # the agent logs in with the SIP secret (it seeded the desk password) and waits
        login(driver, base, "801", "pw801-desk-e2e")
        wait(5, lambda d: "801号 张敏" in d.page_source)
        wait(5, lambda d: d.find_element("id", "state-name").text == "空闲")

        agent = sipp(tmp_path, "agent_uas", ivr.port, extra=("-d", "6000", "-p", str(agent_port)), timeout_s=120)
        caller = sipp(tmp_path, "survey_caller", ivr.port, extra=("-d", "11000"))
        crm = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        rung_at = None
        deadline = time.monotonic() + 40
        while rung_at is None and time.monotonic() < deadline:
            row = crm.execute(
                "SELECT at FROM call_events WHERE kind = 'agent_rung' AND detail = 'agent=801'"
            ).fetchone()
            rung_at = datetime.fromisoformat(row[0]).replace(tzinfo=UTC) if row else None
            time.sleep(0.05)
        assert rung_at is not None, "the agent's phone was never rung"
        wait(2, poll=0.05, condition=lambda d: d.find_element("id", "pop-name").text == NAME)
        popped_after = (datetime.now(UTC) - rung_at).total_seconds()
        assert popped_after < 2, f"screen-pop {popped_after:.2f} s after the agent's phone rang"
        assert driver.find_element("id", "pop-tier").text == "高端客户"
        assert driver.find_element("id", "pop-phone").text == CUSTOMER
        assert driver.find_element("id", "pop-service").text == "产品推荐"  # survey_caller presses 2
        assert driver.title.startswith("来电")
        shot(driver, "desk.png")

        def click(element_id: str) -> None:
            """Click it once it is there and stays: the ticket panel is rendered again after each change."""
            wait(5, lambda d: d.find_element("id", element_id).click() or True)  # a stale element is retried

        # during the call: a note with a wrap-up code, then a complaint ticket
        driver.find_element("id", "note").send_keys("客户询问理财产品,转账延迟")
        Select(driver.find_element("id", "wrap-up-code")).select_by_visible_text("转投诉")
        click("note-save")
        wait(5, lambda d: d.find_elements("id", "saved"))
        driver.find_element("id", "ticket-description").send_keys("转账三天未到账,客户要求尽快处理")
        Select(driver.find_element("id", "ticket-department")).select_by_visible_text("财务部")
        click("ticket-open")

        def status_is(label: str):  # type: ignore[no-untyped-def]
            return lambda d: d.find_element("id", "ticket-status").text == label

        wait(5, status_is("已登记"))
        click("move-forwarded")
        wait(5, status_is("已转部门"))
        driver.find_element("id", "feedback-text").send_keys("已转财务部,今天内回复")
        click("feedback-save")
        wait(5, lambda d: "已转财务部,今天内回复" in d.find_element("id", "history").text)
        driver.find_element("id", "edit-result").send_keys("财务部已补发,资金已到账")
        click("edit-save")
        wait(5, lambda d: d.find_elements("id", "move-result_received"))
        click("move-result_received")
        wait(5, status_is("已收到处理结果"))
        Select(driver.find_element("id", "edit-satisfied")).select_by_visible_text("满意")
        click("edit-save")
        wait(5, lambda d: d.find_element("id", "ticket-satisfied").text == "满意")
        click("move-caller_informed")
        wait(5, status_is("已告知客户"))
        click("move-closed")
        wait(5, status_is("已结案"))
        history = driver.find_elements("css selector", "#history tr.history-row")
        assert [r.find_elements("tag name", "td")[2].text for r in history] == [
            "登记",
            "流转",
            "反馈客户",
            "修改",
            "流转",
            "修改",
            "流转",
            "流转",
        ]
        assert all(r.find_elements("tag name", "td")[1].text == "801" for r in history)
        shot(driver, "ticket.png")

        finished(caller)
        finished(agent)
        row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
        assert (row["agent_number"], row["outcome"]) == ("801", "completed")
        notes = crm.execute("SELECT note, wrap_up_code FROM call_notes").fetchall()
        assert notes == [("客户询问理财产品,转账延迟", "转投诉")]
        assert crm.execute("SELECT status, department, caller_satisfied FROM tickets").fetchall() == [
            ("closed", "财务部", 1)
        ]

        # the supervisor: wallboard counts the call live, the report lists it
        driver.find_element("css selector", "header form button").click()  # 退出
        login(driver, base, "王经理", "supervisor-pw")
        wait(5, lambda d: d.find_elements("id", "board"))
        wait(
            5,
            lambda d: (
                d.find_element("id", "calls-senior").text == "1" and d.find_element("id", "answered-senior").text == "1"
            ),
        )
        assert "张敏" in driver.find_element("id", "group-senior").text
        shot(driver, "wallboard.png")
        driver.get(base + "/report")
        wait(5, lambda d: d.find_elements("id", "report-day"))
        first_row = driver.find_element("css selector", "table.report tbody tr").text
        assert first_row.startswith("高级坐席组 1 1 100.0%"), first_row
        wait(
            10,
            lambda d: all(
                d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
                for img in d.find_elements("css selector", ".charts img")
            ),
        )
        shot(driver, "report.png")
        # an agent never reaches the supervisor's pages, whatever the browser asks for
        driver.find_element("css selector", "header form button").click()
        login(driver, base, "801", "pw801-desk-e2e")
        driver.get(base + "/wallboard")
        assert driver.find_element("id", "error-title").text == "403 · 没有权限"
    finally:
        desk.terminate()
        try:
            desk.wait(10)
        except subprocess.TimeoutExpired:
            desk.kill()
