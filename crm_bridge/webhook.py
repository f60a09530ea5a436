"""Push each finished call to an external CRM over HTTP (optional, `[webhook]`).

Deliveries are rows in `webhook_deliveries`, written by the CRM writer in the
same transaction as the call's last record, so a push is never lost to a
crash and never sent for a call the CRM doesn't have. A pusher thread POSTs
each due delivery as JSON and signs it:

    X-Hotline-Delivery:  the delivery id (receivers de-duplicate on it)
    X-Hotline-Timestamp: Unix seconds when it was signed
    X-Hotline-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the shared secret>

A 2xx answer marks it delivered. Anything else (an error status, a timeout,
a refused connection) schedules another attempt after an exponential backoff;
after `max_attempts` the delivery moves to `webhook_dead_letters`, where ops
see it (`python -m crm_bridge webhook-dead`) and re-queue it
(`python -m crm_bridge webhook-retry`).
"""

from __future__ import annotations

import hashlib
import hmac
import random
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import structlog
from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from crm_bridge.models import WebhookDeadLetter, WebhookDelivery
from crm_bridge.settings import WebhookConfig

log = structlog.get_logger(__name__)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(secret: str, headers: dict[str, str], body: bytes, *, tolerance_s: int = 300) -> bool:
    """What a receiver does (and the tests do): check the signature and the timestamp's age."""
    try:
        timestamp = int(headers["x-hotline-timestamp"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), headers.get("x-hotline-signature", ""))


class WebhookPusher:
    """Sends due deliveries, one thread, one HTTP connection pool."""

    def __init__(self, engine: Engine, config: WebhookConfig, *, batch: int = 50) -> None:
        assert config.url, "WebhookPusher needs [webhook] url"
        self.engine = engine
        self.config = config
        self.batch = batch
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crm-webhook", daemon=True)
        self.delivered = 0
        self.dead = 0

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """New deliveries were committed (called from the writer thread)."""
        self._wake.set()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt `attempts + 1`: exponential, capped, with ±20 % jitter."""
        base = min(self.config.backoff_max_seconds, self.config.backoff_seconds * 2 ** (attempts - 1))
        return float(base * random.uniform(0.8, 1.2))

    # --- thread ---------------------------------------------------------------------

    def _run(self) -> None:
        with httpx.Client(timeout=self.config.timeout_seconds, headers={"User-Agent": "hotline-ivr-webhook"}) as client:
            while not self._stop.is_set():
                try:
                    wait = self._push_due(client)
                except SQLAlchemyError as exc:  # the CRM database is down: the writer logs it too
                    log.warning("webhook_db_unavailable", error=str(exc).splitlines()[0][:200])
                    wait = 5.0
                self._wake.wait(wait)
                self._wake.clear()

    def _push_due(self, client: httpx.Client) -> float:
        """Push what is due; returns seconds until the next one is."""
        now = datetime.now(UTC)
        with Session(self.engine) as s:
            due = s.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.delivered_at.is_(None), WebhookDelivery.next_attempt_at <= now)
                .order_by(WebhookDelivery.id)
                .limit(self.batch)
            ).all()
            for delivery in due:
                if self._stop.is_set():
                    break
                self._attempt(s, client, delivery)
                s.commit()
            upcoming = s.scalar(
                select(WebhookDelivery.next_attempt_at)
                .where(WebhookDelivery.delivered_at.is_(None))
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(1)
            )
        if len(due) == self.batch:
            return 0.0
        if upcoming is None:
            return 30.0
        if upcoming.tzinfo is None:  # SQLite returns naive UTC
            upcoming = upcoming.replace(tzinfo=UTC)
        return max(0.0, min(30.0, (upcoming - datetime.now(UTC)).total_seconds()))

    def _attempt(self, s: Session, client: httpx.Client, d: WebhookDelivery) -> None:
        body = d.payload.encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "X-Hotline-Delivery": str(d.id),
            "X-Hotline-Timestamp": str(timestamp),
            "X-Hotline-Signature": sign(self.config.secret, timestamp, body),
        }
        assert self.config.url
        error = None
        try:
            answer = client.post(self.config.url, content=body, headers=headers)
            if not answer.is_success:
                error = f"HTTP {answer.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        d.attempts += 1
        now = datetime.now(UTC)
        if error is None:
            d.delivered_at = now
            d.last_error = None
            self.delivered += 1
            log.info("webhook_delivered", call_id=d.sip_call_id, delivery=d.id, attempts=d.attempts)
            return
        d.last_error = error[:500]
        if d.attempts >= self.config.max_attempts:
            s.add(WebhookDeadLetter(
                sip_call_id=d.sip_call_id, payload=d.payload, created_at=d.created_at, failed_at=now,
                attempts=d.attempts, last_error=d.last_error,
            ))
            s.delete(d)
            self.dead += 1
            log.error("webhook_dead_letter", call_id=d.sip_call_id, delivery=d.id, attempts=d.attempts,
                      error=d.last_error)
            return
        wait = self.backoff(d.attempts)
        d.next_attempt_at = now + timedelta(seconds=wait)
        log.warning("webhook_retry", call_id=d.sip_call_id, delivery=d.id, attempts=d.attempts,
                    wait_s=round(wait, 1), error=d.last_error)


def retry_dead_letters(engine: Engine, sip_call_id: str | None = None) -> int:
    """Move dead letters (all, or one call's) back to the delivery queue; returns how many."""
    now = datetime.now(UTC)
    with Session(engine) as s, s.begin():
        query = select(WebhookDeadLetter)
        if sip_call_id is not None:
            query = query.where(WebhookDeadLetter.sip_call_id == sip_call_id)
        dead = s.scalars(query).all()
        for d in dead:
            s.add(WebhookDelivery(sip_call_id=d.sip_call_id, payload=d.payload, created_at=d.created_at,
                                  next_attempt_at=now))
        if dead:
            s.execute(delete(WebhookDeadLetter).where(WebhookDeadLetter.id.in_([d.id for d in dead])))
    return len(dead)
