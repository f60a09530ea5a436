"""Webhook push of finished calls to a real HTTP receiver on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from crm_bridge.models import WebhookDeadLetter, WebhookDelivery
from crm_bridge.outbox import Outbox
from crm_bridge.settings import WebhookConfig
from crm_bridge.webhook import WebhookPusher, retry_dead_letters, sign, verify
from crm_bridge.writer import CrmWriter
from tests.conftest import free_port
from tests.test_crm import WriterFactory, call_records, db, make_writer, wait_until  # noqa: F401  (fixtures)

SECRET = "s3cret-shared-with-the-crm"


class Receiver:
    """A stand-in for the external CRM: checks signatures, can be told to fail."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hotline/calls"
        self.fail_next = 0
        self.bodies: list[dict] = []
        self.deliveries: list[str] = []
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                if not verify(SECRET, headers, body):
                    receiver.bad_signatures += 1
                    self.send_response(401)
                elif receiver.fail_next > 0:
                    receiver.fail_next -= 1
                    self.send_response(500)
                else:
                    receiver.bodies.append(json.loads(body))
                    receiver.deliveries.append(headers["x-hotline-delivery"])
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    yield r
    r.stop()


def hook(url: str, **kw: float) -> WebhookConfig:
    return WebhookConfig(url=url, secret=SECRET, backoff_seconds=0.1, backoff_max_seconds=0.5, timeout_seconds=2, **kw)  # type: ignore[arg-type]


def test_a_finished_call_is_pushed_signed_and_retried_until_accepted(db: Engine, receiver: Receiver, tmp_path: Path,  # noqa: F811
                                                                     make_writer: WriterFactory) -> None:  # noqa: F811
    receiver.fail_next = 2  # the CRM answers 500 twice, then takes it
    pusher = WebhookPusher(db, hook(receiver.url))
    # the writer (thread or process) wakes the pusher when it commits a delivery: without that, 30 s
    writer = make_writer(db, Outbox(tmp_path / "outbox"), webhook=True, on_deliveries=pusher.wake)
    writer.start()
    pusher.start()
    records = call_records("hook-1")
    for record in records[:4]:  # in progress: nothing is pushed yet
        writer.submit(record)
    for record in records[4:]:
        writer.submit(record)
    wait_until(lambda: receiver.bodies, timeout=20)
    writer.close()
    pusher.close()
    (body,) = receiver.bodies
    assert body["type"] == "call.finished"
    assert body["call"]["sip_call_id"] == "hook-1"
    assert body["call"]["outcome"] == "silent" and body["call"]["silent_attempts"] == 3
    assert [e["kind"] for e in body["events"]] == ["invited", "answered", "ended"]
    assert receiver.bad_signatures == 0
    with Session(db) as s:
        d = s.scalars(select(WebhookDelivery)).one()
        assert d.delivered_at is not None and d.attempts == 3
    assert (pusher.delivered, pusher.dead) == (1, 0)  # the counts the IVR logs when it stops


def test_a_push_that_never_gets_through_is_dead_lettered_and_can_be_requeued(db: Engine, tmp_path: Path) -> None:  # noqa: F811
    port = free_port()  # nothing listens here yet
    pusher = WebhookPusher(db, hook(f"http://127.0.0.1:{port}/calls", max_attempts=3))
    writer = CrmWriter(db, Outbox(tmp_path / "outbox"), webhook=True, on_deliveries=pusher.wake)
    writer.start()
    pusher.start()
    for record in call_records("hook-dead"):
        writer.submit(record)

    def dead() -> int:
        with Session(db) as s:
            return s.scalar(select(func.count(WebhookDeadLetter.id))) or 0

    wait_until(lambda: dead() == 1, timeout=20)
    with Session(db) as s:
        letter = s.scalars(select(WebhookDeadLetter)).one()
        assert letter.attempts == 3 and "ConnectError" in (letter.last_error or "")
        assert s.scalar(select(func.count(WebhookDelivery.id))) == 0

    receiver = Receiver(port)  # the CRM is back; ops re-queue the dead letter
    try:
        assert retry_dead_letters(db) == 1
        pusher.wake()
        wait_until(lambda: receiver.bodies, timeout=20)
        assert receiver.bodies[0]["call"]["sip_call_id"] == "hook-dead"
        assert dead() == 0
        assert (pusher.delivered, pusher.dead) == (1, 1)
    finally:
        writer.close()
        pusher.close()
        receiver.stop()


def test_a_tampered_or_stale_push_fails_verification() -> None:
    body = b'{"type":"call.finished"}'
    now = int(time.time())
    good = {"x-hotline-timestamp": str(now), "x-hotline-signature": sign(SECRET, now, body)}
    assert verify(SECRET, good, body)
    assert not verify(SECRET, good, body + b" ")
    assert not verify("another-secret-entirely", good, body)
    old = now - 3600
    assert not verify(SECRET, {"x-hotline-timestamp": str(old), "x-hotline-signature": sign(SECRET, old, body)}, body)
