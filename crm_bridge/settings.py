"""Settings of the CRM side that sip.conf carries (`[webhook]`), read by `ivr.config` into this type."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """Push of each finished call to an external CRM (`[webhook]`); off without a url."""

    url: str | None = None
    secret: str = ""
    max_attempts: int = 8
    timeout_seconds: float = 5.0
    backoff_seconds: float = 2.0
    backoff_max_seconds: float = 600.0
