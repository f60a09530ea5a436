"""The sections about agents' seats: the agent peers (`type = agent`), live monitoring, recording,
and the browser phone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import AfterValidator, Field, model_validator
from pydantic.dataclasses import dataclass as section_model

from ivr.callflow import RecordingRule
from ivr.config import keys
from ivr.config.keys import DIGEST_POLICIES, PHONE_KINDS
from ivr.service import SEAT_GROUPS
from ivr.sipconf import (
    GIVEN,
    SECTION,
    FilePath,
    SettingError,
    YesNo,
    choice,
    text,
    whole,
)


@section_model(config=SECTION, slots=True)
class AgentConfig:
    """An agent peer: `[801]` with `type = agent`."""

    number: Annotated[str, GIVEN]  # the section's name
    """The agent's seat number: the section's name, e.g. [801] (callers hear "801号客服")."""
    seat_group: Annotated[
        str,
        choice(SEAT_GROUPS, "a seat group"),
        Field(description=f"every agent belongs to one of {', '.join(SEAT_GROUPS)}"),
    ]
    """The agent's seat group: senior (高级坐席组), middle (中级坐席组) or junior (初级坐席组)."""
    secret: str = ""
    """Digest password the softphone registers with; also the agent's first desk password."""
    host: Annotated[tuple[str, int] | None, text("a host", keys.agent_host)] = None
    """dynamic: the softphone REGISTERs; or IP:port of a phone that is always logged in."""
    name: str = ""
    """The agent's name, shown in the CRM, the logs and the screen-pop."""
    digest: Annotated[str, choice(DIGEST_POLICIES, "a policy")] = "strict"
    """Phone's digest: strict (RFC 7616), md5 (MD5 only: baresip 1.0.0), legacy (RFC 2069 too: pyVoIP 1.6.8)."""
    phone: Annotated[str, choice(PHONE_KINDS, "a phone")] = "sip"
    """sip: a SIP phone; browser: the desk page is the phone ([browser_phone]); both: either may register."""
    auto_answer: YesNo = False
    """The desk's browser phone answers an offered call by itself (no 接听 click)."""
    srtp: Annotated[str, choice(("off", "optional", "required"), "an SRTP mode", "choose off, optional or required",
                                any_case=True)] = "off"
    """The agent leg's media: off (plain RTP/AVP), optional (offer RTP/SAVP with SDES keys, take plain), required."""

    @property
    def browser_phone(self) -> bool:
        return self.phone in ("browser", "both")

    @property
    def digest_policy(self) -> str:
        """The registrar's policy: JsSIP answers MD5 challenges only, so a browser seat is never offered SHA-256."""
        return "md5" if self.browser_phone and self.digest == "strict" else self.digest

    @model_validator(mode="after")
    def _registering_phone_authenticates(self) -> Self:
        if self.host is None and not self.secret:
            raise SettingError("secret", "missing; a softphone that registers (host = dynamic) must authenticate")
        return self


@section_model(config=SECTION, slots=True)
class MonitoringConfig:
    """`[monitoring]`: supervisors listening to, coaching (whisper) or joining (barge) agents' calls."""

    supervisors: Annotated[
        frozenset[str], text("a comma-separated list of agent numbers", keys.supervisors)
    ] = frozenset()
    """Agent numbers (registered accounts) allowed to monitor; empty: nobody may."""
    listen_prefix: Annotated[str, text("a feature-code prefix", keys.prefix)] = "*222"
    """Dialled before an agent's number (*222801): listen to that agent's call, heard by nobody."""
    whisper_prefix: Annotated[str, text("a feature-code prefix", keys.prefix)] = "*223"
    """Dialled before an agent's number: speak to the agent alone (coaching); the caller does not hear."""
    barge_prefix: Annotated[str, text("a feature-code prefix", keys.prefix)] = "*224"
    """Dialled before an agent's number: join the call, caller and agent both hear the supervisor."""
    beep: YesNo = False
    """Play the agent a short beep when a supervisor starts monitoring (the caller never hears it)."""

    @model_validator(mode="after")
    def _distinct_prefixes(self) -> Self:
        prefixes = (self.listen_prefix, self.whisper_prefix, self.barge_prefix)
        for name, prefix in zip(("listen_prefix", "whisper_prefix", "barge_prefix"), prefixes, strict=True):
            if any(other != prefix and other.startswith(prefix) for other in prefixes) or prefixes.count(prefix) > 1:
                raise SettingError(name, "the three prefixes must differ and none may begin another")
        return self


RECORDING_FORMATS = ("wav-pcm16", "wav-alaw", "wav-ulaw", "flac")  # ivr.recording writes each


@section_model(config=SECTION, slots=True)
class RecordingConfig:
    """`[recording]`: bridged calls recorded in stereo (caller left, agent right) by ivr.recording."""

    enabled: YesNo = True
    """Record bridged calls (the conversation with the agent only, never prompts or hold music)."""
    seat_groups: Annotated[frozenset[str], text("a list of seat groups", keys.seat_groups)] = frozenset()
    """Record only calls answered by these seat groups (comma-separated); empty: every group."""
    services: Annotated[frozenset[str], text("a list of services", keys.services)] = frozenset()
    """Record only calls for these services (comma-separated, e.g. complaint); empty: every service."""
    directory: FilePath = Field(default=Path("var/recordings"), validate_default=True)
    """Where the files go, as YYYY/MM/DD/<time>-<hash of the Call-ID>-<n>.<ext> (UTC dates)."""
    format: Annotated[str, choice(RECORDING_FORMATS, "a recording format")] = "wav-pcm16"
    """wav-pcm16 (32 kB/s), wav-alaw or wav-ulaw (G.711, 16 kB/s), or flac (lossless, smaller)."""
    retention_days: Annotated[int, whole(1, 3650)] = 90
    """Days a recording is kept before `python -m crm_bridge retention` deletes it (open complaints: kept)."""
    announce: YesNo = True
    """Tell the caller "为了提高服务质量,您的通话可能会被录音" before a recorded call's agent is put through."""
    pause_code: Annotated[str, text("a feature code like *48", keys.feature_code)] = "*48"
    """Keys the agent presses on the phone during the call to pause the recording, and again to resume."""

    def rule(self) -> RecordingRule:
        return RecordingRule(self.enabled, self.seat_groups, self.services, self.announce)


@section_model(config=SECTION, slots=True)
class BrowserPhoneConfig:
    """`[browser_phone]`: the desk page as the agent's phone (JsSIP over SIP WebSocket), read by IVR and desk."""

    ws_url: Annotated[str, text("a ws:// or wss:// URL", keys.ws_url)] = ""
    """The SIP WebSocket URL browsers register to (wss:// unless on loopback), as the browser reaches it."""
    token_secret: Annotated[str, AfterValidator(keys.token_secret)] = ""
    """32+ random characters shared by desk and IVR: sign the short-lived credentials the desk hands the page."""
    credential_seconds: Annotated[int, whole(300, 86_400)] = 3600
    """How long a credential handed to the page works; the page fetches a fresh one before then."""
