"""QA review end to end in a real browser: a supervisor plays a recording in the page and scores the call, the agent sees it.

Headless Chromium driven by Selenium (the fixtures and helpers of test_desk_e2e.py), the desk as its own
process (`python -m desk`) on a free loopback port, a SQLite CRM holding calls and recording rows made here
(the recorder is not part of this test), stereo WAV files written with numpy. Screenshots: var/screenshots/qa-*.png.
"""

from __future__ import annotations

import socket
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from crm_bridge.db import make_engine, migrate
from desk.auth import set_password

from .conftest import earlier_today, free_port
from .test_desk_e2e import browser, login, shot, start_desk  # noqa: F401  (browser is a fixture)
from .test_quality_desk import add_call, add_recording, write_wav

pytestmark = pytest.mark.e2e


def test_a_supervisor_plays_the_recording_scores_a_fatal_failure_and_the_agent_sees_and_disputes_it(
    browser, tmp_path: Path  # noqa: F811
) -> None:  # type: ignore[no-untyped-def]
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser

    def wait(timeout: float, condition, poll: float = 0.1) -> None:  # type: ignore[no-untyped-def]
        WebDriverWait(
            driver, timeout, poll_frequency=poll,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException, WebDriverException),
        ).until(condition)

    db = tmp_path / "crm.db"
    desk_port = free_port(socket.SOCK_STREAM)
    conf = tmp_path / "sip.conf"
    conf.write_text(
        "[general]\ntimezone = Asia/Shanghai\n"
        f"[database]\nurl = sqlite:///{db}\n"
        "[801]\ntype = agent\nseat_group = senior\nsecret = pw801-qa-e2e\nname = 张敏\n"
        "[802]\ntype = agent\nseat_group = senior\nsecret = pw802-qa-e2e\nname = 李强\n"
        f"[desk]\nport = {desk_port}\nsecret_key = e2e-secret-key-0123456789abcdef0123456789\n"
        "agents_hear_own_recordings = yes\n"
        "[recording]\ndirectory = recordings\n",
        encoding="utf-8",
    )
    engine = make_engine(f"sqlite:///{db}")
    migrate(engine)
    set_password(engine, "王经理", "supervisor-pw", role="supervisor")
    now = earlier_today(30)  # a call of this week's review queue, also just after midnight on a Monday
    with Session(engine) as s, s.begin():
        bad = add_call(s, "qa-e2e-bad", "801", now, score=3)
        write_wav(tmp_path / "recordings" / "2026" / "1.wav", 6)
        add_recording(s, "qa-e2e-bad", "801", "2026/1.wav", now + timedelta(seconds=21),
                      characteristics={"longest_silence_s": 8.0, "agent_interruptions": 0, "caller_talk_s": 30.0},
                      duration_s=6.0)
        gone = add_call(s, "qa-e2e-gone", "802", now + timedelta(minutes=5))
        add_recording(s, "qa-e2e-gone", "802", "2026/2.wav", now + timedelta(minutes=5), state="deleted")
        bad_id, gone_id = bad.id, gone.id
    engine.dispose()

    desk = start_desk(conf, desk_port, tmp_path / "desk.log")
    base = f"http://127.0.0.1:{desk_port}"
    try:
        # the supervisor starts the day with the review queue: the 不满意 call is on it
        login(driver, base, "王经理", "supervisor-pw")
        driver.get(base + "/review")
        wait(5, lambda d: d.find_elements("id", f"review-{bad_id}"))
        assert "不满意" in driver.find_element("id", f"review-{bad_id}").text
        shot(driver, "qa-review.png")

        # a deleted file: a clear word instead of a broken player
        driver.get(f"{base}/calls/{gone_id}/evaluate")
        wait(5, lambda d: d.find_elements("css selector", ".gone"))
        assert driver.find_element("css selector", ".gone").text == "录音文件已删除"
        assert not driver.find_elements("tag name", "audio")

        # the recording plays in the page, seekable, beside the call's steps
        driver.get(base + "/review")
        driver.find_element("id", f"evaluate-{bad_id}").click()
        wait(5, lambda d: d.find_elements("css selector", "audio.player"))
        audio = driver.find_element("css selector", "audio.player")
        wait(10, lambda d: (d.execute_script("return arguments[0].duration", audio) or 0) > 5.9)
        assert driver.execute_script("return arguments[0].duration", audio) == pytest.approx(6.0, abs=0.05)
        driver.find_element("css selector", "button.play").click()
        wait(5, lambda d: d.execute_script("return arguments[0].currentTime", audio) > 0.3)
        first = driver.execute_script("return arguments[0].currentTime", audio)
        time.sleep(0.6)
        assert driver.execute_script("return arguments[0].currentTime", audio) > first  # it keeps playing
        assert not driver.execute_script("return arguments[0].paused", audio)
        # a step's time seeks the player (the agent answered 21 s into the call, when the recording starts)
        driver.find_element("css selector", "tr.step-bridged button.seek").click()
        wait(5, lambda d: d.execute_script("return arguments[0].currentTime", audio) >= 1.0)
        steps = driver.find_element("id", "steps").text
        assert "进入排队" in steps and "坐席接起" in steps and "评价按键" in steps
        assert driver.find_element("id", "auto-no_dead_air").text == "自动:做到"
        shot(driver, "qa-evaluate.png")

        # scored with a fatal criterion: total 0, failed
        driver.execute_script(
            "document.querySelectorAll('.criterion').forEach(function (c) {"
            "  if (!c.querySelector('input:checked')) c.querySelector('input').click(); });"
        )
        driver.find_element("css selector", "#criterion-rude_language input[value='发生']").click()
        driver.find_element("id", "evaluation-comment").send_keys("客户未说话时坐席使用服务禁语")
        driver.find_element("id", "evaluation-save").click()
        wait(5, lambda d: d.find_elements("id", "eval-total"))
        assert driver.find_element("id", "eval-total").text == "0.0"
        assert driver.find_element("id", "eval-result").text == "不合格"
        assert "使用服务禁语或辱骂客户" in driver.find_element("id", "eval-fatal").text
        evaluation_url = driver.current_url
        shot(driver, "qa-evaluation.png")
        driver.get(base + "/review")
        wait(5, lambda d: "0.0 分 · 不合格" in d.find_element("id", f"review-{bad_id}").text)

        # the agent logs in, sees their evaluation, hears their own recording and disputes it
        driver.find_element("css selector", "header form button").click()
        login(driver, base, "801", "pw801-qa-e2e")
        driver.get(base + "/evaluations")
        wait(5, lambda d: d.find_elements("css selector", "tr.evaluation-row"))
        rows = driver.find_elements("css selector", "tr.evaluation-row")
        assert len(rows) == 1 and "不合格" in rows[0].text and "红线" in rows[0].text
        rows[0].find_element("tag name", "a").click()
        wait(5, lambda d: d.current_url == evaluation_url)
        assert driver.find_element("id", "eval-total").text == "0.0"
        audio = driver.find_element("css selector", "audio.player")
        wait(10, lambda d: (d.execute_script("return arguments[0].duration", audio) or 0) > 5.9)
        driver.find_element("id", "response-comment").send_keys("当时客户一直没有声音,我按流程提示")
        driver.find_element("id", "dispute").click()
        wait(5, lambda d: d.find_element("id", "eval-status").text == "有异议")
        assert "当时客户一直没有声音" in driver.find_element("id", "responses").text
        shot(driver, "qa-agent.png")
        # and nothing of the supervisor's
        driver.get(base + "/review")
        assert driver.find_element("id", "error-title").text == "403 · 没有权限"
    finally:
        desk.terminate()
        try:
            desk.wait(10)
        except subprocess.TimeoutExpired:
            desk.kill()
