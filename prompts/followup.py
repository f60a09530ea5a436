"""The follow-up call's wording (回访, docs/call-scripts.md), as pre-rendered fragments.

The call composes "您好,这里是XX客服热线,您在" "十一月" "二十五日" "反映的问题已由"
"售后服务部" "处理完毕。" from fragments rendered at start-up
(`ivr.followup_flow.script_for` picks them): a month and a day of the month
each, counted the Mandarin way (`prompts.chinese_numbers.cardinal`: 二月,
二十二日, not 两月), and each department of `[desk] departments` by its
place in the list. Nothing is rendered during a call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ivr.followup_flow import (
    DAY_PROMPT,
    DEPARTMENT_PROMPT,
    INTRO_PROMPT,
    MONTH_PROMPT,
    OTHER_DEPARTMENT_PROMPT,
)
from prompts.chinese_numbers import cardinal

if TYPE_CHECKING:
    from ivr.config import Config

FOLLOWUP_TEXTS = {
    INTRO_PROMPT: "您好,这里是{company}客服热线,您在",
    "followup_resolved_by": "反映的问题已由",
    "followup_resolved": "处理完毕。",
    "followup_progress_by": "反映的问题正在由",
    "followup_progress": "处理中,我们会尽快给您答复。",
    "followup_call": "来电反映的问题,我们对服务情况进行回访。",
    OTHER_DEPARTMENT_PROMPT: "相关部门",
    "followup_question": "对处理结果满意请按1,不满意请按2,转人工服务请按0,不希望再接到回访请按9。",
    "followup_progress_question": "如需人工服务请按0,不希望再接到回访请按9,收听完毕请挂机。",
    "followup_invalid": "您的输入有误,请重新选择。",
    "followup_thanks": "感谢您的认可,祝您生活愉快,再见!",
    "followup_sorry": "非常抱歉,我们会重新处理您的问题,并及时与您联系,再见!",
    "followup_agent": "好的,稍后由客服人员与您联系,感谢您的接听,再见!",
    "followup_transfer": "正在为您转接人工客服,请稍候。",
    "followup_do_not_call": "好的,今后不再给您回访,打扰您了,再见!",
    "followup_goodbye": "感谢您的接听,祝您生活愉快,再见!",
}


def followup_texts(departments: tuple[str, ...]) -> dict[str, str]:
    """Every fragment a follow-up call may play ({company} is filled in by the catalogue)."""
    texts = dict(FOLLOWUP_TEXTS)
    texts.update({MONTH_PROMPT.format(m): f"{cardinal(m)}月" for m in range(1, 13)})
    texts.update({DAY_PROMPT.format(d): f"{cardinal(d)}日" for d in range(1, 32)})
    texts.update({DEPARTMENT_PROMPT.format(i): name for i, name in enumerate(departments, start=1)})
    return texts


def departments_of(config: Config) -> tuple[str, ...]:
    """`[desk] departments` of the same sip.conf (where tickets are forwarded), read as the desk reads it."""
    from desk.config import DEFAULT_DEPARTMENTS, load_desk_config
    from ivr.config import ConfigError

    try:
        return load_desk_config(config.path).departments
    except (ConfigError, OSError):  # the desk's own start reports its section's errors
        return DEFAULT_DEPARTMENTS
