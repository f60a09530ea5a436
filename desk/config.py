"""The desk's settings: `[desk]` of the IVR's sip.conf, plus what it shares with the IVR.

Read from the same file as the IVR (`python -m desk --config sip.conf`):
`[desk]` itself, described once by `DeskConfig`'s fields as the IVR's
sections are (ivr/config/), and of the IVR's settings only what the desk
needs — `[database] url`, `[general] timezone` and `status_file`, `[tiers]`,
`[cluster] shared_agents` and the agent sections (seat number, group, name,
and the SIP secret that seeds an agent's first desk password), read with the
IVR's own section models. The IVR validates the rest. Errors name file,
line, key and reason, as the IVR's do (the same `SipConf` and `ConfigError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

from pydantic import AfterValidator
from pydantic.dataclasses import dataclass as section_model

from crm_bridge.customers import TierThresholds
from desk.quality import DEFAULT_FORM
from ivr.config import (
    PHONE_KINDS,
    BrowserPhoneConfig,
    ClusterConfig,
    DatabaseSection,
    GeneralConfig,
    MonitoringConfig,
    TiersSection,
)
from ivr.screenpop import DEFAULT_TEMPLATE, TemplateError, check_template
from ivr.service import SEAT_GROUPS
from ivr.sipconf import (
    GIVEN,
    SECTION,
    BrowserPort,
    IPAddress,
    OptionalPath,
    SipConf,
    YesNo,
    known_keys,
    number,
    text,
    whole,
)

DEFAULT_DEPARTMENTS = ("客服部", "技术部", "财务部", "售后服务部", "合规部")
DEFAULT_WRAP_UP_CODES = ("已解决", "需回访", "转投诉", "咨询", "无效来电", "其他")


@dataclass(frozen=True, slots=True)
class DeskAgent:
    number: str
    seat_group: str
    name: str
    secret: str  # the SIP digest password: seeds the first desk password, never shown
    phone: str = "sip"  # sip | browser | both: browser and both answer in the desk page (phone.js)
    auto_answer: bool = False  # the browser phone answers an offered call by itself

    @property
    def browser_phone(self) -> bool:
        return self.phone in ("browser", "both")


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


def _seed(raw: str) -> str:
    if not 1 <= len(raw) <= 64:
        raise ValueError("1-64 characters")
    return raw


def _signing_key(key: str) -> str:
    if key and len(key) < 32:
        raise ValueError("needs 32 characters or more (it signs the session cookies)")
    return key


def _metrics_token(token: str) -> str:
    if token and len(token) < 32:
        raise ValueError("needs 32 characters or more (it stands in for a supervisor's login)")
    return token


@section_model(config=SECTION, slots=True)
class QualityConfig:
    """`[quality]`: QA review of recorded calls (质检), read by the desk."""

    form: OptionalPath = None
    """The evaluation form (TOML, relative to sip.conf); empty: the shipped desk/evaluation_form.toml."""
    sample_per_agent_week: Annotated[int, whole(0, 100)] = 2
    """Calls per agent and week drawn at random into the review queue, besides every 不满意 and complaint call."""
    sample_seed: Annotated[str, text("a seed of 1-64 characters", _seed)] = "hotline"
    """The sample's seed: the same seed and calls give the same sample; change it to draw other calls."""

    @property
    def form_path(self) -> Path:
        return self.form or DEFAULT_FORM


@section_model(config=SECTION, slots=True)
class DeskConfig:
    """`[desk]`'s keys, and the IVR's settings the desk shares (`GIVEN`: not keys of [desk])."""

    # Shared with the IVR: load_desk_config reads them from the IVR's sections.
    path: Annotated[Path, GIVEN]
    """The sip.conf read (not a key)."""
    database_url: Annotated[str, GIVEN]
    """[database] url (not a key of [desk])."""
    timezone: Annotated[str, GIVEN]
    """[general] timezone (not a key of [desk])."""
    status_file: Annotated[Path | None, GIVEN]
    """[general] status_file (not a key of [desk])."""
    shared_agents: Annotated[bool, GIVEN]
    """[cluster] shared_agents (not a key of [desk])."""
    tiers: Annotated[TierThresholds, GIVEN]
    """[tiers]' thresholds (not keys of [desk])."""
    agents: Annotated[tuple[DeskAgent, ...], GIVEN]
    """The agent sections (not keys of [desk])."""
    monitoring_phones: Annotated[frozenset[str], GIVEN] = frozenset()
    """Read from [monitoring] supervisors: the phones a supervisor may have rung into a call (monitor buttons)."""
    # [desk]
    bind: IPAddress = "127.0.0.1"
    """Address the desk listens on; loopback by default: put a TLS reverse proxy in front for other machines."""
    port: BrowserPort = 8080
    """Port the desk listens on."""
    secret_key: Annotated[str, AfterValidator(_signing_key)] = ""
    """32+ random characters that sign the session cookies; empty: a new key per start (everyone logs in again)."""
    supervisors: Annotated[frozenset[str], text("a comma-separated list of names", _name_set)] = frozenset()
    """Supervisor accounts allowed to log in, comma-separated; empty: every supervisor account."""
    service_level_seconds: Annotated[float, number(1, 600)] = 20.0
    """The wallboard's and report's service level: calls answered within this many seconds."""
    departments: Annotated[tuple[str, ...], text("a comma-separated list of departments", _names)] = (
        DEFAULT_DEPARTMENTS
    )
    """Departments complaints are forwarded to, comma-separated."""
    display_name: Annotated[str, text("a display-name template", _template)] = DEFAULT_TEMPLATE
    """The softphone's screen-pop display name: {name} {tier_label} {service_label} {tier} {service} {phone}."""
    wrap_up_codes: Annotated[tuple[str, ...], text("a comma-separated list of codes", _names)] = DEFAULT_WRAP_UP_CODES
    """Wrap-up codes an agent picks after a call, comma-separated."""
    public_url: Annotated[str, text("a URL", _public_url)] = ""
    """How phones and browsers reach the desk (SIP Call-Info); empty: http://bind:port."""
    cookie_secure: YesNo = True
    """Secure session cookies (browsers accept them on http://127.0.0.1 too); no only for plain-HTTP hosts."""
    login_attempts_per_minute: Annotated[int, whole(1, 1000)] = 5
    """Login attempts a minute per account; four times as many per client address."""
    poll_ms: Annotated[int, whole(50, 300)] = 250
    """How often the desk's one watcher asks the CRM for new pops, for all pages at once (ms; 300 or less: in 1 s)."""
    metrics_token: Annotated[str, AfterValidator(_metrics_token)] = ""
    """A bearer token that lets Prometheus read /metrics without a login (32+ characters); empty: supervisors only."""
    agents_hear_own_recordings: YesNo = False
    """An agent may play the recordings of their own calls (never another agent's); supervisors hear all."""
    # where the recorder writes ([recording] directory, relative to sip.conf); files are served from here only
    recording_directory: Annotated[Path, GIVEN] = Path("var/recordings")
    """Read from [recording] directory: the desk serves recordings from this folder only."""
    quality: Annotated[QualityConfig, GIVEN] = field(default_factory=lambda: QualityConfig())
    """Read from the [quality] section: the QA evaluation form and the review sample."""
    browser_phone: Annotated[BrowserPhoneConfig, GIVEN] = field(default_factory=lambda: BrowserPhoneConfig())
    """Read from [browser_phone]: where the desk page's phone registers and the key of its credentials."""

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.bind}:{self.port}"

    def agent(self, number: str) -> DeskAgent | None:
        return next((a for a in self.agents if a.number == number), None)


DESK_KEYS = known_keys(DeskConfig)
QUALITY_KEYS = known_keys(QualityConfig)


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
            phone = parser.get(section, "phone", fallback="sip").strip().lower()
            if phone not in PHONE_KINDS:
                raise conf.error(section, "phone", f"choose {', '.join(PHONE_KINDS)}")
            answer = parser.get(section, "auto_answer", fallback="no").strip().lower() in ("yes", "true", "on", "1")
            agents.append(DeskAgent(section, group, name.strip(), secret.strip(), phone, answer))
    return tuple(agents)


def load_desk_config(path: Path) -> DeskConfig:
    """Read the desk's settings from sip.conf; raise ConfigError naming file:line, key and reason."""
    conf = SipConf.read(path)
    agents = _agents(conf)
    general = conf.section("general", GeneralConfig, only=("timezone", "status_file"))
    browser_phone = conf.section("browser_phone", BrowserPhoneConfig)
    seat = next((a for a in agents if a.browser_phone), None)
    if seat is not None:  # as the IVR checks: without these the page could not register
        for key in ("ws_url", "token_secret"):
            if not getattr(browser_phone, key):
                raise conf.error("browser_phone", key, f"missing; agent {seat.number} has phone = {seat.phone}")
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
        recording_directory=_recording_directory(conf),
        quality=conf.section("quality", QualityConfig),
        monitoring_phones=conf.section("monitoring", MonitoringConfig, only=("supervisors",)).supervisors,
        browser_phone=browser_phone,
    )


def _recording_directory(conf: SipConf) -> Path:
    """`[recording] directory` (the recorder's setting, checked by the IVR), relative to sip.conf like its paths."""
    raw = conf.parser.get("recording", "directory", fallback="").strip() or "var/recordings"
    return conf.path.parent / raw
