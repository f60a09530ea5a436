"""Screen-pop for the agent's softphone: the From display name and the X-Hotline headers."""

from __future__ import annotations

import pytest

from ivr.screenpop import (
    DEFAULT_TEMPLATE,
    TemplateError,
    check_template,
    clean_text,
    desk_call_url,
    quoted_display_name,
    screen_pop,
)

CALL_ID = "1-5663@127.0.0.1"


def pop(**kw):  # type: ignore[no-untyped-def]
    args = {
        "name": "张敏",
        "tier": "senior",
        "service": "consulting",
        "caller": "13800000001",
        "call_id": CALL_ID,
        "desk_url": "http://127.0.0.1:8080/desk/call/1-5663@127.0.0.1",
    }
    args.update(kw)
    return screen_pop(**args)


def test_known_senior_customer_shows_name_tier_and_service() -> None:
    p = pop()
    assert p.display_name == '"张敏 高端 业务咨询"'
    assert dict(p.headers) == {
        "X-Hotline-Tier": "senior",
        "X-Hotline-Service": "consulting",
        "X-Hotline-Call": CALL_ID,
        "Call-Info": "<http://127.0.0.1:8080/desk/call/1-5663@127.0.0.1>;purpose=info",
    }


def test_unknown_caller_is_a_new_customer() -> None:
    assert pop(name=None, tier="junior", service="complaint").display_name == '"新客户 低端 投诉处理"'
    assert pop(name="   ", tier="junior", service=None).display_name == '"新客户 低端"'


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ('王"总"', '"王\\"总\\" 高端 业务咨询"'),
        ("a\\b", '"a\\\\b 高端 业务咨询"'),
        ("李\r\nVia: evil", '"李 Via: evil 高端 业务咨询"'),
        ("赵\x00\x07钱\x1b[31m", '"赵 钱 [31m 高端 业务咨询"'),
        ("孙\u202e丽", '"孙 丽 高端 业务咨询"'),  # a bidi override is a format character: removed
    ],
)
def test_quotes_backslashes_and_control_characters_cannot_break_the_header(name: str, shown: str) -> None:
    display = pop(name=name).display_name
    assert display == shown
    assert "\r" not in display and "\n" not in display
    inner = display[1:-1]
    # every " inside is escaped: the quoted-string ends only at the last character
    assert inner.replace("\\\\", "").replace('\\"', "").count('"') == 0


def test_display_name_is_bounded_and_never_ends_in_half_an_escape() -> None:
    display = quoted_display_name('"' * 100, max_chars=10)
    assert display == '"' + '\\"' * 10 + '"'
    assert len(pop(name="张" * 500).display_name) <= 42


def test_template_is_configurable_and_checked() -> None:
    assert pop(template="{service_label}:{name}({phone})").display_name == '"业务咨询:张敏(13800000001)"'
    assert check_template(DEFAULT_TEMPLATE) == DEFAULT_TEMPLATE
    for bad in ("{name.__class__}", "{nope}", "{name[0]}", "{"):
        with pytest.raises(TemplateError):
            check_template(bad)


def test_header_values_that_are_not_tokens_are_left_out() -> None:
    p = pop(tier="senior\r\nX-Evil: 1", call_id="bad call id\r\n", desk_url="javascript:alert(1)")
    assert dict(p.headers) == {"X-Hotline-Service": "consulting"}
    p = pop(desk_url='http://127.0.0.1/desk?x=<a b>"')
    assert dict(p.headers)["Call-Info"] == "<http://127.0.0.1/desk?x=%3Ca%20b%3E%22>;purpose=info"


def test_desk_url_names_the_call_by_its_sip_call_id() -> None:
    url = desk_call_url("http://127.0.0.1:8080/", "1-5663@127.0.0.1")
    assert url == "http://127.0.0.1:8080/calls/sip?call_id=1-5663%40127.0.0.1"
    assert dict(pop(desk_url=url).headers)["Call-Info"] == f"<{url}>;purpose=info"


def test_clean_text_collapses_whitespace() -> None:
    assert clean_text(" 张\t敏 \n") == "张 敏"
