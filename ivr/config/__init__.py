"""sip.conf: read once at start-up into frozen, validated objects.

The file is Asterisk-style INI (`[section]`, `key = value`, `;` comments).
Each section is described once, by a pydantic dataclass (`SECTIONS`) in one
of this package's modules: `calls` (what a caller meets: greeting, silence,
hours, prompts, tiers, menu, queues, callbacks, survey, follow-ups), `seats`
(the agent peers, monitoring, recording, the browser phone) and `service`
(general, media, WebSocket, database, limits, metrics, cluster, webhook,
log); `keys` holds the parsers of particular keys they share. The fields
are the section's keys, each with its type, default and parser
(`Annotated` types from ivr.sipconf: `whole(1, 65535)`, `number(0, 11)`,
`YesNo`, `choice(...)`, `FilePath`, ...). The keys a section accepts, the
"known keys are ..." messages and the values read all come from those
fields; nothing lists the keys a second time. A few fields gather a family
of keys (`Collects`: the digits of `[menu]` and `[survey]`, `[prompts]
text.<id>`, the schedules of `[hours]`). Agent peers are the other sections
with `type = agent`, read into `AgentConfig`; `[desk]` is desk/config.py's.

Some sections are the objects the rest of the code uses (`GeneralConfig`,
`QueueConfig`, ...); the others are built into types of other modules
(`MenuSection` -> ivr.service.MenuConfig, `TiersSection` -> TierThresholds,
...) or into fields of `Config`. Anything wrong is reported as `ConfigError`,
which names the file, the line, the key and the reason (see ivr.sipconf for
how), and the IVR refuses to start. `load_config` validates the sections,
checks what spans two of them, and assembles `Config`; after loading, the
rest of the code only sees `Config`, never the parser.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

from crm_bridge.customers import TierThresholds
from crm_bridge.settings import WebhookConfig
from ivr.callflow import FlowSettings
from ivr.config.calls import (
    CallbacksConfig,
    FollowupConfig,
    GreetingSection,
    HolidaysSection,
    HoursSection,
    MenuSection,
    PromptConfig,
    QueueConfig,
    SilenceConfig,
    SurveyConfig,
    TiersSection,
)
from ivr.config.keys import PHONE_KINDS
from ivr.config.seats import AgentConfig, BrowserPhoneConfig, MonitoringConfig, RecordingConfig
from ivr.config.service import (
    ClusterConfig,
    DatabaseSection,
    GeneralConfig,
    LimitsConfig,
    LogSection,
    MediaConfig,
    MetricsSection,
    WebhookSection,
    WebSocketConfig,
)
from ivr.greeting import Daypart
from ivr.hours import HoursConfig
from ivr.questionnaire import QuestionnaireSet, default_questionnaires
from ivr.service import MenuConfig
from ivr.sipconf import ConfigError, SipConf, known_keys

__all__ = [  # what the rest of the code imports from ivr.config
    "AgentConfig",
    "BrowserPhoneConfig",
    "CallbacksConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DatabaseSection",
    "FollowupConfig",
    "GeneralConfig",
    "GreetingSection",
    "HolidaysSection",
    "HoursSection",
    "LimitsConfig",
    "LogSection",
    "MediaConfig",
    "MenuSection",
    "MetricsSection",
    "MonitoringConfig",
    "PHONE_KINDS",
    "PromptConfig",
    "QueueConfig",
    "RecordingConfig",
    "SECTIONS",
    "SilenceConfig",
    "SurveyConfig",
    "TiersSection",
    "WebSocketConfig",
    "WebhookSection",
    "load_config",
]

SECTIONS: dict[str, type] = {
    "general": GeneralConfig,
    "greeting": GreetingSection,
    "silence": SilenceConfig,
    "holidays": HolidaysSection,
    "prompts": PromptConfig,
    "database": DatabaseSection,
    "limits": LimitsConfig,
    "metrics": MetricsSection,
    "media": MediaConfig,
    "cluster": ClusterConfig,
    "webhook": WebhookSection,
    "log": LogSection,
    "tiers": TiersSection,
    "menu": MenuSection,
    "queues": QueueConfig,
    "hours": HoursSection,
    "callbacks": CallbacksConfig,
    "survey": SurveyConfig,
    "followup": FollowupConfig,
    "monitoring": MonitoringConfig,
    "recording": RecordingConfig,
    "websocket": WebSocketConfig,
    "browser_phone": BrowserPhoneConfig,
}


_KNOWN: dict[str, set[str]] = {name: known_keys(model) for name, model in SECTIONS.items()}


# Sections of the same file read by other programs, which validate them (`python -m desk`: desk/config.py).
_OTHER_READERS = {"desk", "quality"}  # read by python -m desk


# `type = agent` is what makes a section an agent peer; the number is the section's name.
AGENT_KEYS = {"type"} | known_keys(AgentConfig)


@dataclass(frozen=True, slots=True)
class Config:
    """What load_config assembled from the sections (their models hold the defaults)."""

    path: Path
    general: GeneralConfig
    media: MediaConfig
    dayparts: tuple[Daypart, ...]
    silence: SilenceConfig
    holidays_file: Path | None
    hours: HoursConfig
    prompts: PromptConfig
    database_url: str
    outbox_dir: Path
    limits: LimitsConfig
    metrics_bind: str
    metrics_port: int  # 0: no metrics endpoint
    cluster: ClusterConfig
    webhook: WebhookConfig
    log_level: str
    log_format: str
    tiers: TierThresholds
    greet_senior_by_name: bool
    menu: MenuConfig
    queues: QueueConfig
    callbacks: CallbacksConfig
    survey: SurveyConfig
    agents: tuple[AgentConfig, ...]
    questionnaires: QuestionnaireSet = field(default_factory=default_questionnaires)
    followup: FollowupConfig = field(default_factory=FollowupConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    crm_writer: str = "thread"  # [database] writer
    browser_phone: BrowserPhoneConfig = field(default_factory=BrowserPhoneConfig)

    @property
    def status_file(self) -> Path | None:
        return self.general.status_file

    @property
    def flow(self) -> FlowSettings:
        return FlowSettings(
            ring_seconds=self.general.ring_seconds,
            silent_routine=self.silence.routine,
            menu=self.menu,
            survey_timeout_seconds=self.survey.timeout_seconds,
            questionnaires=self.questionnaires,
            position_every_seconds=self.queues.position_every_seconds,
            recording=self.recording.rule(),
        )


def load_config(path: Path) -> Config:
    """Read and validate a sip.conf; raise ConfigError on the first problem."""
    conf = SipConf.read(path)
    agents = tuple(_agent(conf, section) for section in _agent_sections(conf))
    general = conf.section("general", GeneralConfig)
    database = conf.section("database", DatabaseSection)
    cluster = conf.section("cluster", ClusterConfig)
    _check_cluster(conf, cluster, database.url)
    hours = conf.section("hours", HoursSection)
    _check_hours(conf, hours, general)
    metrics = conf.section("metrics", MetricsSection)
    log = conf.section("log", LogSection)
    tiers = conf.section("tiers", TiersSection)
    survey = conf.section("survey", SurveyConfig)
    questionnaires = survey.questionnaire_set()
    monitoring = conf.section("monitoring", MonitoringConfig)
    _check_monitoring(conf, monitoring, agents, general)
    _check_agent_hosts(conf, agents, general)
    browser_phone = conf.section("browser_phone", BrowserPhoneConfig)
    _check_browser_phone(conf, browser_phone, agents)
    return Config(
        path=conf.path,
        general=general,
        media=conf.section("media", MediaConfig),
        dayparts=conf.section("greeting", GreetingSection).dayparts,
        silence=conf.section("silence", SilenceConfig),
        holidays_file=conf.section("holidays", HolidaysSection).file,
        hours=hours.config(general.timezone),
        prompts=conf.section("prompts", PromptConfig),
        database_url=database.url,
        outbox_dir=database.outbox_dir,
        limits=conf.section("limits", LimitsConfig),
        metrics_bind=metrics.bind,
        metrics_port=metrics.port,
        cluster=cluster,
        webhook=conf.section("webhook", WebhookSection).config(),
        log_level=log.level,
        log_format=log.format,
        tiers=tiers.thresholds(),
        greet_senior_by_name=tiers.greet_senior_by_name,
        menu=conf.section("menu", MenuSection).config(),
        queues=conf.section("queues", QueueConfig),
        callbacks=conf.section("callbacks", CallbacksConfig),
        survey=survey,
        agents=agents,
        questionnaires=questionnaires,
        followup=conf.section("followup", FollowupConfig),
        monitoring=monitoring,
        recording=conf.section("recording", RecordingConfig),
        websocket=_websocket(conf, general),
        crm_writer=database.writer,
        browser_phone=browser_phone,
    )


def _websocket(conf: SipConf, general: GeneralConfig) -> WebSocketConfig:
    ws = conf.section("websocket", WebSocketConfig)
    if not (ws.enabled and ws.tls):
        return ws
    certificate, key = ws.tls_certificate or general.tls_certificate, ws.tls_key or general.tls_key
    for name, path in (("tls_certificate", certificate), ("tls_key", key)):
        if path is None or not path.is_file():
            raise conf.error("websocket", name, "required with tls = yes (a PEM file; or set it in [general])")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(certificate), str(key))
    except (ssl.SSLError, ValueError) as exc:
        raise conf.error("websocket", "tls_certificate",
                         f"{certificate} and {key} are not a PEM certificate and its key ({exc})") from None
    return ws


def _agent_sections(conf: SipConf) -> list[str]:
    """The agent peers' sections; any other section must be one of SECTIONS (or another program's)."""
    agents = []
    for section in conf.parser.sections():
        if section in SECTIONS or section in _OTHER_READERS:
            continue
        if conf.parser.get(section, "type", fallback="") != "agent":
            raise conf.error(section, "", f"unknown section; known sections are {', '.join(SECTIONS)}, "
                                          "or an agent peer with type = agent")
        agents.append(section)
    return agents


def _agent(conf: SipConf, section: str) -> AgentConfig:
    for key in conf.parser.options(section):
        if key not in AGENT_KEYS:
            reason = f"unknown key for an agent; known keys are {', '.join(sorted(AGENT_KEYS))}"
            raise conf.error(section, key, reason)
    if not section.isdigit():
        raise conf.error(section, "", "an agent section is named by the agent's number, e.g. [801]")
    return conf.section(section, AgentConfig, only=AGENT_KEYS - {"type"}, number=section)


def _check_cluster(conf: SipConf, cluster: ClusterConfig, database_url: str) -> None:
    if not cluster.shared_agents:
        return
    if ":memory:" in database_url:
        raise conf.error("cluster", "shared_agents", "needs a database the workers share; [database] url is in memory")
    if len(cluster.secret) < 16:
        raise conf.error("cluster", "secret",
                         "needs 16 characters or more, the same on every worker (it signs digest nonces)")


def _check_hours(conf: SipConf, hours: HoursSection, general: GeneralConfig) -> None:
    for key in hours.schedules:
        if key.isdigit() and key not in general.numbers:
            raise conf.error("hours", key,
                             f"not a hotline number; [general] numbers are {', '.join(sorted(general.numbers))}")


def _check_monitoring(conf: SipConf, monitoring: MonitoringConfig, agents: tuple[AgentConfig, ...],
                      general: GeneralConfig) -> None:
    for key in ("listen_prefix", "whisper_prefix", "barge_prefix"):
        prefix = getattr(monitoring, key)
        # a code is matched by its prefix before the hotline's numbers and *46/*47: it must not take them
        taken = sorted(n for n in (*general.numbers, "*46", "*47") if n.startswith(prefix))
        if taken:
            raise conf.error("monitoring", key, f"{prefix} would take calls to {', '.join(taken)}")
    unknown = sorted(monitoring.supervisors - {a.number for a in agents})
    if unknown:
        raise conf.error("monitoring", "supervisors",
                         f"{', '.join(unknown)}: no agent section; a supervisor's phone is an agent peer "
                         "([880] type = agent)")


def _check_agent_hosts(conf: SipConf, agents: tuple[AgentConfig, ...], general: GeneralConfig) -> None:
    """An agent's phone at the IVR's own address would have the IVR ring itself for every caller."""
    local = {general.bind} | ({"127.0.0.1", "localhost", "::1"} if general.bind in ("0.0.0.0", "::") else set())
    for agent in agents:
        if agent.host is not None and agent.host[0] in local and agent.host[1] == general.port:
            raise conf.error(agent.number, "host", f"{agent.host[0]}:{agent.host[1]} is this IVR's own address "
                                                   "([general] bind and port); write the agent's softphone's")


def _check_browser_phone(conf: SipConf, browser: BrowserPhoneConfig, agents: tuple[AgentConfig, ...]) -> None:
    """A browser seat needs the URL its page registers to and the secret its credentials are derived with."""
    seat = next((a for a in agents if a.browser_phone), None)
    if seat is None:
        return
    for key in ("ws_url", "token_secret"):
        if not getattr(browser, key):
            raise conf.error("browser_phone", key, f"missing; agent {seat.number} has phone = {seat.phone}")
