"""Evaluation forms (desk/quality.py): reading and checking the TOML, scoring, N/A, fatal criteria, auto rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from desk.quality import (
    DEFAULT_FORM,
    FATAL_CLEAR,
    FATAL_VIOLATED,
    NA,
    AnswerError,
    Form,
    FormError,
    Rule,
    RuleError,
    characteristics_values,
    parse_form,
    read_form,
    score,
)

SMALL = """\
name = "小表"
pass_score = 80

[scales.yes_no]
"做到" = 1.0
"未做到" = 0.0

[scales.grade]
"好" = 1.0
"一般" = 0.5
"差" = 0.0

[[sections]]
key = "opening"
title = "开场"

[[sections.criteria]]
key = "greeting"
title = "规范问候"
weight = 40
scale = "yes_no"

[[sections.criteria]]
key = "courtesy"
title = "服务态度"
weight = 40
scale = "grade"

[[sections.criteria]]
key = "complaint_flow"
title = "投诉流程"
weight = 20
scale = "yes_no"
na = true
auto = "longest_silence_s <= 30"

[[sections]]
key = "red"
title = "红线"

[[sections.criteria]]
key = "rude_language"
title = "服务禁语"
fatal = true
"""


def form_error(text: str) -> FormError:
    with pytest.raises(FormError) as caught:
        parse_form(text, "form.toml")
    return caught.value


def test_the_shipped_form_reads_and_its_weights_add_up_to_100() -> None:
    form = read_form(DEFAULT_FORM)
    assert sum(c.weight for c in form.criteria) == 100
    keys = [c.key for c in form.criteria]
    assert len(keys) == len(set(keys))
    assert {c.key for c in form.criteria if c.fatal} >= {"rude_language", "wrong_account_disclosed"}
    titles = " ".join(c.title + c.hint for c in form.criteria)
    for phrase in ("三声之内接听", "礼貌用语", "致谢", "感谢您的来电,祝您生活愉快!"):
        assert phrase in titles


def test_full_marks_partial_marks_and_the_pass_score() -> None:
    form = parse_form(SMALL)
    best = {"greeting": "做到", "courtesy": "好", "complaint_flow": "做到", "rude_language": FATAL_CLEAR}
    assert score(form, best).total == 100 and score(form, best).passed
    # 40 + 40 * 0.5 + 20 = 80 of 100: exactly the pass score
    s = score(form, {**best, "courtesy": "一般"})
    assert (s.total, s.passed) == (80.0, True)
    s = score(form, {**best, "courtesy": "差"})
    assert (s.total, s.passed) == (60.0, False)


def test_not_applicable_drops_out_of_the_weighting() -> None:
    form = parse_form(SMALL)
    answers = {"greeting": "做到", "courtesy": "一般", "complaint_flow": NA, "rude_language": FATAL_CLEAR}
    s = score(form, answers)
    # 40 + 20 of the 80 that apply, not of 100
    assert s.weighed == 80 and s.total == 75.0 and not s.passed
    with pytest.raises(AnswerError, match="答案无效"):
        score(form, {**answers, "greeting": NA})  # greeting has no na = true


def test_a_fatal_criterion_fails_the_whole_evaluation_with_total_0() -> None:
    form = parse_form(SMALL)
    answers = {"greeting": "做到", "courtesy": "好", "complaint_flow": "做到", "rude_language": FATAL_VIOLATED}
    s = score(form, answers)
    assert (s.total, s.passed, s.fatal) == (0.0, False, ("rude_language",))


def test_every_criterion_must_be_answered_from_its_own_scale() -> None:
    form = parse_form(SMALL)
    with pytest.raises(AnswerError, match="服务禁语"):
        score(form, {"greeting": "做到", "courtesy": "好", "complaint_flow": "做到"})
    with pytest.raises(AnswerError, match="答案无效"):
        score(form, {"greeting": "好", "courtesy": "好", "complaint_flow": "做到", "rude_language": FATAL_CLEAR})


def test_the_version_is_the_content_not_the_spelling_and_a_stored_version_reads_back() -> None:
    form = parse_form(SMALL)
    respaced = parse_form("# a comment\n" + SMALL.replace("weight = 40", "weight   =   40.0"))
    assert respaced.version == form.version
    changed = parse_form(SMALL.replace('title = "规范问候"', 'title = "规范问候语"'))
    assert changed.version != form.version
    assert Form.from_definition(form.definition()) == form
    assert len(form.version) == 64


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (SMALL.replace("weight = 20", "weight = 15"), 32, "weights add up to 95, not 100 (opening 95, red 0)"),
        (SMALL.replace('key = "courtesy"', 'key = "greeting"'), 24, "criterion 'greeting' appears twice (first at line 18)"),
        (SMALL.replace('scale = "grade"', 'scale = "grade"\nweigth = 3'), 28, "criterion: unknown key 'weigth'; known keys are auto, fatal, hint, key, na, scale, title, weight"),
        (SMALL.replace('pass_score = 80', 'pass_score = 80\ncolour = "red"'), 3, "unknown key 'colour'"),
        (SMALL.replace('title = "开场"', 'title = "开场"\nrank = 1'), 16, "section: unknown key 'rank'"),
        (SMALL.replace('scale = "grade"', 'scale = "stars"'), 27, "scale 'stars' is not one of [scales] (yes_no, grade)"),
        (SMALL.replace('"一般" = 0.5', '"一般" = 5'), 10, "points are a number from 0 to 1"),
        (SMALL.replace("fatal = true", "fatal = true\nweight = 10"), 45, "a fatal criterion has no weight"),
        (SMALL.replace("<= 30", "<= "), 35, "auto rule 'longest_silence_s <= ': expected name or number"),
        (SMALL.replace("<= 30", "<= 30; import os"), 35, "cannot read"),
        (SMALL.replace("weight = 40\nscale = \"yes_no\"", "weight = -40\nscale = \"yes_no\""), 20, "weight, a number above 0"),
        (SMALL.replace('name = "小表"', 'name = "小表'), 1, "not TOML"),
        (SMALL.replace("[scales.grade]", "[scale.grade]"), 8, "unknown key 'scale'; known keys are"),
        (SMALL.replace("[[sections]]\nkey = \"red\"", "[[section]]\nkey = \"red\""), 37, "unknown key 'section'"),
    ],
)
def test_a_bad_form_is_refused_with_file_line_and_reason(text: str, line: int, reason: str) -> None:
    err = form_error(text)
    assert err.line == line, str(err)
    assert reason in err.reason, str(err)
    assert str(err).startswith(f"form.toml:{line}: ")


def test_a_form_has_at_most_40_criteria() -> None:
    many = "".join(f'[[sections.criteria]]\nkey = "c{n}"\ntitle = "第{n}项"\nweight = 2.5\nscale = "yes_no"\n'
                   for n in range(41))
    err = form_error(SMALL.split("[[sections]]")[0] + '[[sections]]\nkey = "all"\ntitle = "全部"\n' + many)
    assert "41 criteria; a form has at most 40" in err.reason and err.line == 16 + 5 * 40


def test_a_missing_form_file_is_refused_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(FormError, match="nope.toml: cannot read"):
        read_form(tmp_path / "nope.toml")


def test_auto_rules_are_a_small_comparison_grammar_never_python() -> None:
    rule = Rule.parse("longest_silence_s <= 30 and (overtalk_count < 3 or agent_talk_s >= 1.5)")
    assert rule.names() == {"longest_silence_s", "overtalk_count", "agent_talk_s"}
    assert rule.decide({"longest_silence_s": 12, "overtalk_count": 5, "agent_talk_s": 2}) is True
    assert rule.decide({"longest_silence_s": 31, "overtalk_count": 0, "agent_talk_s": 2}) is False
    assert rule.decide({"longest_silence_s": 12}) is None  # not known for this call: left to the supervisor
    for bad in ("__import__('os').system('x')", "a <", "a <= 3 b", "a = 1", "(a < 1", "", "a + 1 < 2"):
        with pytest.raises(RuleError):
            Rule.parse(bad)


def test_an_auto_rule_answers_the_best_option_when_met_and_the_worst_when_not() -> None:
    form = parse_form(SMALL)
    criterion = form.criterion("complaint_flow")
    assert criterion is not None
    assert criterion.auto_answer({"longest_silence_s": 8}) == "做到"
    assert criterion.auto_answer({"longest_silence_s": 45}) == "未做到"
    assert criterion.auto_answer({}) is None
    values = characteristics_values('{"longest_silence_s": 8.5, "note": "x", "flag": true, "caller_talk_s": 30}')
    assert values == {"longest_silence_s": 8.5, "caller_talk_s": 30.0}
    assert characteristics_values("not json") == {} and characteristics_values(None) == {}
