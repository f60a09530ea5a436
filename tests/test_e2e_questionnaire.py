"""End to end: the post-call questionnaire after a bridged call — SIPp caller and agent over UDP, RTP keys, SQLite.

The caller chooses 售后服务 (menu 4), which questionnaires.toml.example routes
to its after-sales questionnaire: 问题是否解决, (需要回访 when not), 服务态度,
产品质量. What the caller pressed is read back from the CRM: the answers, the
run's status and the flow's steps in call_events.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from ivr.questionnaire import load_questionnaires

from .conftest import ROOT, IvrProcess, free_port, sipp
from .test_e2e_routing import agent_uas, agents_conf
from .test_e2e_sip import crm_events, finished, wait_for_row

pytestmark = pytest.mark.e2e
VERSION = load_questionnaires(ROOT / "questionnaires.toml.example").questionnaires["after_sales"].version


def hotline(ivr_factory, tmp_path: Path) -> tuple[IvrProcess, int]:  # type: ignore[no-untyped-def]
    shutil.copy(ROOT / "questionnaires.toml.example", tmp_path / "questionnaires.toml")
    agent_port = free_port()
    ivr = ivr_factory(extra="[queues]\nwrap_up_seconds = 0\n[survey]\nquestionnaires = questionnaires.toml\n"
                      + agents_conf(**{"821": ("junior", f"127.0.0.1:{agent_port}")}))
    return ivr, agent_port


def stored(ivr: IvrProcess, table: str, columns: str, sip_call_id: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(ivr.db_url.removeprefix("sqlite:///"))
    try:
        return conn.execute(f"SELECT {columns} FROM {table} t JOIN calls c ON c.id = t.call_id "
                            "WHERE c.sip_call_id = ? ORDER BY t.id", (sip_call_id,)).fetchall()
    finally:
        conn.close()


def test_three_answers_after_a_bridged_call_are_stored_and_a_wrong_key_is_asked_again(  # type: ignore[no-untyped-def]
        ivr_factory, tmp_path: Path) -> None:
    ivr, agent_port = hotline(ivr_factory, tmp_path)
    agent = agent_uas(tmp_path, ivr, agent_port)
    caller = sipp(tmp_path, "questionnaire_caller", ivr.port, callers="unknown_callers.csv", extra=("-d", "11000"))
    finished(caller)
    finished(agent)

    row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    assert (row["service"], row["agent_number"], row["outcome"], row["hangup_by"]) == ("after_sales", "821",
                                                                                      "completed", "agent")
    assert row["survey_score"] == 1, "服务态度 5 is satisfied on the calls' 1-3 scale"
    answers = stored(ivr, "survey_answers", "t.questionnaire, t.version, t.question, t.key, t.value, t.score, t.followup",
                     row["sip_call_id"])
    assert answers == [
        ("after_sales", VERSION, "resolved", "1", "yes", None, 0),
        ("after_sales", VERSION, "attitude", "5", "5", 1, 0),
        ("after_sales", VERSION, "quality", "4", "4", None, 0),
    ]
    assert stored(ivr, "survey_runs", "t.status, t.asked, t.answered", row["sip_call_id"]) == [("complete", 3, 3)]
    events = crm_events(ivr, row["sip_call_id"])
    kinds = [k for k, _ in events]
    # the wrong key (7) asked the first question once more, and only once
    assert [d for k, d in events if k == "survey_invalid"] == ["question=resolved tries=1"]
    assert [d for k, d in events if k == "survey_reprompt"] == ["question=resolved prompt=survey_after_sales_resolved"]
    assert [d for k, d in events if k == "survey_prompt"] == [
        "question=resolved prompt=survey_after_sales_resolved",
        "question=attitude prompt=survey_after_sales_attitude",  # solved: no callback question
        "question=quality prompt=survey_after_sales_quality",
    ]
    assert kinds.index("agent_bye") < kinds.index("survey_started") < kinds.index("survey_ended")
    # the single-question table still gets the scored answer
    assert stored(ivr, "surveys", "t.agent_number, t.score, t.label", row["sip_call_id"]) == [("821", 1, "5")]


def test_a_caller_who_hangs_up_after_the_first_answer_leaves_one_answer_and_a_partial_run(  # type: ignore[no-untyped-def]
        ivr_factory, tmp_path: Path) -> None:
    ivr, agent_port = hotline(ivr_factory, tmp_path)
    agent = agent_uas(tmp_path, ivr, agent_port)
    caller = sipp(tmp_path, "questionnaire_hangup_caller", ivr.port, callers="unknown_callers.csv",
                  extra=("-d", "11000"))
    finished(caller)
    finished(agent)

    row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    assert (row["outcome"], row["survey_score"]) == ("completed", None)
    assert stored(ivr, "survey_answers", "t.question, t.key, t.value", row["sip_call_id"]) == [("resolved", "1", "yes")]
    assert stored(ivr, "survey_runs", "t.questionnaire, t.version, t.status, t.asked, t.answered",
                  row["sip_call_id"]) == [("after_sales", VERSION, "partial", 2, 1)]
    events = crm_events(ivr, row["sip_call_id"])
    assert ("survey_ended", "questionnaire=after_sales status=partial asked=2 answered=1") in events
    assert [k for k, _ in events][-2:] == ["survey_ended", "ended"]
