"""The prompt catalogue: prompt id -> zh-CN text, from the service scripts.

Texts are the scripts' own wording (../shared/spec/call-scripts.md, seeds
[000]-[004]). `{company}` is filled from sip.conf; `[prompts] text.<id>`
replaces a text; a recorded WAV replaces the audio (see prompts/recorded/).
Prompt texts are polite: never "喂,说话呀!再不说话我就挂机了啊!" [004].
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ivr.callflow import MAX_POSITION_PROMPT, agent_prompt
from ivr.greeting import HOLIDAY_KINDS, Daypart, greeting_prompt_id
from ivr.service import SERVICES, MenuConfig

if TYPE_CHECKING:
    from ivr.config import Config

# [004] §3 step 1 / spec §2: the day-part word opens the normal greeting.
DAYPART_GREETING = "{word}!{company}客服中心,欢迎您的来电。请问有什么可以帮您?"

HOLIDAY_GREETINGS = {
    "new_year": "新年好!{company}客服中心,请问有什么可以帮您!",
    "spring_festival": "新年好!{company}客服中心,请问有什么可以帮您!",
    "labour_day": "劳动节快乐!{company}客服中心,请问有什么可以帮您!",
    "mid_autumn": "中秋节快乐!{company}客服中心,请问有什么可以帮您!",
    "national_day": "国庆节快乐!{company}客服中心,请问有什么可以帮您!",
}
assert set(HOLIDAY_GREETINGS) == set(HOLIDAY_KINDS)

FIXED = {
    # [004] silent-call routine, attempts 2 and 3
    "silent_2": "您好!请问有什么可以帮您?",
    "silent_3": "非常抱歉,您的电话没有声音,请您换一部电话再打来,再见!",
    # [000]'s wording of the last attempt, selectable with [silence] last_prompt
    "silent_3_alt": "对不起您的电话无声,如有需要请再次来电,谢谢!再见!",
    # [004] while the caller waits
    "hold": "现在为您查询,请稍等。",
    "queue_position_many": "您前面还有多位客户在等待,请您稍候,不好意思让您久等了。",
    # [000]/[003]: the caller rates the service before the line closes
    "survey": "请您对本次服务进行评价,满意请按1,一般请按2,不满意请按3。",
    # [000] closing
    "thanks": "感谢您的来电,祝您生活愉快!",
}
POSITION = "您前面还有{n}位客户在等待,请您稍候。"
AGENT = "您好,{number}号客服为您服务。"  # [004] "您好,801号客服为您服务"
MENU_INVALID = "您的输入有误,请重新选择。"
_DIGITS = dict(zip("0123456789", "零一二三四五六七八九", strict=True))


def spoken_number(number: str) -> str:
    """Seat numbers are read digit by digit, as call centres do: 801 -> 八零一."""
    return "".join(_DIGITS.get(ch, ch) for ch in number)


def menu_text(menu: MenuConfig, tier: str) -> str:
    options = [
        f"{SERVICES[service]}请按{digit}"
        for digit, service in sorted(menu.choices.items())
        if tier in menu.allowed.get(service, {tier})
    ]
    return ",".join(options) + "。"


def build_catalogue(
    company: str,
    dayparts: Iterable[Daypart],
    overrides: Mapping[str, str],
    *,
    menu: MenuConfig | None = None,
    agents: Iterable[str] = (),
) -> dict[str, str]:
    """Every prompt the IVR may play, with its final text."""
    menu = menu or MenuConfig()
    texts: dict[str, str] = {
        "menu": menu_text(menu, "junior"),
        "menu_senior": menu_text(menu, "senior"),
        "menu_invalid": MENU_INVALID + menu_text(menu, "junior"),
        "menu_invalid_senior": MENU_INVALID + menu_text(menu, "senior"),
    }
    texts.update({f"queue_position_{n}": POSITION.format(n=spoken_number(str(n))) for n in range(1, MAX_POSITION_PROMPT + 1)})
    texts.update({agent_prompt(number): AGENT.format(number=spoken_number(number)) for number in agents})
    for part in dayparts:
        texts[greeting_prompt_id(part.name)] = DAYPART_GREETING.format(word=part.word, company="{company}")
    for kind, text in HOLIDAY_GREETINGS.items():
        texts[greeting_prompt_id(f"holiday:{kind}")] = text
    texts.update(FIXED)
    unknown = set(overrides) - set(texts)
    if unknown:
        raise KeyError(f"[prompts] text overrides name unknown prompts: {', '.join(sorted(unknown))}")
    texts.update(overrides)
    return {pid: text.replace("{company}", company) for pid, text in texts.items()}


def catalogue_for(config: Config) -> dict[str, str]:
    """The catalogue for a loaded sip.conf: company, day-parts, overrides, menu and agents."""
    return build_catalogue(
        config.general.company, config.dayparts, config.prompts.texts,
        menu=config.menu, agents=[a.number for a in config.agents],
    )
