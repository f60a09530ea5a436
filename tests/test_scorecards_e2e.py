"""In a real browser: the supervisor's scorecard page shows the hand-computed figures of the seeded CRM.

Headless Chromium driven by Selenium (the fixtures of tests/test_desk_e2e.py),
the desk as its own process on a free loopback port over the SQLite CRM that
tests/test_scorecards.py seeds (calls across 16:00 UTC, Shanghai's midnight).
Screenshots go to var/screenshots/ (scorecards.png, timeline.png).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from crm_bridge.db import make_engine, migrate
from crm_bridge.models import Call, Recording

from .conftest import ROOT, free_port
from .test_desk_e2e import SCREENSHOTS, browser, login, shot, start_desk  # noqa: F401  (browser is a fixture)
from .test_desk_quality import FIGURES, conf_text
from .test_scorecards import seed

pytestmark = pytest.mark.e2e


def test_the_scorecard_page_shows_the_hand_computed_figures_in_chromium(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from selenium.common.exceptions import NoSuchElementException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = make_engine(url)
    migrate(engine)
    seed(engine)
    with Session(engine) as s, s.begin():
        s.add(Recording(sip_call_id="c4@seed", agent_number="801", path="2026-12-01/c4.wav", format="wav-pcm16",
                        started_at=datetime(2026, 12, 1, 16, 15, tzinfo=UTC), state="complete",
                        characteristics=FIGURES.to_json()))
    with Session(engine) as s:
        c4 = s.query(Call.id).filter(Call.sip_call_id == "c4@seed").scalar()
    engine.dispose()
    port = free_port(socket.SOCK_STREAM)
    conf = tmp_path / "sip.conf"
    conf.write_text(conf_text(url) + f"port = {port}\n", encoding="utf-8")
    made = subprocess.run([sys.executable, "-m", "desk", "--config", str(conf), "add-supervisor", "王经理"],
                          cwd=ROOT, input="supervisor-pw\n", capture_output=True, text=True, timeout=30, check=False)
    assert made.returncode == 0, made.stderr
    desk = start_desk(conf, port, tmp_path / "desk.log")
    base = f"http://127.0.0.1:{port}"
    try:
        login(driver, base, "王经理", "supervisor-pw")
        driver.get(base + "/scorecards")
        # the supervisor picks the Shanghai day after the UTC-midnight twin in the form
        for field, day in (("from", "2026-12-02"), ("to", "2026-12-02")):
            driver.execute_script("document.getElementById(arguments[0]).value = arguments[1]", field, day)
        driver.find_element("id", "show").click()
        WebDriverWait(driver, 10, ignored_exceptions=(NoSuchElementException, WebDriverException)).until(
            lambda d: d.find_element("id", "period").text == "2026-12-02 至 2026-12-02")

        def cell(agent: str, figure: str) -> str:
            text: str = driver.find_element(
                "css selector", f'tr#agent-{agent} td[data-figure="{figure}"]').text
            return text

        assert driver.find_element("css selector", "tr#agent-801 td").text == "801 张敏"
        assert [cell("801", f) for f in ("calls_answered", "aht_s", "transfers", "survey_2", "survey_3", "csat",
                                          "complaints", "repeat_calls", "occupancy", "holds")] == [
            "3", "8.7分", "1", "1", "1", "0.0%", "1", "2", "20.0%", "—"]
        assert [cell("802", f) for f in ("calls_answered", "aht_s", "survey_1", "csat", "repeat_rate",
                                          "available_s", "occupancy")] == [
            "2", "10.0分", "1", "100.0%", "50.0%", "34.0分", "36.4%"]
        # the charts are real images the browser decoded
        WebDriverWait(driver, 20).until(lambda d: all(
            d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
            for img in d.find_elements("css selector", ".charts img")))
        assert len(driver.find_elements("css selector", ".charts img")) == 3
        driver.set_window_size(1366, 580)  # the table and the charts, little else
        shot(driver, "scorecards.png")

        driver.get(f"{base}/calls/{c4}")
        WebDriverWait(driver, 10).until(lambda d: d.find_elements("id", "timeline"))
        assert len(driver.find_elements("css selector", "#timeline rect.tl-caller")) == 2
        assert len(driver.find_elements("css selector", "#timeline rect.tl-overtalk")) == 1
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.find_element("id", "timeline").screenshot(str(SCREENSHOTS / "timeline.png"))  # the card alone
    finally:
        desk.terminate()
        desk.wait(10)
