"""The sections that shape what a caller meets: greeting, silent-call routine, hours, prompts, tiers,
menu, queues, callbacks, survey and the follow-up calls."""

from __future__ import annotations

from dataclasses import field
from datetime import time as clock_time
from pathlib import Path
from types import MappingProxyType
from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic.dataclasses import dataclass as section_model

from crm_bridge.customers import TierThresholds
from ivr.callflow import GREETING, SilentRoutine
from ivr.config import keys
from ivr.config.keys import DIGITS
from ivr.greeting import DEFAULT_DAYPARTS, Daypart
from ivr.hours import DEFAULT_SCHEDULE, HoursConfig, Schedule, parse_schedule
from ivr.questionnaire import QuestionnaireSet, default_questionnaires, load_questionnaires
from ivr.service import SEAT_GROUPS, SERVICES, MenuConfig
from ivr.sipconf import (
    SECTION,
    Collects,
    FilePath,
    OptionalPath,
    TimeZone,
    YesNo,
    choice,
    each,
    nonempty,
    number,
    text,
    whole,
)


@section_model(config=SECTION, slots=True)
class GreetingSection:
    dayparts: Annotated[tuple[Daypart, ...], text("a day-part list", keys.dayparts)] = DEFAULT_DAYPARTS
    """Greeting day-parts: 'HH:MM name word, …' from 00:00 on, or a preset: hotline or five_part."""


@section_model(config=SECTION, slots=True)
class SilenceConfig:
    wait_seconds: Annotated[float, number(1, 60)] = 5.0
    """Seconds of silence after each prompt of the silent-call routine before the next."""
    # [004] "严禁未做到重复三次就挂线": never fewer than three attempts.
    attempts: Annotated[int, whole(3, 10)] = 3
    """Prompts played to a silent caller before hanging up; never fewer than 3 ("严禁未做到重复三次就挂线")."""
    last_prompt: Annotated[str, choice(("silent_3", "silent_3_alt"), "a prompt id",
                                       "choose silent_3 or silent_3_alt")] = "silent_3"
    """The silent routine's last prompt: silent_3 ([004] wording) or silent_3_alt ([000]: 对不起您的电话无声…)."""
    vad_aggressiveness: Annotated[int, whole(0, 3)] = 2
    """Voice activity detection on the caller's audio: 0 (least) to 3 (most aggressive in rejecting non-speech)."""
    speech_ms: Annotated[int, whole(20, 2000)] = 200
    """Milliseconds of voiced audio that count as the caller speaking."""

    @property
    def routine(self) -> SilentRoutine:
        middle = ("silent_2",) * (self.attempts - 2)
        return SilentRoutine((GREETING, *middle, self.last_prompt), self.wait_seconds)


@section_model(config=SECTION, slots=True)
class HolidaysSection:
    file: Annotated[OptionalPath, AfterValidator(keys.readable_holidays)] = None
    """Ops' TOML file of holiday periods (holidays.toml.example), re-read within a second of a save; empty: none."""


@section_model(config=SECTION, slots=True)
class HoursSection:
    """`[hours]`, built into ivr.hours' HoursConfig; its numbers are checked against [general]'s by load_config."""

    timezone: TimeZone = ""
    """Time zone of the business hours; empty: [general] timezone."""
    schedules: Annotated[
        MappingProxyType[str, Schedule],
        Collects((DEFAULT_SCHEDULE,), pattern=rf"{'|'.join(SEAT_GROUPS)}|\d+", shown_as="a seat group or number"),
        each("business hours like 08:00-22:00", parse_schedule, MappingProxyType),
    ] = field(default_factory=lambda: MappingProxyType({}))
    """Hours per seat group, hotline number or default: 08:00-22:00, mon-fri 08:30-17:30, holiday closed, …."""

    def config(self, general_timezone: str) -> HoursConfig:
        return HoursConfig(self.timezone or general_timezone, self.schedules or HoursConfig().schedules)


def _prompt_texts(parsed: dict[str, str]) -> MappingProxyType[str, str]:
    return MappingProxyType({key.removeprefix("text."): value for key, value in parsed.items()})


@section_model(config=SECTION, slots=True)
class PromptConfig:
    voice: str = "sit/cmn"
    """espeak-ng voice of the TTS prompts (sit/cmn: Mandarin)."""
    rate: Annotated[int, whole(60, 400)] = 240
    """TTS speed in words per minute."""
    cache_dir: FilePath = Field(default=Path("var/prompts"), validate_default=True)
    """Where rendered TTS audio is cached (built at the first start, never committed)."""
    recorded_dir: FilePath = Field(default=Path("prompts/recorded"), validate_default=True)
    """Recorded WAVs named <prompt id>.wav here replace the TTS audio at the next start."""
    texts: Annotated[
        MappingProxyType[str, str],
        Collects(pattern=r"text\..+", shown_as="text.<prompt id>"),
        each("a prompt text", str, _prompt_texts),
    ] = field(default_factory=lambda: MappingProxyType({}))
    """text.<prompt id> = the text spoken instead of the catalogue's ({company} is filled in)."""


_TIERS = TierThresholds()


Amount = Annotated[float, number(0, 1e15)]


@section_model(config=SECTION, slots=True)
class TiersSection:
    """`[tiers]`: crm_bridge's TierThresholds (whose defaults these are), and the greeting by name."""

    senior_assets: Amount = _TIERS.senior_assets
    """Assets (市值, yuan) from which a customer is senior (高端)."""
    senior_volume: Amount = _TIERS.senior_volume
    """Trading volume (交易量, yuan) from which a customer is senior."""
    middle_assets: Amount = _TIERS.middle_assets
    """Assets (yuan) from which a customer is middle (中端); below both middle thresholds: junior (低端)."""
    middle_volume: Amount = _TIERS.middle_volume
    """Trading volume (yuan) from which a customer is middle."""
    greet_senior_by_name: YesNo = False
    """Greet senior customers by surname and title ("张先生,您好!…") when the CRM knows their name and gender."""

    def thresholds(self) -> TierThresholds:
        return TierThresholds(self.senior_assets, self.senior_volume, self.middle_assets, self.middle_volume)


_MENU = MenuConfig()


@section_model(config=SECTION, slots=True)
class MenuSection:
    """`[menu]`, built into ivr.service's MenuConfig (whose defaults these are)."""

    enabled: YesNo = _MENU.enabled
    """Offer the service menu once the caller speaks or presses a key; no: straight to the queue, default service."""
    timeout_seconds: Annotated[float, number(1, 60)] = _MENU.timeout_seconds
    """Seconds to wait for a key after the menu prompt; one reprompt, then the default."""
    default: Annotated[str, choice(SERVICES, "a service")] = _MENU.default_service
    """Service used when the caller chooses nothing valid."""
    senior_only: Annotated[frozenset[str] | None, text("a list of services", keys.comma_set)] = None
    """Services only senior customers may choose (comma-separated); default personalised."""
    digits: Annotated[
        MappingProxyType[str, str], Collects(DIGITS), each("a service", keys.service_or_none, MappingProxyType)
    ] = field(default_factory=lambda: MappingProxyType({}))
    """digit = service, or none to remove the digit; default 1 consulting … 5 personalised, as in sip.conf.example."""

    def config(self) -> MenuConfig:
        choices = {**_MENU.choices, **self.digits}
        allowed = (_MENU.allowed if self.senior_only is None
                   else MappingProxyType({service: frozenset({"senior"}) for service in self.senior_only}))
        return MenuConfig(
            enabled=self.enabled,
            timeout_seconds=self.timeout_seconds,
            choices=MappingProxyType({digit: s for digit, s in choices.items() if s != "none"}),
            default_service=self.default,
            allowed=allowed,
        )


@section_model(config=SECTION, slots=True)
class QueueConfig:
    ring_agent_seconds: Annotated[float, number(3, 120)] = 15.0
    """Seconds an agent's phone rings before the next agent is tried."""
    wrap_up_seconds: Annotated[float, number(0, 600)] = 10.0
    """Seconds after a call before the agent gets the next one."""
    retry_seconds: Annotated[float, number(0, 60)] = 3.0
    """An agent's phone that refuses a call sooner (busy, do-not-disturb, an error) is offered none until
    this long after it was rung; the caller goes to the head of the queue at once. 0: offered again at once."""
    position_every_seconds: Annotated[float, number(5, 600)] = 30.0
    """How often waiting callers hear their position ("您前面还有N位客户…")."""
    overflow_after_seconds: Annotated[float, number(0, 3600)] = 60.0
    """After this many seconds a waiting caller may also be offered to the overflow group; 0: never."""
    overflow: Annotated[MappingProxyType[str, str], text("an overflow list like senior>middle", keys.overflow)] = field(
        default_factory=lambda: MappingProxyType({"senior": "middle", "middle": "junior"})
    )
    """Overflow groups, group>group comma-separated (never upward)."""
    complaints_overflow: YesNo = False
    """Whether complaints overflow too."""
    complaint_group: Annotated[str | None, text("a seat group", keys.complaint_group)] = None
    """Group whose specialists take complaints and transfers to sip:complaint@; empty: caller's group, no transfer."""
    # Never dead air: music between announcements, the expected wait, a callback instead of a long wait.
    music: Annotated[OptionalPath, AfterValidator(keys.readable_music)] = None
    """Music on hold: a WAV file or folder of WAVs (in name order); empty: the IVR's own generated chime piece."""
    music_volume: Annotated[float, number(-40, -10)] = -24.0  # prompts.music.DEFAULT_LEVEL_DBFS
    """Level of the music on hold, RMS in dBFS."""
    announce_wait: YesNo = True
    """Tell waiting callers the expected wait after their position ("预计等待时间约两分钟")."""
    mean_handle_seconds: Annotated[float, number(10, 3600)] = 180.0
    """Expected handle time (talk + wrap-up) until the group has ended calls; then the recent calls' mean."""
    max_wait_seconds: Annotated[float, number(0, 7200)] = 300.0
    """Expected or actual wait from which a callback is offered (also when nobody is logged in); 0: to everyone."""
    callback_key: Annotated[str, text("a key", keys.callback_key)] = "#"
    """The key that asks for a callback in the queue: 0-9, * or #."""
    transfer_codes: Annotated[
        MappingProxyType[str, str], text("short codes like 9001>senior, 9009>complaint", keys.transfer_codes)
    ] = field(default_factory=lambda: MappingProxyType({}))
    """Short codes agents may transfer to, code>target with targets senior, middle, junior or complaint; empty: none."""


@section_model(config=SECTION, slots=True)
class CallbacksConfig:
    """`[callbacks]`: attempts per request and the first retry delay (doubling after each)."""

    max_attempts: Annotated[int, whole(1, 10)] = 3
    """Attempts to call a customer back before the request closes as callback_no_answer."""
    retry_seconds: Annotated[float, number(30, 86_400)] = 300.0
    """Seconds before the first retry, doubled after each unanswered attempt."""
    gateway: Annotated[tuple[str, int] | None, text("host:port of the SIP gateway", keys.gateway)] = None
    """host:port of the SIP trunk or gateway for calling back; empty: requests are stored, never dialled."""


SURVEY_LABELS = MappingProxyType({"1": "satisfied", "2": "average", "3": "dissatisfied"})


def _survey_labels(parsed: dict[str, str]) -> MappingProxyType[str, str]:
    return MappingProxyType({**SURVEY_LABELS, **parsed})


@section_model(config=SECTION, slots=True)
class SurveyConfig:
    timeout_seconds: Annotated[float, number(2, 60)] = 8.0
    """Seconds to wait for the caller's rating key; one reprompt."""
    # digit = label stored with the score (over the default labels)
    labels: Annotated[
        MappingProxyType[str, str], Collects(DIGITS), each("a label", nonempty, _survey_labels)
    ] = field(default_factory=lambda: SURVEY_LABELS)
    """digit = label stored with the score; default 1 satisfied, 2 average, 3 dissatisfied."""
    questionnaires: Annotated[OptionalPath, AfterValidator(keys.readable_file)] = None
    """The TOML file of post-call questionnaires (see questionnaires.toml.example); empty: the single question."""

    def questionnaire_set(self) -> QuestionnaireSet:
        """The questionnaires file read and checked (ConfigError naming its line), or the shipped default."""
        if self.questionnaires is not None:
            return load_questionnaires(self.questionnaires)
        default = default_questionnaires()
        # an old sip.conf's `1 = satisfied` digit labels: the values stored for the single question's keys
        return default if self.labels == SURVEY_LABELS else default.relabelled(self.labels)


@section_model(config=SECTION, slots=True)
class FollowupConfig:
    """`[followup]`: calls the IVR places by itself to customers (回访), see crm_bridge.followups."""

    enabled: YesNo = False
    """Place follow-up calls at all (no: nothing is scanned, scheduled or dialled)."""
    on_resolved: YesNo = True
    """Follow up a complaint ticket once it reaches 已告知客户 (satisfied? close it : forward again)."""
    on_wrap_up: YesNo = True
    """Follow up a call the agent gave the wrap-up code `wrap_up_code` at the desk."""
    on_daily: YesNo = True
    """A short status call for an open complaint nobody has given feedback on that day ([002])."""
    on_survey: YesNo = True
    """Follow up a call whose questionnaire answer asked for it (an answer with `followup = true`)."""
    wrap_up_code: Annotated[str, text("a wrap-up code", nonempty)] = "需回访"
    """The desk's wrap-up code that asks for a follow-up call."""
    delay_seconds: Annotated[float, number(0, 7 * 86_400)] = 1800.0
    """Seconds from the trigger (ticket told its result, wrap-up saved) to the first attempt."""
    daily_at: Annotated[clock_time, text("a time of day", keys.time_of_day)] = clock_time(17, 0)
    """Local time after which an open complaint without feedback that day gets its status call."""
    calling_hours: Annotated[tuple[clock_time, clock_time], text("hours", keys.calling_hours)] = (
        clock_time(9, 0), clock_time(20, 0))
    """When customers may be called, in [general] timezone: start-end like 09:00-20:00, the end
    exclusive; 00:00-24:00 calls at any hour."""
    call_on_holidays: YesNo = False
    """Call on public holidays too (the greeting's holiday calendar, 调休 rest days included)."""
    call_on_weekends: YesNo = False
    """Call on ordinary Saturdays and Sundays too (a 调休 make-up working day is always a calling day)."""
    min_gap_seconds: Annotated[float, number(0, 7 * 86_400)] = 7200.0
    """Seconds at least between two calls to the same customer."""
    daily_cap: Annotated[int, whole(1, 20)] = 3
    """Calls at most a day to the same customer."""
    max_attempts: Annotated[int, whole(1, 10)] = 3
    """Attempts of one follow-up before it is unreachable and its ticket is flagged for an agent."""
    retry_seconds: Annotated[float, number(1, 86_400)] = 1800.0
    """Seconds before retrying a follow-up not answered or busy; doubled after each attempt."""
    ring_seconds: Annotated[float, number(5, 120)] = 30.0
    """Seconds the customer's phone rings before the attempt counts as not answered."""
    answer_seconds: Annotated[float, number(2, 60)] = 8.0
    """Seconds to wait for a key after the question; asked once more, then goodbye."""
    max_concurrent: Annotated[int, whole(1, 1000)] = 10
    """Follow-up calls up at once, per IVR worker."""
    calls_per_second: Annotated[float, number(0.1, 100)] = 1.0
    """New follow-up calls a second, per IVR worker."""
    queue_threshold: Annotated[int, whole(0, 10_000)] = 5
    """No new follow-up while more inbound callers than this wait for an agent (inbound first)."""
    scan_seconds: Annotated[float, number(1, 3600)] = 10.0
    """How often each worker looks for new triggers and due follow-ups in the CRM."""
    agent_transfer: YesNo = True
    """Pressing 0 puts the customer through to the ticket's agent (else their seat group); no: an agent calls back."""
    gateway: Annotated[tuple[str, int] | None, text("host:port of the SIP gateway", keys.gateway)] = None
    """The SIP trunk or gateway to dial through, host:port; empty: [callbacks] gateway."""
    caller_id: Annotated[str, text("a number", keys.caller_id)] = ""
    """The number the customer sees; empty: the hotline's first number of [general] numbers."""
