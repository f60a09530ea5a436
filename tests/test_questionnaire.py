"""Questionnaire files: the shipped default, the example, and every mistake refused with file, line and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivr.questionnaire import END, default_questionnaires, load_questionnaires
from ivr.sipconf import ConfigError

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
default = "short"

[[questionnaire]]
id = "short"

[[questionnaire.question]]
id = "resolved"
prompt = "已解决请按1,未解决请按2。"
answers = [
    { key = "1", value = "yes", label = "是", next = "quality" },
    { key = "2", value = "no", label = "否" },
]

[[questionnaire.question]]
id = "callback"
prompt = "需要回访请按1。"
answers = [
    { key = "1", value = "callback", followup = true },
]

[[questionnaire.question]]
id = "quality"
prompt = "产品质量,满意请按1,不满意请按3。"
timeout_seconds = 5
answers = [
    { key = "1", value = "good", score = 1 },
    { key = "3", value = "bad", score = 3 },
]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "questionnaires.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problem(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_questionnaires(write(tmp_path, text))
    return caught.value


def test_the_shipped_default_asks_todays_single_question_with_its_keys_and_labels() -> None:
    default = default_questionnaires()
    only = default.for_call("complaint", "senior")
    assert [q.id for q in only.questions] == ["rating"]
    rating = only.questions[0]
    assert rating.prompt_id == "survey" and rating.text == "请您对本次服务进行评价,满意请按1,一般请按2,不满意请按3。"
    assert {k: (a.value, a.label, a.score) for k, a in rating.answers.items()} == {
        "1": ("satisfied", "满意", 1), "2": ("average", "一般", 2), "3": ("dissatisfied", "不满意", 3)}


def test_the_example_routes_after_sales_calls_to_its_questionnaire_with_a_skip_rule() -> None:
    example = load_questionnaires(ROOT / "questionnaires.toml.example")
    after_sales = example.for_call("after_sales", "junior")
    assert [q.id for q in after_sales.questions] == ["resolved", "callback", "attitude", "quality"]
    assert example.for_call("consulting", "junior").id == "satisfaction"
    resolved = after_sales.questions[0]
    assert after_sales.after(resolved, resolved.answers["1"]).id == "attitude"  # type: ignore[union-attr]
    assert after_sales.after(resolved, resolved.answers["2"]).id == "callback"  # type: ignore[union-attr]
    assert after_sales.question("callback").answers["1"].followup
    # the default questionnaire of the example is the shipped one: same content, same version
    assert example.questionnaires["satisfaction"].version == default_questionnaires().for_call(None, None).version


def test_a_walk_follows_skip_rules_and_ends_after_the_last_question(tmp_path: Path) -> None:
    short = load_questionnaires(write(tmp_path, GOOD)).questionnaires["short"]
    resolved, callback, quality = short.questions
    assert short.after(resolved, None) is callback  # no answer: the following question
    assert short.after(callback, callback.answers["1"]) is quality
    assert short.after(quality, quality.answers["1"]) is None
    assert quality.timeout_seconds == 5 and resolved.timeout_seconds is None


def test_the_version_changes_with_the_content_and_only_with_it(tmp_path: Path) -> None:
    one = load_questionnaires(write(tmp_path, GOOD)).questionnaires["short"].version
    again = load_questionnaires(write(tmp_path, "# a comment\n" + GOOD)).questionnaires["short"].version
    reworded = load_questionnaires(write(tmp_path, GOOD.replace("需要回访请按1。", "需要回访请按1,谢谢。")))
    assert one == again != reworded.questionnaires["short"].version and len(one) == 12


@pytest.mark.parametrize(("edit", "line", "key", "reason"), [
    (lambda t: t.replace('id = "callback"\n', 'id = "callback"\ncolour = "red"\n'), 16,
     "questionnaire[1].question[2].colour", "unknown key"),
    (lambda t: t.replace('id = "callback"', 'id = "resolved"'), 15,
     "questionnaire[1].question[2].id", "question 'resolved' appears twice in questionnaire 'short'"),
    (lambda t: t.replace('{ key = "3", value = "bad"', '{ key = "1", value = "bad"'), 27,
     "questionnaire[1].question[3].answers[2].key", "key '1' is used twice in question 'quality'"),
    (lambda t: t.replace('next = "quality"', 'next = "qualty"'), 10,
     "questionnaire[1].question[1].answers[1].next", "skip rule to a missing question 'qualty'"),
    (lambda t: t.replace('{ key = "1", value = "callback"', '{ key = "1", value = "callback", next = "resolved"'), 18,
     "questionnaire[1].question[2].answers[1].next", "which is not after 'callback'"),
    (lambda t: t.replace('{ key = "2", value = "no"', '{ key = "22", value = "no"'), 11,
     "questionnaire[1].question[1].answers[2].key", "'22' is not a key: one of 0-9, * or #"),
    (lambda t: t.replace("timeout_seconds = 5", "timeout_seconds = 500"), 24,
     "questionnaire[1].question[3].timeout_seconds", "less than or equal to 60"),
    (lambda t: t.replace('prompt = "需要回访请按1。"\n', ""), 14, "questionnaire[1].question[2].prompt", "missing"),
    (lambda t: t.replace('default = "short"', 'default = "long"'), 1, "default", "no questionnaire 'long'"),
    (lambda t: t + '[[route]]\nservice = "billing"\nquestionnaire = "short"\n', 30, "route[1].service",
     "'billing' is not a service"),
    (lambda t: t.replace("answers = [\n    { key = \"1\", value = \"callback\"", "answers = [\n    { key = 1, value = \"callback\""), 18,
     "questionnaire[1].question[2].answers[1].key", "should be a valid string"),
    (lambda t: t.replace('{ key = "2", value = "no", label = "否" },', '{ key = "2", value = "no", label = "否", score = 2 },'), 25,
     "questionnaire[1].question[3].answers", "scores are given in questions 'resolved' and 'quality'"),
    (lambda t: t.replace('id = "callback"', 'id = callback'), 15, "syntax", "not TOML"),
    (lambda t: t.replace('id = "callback"\n', 'id = "callback"\nprompt_id = "thanks"\n'), 16,
     "questionnaire[1].question[2].prompt_id", "'thanks' is not a question's prompt id: survey, or survey_"),
    (lambda t: t.replace('id = "callback"\n', 'id = "callback"\nprompt_id = "survey_short_resolved"\n'), 16,
     "questionnaire[1].question[2].prompt_id", "prompt 'survey_short_resolved' is used by two questions"),
])
def test_a_mistake_stops_the_start_with_file_line_key_and_reason(tmp_path: Path, edit, line, key, reason) -> None:  # type: ignore[no-untyped-def]
    error = problem(tmp_path, edit(GOOD))
    assert error.file == tmp_path / "questionnaires.toml"
    assert (error.key, error.line) == (key, line), str(error)
    assert reason in error.reason
    assert str(error).startswith(f"{tmp_path / 'questionnaires.toml'}:{line}: {key}: ")


def test_a_missing_file_is_named() -> None:
    error = pytest.raises(ConfigError, load_questionnaires, Path("/nonexistent/q.toml")).value
    assert "cannot read" in str(error) and "/nonexistent/q.toml" in str(error)


def test_end_is_a_skip_target(tmp_path: Path) -> None:
    short = load_questionnaires(write(tmp_path, GOOD.replace('next = "quality"', f'next = "{END}"')))
    first = short.questionnaires["short"].questions[0]
    assert short.questionnaires["short"].after(first, first.answers["1"]) is None


# --- sip.conf: [survey] questionnaires ---------------------------------------------------------


def sip_conf(tmp_path: Path, survey: str, extra: str = "") -> Path:
    path = tmp_path / "sip.conf"
    path.write_text(f"[survey]\n{survey}{extra}", encoding="utf-8")
    return path


def test_sip_conf_names_the_file_relative_to_itself_and_the_flow_and_prompts_get_it(tmp_path: Path) -> None:
    from ivr.config import load_config
    from prompts.catalogue import catalogue_for

    (tmp_path / "q.toml").write_text((ROOT / "questionnaires.toml.example").read_text(encoding="utf-8"))
    config = load_config(sip_conf(tmp_path, "questionnaires = q.toml\n",
                                  "[prompts]\ntext.survey_after_sales_quality = 产品质量请按1到5。\n"))
    assert config.flow.questionnaires.for_call("after_sales", "junior").id == "after_sales"
    texts = catalogue_for(config)
    assert texts["survey_after_sales_resolved"] == "您的问题是否已经解决?已解决请按1,未解决请按2。"
    assert texts["survey_after_sales_quality"] == "产品质量请按1到5。", "[prompts] text.<id> replaces a question's text"
    assert texts["survey"] == "请您对本次服务进行评价,满意请按1,一般请按2,不满意请按3。"


def test_a_broken_questionnaire_file_stops_the_start_naming_that_file_and_line(tmp_path: Path) -> None:
    from ivr.config import load_config

    write(tmp_path, GOOD.replace('id = "callback"', 'id = "resolved"'))
    error = pytest.raises(ConfigError, load_config, sip_conf(tmp_path, "questionnaires = questionnaires.toml\n")).value
    assert (error.file, error.line) == (tmp_path / "questionnaires.toml", 15)
    assert "appears twice" in error.reason


def test_a_missing_questionnaire_file_is_refused_under_its_sip_conf_key(tmp_path: Path) -> None:
    from ivr.config import load_config

    error = pytest.raises(ConfigError, load_config, sip_conf(tmp_path, "questionnaires = none.toml\n")).value
    assert (error.key, error.line) == ("[survey] questionnaires", 2) and "no such file" in error.reason


def test_without_a_file_the_old_digit_labels_are_the_values_of_the_single_question(tmp_path: Path) -> None:
    from ivr.config import load_config

    config = load_config(sip_conf(tmp_path, "1 = good\n4 = terrible\n"))
    rating = config.flow.questionnaires.for_call(None, None).questions[0]
    assert [(a.key, a.value, a.score) for a in rating.answers.values()] == [
        ("1", "good", 1), ("2", "average", 2), ("3", "dissatisfied", 3), ("4", "terrible", 4)]
    assert load_config(sip_conf(tmp_path, "")).questionnaires is default_questionnaires()
