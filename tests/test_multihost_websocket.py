"""Browser agents behind Kamailio: SIP over the balancer's WebSocket, media straight to the worker.

The two-worker layout of tests/multihost.py with `websocket=True`: Kamailio on
the balancer host holds the browsers' WebSockets (loadtest/kamailio/kamailio.cfg
with WITH_WEBSOCKET), and the workers' one agent, [823], is a browser played by
aiortc (tests/browser_agent.py) on the agents host. What must hold:

- the REGISTER reaches a worker with Kamailio's Path (RFC 3327): its 200 OK
  gives that Path back (the browser said `Supported: path`), and the shared
  agents table keeps it, so either worker can ring the browser;
- two callers through the balancer, one to each worker (round-robin), so one
  of them is the worker that did NOT take the REGISTER: each INVITE reaches
  the browser down its WebSocket, Record-Routed by the balancer (a `ws` and a
  UDP entry), with the registered Contact as Request-URI and the worker's own
  address in its ICE candidate; the browser answers, talks, and hangs up
  through that route set;
- audio both ways: the browser hears the caller's speech, the caller hears the
  browser's tone, and every media packet at the agents host goes between it
  and a worker, none from or to the balancer (it relays signalling only);
- when the browser closes its WebSocket, Kamailio's un-REGISTER logs the agent
  out within a second or two on the database every worker reads.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from aiortp.codecs import get_codec

from tests.audio import strength
from tests.conftest import PROMPT_CACHE
from tests.multihost import (
    BROWSER_AGENT,
    WS_AUTH_FAILURES,
    WS_ORIGIN,
    WS_PORT,
    Layout,
    LayoutUnavailable,
    browser_events,
    ip_of,
    psql,
    read_capture,
    running_layout,
    sip_messages,
    start_browser_agent,
    start_callers,
    start_sniffer,
    stop_group,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.usefixtures("namespaces_alone")]
BROWSER_HZ = 1500.0
REQUEUED_WITHIN_S = 3.0  # a caller ringing a browser that vanished, on the worker that did not take the REGISTER
UNAVAILABLE_WITHIN_S = 2.0  # from the WebSocket's close to `logged_out` in the shared table (measured: 0.06 s)


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[Layout]:
    try:
        with running_layout(tmp_path / "layout", PROMPT_CACHE, websocket=True) as running:
            yield running
    except LayoutUnavailable as exc:
        pytest.skip(f"multi-host layout unavailable: {exc}")


def agent_row(layout: Layout) -> list[str]:
    [row] = psql(layout.hosts["db"], f"SELECT state, coalesce(contact_path, ''), coalesce(contact_host, '') "
                                     f"FROM agents WHERE number = '{BROWSER_AGENT}'")
    return row


def watch_logout(layout: Layout, seen: list[float]) -> None:
    """Poll the shared agents table until the browser agent is logged out; `seen` gets the wall-clock time."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if agent_row(layout)[0] == "logged_out":
            seen.append(time.time())
            return
        time.sleep(0.05)


def wait_event(layout: Layout, event: str, seconds: float, browser: subprocess.Popen[bytes]) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = [e for e in browser_events(layout.state) if e["event"] == event]
        if found:
            return found[-1]
        if browser.poll() is not None and browser.returncode != 0:
            break
        time.sleep(0.1)
    raise AssertionError(f"browser: no {event} in {seconds} s\n{(layout.state / 'browser.log').read_text()[-3000:]}")


def test_a_browser_agent_behind_kamailio_is_rung_by_either_worker_talks_directly_and_leaves_when_its_websocket_closes(
        layout: Layout) -> None:
    hosts, state = layout.hosts, layout.state
    balancer, agents_ip = ip_of("balancer"), ip_of("agents")
    workers = {ip_of("worker1"): "ivr-1", ip_of("worker2"): "ivr-2"}
    caller_cap, agents_cap = state / "caller.cap", state / "agents.cap"
    sniffers = [start_sniffer(hosts["caller"], caller_cap), start_sniffer(hosts["agents"], agents_cap)]
    browser = start_browser_agent(hosts["agents"], state, calls=2, talk_s=8.0, linger_s=1.0)
    seen: list[float] = []
    try:
        registered = wait_event(layout, "registered", 20, browser)
        assert registered["status"].startswith("SIP/2.0 200"), registered
        # RFC 3327 §5.3: the stored Path back to a UA that supports it: the balancer, and the browser's connection
        [path] = registered["path"]
        assert re.fullmatch(rf"<sip:{re.escape(balancer)}(:5060)?;lr;received=sip:{re.escape(agents_ip)}:"
                            rf"{registered['port']}%3Btransport%3Dws>", path), path
        deadline = time.monotonic() + 5
        while agent_row(layout)[0] != "available" and time.monotonic() < deadline:
            time.sleep(0.2)
        state_now, stored_path, contact_host = agent_row(layout)
        assert (state_now, stored_path, contact_host) == ("available", path, balancer), "every worker reads it"
        took_register = {w for w, name in workers.items()
                         if f"event='agent_registered' agent='{BROWSER_AGENT}'" in
                         (state / f"worker{name[-1]}" / "ivr.log").read_text()}
        assert len(took_register) == 1, took_register

        # from now on the agent is logged in (available, ringing or talking) until its WebSocket closes
        watcher = threading.Thread(target=watch_logout, args=(layout, seen), daemon=True)
        watcher.start()
        # one caller after the other, so each is bridged while it speaks; round-robin: one per worker
        for n in (1, 2):
            callers = start_callers(hosts["caller"], state, calls=1, name=f"caller{n}")
            assert callers.wait(90) == 0, (state / f"caller{n}.err").read_text(errors="replace")[-2000:]
        assert browser.wait(30) == 0, (state / "browser.log").read_text()[-3000:]
        watcher.join(20)
        time.sleep(0.5)
    finally:
        stop_group(browser)
        for proc in sniffers:
            stop_group(proc)
    events = browser_events(state)

    # --- the INVITEs: down the browser's WebSocket through the balancer, from both workers ---
    invites = [e for e in events if e["event"] == "invite"]
    assert len(invites) == 2
    rung_by = set()
    for invite in invites:
        assert invite["request_line"] == f"INVITE {registered['contact']} SIP/2.0", "the registered Contact"
        assert re.match(rf"SIP/2.0/WS +{re.escape(balancer)}:8088;", invite["via"][0]), invite["via"]
        worker = re.search(r"SIP/2.0/UDP ([\d.]+):5060", ", ".join(invite["via"][1:])).group(1)  # type: ignore[union-attr]
        rung_by.add(worker)
        routes = ", ".join(invite["record_route"])
        assert f"sip:{balancer}:" in routes and "transport=ws" in routes, "Record-Routed, WS side and UDP side"
        assert f"sip:{worker}:5060" in invite["contact"], "in-dialog requests go to the worker itself via the route"
        assert re.search(rf"a=candidate:\S+ 1 udp \d+ {re.escape(worker)} \d+ typ host", invite["offer"]), \
            "the worker's own address for media, untouched by the balancer"
    assert rung_by == set(workers), "one call from each worker"
    assert rung_by - took_register, "the worker that did not take the REGISTER rang the browser too"

    # --- audio both ways, media straight between the agents host and the workers ---
    hung_up = [e for e in events if e["event"] == "hung_up"]
    assert len(hung_up) == 2
    for call in hung_up:
        assert call["loud_frames"] >= 50, f"the browser heard the caller's speech: {call}"
    at_agents = read_capture(agents_cap)
    media = [d for d in at_agents if not d.is_sip]
    assert not [d for d in media if balancer in (d.src, d.dst)], "no media through the balancer"
    sent = Counter(d.src for d in media if d.dst == agents_ip)
    got = Counter(d.dst for d in media if d.src == agents_ip)
    for worker in workers:
        assert sent[worker] >= 150 and got[worker] >= 150, (worker, sent, got)  # SRTP at 50/s over 8 s, and ICE
    alaw = get_codec(8)
    for worker in workers:
        heard = [np.frombuffer(alaw.decode(d.rtp_payload[1]), "<i2") for d in read_capture(caller_cap)
                 if d.src == worker and d.dst == ip_of("caller") and d.rtp_payload and d.rtp_payload[0] == 8]
        samples = np.concatenate(heard) if heard else np.zeros(1, np.int16)
        assert strength(samples, BROWSER_HZ) > 0.02, f"the caller heard the browser's tone via {worker}"

    # --- the browser closes its WebSocket: the agent is gone within seconds, for every worker ---
    closed = next(e for e in events if e["event"] == "closing")["t"]  # just before it sent its close frame
    assert seen, agent_row(layout)
    out_at = seen[0]
    assert agent_row(layout)[1:] == ["", ""], "the Path and contact gone with the binding"
    logs = "".join((state / f"worker{n}" / "ivr.log").read_text() for n in (1, 2))
    line = re.search(rf"timestamp='([^']+)' level='info' event='agent_unregistered' agent='{BROWSER_AGENT}' "
                     rf"reason=\"proxy's connection closed\"", logs)
    assert line, logs[-3000:]
    unregistered = datetime.fromisoformat(line.group(1).replace("Z", "+00:00")).timestamp()
    # the worker's log says when it logged the agent out; the table is polled every 50 ms or so (a psql each)
    print(f"websocket closed -> worker logged the agent out after {unregistered - closed:.3f} s, "
          f"logged_out in the shared table seen after {out_at - closed:.2f} s")
    assert 0 <= unregistered - closed < UNAVAILABLE_WITHIN_S
    assert out_at - closed < UNAVAILABLE_WITHIN_S
    assert "browser_gone" in (state / "kamailio.log").read_text()
    rows = psql(hosts["db"], "SELECT outcome, agent_number, ivr_worker FROM calls ORDER BY ivr_worker")
    assert [(r[0], r[1], r[2]) for r in rows] == [("completed", BROWSER_AGENT, "ivr-1"),
                                                  ("completed", BROWSER_AGENT, "ivr-2")], rows
    assert sip_messages(read_capture(caller_cap)), "the callers' SIP went over the layout"


def test_a_foreign_page_is_refused_and_a_browser_that_vanishes_while_ringing_sends_its_caller_back_to_the_queue(
        layout: Layout) -> None:
    hosts, state = layout.hosts, layout.state
    handshake = ("import sys; from websockets.sync.client import connect; from websockets.exceptions import InvalidStatus\n"
                 "try:\n    connect(sys.argv[1], subprotocols=['sip'], origin=sys.argv[2], open_timeout=5).close()\n"
                 "except InvalidStatus as e:\n    print(e.response.status_code)\nelse:\n    print('open')\n")
    url = f"ws://{ip_of('balancer')}:{WS_PORT}/"
    foreign = hosts["agents"].run(sys.executable, "-c", handshake, url, "https://evil.example.net")
    assert foreign.stdout.strip() == "403", foreign.stderr
    assert hosts["agents"].run(sys.executable, "-c", handshake, url, WS_ORIGIN).stdout.strip() == "open"
    # a host that keeps trying from foreign pages is barred, even with the right Origin; the others are not
    for _ in range(WS_AUTH_FAILURES):
        assert hosts["caller"].run(sys.executable, "-c", handshake, url, "https://evil.example.net").stdout.strip() == "403"
    assert hosts["caller"].run(sys.executable, "-c", handshake, url, WS_ORIGIN).stdout.strip() == "403"
    assert f"auth_banned source {ip_of('caller')}" in (state / "kamailio.log").read_text()
    assert hosts["agents"].run(sys.executable, "-c", handshake, url, WS_ORIGIN).stdout.strip() == "open"

    browser = start_browser_agent(hosts["agents"], state, calls=1, vanish=True)
    callers = None
    try:
        assert wait_event(layout, "registered", 20, browser)["status"].startswith("SIP/2.0 200")
        deadline = time.monotonic() + 5
        while agent_row(layout)[0] != "available" and time.monotonic() < deadline:
            time.sleep(0.2)
        callers = start_callers(hosts["caller"], state, calls=1, name="requeued")
        vanished = wait_event(layout, "vanishing", 60, browser)["t"]
        browser.wait(10)
        seen: list[float] = []
        watch_logout(layout, seen)
        # the shared table says logged_out once the worker ringing it has given the caller back (below)
        assert seen and seen[0] - vanished < REQUEUED_WITHIN_S, (seen, vanished, agent_row(layout))
        logs = "".join((state / f"worker{n}" / "ivr.log").read_text() for n in (1, 2))
        # the caller that rang there is back at the head of its queue, not left ringing a page that is gone: at
        # once on the worker that took the REGISTER, at its next look at the shared table (1 s) on the other
        requeued = re.search(rf"timestamp='([^']+)' level='info' event='agent_not_answering'[^\n]*"
                             rf"agent='{BROWSER_AGENT}' reason='(connection closed|unregistered)'", logs)
        assert requeued, logs[-3000:]
        back = datetime.fromisoformat(requeued.group(1).replace("Z", "+00:00")).timestamp()
        assert back - vanished < REQUEUED_WITHIN_S, "not at the end of the ring time (15 s)"
        assert f"event='agent_unregistered' agent='{BROWSER_AGENT}' reason=\"proxy's connection closed\"" in logs
        assert "browser_gone" in (state / "kamailio.log").read_text()
        print(f"browser killed while ringing -> caller requeued after {back - vanished:.2f} s ({requeued.group(2)}), "
              f"logged_out in the shared table seen after {seen[0] - vanished:.2f} s")
    finally:
        if callers is not None:
            stop_group(callers)
        stop_group(browser)
