"""The prompt catalogue: prompt id -> zh-CN text, from the service scripts.

Texts are the scripts' own wording (docs/call-scripts.md, scripts
[000]-[004]). `{company}` is filled from sip.conf; `[prompts] text.<id>`
replaces a text; a recorded WAV replaces the audio (see prompts/recorded/).
Prompt texts are polite: never "喂,说话呀!再不说话我就挂机了啊!" [004].
Quantities are counted the Mandarin way ("两位", "二十二分钟",
prompts/chinese_numbers.py); seat numbers are read digit by digit ("八零一").
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ivr.callflow import MAX_POSITION_PROMPT, RECORDING_NOTICE_PROMPT, agent_prompt
from ivr.greeting import HOLIDAY_KINDS, Daypart, greeting_prompt_id
from ivr.hours import ALWAYS_OPEN, DEFAULT_SCHEDULE, closed_prompt, describe, parse_schedule
from ivr.questionnaire import QuestionnaireSet, default_questionnaires
from ivr.service import SEAT_GROUPS, SERVICES, MenuConfig
from ivr.waiting import (
    CALLBACK_CONFIRMED_PROMPT,
    CALLBACK_OFFER_PROMPT,
    LONG_WAIT_PROMPT,
    NO_AGENT_PROMPT,
    TRANSFER_PROMPT,
    UNDER_A_MINUTE_PROMPT,
    WAIT_MINUTES,
    WHISPER_CALLBACK_PROMPT,
)
from prompts.chinese_numbers import callers, minutes
from prompts.followup import departments_of, followup_texts

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
    # [000] closing
    "thanks": "感谢您的来电,祝您生活愉快!",
    # Never dead air ([002] "时间一过,就不是服务了"): say how long, offer a callback, say why nobody answers.
    UNDER_A_MINUTE_PROMPT: "预计等待时间不到一分钟。",
    LONG_WAIT_PROMPT: "预计等待时间超过三十分钟,不好意思让您久等了。",
    NO_AGENT_PROMPT: "现在暂时没有客服代表在线,不好意思让您久等了。",
    CALLBACK_CONFIRMED_PROMPT: "好的,稍后给您回过去,感谢您的来电!",
    TRANSFER_PROMPT: "正在为您转接,请稍候。",
    WHISPER_CALLBACK_PROMPT: "回拨。",  # heard by the agent: this call is a callback
    # [recording] announce: before the agent of a recorded call is put through
    RECORDING_NOTICE_PROMPT: "为了提高服务质量,您的通话可能会被录音。",
}
# Position 1 is the head of the queue (ivr.acd): nobody is ahead. Position n has n-1 callers ahead,
# counted with the measure word: "两位".
POSITION_NEXT = "您已排在第一位,请您稍候。"
POSITION = "您前面还有{n}客户在等待,请您稍候。"
WAIT = "预计等待时间约{minutes}。"  # "预计等待时间约两分钟", after the position's "请您稍候"
CALLBACK_OFFER = "如需稍后给您回电,请按{key}。"
# [000] "如有需要请再次来电,谢谢!再见!": the closed message names the opening times.
CLOSED = "您好,现在是非工作时间,我们的服务时间是{hours},请您在服务时间内再次来电,谢谢!再见!"
HOTLINE_HOURS = describe(parse_schedule("08:00-22:00"))  # "每天八点到二十二点", when no [hours] are given
# Whispered to the agent before the caller is put through: tier, service, and whether it is a callback.
TIER_WORDS = {"senior": "高端客户", "middle": "中端客户", "junior": "低端客户"}  # [001] 高端/中端/低端用户
assert set(TIER_WORDS) == set(SEAT_GROUPS)
KEY_WORDS = {"#": "井号键", "*": "星号键"}
AGENT = "您好,{number}号客服为您服务。"  # [004] "您好,801号客服为您服务"
MENU_INVALID = "您的输入有误,请重新选择。"
_DIGITS = dict(zip("0123456789", "零一二三四五六七八九", strict=True))


def spoken_number(number: str) -> str:
    """Seat numbers are read digit by digit, as call centres do: 801 -> 八零一."""
    return "".join(_DIGITS.get(ch, ch) for ch in number)


def key_words(key: str) -> str:
    """How a key is named in a prompt: # -> 井号键, * -> 星号键, 5 -> 5 (read as in the menu, "请按5")."""
    return KEY_WORDS.get(key, key)


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
    callback_key: str = "#",
    closed_hours: Mapping[str, str] | None = None,
    questionnaires: QuestionnaireSet | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Every prompt the IVR may play, with its final text.

    `questionnaires`: the post-call questions ([000]/[003]: the caller rates
    the service before the line closes); default: the shipped single question
    ("survey": "请您对本次服务进行评价,满意请按1,一般请按2,不满意请按3。").

    `closed_hours` maps each business-hours schedule (`default`, a seat group,
    a called number) to its opening times in words; default: the hotline's
    每天八点到二十二点.
    """
    menu = menu or MenuConfig()
    closed_hours = {DEFAULT_SCHEDULE: HOTLINE_HOURS} if closed_hours is None else closed_hours
    texts: dict[str, str] = {
        "menu": menu_text(menu, "junior"),
        "menu_senior": menu_text(menu, "senior"),
        "menu_invalid": MENU_INVALID + menu_text(menu, "junior"),
        "menu_invalid_senior": MENU_INVALID + menu_text(menu, "senior"),
    }
    texts["queue_position_1"] = POSITION_NEXT
    texts.update({f"queue_position_{n}": POSITION.format(n=callers(n - 1)) for n in range(2, MAX_POSITION_PROMPT + 1)})
    texts.update({f"wait_minutes_{n}": WAIT.format(minutes=minutes(n)) for n in WAIT_MINUTES})
    texts[CALLBACK_OFFER_PROMPT] = CALLBACK_OFFER.format(key=key_words(callback_key))
    texts.update({closed_prompt(name): CLOSED.format(hours=hours) for name, hours in closed_hours.items()})
    # the agent's whisper is played in parts: tier, service (and "回拨。"), eight short prompts instead of fifteen
    texts.update({f"whisper_{tier}": f"{words}," for tier, words in TIER_WORDS.items()})
    texts.update({f"whisper_{service}": f"{words}。" for service, words in SERVICES.items()})
    texts.update({agent_prompt(number): AGENT.format(number=spoken_number(number)) for number in agents})
    for part in dayparts:
        texts[greeting_prompt_id(part.name)] = DAYPART_GREETING.format(word=part.word, company="{company}")
    for kind, text in HOLIDAY_GREETINGS.items():
        texts[greeting_prompt_id(f"holiday:{kind}")] = text
    texts.update(FIXED)
    texts.update((questionnaires or default_questionnaires()).prompts())
    texts.update(extra or {})  # e.g. the follow-up call's fragments (prompts/followup.py)
    unknown = set(overrides) - set(texts)
    if unknown:
        raise KeyError(f"[prompts] text overrides name unknown prompts: {', '.join(sorted(unknown))}")
    texts.update(overrides)
    return {pid: text.replace("{company}", company) for pid, text in texts.items()}


def catalogue_for(config: Config, senior_people: Iterable[tuple[str | None, str | None]] = ()) -> dict[str, str]:
    """The catalogue for a loaded sip.conf: company, day-parts, overrides, menu, agents, callback key and hours.

    With `[tiers] greet_senior_by_name`, also a salutation per distinct title of
    `senior_people` ((name, gender) of the CRM's senior customers).
    """
    closed_hours = {
        name: describe(schedule)
        for name, schedule in config.hours.schedules.items()
        if schedule != ALWAYS_OPEN  # never closed: no closed message to render
    }
    texts = build_catalogue(
        config.general.company, config.dayparts, config.prompts.texts,
        menu=config.menu, agents=[a.number for a in config.agents],
        callback_key=config.queues.callback_key, closed_hours=closed_hours, questionnaires=config.questionnaires,
        extra=followup_texts(departments_of(config)) if config.followup.enabled else None,
    )
    if config.greet_senior_by_name:
        texts.update(salutation_texts(senior_people))
    return texts


# --- greeting senior customers by name ([001] 个性化服务) ---------------------------------

# Two-character surnames (复姓): the title follows the whole surname, "欧阳先生".
COMPOUND_SURNAMES = frozenset(
    "欧阳 司马 上官 诸葛 东方 皇甫 尉迟 公孙 慕容 长孙 宇文 司徒 令狐 夏侯 轩辕 端木 独孤 南宫 西门 百里 "
    "呼延 澹台 公冶 太史 申屠 万俟 闻人 赫连 钟离 宗政 濮阳 淳于 单于 拓跋 司空 东郭 闾丘 亓官 第五 "
    "左丘 梁丘 公羊 谷梁 乐正 漆雕 壤驷 公良 拓拔 夹谷 宰父 巫马 羊舌 微生 段干 子车 颛孙 仲孙 叔孙 "
    "鲜于 锺离 司寇 仉督 公西 公伯 东门".split()
)
# Surnames read differently from the everyday character (单 Shàn, 曾 Zēng, 解 Xiè, 尉迟 Yùchí …): the
# TTS voice would likely misread them, and a senior customer whose name is
# misread is served worse than by the normal greeting.
POLYPHONIC_SURNAME_CHARS = frozenset("单曾解仇区查朴盖华任种繁员乐覃缪莘尉隗俟長长秘召折藏翟祭句那")
TITLES = {"male": "先生", "female": "女士"}
# Distinct salutations rendered at start (surnames × 2 titles): a few hundred in practice; the bound keeps a
# CRM full of unusual names from holding up the start. The most frequent are kept.
MAX_SALUTATIONS = 2000


def _is_han(ch: str) -> bool:
    return "CJK UNIFIED IDEOGRAPH" in unicodedata.name(ch, "")


def surname_of(name: str | None) -> str | None:
    """The surname of a Chinese name ("张敏" -> 张, "欧阳修" -> 欧阳); None when it cannot be told safely.

    Only names of two to four Han characters: a Latin name, a transliteration
    with "·", a single character, a company name or anything with digits or
    spaces gets None, and the caller hears the normal greeting.
    """
    if not name:
        return None
    name = unicodedata.normalize("NFKC", name).strip()
    if not 2 <= len(name) <= 4 or not all(_is_han(ch) for ch in name):
        return None
    if name[:2] in COMPOUND_SURNAMES:
        surname = name[:2] if len(name) >= 3 else None  # "欧阳" alone is a surname without a given name
    elif len(name) == 4:
        return None  # four characters without a compound surname: 2+2 married names, foreign names — don't guess
    else:
        surname = name[0]
    if surname is None or any(ch in POLYPHONIC_SURNAME_CHARS for ch in surname):
        return None
    return surname


def senior_salutation(name: str | None, gender: str | None) -> str | None:
    """"张先生" / "欧阳女士" for a senior customer, or None (normal greeting) when name or title is unknown.

    Spoken aloud, "先生/女士" would sound odd, so without a known gender there is no salutation.
    """
    surname = surname_of(name)
    title = TITLES.get(gender or "")
    if surname is None or title is None:
        return None
    return surname + title


def salutation_prompt(salutation: str) -> str:
    """The prompt id of a salutation ("张先生" -> "salutation_张先生"); a recorded `<id>.wav` overrides it."""
    return f"salutation_{salutation}"


def salutation_texts(people: Iterable[tuple[str | None, str | None]]) -> dict[str, str]:
    """The salutation prompts for (name, gender) pairs from the CRM: one per distinct salutation, never per person.

    The caller hears the salutation and then the greeting of the hour or the
    holiday: "张先生," + "您好!XX客服中心,欢迎您的来电。请问有什么可以帮您?".
    """
    counts = Counter(s for name, gender in people if (s := senior_salutation(name, gender)) is not None)
    return {salutation_prompt(s): s for s, _ in counts.most_common(MAX_SALUTATIONS)}
