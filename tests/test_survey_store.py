"""Questionnaire answers in the CRM: the durable write path, the journal, and migration 0010's carry-over."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from crm_bridge.db import alembic_config, make_engine
from crm_bridge.models import Call, Survey, SurveyAnswer, SurveyRun, table_of
from crm_bridge.outbox import Outbox, decode, encode
from crm_bridge.writer import CrmWriter
from ivr.events import RecordSurveyAnswer, RecordSurveyRun
from tests.test_crm import T0, call_records, db  # noqa: F401  (db is a fixture)

ANSWERS = [
    RecordSurveyAnswer("s1", T0, "after_sales", "33e5e799eba9", "resolved", "2", "no", "否"),
    RecordSurveyAnswer("s1", T0 + timedelta(seconds=5), "after_sales", "33e5e799eba9", "callback", "1", "callback",
                       "需要回访", followup=True),
    RecordSurveyAnswer("s1", T0 + timedelta(seconds=9), "after_sales", "33e5e799eba9", "attitude", "2", "2", "不满意",
                       score=3),
]
RUN = RecordSurveyRun("s1", T0 + timedelta(seconds=12), "after_sales", "33e5e799eba9", "partial", asked=4, answered=3)


def test_answers_and_the_run_round_trip_through_the_journal_format() -> None:
    for seq, record in enumerate([*ANSWERS, RUN], 1):
        assert decode(encode(seq, record)) == (seq, record)


def test_the_writer_stores_each_answer_with_its_version_and_followup_flag_and_the_run(db: Engine) -> None:  # noqa: F811
    writer = CrmWriter(db)
    writer.start()
    for record in [*call_records("s1"), *ANSWERS, RUN]:
        writer.submit(record)
    assert writer.close() == 0
    with Session(db) as s:
        rows = s.scalars(select(SurveyAnswer).order_by(SurveyAnswer.id)).all()
        assert [(a.questionnaire, a.version, a.question, a.key, a.value, a.label, a.score, a.followup)
                for a in rows] == [
            ("after_sales", "33e5e799eba9", "resolved", "2", "no", "否", None, False),
            ("after_sales", "33e5e799eba9", "callback", "1", "callback", "需要回访", None, True),
            ("after_sales", "33e5e799eba9", "attitude", "2", "2", "不满意", 3, False),
        ]
        call_id = s.scalar(select(Call.id).where(Call.sip_call_id == "s1"))
        assert {a.call_id for a in rows} == {call_id}
        run = s.scalars(select(SurveyRun)).one()
        assert (run.call_id, run.status, run.asked, run.answered) == (call_id, "partial", 4, 3)


@pytest.mark.parametrize("enabled", [True, False])
def test_an_answer_asking_for_a_follow_up_schedules_one_when_follow_ups_are_on(db: Engine, enabled: bool) -> None:  # noqa: F811
    from crm_bridge.models import Followup

    writer = CrmWriter(db, followup_on_survey=enabled)
    writer.start()
    for record in [*call_records("s1"), *ANSWERS, RUN]:
        writer.submit(record)
    assert writer.close() == 0
    with Session(db) as s:
        followups = s.scalars(select(Followup)).all()
        assert [(f.kind, f.sip_call_id) for f in followups] == ([("survey", "s1")] if enabled else [])


def test_answers_journaled_before_a_crash_are_applied_at_the_next_start(db: Engine, tmp_path: Path) -> None:  # noqa: F811
    crashed = CrmWriter(db, Outbox(tmp_path / "outbox"))  # its thread never runs
    for record in [*call_records("s1"), *ANSWERS[:1]]:
        crashed.submit(record)
    assert crashed.outbox is not None
    crashed.outbox.close()
    restarted = CrmWriter(db, Outbox(tmp_path / "outbox"))
    assert restarted.recover() == 7
    with Session(db) as s:
        assert s.scalars(select(SurveyAnswer.question)).all() == ["resolved"]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_migration_0010_carries_the_single_question_ratings_over(backend: str, tmp_path: Path,
                                                                   request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'crm.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    engine = make_engine(url)
    config = alembic_config(engine)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0009")
        calls = table_of(Call)
        for n, score, label in ((1, 1, "satisfied"), (2, 3, "dissatisfied")):
            conn.execute(insert(calls).values(id=n, sip_call_id=f"old-{n}", caller="1", callee="95000",
                                              started_at=T0, silent_attempts=0, survey_score=score))
            conn.execute(insert(table_of(Survey)).values(call_id=n, at=T0 + timedelta(minutes=n), agent_number="801",
                                                         seat_group="senior", score=score, label=label))
        command.upgrade(config, "head")
    with Session(engine) as s:
        answers = s.scalars(select(SurveyAnswer).order_by(SurveyAnswer.call_id)).all()
        assert [(a.call_id, a.questionnaire, a.version, a.question, a.key, a.value, a.label, a.score, a.followup)
                for a in answers] == [
            (1, "satisfaction", "legacy", "rating", "1", "satisfied", "满意", 1, False),
            (2, "satisfaction", "legacy", "rating", "3", "dissatisfied", "不满意", 3, False),
        ]
        runs = s.scalars(select(SurveyRun).order_by(SurveyRun.call_id)).all()
        assert [(r.call_id, r.status, r.asked, r.answered) for r in runs] == [(1, "complete", 1, 1),
                                                                             (2, "complete", 1, 1)]
        # the old table is still there, untouched
        assert len(s.scalars(select(Survey)).all()) == 2
    engine.dispose()

