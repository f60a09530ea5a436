"""The desk's quality pages in process: the scorecards (supervisors only) and the call timeline."""

from __future__ import annotations

import re
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session

with warnings.catch_warnings():  # as tests/test_desk.py: Starlette's TestClient over httpx
    warnings.simplefilter("ignore")  # its deprecation warning class is Starlette's own
    from starlette.testclient import TestClient

from crm_bridge.characteristics import FRAME_S, from_masks
from crm_bridge.db import make_engine, migrate
from crm_bridge.models import Call, Recording
from desk.app import create_app
from desk.auth import seed_agents, set_password
from desk.config import load_desk_config
from desk.timeline import RIGHT_PAD, timeline, timeline_for_recording
from tests.test_desk import login
from tests.test_scorecards import seed


def conf_text(url: str) -> str:
    return (f"[general]\ntimezone = Asia/Shanghai\n[database]\nurl = {url}\n"
            "[801]\ntype = agent\nseat_group = senior\nsecret = pw801-secret\nname = 张敏\n"
            "[802]\ntype = agent\nseat_group = junior\nsecret = pw802-secret\nname = 李强\n"
            "[desk]\nsecret_key = 0123456789abcdef0123456789abcdef-test\n")


def frames(seconds: float, *spans: tuple[float, float]) -> np.ndarray:
    mask = np.zeros(round(seconds / FRAME_S), dtype=bool)
    for a, b in spans:
        mask[round(a / FRAME_S):round(b / FRAME_S)] = True
    return mask


# caller speaks 1-5 s and 9-12 s, agent 4.5-8 s: 0.5 s of over-talk (the agent cut in), 1 s gap, 8 s to the end
FIGURES = from_masks(frames(20, (1, 5), (9, 12)), frames(20, (4.5, 8)))


@pytest.fixture
def desk(tmp_path: Path):  # type: ignore[no-untyped-def]
    conf = tmp_path / "sip.conf"
    conf.write_text(conf_text(f"sqlite:///{tmp_path / 'crm.db'}"), encoding="utf-8")
    config = load_desk_config(conf)
    engine = make_engine(config.database_url)
    migrate(engine)
    seed(engine)
    seed_agents(engine, config)
    set_password(engine, "王经理", "supervisor-pw", role="supervisor")
    with Session(engine) as s, s.begin():
        s.add(Recording(sip_call_id="c4@seed", agent_number="801", path="2026-12-01/c4.wav", format="wav-pcm16",
                        started_at=datetime(2026, 12, 1, 16, 15, tzinfo=UTC), state="complete",
                        characteristics=FIGURES.to_json()))
    with TestClient(create_app(config, engine), base_url="https://testserver") as client:
        yield client, engine
    engine.dispose()


def cells(page: str, agent: str) -> dict[str, str]:
    row = re.search(rf'<tr id="agent-{agent}">(.*?)</tr>', page, re.S)
    assert row, page
    return dict(re.findall(r'<td data-figure="([a-z_0-9]+)">([^<]*)</td>', row.group(1)))


def test_the_supervisor_sees_each_agents_hand_computed_figures_for_the_shanghai_day(desk) -> None:  # type: ignore[no-untyped-def]
    client, _ = desk
    login(client, "王经理", "supervisor-pw")
    page = client.get("/scorecards?from=2026-12-02&to=2026-12-02")
    assert page.status_code == 200 and "2026-12-02 至 2026-12-02" in page.text
    a801, a802 = cells(page.text, "801"), cells(page.text, "802")
    assert (a801["calls_answered"], a801["aht_s"], a801["transfers"], a801["csat"]) == ("3", "8.7分", "1", "0.0%")
    assert (a801["survey_2"], a801["survey_3"], a801["survey_avg"], a801["complaints"]) == ("1", "1", "2.50", "1")
    assert (a801["repeat_calls"], a801["repeat_rate"], a801["occupancy"]) == ("2", "66.7%", "20.0%")
    assert (a801["talking_s"], a801["wrap_up_s"], a801["paused_s"]) == ("19.0分", "7.0分", "60.0分")
    assert (a801["holds"], a801["qa_avg"], a801["qa_fatal"]) == ("—", "—", "—")
    assert (a802["calls_answered"], a802["aht_s"], a802["csat"], a802["occupancy"]) == ("2", "10.0分", "100.0%", "36.4%")
    for name in ("calls.png", "states.png", "surveys.png"):
        chart = client.get(f"/scorecards/{name}?from=2026-12-02&to=2026-12-02")
        assert chart.status_code == 200 and chart.content[:4] == b"\x89PNG"
    assert client.get("/scorecards/other.png").status_code == 404


def test_a_bad_period_is_answered_with_the_reason(desk) -> None:  # type: ignore[no-untyped-def]
    client, _ = desk
    login(client, "王经理", "supervisor-pw")
    r = client.get("/scorecards?from=2026-12-03&to=2026-12-02")
    assert r.status_code == 400 and "结束日期早于开始日期" in r.text
    r = client.get("/scorecards?from=2024-01-01&to=2026-12-02")
    assert r.status_code == 400 and "一次最多查看366天" in r.text
    assert client.get("/scorecards?to=yesterday").status_code == 400


def test_an_agent_never_sees_the_scorecards(desk) -> None:  # type: ignore[no-untyped-def]
    client, _ = desk
    login(client, "801", "pw801-secret")
    assert client.get("/scorecards").status_code == 403
    assert client.get("/scorecards/calls.png").status_code == 403


def test_the_call_page_draws_the_two_lane_timeline_of_its_recording(desk) -> None:  # type: ignore[no-untyped-def]
    client, engine = desk
    with Session(engine) as s:
        c4 = s.query(Call.id).filter(Call.sip_call_id == "c4@seed").scalar()
        c5 = s.query(Call.id).filter(Call.sip_call_id == "c5@seed").scalar()
    login(client, "王经理", "supervisor-pw")
    page = client.get(f"/calls/{c4}").text
    assert 'id="timeline"' in page
    assert page.count('class="tl-caller"') == 2 and page.count('class="tl-agent"') == 1
    assert page.count('class="tl-overtalk"') == 1 and page.count('class="tl-silence"') == 1
    assert 'id="tl-caller">7.0秒<' in page and 'id="tl-overtalk">1次 / 0.5秒<' in page
    assert "之前说话的是客户" in page  # the 8 s silence at the end follows the caller
    assert 'id="timeline"' not in client.get(f"/calls/{c5}").text  # no recording: no timeline


def test_the_timeline_places_each_span_in_proportion() -> None:
    t = timeline(FIGURES)
    usable = t.width - t.label_w - RIGHT_PAD
    first = t.caller[0]
    assert first.x == pytest.approx(t.label_w + usable * 1 / 20) and first.width == pytest.approx(usable * 4 / 20)
    assert t.overtalk[0].x == pytest.approx(t.label_w + usable * 4.5 / 20)
    assert [tick.label for tick in t.ticks] == ["0:00", "0:05", "0:10", "0:15", "0:20"]


def test_a_recording_without_characteristics_or_with_a_broken_record_has_no_timeline(desk) -> None:  # type: ignore[no-untyped-def]
    _, engine = desk
    with Session(engine) as s, s.begin():
        rows = [Recording(sip_call_id="c5@seed", path=f"x/{n}.wav", format="wav-pcm16", state="complete",
                          started_at=datetime(2026, 12, 1, 16, 22, tzinfo=UTC), characteristics=text)
                for n, text in enumerate((None, '{"version": 1}'))]
        s.add_all(rows)
        s.flush()
        ids = [r.id for r in rows]
    assert [timeline_for_recording(engine, i) for i in ids] == [None, None]
    with Session(engine) as s:
        good = s.query(Recording.id).filter(Recording.sip_call_id == "c4@seed").scalar()
    found = timeline_for_recording(engine, good)
    assert found is not None and found.figures == FIGURES
