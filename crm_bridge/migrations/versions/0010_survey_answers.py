"""survey_answers and survey_runs: post-call questionnaires, one row per answer and one per call's walk

The single-question ratings of `surveys` are copied into `survey_answers`
(questionnaire `satisfaction`, question `rating`, version `legacy`, the
score as key and its label as value) with a `complete` run each, so every
reader takes one table. `surveys` stays, and the IVR still writes the scored
question's answer there for readers outside this repository.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    answers = op.create_table(
        "survey_answers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("call_id", sa.Integer(), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("questionnaire", sa.String(32), nullable=False),
        sa.Column("version", sa.String(16), nullable=False),
        sa.Column("question", sa.String(32), nullable=False),
        sa.Column("key", sa.String(4), nullable=False),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("score", sa.Integer()),
        sa.Column("followup", sa.Boolean(), nullable=False),
        sa.Column("answered_at", ts, nullable=False, index=True),
    )
    runs = op.create_table(
        "survey_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("call_id", sa.Integer(), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("questionnaire", sa.String(32), nullable=False),
        sa.Column("version", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("asked", sa.Integer(), nullable=False),
        sa.Column("answered", sa.Integer(), nullable=False),
        sa.Column("ended_at", ts, nullable=False, index=True),
    )
    assert answers is not None and runs is not None
    surveys = sa.table("surveys", sa.column("call_id", sa.Integer()), sa.column("at", ts),
                       sa.column("score", sa.Integer()), sa.column("label", sa.String(32)))
    label = sa.case((surveys.c.score == 1, "满意"), (surveys.c.score == 2, "一般"), (surveys.c.score == 3, "不满意"),
                    else_=surveys.c.label)
    op.execute(answers.insert().from_select(
        ["call_id", "questionnaire", "version", "question", "key", "value", "label", "score", "followup",
         "answered_at"],
        sa.select(surveys.c.call_id, sa.literal("satisfaction"), sa.literal("legacy"), sa.literal("rating"),
                  sa.cast(surveys.c.score, sa.String(4)), surveys.c.label, label, surveys.c.score, sa.false(),
                  surveys.c.at),
    ))
    op.execute(runs.insert().from_select(
        ["call_id", "questionnaire", "version", "status", "asked", "answered", "ended_at"],
        sa.select(surveys.c.call_id, sa.literal("satisfaction"), sa.literal("legacy"), sa.literal("complete"),
                  sa.literal(1), sa.literal(1), surveys.c.at),
    ))


def downgrade() -> None:
    op.drop_table("survey_runs")
    op.drop_table("survey_answers")
