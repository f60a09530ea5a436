"""The desk's settings: `[desk]` of the IVR's sip.conf, plus what it shares with the IVR.

Read from the same file as the IVR (`python -m desk --config sip.conf`):
`[desk]` itself, described once by `DeskConfig`'s fields as the IVR's
sections are (ivr/config.py), and of the IVR's settings only what the desk
needs — `[database] url`, `[general] timezone` and `status_file`, `[tiers]`,
`[cluster] shared_agents` and the agent sections (seat number, group, name,
and the SIP secret that seeds an agent's first desk password), read with the
IVR's own section models. The IVR validates the rest. Errors name file,
line, key and reason, as the IVR's do (the same `SipConf` and `ConfigError`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

from pydantic import AfterValidator
from pydantic.dataclasses import dataclass as section_model

from crm_bridge.customers import TierThresholds
from ivr.config import ClusterConfig, DatabaseSection, GeneralConfig, MonitoringConfig, TiersSection
from ivr.screenpop import DEFAULT_TEMPLATE, TemplateError, check_template
from ivr.service import SEAT_GROUPS
from ivr.sipconf import GIVEN, SECTION, IPAddress, Port, SipConf, YesNo, known_keys, number, text, whole

DEFAULT_DEPARTMENTS = ("客服部", "技术部", "财务部", "售后服务部", "合规部")
DEFAULT_WRAP_UP_CODES = ("已解决", "需回访", "转投诉", "咨询", "无效来电", "其他")


@dataclass(frozen=True, slots=True)
class DeskAgent:
    number: str
    seat_group: str
    name: str
    secret: str  # the SIP digest password: seeds the first desk password, never shown


def _names(raw: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    if not names:
        raise ValueError("empty")
    if any(len(n) > 64 for n in names):
        raise ValueError("each entry at most 64 characters")
    return names


def _name_set(raw: str) -> frozenset[str]:
    return frozenset(_names(raw))


def _template(raw: str) -> str:
    try:
        return check_template(raw)
    except TemplateError as exc:
        raise ValueError(str(exc)) from None


def _public_url(raw: str) -> str:
    if raw and not raw.startswith(("http://", "https://")):
        raise ValueError("start with http:// or https://")
    return raw.rstrip("/")


def _signing_key(key: str) -> str:
    if key and len(key) < 32:
        raise ValueError("needs 32 characters or more (it signs the session cookies)")
    return key


@section_model(config=SECTION, slots=True)
class DeskConfig:
    """`[desk]`'s keys, and the IVR's settings the desk shares (`GIVEN`: not keys of [desk])."""

    # Shared with the IVR: load_desk_config reads them from the IVR's sections.
    path: Annotated[Path, GIVEN]
    database_url: Annotated[str, GIVEN]
    timezone: Annotated[str, GIVEN]
    status_file: Annotated[Path | None, GIVEN]
    shared_agents: Annotated[bool, GIVEN]
    tiers: Annotated[TierThresholds, GIVEN]
    agents: Annotated[tuple[DeskAgent, ...], GIVEN]
    # [monitoring] supervisors: the phones a supervisor may have rung into a call (the wallboard's monitor button)
    monitoring_phones: Annotated[frozenset[str], GIVEN] = frozenset()
    # [desk]
    # loopback by default: put a TLS reverse proxy in front for other machines
    bind: IPAddress = "127.0.0.1"
    port: Port = 8080
    # empty: a random key per start (everyone logs in again after a restart)
    secret_key: Annotated[str, AfterValidator(_signing_key)] = ""
    # empty: every supervisor account may log in
    supervisors: Annotated[frozenset[str], text("a comma-separated list of names", _name_set)] = frozenset()
    service_level_seconds: Annotated[float, number(1, 600)] = 20.0
    departments: Annotated[tuple[str, ...], text("a comma-separated list of departments", _names)] = (
        DEFAULT_DEPARTMENTS
    )
    display_name: Annotated[str, text("a display-name template", _template)] = DEFAULT_TEMPLATE
    wrap_up_codes: Annotated[tuple[str, ...], text("a comma-separated list of codes", _names)] = DEFAULT_WRAP_UP_CODES
    # how phones and browsers reach the desk (Call-Info); default http://bind:port
    public_url: Annotated[str, text("a URL", _public_url)] = ""
    cookie_secure: YesNo = True
    login_attempts_per_minute: Annotated[int, whole(1, 1000)] = 5
    # the screen-pop polls the CRM this often (≤ 300 ms keeps the pop within 1 s)
    poll_ms: Annotated[int, whole(50, 300)] = 250

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.bind}:{self.port}"

    def agent(self, number: str) -> DeskAgent | None:
        return next((a for a in self.agents if a.number == number), None)


DESK_KEYS = known_keys(DeskConfig)


def _agents(conf: SipConf) -> tuple[DeskAgent, ...]:
    """The agent sections, read loosely: the IVR checks the rest of them."""
    agents = []
    parser = conf.parser
    for section in parser.sections():
        if parser.get(section, "type", fallback="") == "agent" and section.isdigit():
            group = parser.get(section, "seat_group", fallback="")
            if group not in SEAT_GROUPS:
                raise conf.error(section, "seat_group", f"choose {', '.join(SEAT_GROUPS)}")
            name, secret = parser.get(section, "name", fallback=""), parser.get(section, "secret", fallback="")
            agents.append(DeskAgent(section, group, name.strip(), secret.strip()))
    return tuple(agents)


def load_desk_config(path: Path) -> DeskConfig:
    """Read the desk's settings from sip.conf; raise ConfigError naming file:line, key and reason."""
    conf = SipConf.read(path)
    agents = _agents(conf)
    general = conf.section("general", GeneralConfig, only=("timezone", "status_file"))
    return conf.section(
        "desk",
        DeskConfig,
        path=conf.path,
        database_url=conf.section("database", DatabaseSection, only=("url",)).url,
        timezone=general.timezone,
        status_file=general.status_file,
        shared_agents=conf.section("cluster", ClusterConfig, only=("shared_agents",)).shared_agents,
        tiers=conf.section("tiers", TiersSection).thresholds(),
        agents=agents,
        monitoring_phones=conf.section("monitoring", MonitoringConfig, only=("supervisors",)).supervisors,
    )
