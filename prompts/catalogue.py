"""The prompt catalogue: prompt id -> zh-CN text, from the service scripts.

Texts are the scripts' own wording (../shared/spec/call-scripts.md, seeds
[000]-[004]). `{company}` is filled from sip.conf; `[prompts] text.<id>`
replaces a text; a recorded WAV replaces the audio (see prompts/recorded/).
Prompt texts are polite: never "喂,说话呀!再不说话我就挂机了啊!" [004].
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ivr.greeting import HOLIDAY_KINDS, Daypart, greeting_prompt_id

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
}


def build_catalogue(company: str, dayparts: Iterable[Daypart], overrides: Mapping[str, str]) -> dict[str, str]:
    """Every prompt the IVR may play, with its final text."""
    texts: dict[str, str] = {}
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
