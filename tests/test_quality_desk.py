"""QA review in the desk (Starlette's TestClient): recordings served by byte range and only to whom may hear them,
evaluations scored and answered, form versions kept, the review queue's rules and seeded sample."""

from __future__ import annotations

import json
import re
import warnings
import wave
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient

from crm_bridge.db import make_engine, migrate
from crm_bridge.models import (
    Call,
    CallEvent,
    Evaluation,
    EvaluationAnswer,
    EvaluationForm,
    EvaluationResponse,
    Recording,
    Ticket,
)
from desk.app import create_app
from desk.auth import seed_agents, set_password
from desk.config import load_desk_config
from desk.quality import DEFAULT_FORM, FATAL_CLEAR, FATAL_VIOLATED, read_form
from desk.review import parse_week, review_queue, sample_rank, week_label, week_of
from ivr.config import ConfigError

from .conftest import earlier_today

SHANGHAI = ZoneInfo("Asia/Shanghai")
CONF = """[general]
timezone = Asia/Shanghai
[database]
url = sqlite:///crm.db
[801]
type = agent
seat_group = senior
secret = pw801-secret
name = 张敏
[802]
type = agent
seat_group = senior
secret = pw802-secret
name = 李强
[desk]
secret_key = 0123456789abcdef0123456789abcdef-test
agents_hear_own_recordings = {hear}
[recording]
directory = recordings
[quality]
sample_per_agent_week = 1
sample_seed = test-seed
{form}
"""


def write_wav(path: Path, seconds: float, rate: int = 8000) -> Path:
    """A stereo 16-bit WAV like the recorder's: the caller (440 Hz) left, the agent (660 Hz) right."""
    t = np.arange(int(seconds * rate)) / rate
    left = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    right = (0.3 * 32767 * np.sin(2 * np.pi * 660 * t)).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.column_stack([left, right]).tobytes())
    return path


def add_call(s: Session, sip_call_id: str, agent: str | None, at: datetime, *, score: int | None = None,
             outcome: str = "completed", ring_s: float = 4.0) -> Call:
    call = Call(sip_call_id=sip_call_id, caller="13800000001", callee="95000", started_at=at, seat_group="senior",
                agent_number=agent, tier="senior", service="consulting", outcome=outcome, talk_s=60,
                queue_wait_s=12.0, survey_score=score, ended_at=at + timedelta(minutes=2))
    s.add(call)
    s.flush()
    events = [("invited", 0, "caller=13800000001 callee=95000"), ("queued", 5, "seat_group=senior service=consulting")]
    if agent:
        events += [("agent_rung", 17, f"agent={agent}"), ("agent_answered", 17 + ring_s, f"agent={agent}"),
                   ("bridged", 18 + ring_s, f"agent={agent}")]
    if score:
        events.append(("survey_digit", 90, f"digit={score}"))
    events.append(("ended", 100, f"outcome={outcome}"))
    s.add_all(CallEvent(call_id=call.id, at=at + timedelta(seconds=t), kind=k, detail=d) for k, t, d in events)
    return call


def add_recording(s: Session, sip_call_id: str, agent: str | None, path: str, at: datetime, *,
                  state: str = "complete", characteristics: dict[str, float] | None = None,
                  duration_s: float = 3.0) -> int:
    rec = Recording(sip_call_id=sip_call_id, agent_number=agent, seat_group="senior", path=path, format="wav-pcm16",
                    channels=2, started_at=at, duration_s=duration_s, state=state,
                    characteristics=json.dumps(characteristics) if characteristics else None)
    s.add(rec)
    s.flush()
    return rec.id


class Desk:
    def __init__(self, tmp_path: Path, *, hear: bool = False, form: Path | None = None) -> None:
        self.tmp = tmp_path
        conf = tmp_path / "sip.conf"
        conf.write_text(CONF.format(hear="yes" if hear else "no", form=f"form = {form}" if form else ""),
                        encoding="utf-8")
        self.config = load_desk_config(conf)
        self.engine = make_engine(self.config.database_url)
        migrate(self.engine)
        seed_agents(self.engine, self.config)
        set_password(self.engine, "王经理", "supervisor-pw", role="supervisor")
        self.recordings = tmp_path / "recordings"

    def client(self) -> TestClient:
        return TestClient(create_app(self.config, self.engine), base_url="https://testserver")


def csrf_of(client: TestClient, path: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert match
    return match.group(1)


def login(client: TestClient, username: str, password: str) -> None:
    r = client.post("/login", data={"csrf": csrf_of(client, "/login"), "username": username, "password": password})
    assert r.status_code == 200, r.text


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Two agents' calls of today with recordings: 801's rated 不满意, 802's; a deleted one; a missing file."""
    desk = Desk(tmp_path)
    now = earlier_today(10)
    ids: dict[str, int] = {}
    with Session(desk.engine) as s, s.begin():
        c1 = add_call(s, "call-801", "801", now, score=3)
        c2 = add_call(s, "call-802", "802", now + timedelta(minutes=1))
        write_wav(desk.recordings / "2026/12/06/1.wav", 3)
        write_wav(desk.recordings / "2026/12/06/2.wav", 3)
        ids["rec801"] = add_recording(s, "call-801", "801", "2026/12/06/1.wav", now + timedelta(seconds=21),
                                      characteristics={"longest_silence_s": 45.0, "agent_interruptions": 1})
        ids["rec802"] = add_recording(s, "call-802", "802", "2026/12/06/2.wav", now + timedelta(minutes=1))
        c3 = add_call(s, "call-deleted", "801", now + timedelta(minutes=2))
        ids["deleted"] = add_recording(s, "call-deleted", "801", "2026/12/06/3.wav", now, state="deleted")
        c4 = add_call(s, "call-missing", "801", now + timedelta(minutes=3))
        ids["missing"] = add_recording(s, "call-missing", "801", "2026/12/06/4.wav", now)
        ids.update(call801=c1.id, call802=c2.id, call_deleted=c3.id, call_missing=c4.id)
    yield desk, ids
    desk.engine.dispose()


def best_answers(desk: Desk, **changes: str) -> dict[str, str]:
    form = read_form(desk.config.quality.form_path)
    answers = {f"answer.{c.key}": FATAL_CLEAR if c.fatal else c.options[0].label for c in form.criteria}
    answers.update({f"answer.{k}": v for k, v in changes.items()})
    return answers


# --- the audio: byte ranges -----------------------------------------------------------------------


def test_a_recording_is_served_whole_or_by_byte_range_and_a_range_past_the_end_is_416(world) -> None:  # type: ignore[no-untyped-def]
    desk, ids = world
    data = (desk.recordings / "2026/12/06/1.wav").read_bytes()
    size = len(data)
    with desk.client() as client:
        login(client, "王经理", "supervisor-pw")
        url = f"/recordings/{ids['rec801']}"
        full = client.get(url)
        assert full.status_code == 200 and full.content == data
        assert full.headers["content-type"] == "audio/wav" and full.headers["accept-ranges"] == "bytes"
        assert "no-store" in full.headers["cache-control"]
        assert full.headers["content-disposition"] == f'inline; filename="recording-{ids["rec801"]}.wav"'
        part = client.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == data[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{size}"
        tail = client.get(url, headers={"Range": "bytes=-44"})  # the last 44 bytes
        assert tail.status_code == 206 and tail.content == data[-44:]
        assert tail.headers["content-range"] == f"bytes {size - 44}-{size - 1}/{size}"
        opened = client.get(url, headers={"Range": f"bytes={size - 10}-"})
        assert opened.status_code == 206 and opened.content == data[-10:]
        beyond = client.get(url, headers={"Range": f"bytes={size}-{size + 100}"})
        assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"


# --- who may hear what ----------------------------------------------------------------------------


def test_recordings_are_for_supervisors_and_agents_hear_none_unless_configured(world) -> None:  # type: ignore[no-untyped-def]
    desk, ids = world
    with desk.client() as client:
        assert client.get(f"/recordings/{ids['rec801']}", follow_redirects=False).headers["location"] == "/login"
        login(client, "801", "pw801-secret")
        r = client.get(f"/recordings/{ids['rec801']}")
        assert r.status_code == 403 and "录音只对班长开放" in r.text


def test_an_agent_hears_their_own_recordings_if_configured_and_never_another_agents(tmp_path: Path) -> None:
    desk = Desk(tmp_path, hear=True)
    now = datetime.now(UTC)
    with Session(desk.engine) as s, s.begin():
        add_call(s, "a", "801", now)
        add_call(s, "b", "802", now)
        write_wav(desk.recordings / "a.wav", 1)
        write_wav(desk.recordings / "b.wav", 1)
        mine, theirs = add_recording(s, "a", "801", "a.wav", now), add_recording(s, "b", "802", "b.wav", now)
    with desk.client() as client:
        login(client, "801", "pw801-secret")
        assert client.get(f"/recordings/{mine}").status_code == 200
        r = client.get(f"/recordings/{theirs}")
        assert r.status_code == 403 and "只能收听自己的通话录音" in r.text
        assert client.get(f"/recordings/{theirs}", headers={"Range": "bytes=0-10"}).status_code == 403
        assert client.get("/recordings/999999").status_code == 404
    desk.engine.dispose()


def test_a_path_that_leaves_the_recording_directory_is_refused(tmp_path: Path) -> None:
    desk = Desk(tmp_path)
    now = datetime.now(UTC)
    secret = write_wav(tmp_path / "secret.wav", 1)  # beside the recording directory, not in it
    (desk.recordings).mkdir(parents=True)
    (desk.recordings / "link.wav").symlink_to(secret)
    with Session(desk.engine) as s, s.begin():
        add_call(s, "x", "801", now)
        rows = [add_recording(s, "x", "801", p, now) for p in ("../secret.wav", str(secret), "link.wav", "a/../../secret.wav")]
    with desk.client() as client:
        login(client, "王经理", "supervisor-pw")
        for rid in rows:
            r = client.get(f"/recordings/{rid}")
            assert r.status_code == 403 and "不在录音目录中" in r.text, rid
        # only an id reaches a file: names and walks in the URL are not found
        for path in ("/recordings/..%2Fsecret.wav", "/recordings/../../secret.wav", "/recordings/1%20OR%201=1",
                     "/recordings/secret.wav", f"/recordings/{rows[0]}.wav"):
            assert client.get(path).status_code == 404, path
    desk.engine.dispose()


def test_a_deleted_or_missing_file_shows_deleted_instead_of_a_player(world) -> None:  # type: ignore[no-untyped-def]
    desk, ids = world
    with desk.client() as client:
        login(client, "王经理", "supervisor-pw")
        for call, rec in (("call_deleted", "deleted"), ("call_missing", "missing")):
            page = client.get(f"/calls/{ids[call]}/evaluate").text
            assert f'id="recording-{ids[rec]}-gone">录音文件已删除' in page
            assert "<audio" not in page
            r = client.get(f"/recordings/{ids[rec]}")
            assert r.status_code == 404 and "录音文件已删除" in r.text
        page = client.get(f"/calls/{ids['call801']}/evaluate").text
        assert f'<audio id="player-{ids["rec801"]}"' in page and f'src="/recordings/{ids["rec801"]}"' in page


# --- evaluations -----------------------------------------------------------------------------------


def test_a_supervisor_scores_a_call_beside_its_steps_and_auto_rules_prefill_from_characteristics(world) -> None:  # type: ignore[no-untyped-def]
    desk, ids = world
    with desk.client() as client:
        login(client, "王经理", "supervisor-pw")
        page = client.get(f"/calls/{ids['call801']}/evaluate").text
        # the steps beside the player: queue wait, the agent's ring, the survey
        for text in ("进入排队", "坐席振铃", "坐席接起", "评价按键", 'id="call-survey">不满意', 'id="call-queue-wait">12秒'):
            assert text in page, text
        # longest_silence_s 45 > 30: 未做到; 1 interruption ≤ 2: 做到; rung 4 s ≤ 11: 做到
        assert 'id="auto-no_dead_air" title="longest_silence_s &lt;= 30">自动:未做到' in page
        assert "自动:做到" in page.split('id="auto-no_interrupting"')[1][:80]
        assert 'id="auto-answer_in_three_rings"' in page
        assert re.search(r'name="answer.no_dead_air" value="未做到" id="[^"]+" checked', page)
        token = csrf_of(client, "/review")
        data = best_answers(desk, no_dead_air="未做到", courtesy="一般")
        r = client.post(f"/calls/{ids['call801']}/evaluations", data={**data, "csrf": token, "agent": "801",
                                                                        "comment": "冷场过长"})
        assert r.status_code == 200 and "/evaluations/" in str(r.url)
        # 100 - 10 (no_dead_air) - 15 * 0.5 (courtesy 一般) = 82.5 ≥ 80
        assert 'id="eval-total">82.5<' in r.text and 'id="eval-result">合格<' in r.text
    with Session(desk.engine) as s:
        e = s.scalars(select(Evaluation)).one()
        assert (e.agent_number, e.evaluator, e.total, e.passed, e.status, e.recording_id) == (
            "801", "王经理", 82.5, True, "open", ids["rec801"])
        answers = {a.criterion: (a.answer, a.auto) for a in e.answers}
        assert answers["no_dead_air"] == ("未做到", True) and answers["courtesy"] == ("一般", False)


def test_a_fatal_criterion_makes_the_total_0_and_failed(world) -> None:  # type: ignore[no-untyped-def]
    desk, ids = world
    with desk.client() as client:
        login(client, "王经理", "supervisor-pw")
        token = csrf_of(client, "/review")
        data = best_answers(desk, rude_language=FATAL_VIOLATED)
        r = client.post(f"/calls/{ids['call801']}/evaluations", data={**data, "csrf": token, "agent": "801"})
        assert 'id="eval-total">0.0<' in r.text and 'id="eval-result">不合格<' in r.text
        assert "触犯红线:使用服务禁语或辱骂客户" in r.text
    with Session(desk.engine) as s:
        e = s.scalars(select(Evaluation)).one()
        assert (e.total, e.passed, e.fatal) == (0.0, False, "rude_language")


def test_an_incomplete_or_forged_form_is_refused_and_nothing_is_stored(world) -> None:  # type: ignore[no-untyped-def]
    desk, ids = world
    with desk.client() as client:
        login(client, "王经理", "supervisor-pw")
        token = csrf_of(client, "/review")
        data = best_answers(desk)
        del data["answer.thanks"]
        r = client.post(f"/calls/{ids['call801']}/evaluations", data={**data, "csrf": token, "agent": "801",
                                                                        "comment": "<b>冷场</b>"})
        assert r.status_code == 400 and "「致谢道别」未作答" in r.text
        # the form comes back as filled in (the comment escaped), so nothing typed is lost
        assert ">&lt;b&gt;冷场&lt;/b&gt;</textarea>" in r.text
        assert re.search(r'name="answer.greeting" value="做到" id="[^"]+" checked', r.text)
        for bad in ({"answer.thanks": "<script>"}, {"answer.greeting": "不适用"}, {"agent": "802"}, {"agent": "x"}):
            r = client.post(f"/calls/{ids['call801']}/evaluations", data={**best_answers(desk), "csrf": token,
                                                                            "agent": "801", **bad})
            assert r.status_code == 400 and "无效" in r.text, bad
    with Session(desk.engine) as s:
        assert s.scalar(select(func.count()).select_from(Evaluation)) == 0
        assert s.scalar(select(func.count()).select_from(EvaluationAnswer)) == 0


def test_the_agent_sees_only_their_own_evaluations_and_acknowledges_or_disputes(world) -> None:  # type: ignore[no-untyped-def]
    desk, ids = world
    with desk.client() as client:
        login(client, "王经理", "supervisor-pw")
        token = csrf_of(client, "/review")
        mine = client.post(f"/calls/{ids['call801']}/evaluations",
                           data={**best_answers(desk), "csrf": token, "agent": "801"}).url.path
        theirs = client.post(f"/calls/{ids['call802']}/evaluations",
                             data={**best_answers(desk), "csrf": token, "agent": "802"}).url.path
        client.post("/logout", data={"csrf": token})
        login(client, "801", "pw801-secret")
        listing = client.get("/evaluations").text
        assert f'href="{mine}"' in listing and f'href="{theirs}"' not in listing
        page = client.get(mine).text
        assert 'id="no-hearing">录音只对班长开放' in page and "<audio" not in page  # agents_hear_own_recordings = no
        r = client.get(theirs)
        assert r.status_code == 403 and "只能查看自己的质检评分" in r.text
        # supervisors' pages stay closed to agents
        assert client.get("/review").status_code == 403
        assert client.get(f"/calls/{ids['call801']}/evaluate").status_code == 403
        token = csrf_of(client, "/desk")
        r = client.post(f"/calls/{ids['call801']}/evaluations", data={**best_answers(desk), "csrf": token, "agent": "801"})
        assert r.status_code == 403
        assert client.post(theirs + "/respond", data={"csrf": token, "action": "acknowledged"}).status_code == 403
        r = client.post(mine + "/respond", data={"csrf": token, "action": "disputed", "comment": ""})
        assert r.status_code == 400 and "请写明申诉理由" in r.text
        assert client.post(mine + "/respond", data={"csrf": token, "action": "resolved", "comment": "x"}).status_code == 400
        r = client.post(mine + "/respond", data={"csrf": token, "action": "disputed", "comment": "当时系统查询慢"})
        assert 'id="eval-status">有异议<' in r.text and "当时系统查询慢" in r.text
        r = client.post(mine + "/respond", data={"csrf": token, "action": "acknowledged", "comment": ""})
        assert r.status_code == 400  # once only
        client.post("/logout", data={"csrf": token})
        login(client, "王经理", "supervisor-pw")
        token = csrf_of(client, "/review")
        r = client.post(mine + "/respond", data={"csrf": token, "action": "resolved", "comment": "已核实,维持评分"})
        assert 'id="eval-status">已复核<' in r.text
    with Session(desk.engine) as s:
        rows = s.execute(select(EvaluationResponse.actor, EvaluationResponse.action, EvaluationResponse.comment)
                         .order_by(EvaluationResponse.id)).all()
        assert [tuple(r) for r in rows] == [("801", "disputed", "当时系统查询慢"), ("王经理", "resolved", "已核实,维持评分")]


def test_changing_the_form_never_rewrites_a_past_evaluation(tmp_path: Path) -> None:
    form = tmp_path / "form.toml"
    form.write_text(DEFAULT_FORM.read_text(encoding="utf-8"), encoding="utf-8")
    desk = Desk(tmp_path, form=form)
    with Session(desk.engine) as s, s.begin():
        call_id = add_call(s, "c", "801", datetime.now(UTC)).id
    with desk.client() as client:
        login(client, "王经理", "supervisor-pw")
        token = csrf_of(client, "/review")
        url = client.post(f"/calls/{call_id}/evaluations",
                          data={**best_answers(desk), "csrf": token, "agent": "801"}).url.path
    form.write_text(form.read_text(encoding="utf-8").replace('title = "致谢道别"', 'title = "致谢并道别(新版)"'),
                    encoding="utf-8")
    with desk.client() as client:  # the desk restarted with the edited form
        login(client, "王经理", "supervisor-pw")
        assert "致谢并道别(新版)" in client.get(f"/calls/{call_id}/evaluate").text
        old = client.get(url).text
        assert "致谢道别" in old and "新版" not in old
    with desk.client():  # the same content again: no third version
        pass
    with Session(desk.engine) as s:
        versions = s.execute(select(EvaluationForm.id, EvaluationForm.version).order_by(EvaluationForm.id)).all()
        assert len(versions) == 2 and versions[0].version != versions[1].version
        assert s.scalars(select(Evaluation.form_id)).one() == versions[0].id
    desk.engine.dispose()


def test_a_bad_form_stops_the_desk_at_start_and_check_form_says_file_line_and_reason(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from desk.__main__ import main

    form = tmp_path / "form.toml"
    form.write_text(DEFAULT_FORM.read_text(encoding="utf-8").replace("weight = 15", "weight = 16", 1), encoding="utf-8")
    conf = tmp_path / "sip.conf"
    conf.write_text(CONF.format(hear="no", form=f"form = {form}"), encoding="utf-8")
    assert main(["--config", str(conf)]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"error: {re.escape(str(form))}:\d+: the weights add up to 101, not 100", err), err
    # ops check a form before restarting the desk: the same words, and the version of a good one
    assert main(["--config", str(conf), "check-form"]) == 2
    assert "the weights add up to 101, not 100" in capsys.readouterr().err
    assert main(["--config", str(conf), "check-form", str(DEFAULT_FORM)]) == 0
    assert f"13 criteria (3 fatal), pass 80, version {read_form(DEFAULT_FORM).version[:12]}" in capsys.readouterr().out


def test_the_examples_quality_settings_are_the_models_keys_and_parse(tmp_path: Path) -> None:
    from desk.config import QUALITY_KEYS

    example = (Path(__file__).parent.parent / "sip.conf.example").read_text(encoding="utf-8")
    section = example.split("\n[quality]\n", 1)[1].split("\n[", 1)[0]
    shown = dict(re.findall(r"^;(\w+) = (\S*)", section, flags=re.M))
    assert set(shown) == QUALITY_KEYS
    hear = re.search(r"^;(agents_hear_own_recordings) = (\S+)", example, flags=re.M)
    assert hear is not None
    conf = tmp_path / "sip.conf"
    body = "".join(f"{k} = {v}\n" for k, v in shown.items() if v)
    conf.write_text(f"[desk]\n{hear[1]} = {hear[2]}\n[quality]\n{body}", encoding="utf-8")
    config = load_desk_config(conf)
    assert config.quality.form_path == DEFAULT_FORM and config.agents_hear_own_recordings is False
    assert config.recording_directory == tmp_path / "var/recordings"
    conf.write_text("[quality]\nsample_per_agent_week = lots\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"sip.conf:2: \[quality\] sample_per_agent_week: 'lots' is not a whole number"):
        load_desk_config(conf)


# --- the review queue --------------------------------------------------------------------------------


def test_the_review_queue_takes_every_dissatisfied_and_complaint_call_and_a_seeded_sample_per_agent(tmp_path: Path) -> None:
    engine: Engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(engine)
    monday = date(2026, 11, 30)
    start = datetime(2026, 11, 30, 9, tzinfo=SHANGHAI)
    with Session(engine) as s, s.begin():
        add_call(s, "bad", "801", start, score=3)
        add_call(s, "fine", "801", start + timedelta(hours=1), score=1)
        complaint = add_call(s, "complaint", "802", start + timedelta(hours=2))
        s.add(Ticket(call_id=complaint.id, customer_phone="13800000001", agent_number="802", status="open",
                     opened_at=start, next_feedback_due=start + timedelta(days=1), description="投诉"))
        for n in range(20):
            add_call(s, f"s801-{n}", "801", start + timedelta(days=n % 7, minutes=n))
            add_call(s, f"s802-{n}", "802", start + timedelta(days=n % 7, minutes=n))
        add_call(s, "abandoned", None, start, outcome="abandoned_queue")
        add_call(s, "last-sunday", "801", start - timedelta(days=1), score=3)  # the week before
        add_call(s, "next-monday", "801", datetime(2026, 12, 7, 0, 5, tzinfo=SHANGHAI), score=3)  # the week after
    items = review_queue(engine, monday, SHANGHAI, per_agent=2, seed="s1")
    by_reason: dict[str, list[str]] = {}
    with Session(engine) as s:
        names = dict(s.execute(select(Call.id, Call.sip_call_id)).all())
    for i in items:
        for r in i.reasons:
            by_reason.setdefault(r, []).append(names[i.call_id])
    assert by_reason["不满意"] == ["bad"] and by_reason["投诉工单"] == ["complaint"]
    sampled = by_reason["抽检"]
    assert len(sampled) == 4 and sum(n.startswith("s801") or n == "fine" for n in sampled) == 2
    # the sample is the two lowest keyed hashes per agent: reproducible from the seed alone
    pool_801 = ["fine"] + [f"s801-{n}" for n in range(20)]
    expected = sorted(pool_801, key=lambda c: sample_rank("s1", c))[:2]
    assert sorted(n for n in sampled if n in pool_801) == sorted(expected)
    again = review_queue(engine, monday, SHANGHAI, per_agent=2, seed="s1")
    assert [i.call_id for i in again] == [i.call_id for i in items]
    other = review_queue(engine, monday, SHANGHAI, per_agent=2, seed="s2")
    assert {i.call_id for i in other if "抽检" in i.reasons} != {i.call_id for i in items if "抽检" in i.reasons}
    assert {names[i.call_id] for i in other if "抽检" not in i.reasons} == {"bad", "complaint"}
    # nothing from other weeks, nothing nobody answered; no sample when it is 0
    assert not {"last-sunday", "next-monday", "abandoned"} & {names[i.call_id] for i in items}
    assert {names[i.call_id] for i in review_queue(engine, monday, SHANGHAI, per_agent=0, seed="s1")} == {
        "bad", "complaint"}
    assert (week_label(monday), parse_week("2026-W49"), week_of(date(2026, 12, 6))) == ("2026-W49", monday, monday)
    engine.dispose()


def test_the_sample_draws_a_recorded_call_before_one_without_a_recording(tmp_path: Path) -> None:
    engine: Engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(engine)
    start = datetime(2026, 11, 30, 9, tzinfo=SHANGHAI)
    calls = [f"r-{n}" for n in range(6)]
    lowest, *others = sorted(calls, key=lambda c: sample_rank("s", c))
    with Session(engine) as s, s.begin():
        for n, name in enumerate(calls):
            add_call(s, name, "801", start + timedelta(minutes=n))
        for name in others:
            add_recording(s, name, "801", f"{name}.wav", start)
    items = review_queue(engine, date(2026, 11, 30), SHANGHAI, per_agent=1, seed="s")
    with Session(engine) as s:
        drawn = s.get_one(Call, items[0].call_id).sip_call_id
    assert len(items) == 1 and drawn == min(others, key=lambda c: sample_rank("s", c)) and drawn != lowest
    engine.dispose()


def test_supervisors_see_each_agents_last_30_days_in_figures(world) -> None:  # type: ignore[no-untyped-def]
    desk, ids = world
    with desk.client() as client:
        login(client, "王经理", "supervisor-pw")
        token = csrf_of(client, "/review")
        for changes in ({}, {"rude_language": FATAL_VIOLATED}, {"greeting": "未做到", "courtesy": "差"}):
            client.post(f"/calls/{ids['call801']}/evaluations",
                        data={**best_answers(desk, **changes), "csrf": token, "agent": "801"})
        page = client.get("/evaluations").text
    row = page.split('id="summary-801"')[1].split("</tr>")[0]
    # 100, 0 (red line) and 100 - 10 - 15 = 75: three evaluations, average 58.3, one passed, one red line
    cells = re.findall(r"<td>([^<]*)</td>", row)
    assert cells == ["801 张敏", "3", "58.3", "33%", "1", "0"], cells
    assert 'id="summary-802"' not in page


def test_the_review_page_lists_the_dissatisfied_call_and_marks_it_done_once_scored(world) -> None:  # type: ignore[no-untyped-def]
    desk, ids = world
    with desk.client() as client:
        login(client, "王经理", "supervisor-pw")
        page = client.get("/review").text
        row = page.split(f'id="review-{ids["call801"]}"')[1].split("</tr>")[0]
        assert "不满意" in row and f'href="/calls/{ids["call801"]}/evaluate"' in row
        assert '<td class="recording-state">有</td>' in row
        row = page.split(f'id="review-{ids["call802"]}"')[1].split("</tr>")[0]  # 802's only call: the sample
        assert "抽检" in row
        assert client.get("/review?week=2026-W99").status_code == 400
        assert client.get("/review?week=x' OR 1=1").status_code == 400
        token = csrf_of(client, "/review")
        client.post(f"/calls/{ids['call801']}/evaluations", data={**best_answers(desk), "csrf": token, "agent": "801"})
        row = client.get("/review").text.split(f'id="review-{ids["call801"]}"')[1].split("</tr>")[0]
        assert "100.0 分 · 合格" in row
