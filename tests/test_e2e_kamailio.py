"""Two IVR workers behind Kamailio's dispatcher, one CRM in PostgreSQL, on loopback.

The layout of loadtest/kamailio/: calls spread over the workers round-robin;
a worker that drains (SIGTERM) leaves the rotation and calls keep succeeding
on the other; every call has its row in the shared CRM. The balancer's limits
follow the workers: a busy worker answers OPTIONS with 503 and leaves the
rotation, and twice what the workers carry is refused at the edge, none lost.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from .conftest import ROOT, IvrProcess, free_port, sipp, start_ivr, write_ivr_config
from .sip_text import digest_authorization, header
from .test_e2e_faults import outcomes
from .test_e2e_routing import softphone_agent, wait_line
from .test_e2e_sip import finished

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"


def start_workers(tmp_path: Path, pg_url: str, extra: str = "", general: str = "") -> list[IvrProcess]:
    started = []
    for n in (1, 2):
        home = tmp_path / f"worker{n}"
        home.mkdir()
        port = free_port()
        conf = write_ivr_config(home, sip_port=port, db_url=pg_url, general=general,
                                extra=f"[limits]\ntrusted = 127.0.0.1\n{extra.format(n=n)}")
        started.append(start_ivr(home, conf, port, pg_url))
    return started


@pytest.fixture
def worker_settings() -> str:
    return ""


@pytest.fixture
def worker_general() -> str:
    return ""  # lines for each worker's [general]


@pytest.fixture
def workers(tmp_path: Path, pg_url: str, worker_settings: str, worker_general: str) -> Iterator[list[IvrProcess]]:
    started = start_workers(tmp_path, pg_url, worker_settings, worker_general)
    yield started
    for ivr in started:
        ivr.stop()


@pytest.fixture
def max_cps() -> int:
    return 1200  # kamailio.cfg's default


@pytest.fixture
def kamailio_defines() -> tuple[str, ...]:
    return ()  # more -A NAME=value for kamailio.cfg


@pytest.fixture
def balancer(tmp_path: Path, workers: list[IvrProcess], max_cps: int, kamailio_defines: tuple[str, ...]) -> Iterator[int]:
    if not os.path.exists(KAMAILIO):
        if os.environ.get("CI"):
            pytest.fail("kamailio not installed: scripts/bootstrap.sh installs Debian's kamailio")
        pytest.skip("kamailio not installed (scripts/bootstrap.sh installs it)")
    port = free_port()
    dslist = tmp_path / "dispatcher.list"
    dslist.write_text("".join(f"1 sip:127.0.0.1:{w.port}\n" for w in workers))
    log = open(tmp_path / "kamailio.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [KAMAILIO, "-DD", "-E", "-f", str(ROOT / "loadtest" / "kamailio" / "kamailio.cfg"), "-L", MODULES,
         "-A", f"LISTEN=udp:127.0.0.1:{port}", "-A", f'DSLIST="{dslist}"', "-A", f"MAX_CPS={max_cps}",
         *(arg for define in kamailio_defines for arg in ("-A", define)), "-P", str(tmp_path / "kamailio.pid")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    time.sleep(3)  # up, and a first OPTIONS round to the workers
    assert proc.poll() is None, (tmp_path / "kamailio.log").read_text()
    yield port
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(10)


def invited(ivr: IvrProcess) -> int:
    return len(re.findall(r"event='invited'", ivr.log()))


def test_calls_spread_over_two_workers_and_survive_one_draining(workers, balancer, pg_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first, second = workers
    finished(sipp(tmp_path, "short_call", balancer, calls=20, extra=("-d", "1000", "-r", "10")), 60)
    split = (invited(first), invited(second))
    assert sum(split) == 20 and min(split) >= 5, f"round-robin over the two workers: {split}"

    first.proc.send_signal(signal.SIGTERM)  # drains: OPTIONS and INVITEs get 503, then it exits
    assert first.proc.wait(30) == 0
    run = sipp(tmp_path, "short_call", balancer, calls=10, extra=("-d", "1000", "-r", "5"))
    finished(run, 60)
    assert invited(second) == split[1] + 10, "the remaining worker took every new call"
    time.sleep(1.0)
    assert outcomes(pg_url) == Counter({"caller_hangup": 30}), "one CRM, every call in it"


@pytest.mark.parametrize("max_cps", [5])
def test_the_balancer_refuses_new_calls_past_its_limit_with_503_and_loses_none(workers, balancer, pg_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """30 calls in about a second against MAX_CPS = 5: the rest get the balancer's own 503, every call ends."""
    run = sipp(tmp_path, "signalling_call", balancer, calls=30, extra=("-d", "500", "-r", "30"), timeout_s=60)
    finished(run, 90)  # SIPp exits 0 only if each call was answered and hung up, or refused with 503
    relayed = sum(invited(w) for w in workers)
    assert 5 <= relayed <= 12, f"about 5 a second relayed while SIPp sent 30 in ~1 s: {relayed}"
    time.sleep(1.0)
    assert outcomes(pg_url) == Counter({"caller_hangup": relayed}), "every relayed call answered and recorded"
    assert not any(re.search(r"event='overload_refused'", w.log()) for w in workers), "the workers never had to refuse"


AGENT_PORT = free_port()
def sharing(agent: str) -> str:
    """Worker settings (`{n}` is the worker's number) for two workers sharing one agent section."""
    return ("[cluster]\nshared_agents = yes\nworker = ivr-{n}\nsecret = shared-by-both-workers\n"
            "[queues]\nwrap_up_seconds = 0\n[survey]\ntimeout_seconds = 2\n" + agent)


SHARED = sharing(f"[821]\ntype = agent\nseat_group = junior\nhost = 127.0.0.1:{AGENT_PORT}\n")


@pytest.mark.parametrize("worker_settings", [SHARED])
def test_workers_share_one_agent_who_takes_their_calls_one_at_a_time(workers, balancer, pg_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Four callers spread over two workers, one agent: the agent is never rung by both workers at once."""
    agent = sipp(tmp_path, "agent_uas", workers[0].port, calls=4, extra=("-d", "1000", "-p", str(AGENT_PORT)), timeout_s=150)
    callers = sipp(tmp_path, "served_caller", balancer, calls=4, callers="unknown_callers.csv",
                   extra=("-r", "4", "-l", "4"), timeout_s=150)
    finished(callers, 160)
    finished(agent, 30)
    assert [invited(w) for w in workers] == [2, 2], "round-robin: two callers on each worker"

    engine = create_engine(pg_url)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT sip_call_id, outcome, agent_number FROM calls")).all()
        if len(rows) == 4 and all(r.outcome for r in rows):
            break
        time.sleep(0.3)
    assert sorted((r.outcome, r.agent_number) for r in rows) == [("completed", "821")] * 4, rows
    with engine.connect() as conn:
        spans = conn.execute(text(
            "SELECT c.sip_call_id, min(e.at) FILTER (WHERE e.kind = 'agent_rung') AS rung,"
            " max(e.at) FILTER (WHERE e.kind = 'agent_bye') AS bye"
            " FROM calls c JOIN call_events e ON e.call_id = c.id GROUP BY c.sip_call_id ORDER BY rung"
        )).all()
        agent_row = conn.execute(text("SELECT state, call_id, worker FROM agents WHERE number = '821'")).one()
    engine.dispose()
    for earlier, later in zip(spans, spans[1:], strict=False):
        assert later.rung >= earlier.bye, f"the agent was rung for {later.sip_call_id} while still on {earlier.sip_call_id}"
    assert tuple(agent_row) == ("available", None, None)
    rung_by = [len(re.findall(r"event='agent_rung'", w.log())) for w in workers]
    assert rung_by == [2, 2], f"each worker rang the shared agent for its own callers: {rung_by}"


REGISTERING = sharing("[822]\ntype = agent\nseat_group = junior\nhost = dynamic\nsecret = pw822\n")


@pytest.mark.parametrize("worker_settings", [REGISTERING])
def test_an_agent_registered_through_the_balancer_serves_callers_of_both_workers(workers, balancer, pg_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    phone = softphone_agent(balancer, "822", "pw822", talk=1, calls=2)
    try:
        assert wait_line(phone, "registered") == "registered 200"
        time.sleep(1.5)  # the binding reaches the database, and the other worker's copy
        callers = sipp(tmp_path, "served_caller", balancer, calls=2, callers="unknown_callers.csv",
                       extra=("-r", "2", "-l", "2"), timeout_s=120)
        finished(callers, 130)
        assert phone.wait(30) == 0
    finally:
        if phone.poll() is None:
            phone.kill()
    assert [invited(w) for w in workers] == [1, 1]
    registered_on = [w for w in workers if "agent_registered" in w.log()]
    assert len(registered_on) == 1, "one REGISTER, one worker"
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT outcome, agent_number FROM calls")).all()
    engine.dispose()
    assert sorted(tuple(r) for r in rows) == [("completed", "822")] * 2, "the worker the phone did not register with used it too"


@pytest.mark.parametrize("worker_settings", [REGISTERING])
def test_pause_on_one_worker_and_resume_on_the_other_through_the_balancer(workers, balancer, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    """*46 and *47 go round-robin to different workers; both act on the one shared agent."""
    engine = create_engine(pg_url)

    def state_becomes(wanted: str) -> str:
        deadline = time.monotonic() + 3
        while True:
            with engine.connect() as conn:
                state = conn.execute(text("SELECT state FROM agents WHERE number = '822'")).scalar()
            if state == wanted or time.monotonic() > deadline:
                return state
            time.sleep(0.1)

    phone = softphone_agent(balancer, "822", "pw822", calls=0, dial=("*46", "*47"), dial_delay=1.5)
    try:
        assert wait_line(phone, "registered") == "registered 200"
        # each answer is sent once the database has the change, so the next code (dialled at once,
        # to the other worker) finds the agent paused there too
        assert wait_line(phone, "dialled") == "dialled *46 480 Agent 822 paused"
        assert wait_line(phone, "dialled") == "dialled *47 480 Agent 822 available"
        assert state_becomes("available") == "available"
        assert phone.wait(20) == 0
    finally:
        if phone.poll() is None:
            phone.kill()
        engine.dispose()
    logs = "".join(w.log() for w in workers)
    assert re.search(r"event='agent_pause' agent='822' state='paused'", logs)
    assert re.search(r"event='agent_resume' agent='822' state='available'", logs)
    handled = [len(re.findall(r"event='agent_(?:pause|resume)'", w.log())) for w in workers]
    assert handled == [1, 1], f"one feature code on each worker: {handled}"


def test_a_worker_reports_its_load_in_its_answer_to_options(workers) -> None:  # type: ignore[no-untyped-def]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        port = sock.getsockname()[1]
        sock.sendto((
            f"OPTIONS sip:127.0.0.1:{workers[0].port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bK-load-probe\r\n"
            f"From: <sip:probe@127.0.0.1:{port}>;tag=p1\r\nTo: <sip:127.0.0.1:{workers[0].port}>\r\n"
            "Call-ID: load-probe-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode(), ("127.0.0.1", workers[0].port))
        answer = sock.recv(4096).decode()
    assert answer.startswith("SIP/2.0 200 ")
    load = re.search(r"^X-Hotline-Load: (\d+)\r$", answer, re.MULTILINE)
    assert load is not None, answer
    assert int(load.group(1)) < 50, "an idle worker is not busy"


# Each worker carries about 4 calls a second: 5 INVITEs a second at most, and 8 calls up at once
# that last about 2 s each (1 s ringing, 1 s talking).
SMALL = "max_invites_per_second = 5\n"


@pytest.mark.parametrize(("worker_settings", "worker_general"), [(SMALL, "max_calls = 8\n")])
def test_twice_the_workers_capacity_is_refused_at_the_edge_and_no_accepted_call_is_lost(workers, balancer, pg_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """About 2x what two workers carry, Kamailio at its default limit: each call is completed or refused with 503."""
    calls = 60
    run = sipp(tmp_path, "signalling_call", balancer, calls=calls, extra=("-d", "1000", "-r", "20", "-l", "60"),
               timeout_s=60)
    # SIPp exits 0 only if each call was answered, acknowledged and hung up, or refused with 503:
    # none accepted by a worker and then failed or left unanswered
    finished(run, 90)
    answered = len(re.findall(r"^answered ", run.logged(), re.MULTILINE))
    assert calls // 4 <= answered < calls, f"the workers took what they could carry, the rest were refused: {answered}"
    deadline = time.monotonic() + 10
    while ((found := outcomes(pg_url)).total() < answered or found["open"]) and time.monotonic() < deadline:
        time.sleep(0.3)  # each call's row, finished (the last ones may still be writing theirs)
    assert outcomes(pg_url) == Counter({"caller_hangup": answered}), "every answered call completed and in the CRM"
    # the workers' OPTIONS answers drove the rotation: a busy worker left it, and came back once idle
    deadline = time.monotonic() + 5
    while "worker_back_in_rotation" not in (kamailio_log := (tmp_path / "kamailio.log").read_text()):
        assert time.monotonic() < deadline, kamailio_log[-3000:]
        time.sleep(0.5)
    assert "worker_out_of_rotation" in kamailio_log, kamailio_log[-3000:]


def test_the_balancer_relays_in_dialog_requests_only_from_or_to_its_workers(workers, balancer) -> None:  # type: ignore[no-untyped-def]
    """Not an open relay: a stranger's in-dialog request to anyone but a worker gets 403 and goes nowhere."""

    def bye(sock: socket.socket, target: str, route: bool, n: int) -> str:
        port = sock.getsockname()[1]
        sock.sendto((
            f"BYE {target} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bK-relay-{n}\r\n"
            + (f"Route: <sip:127.0.0.1:{balancer};lr>\r\n" if route else "")
            + f"From: <sip:stranger@127.0.0.1:{port}>;tag=s{n}\r\nTo: <sip:someone@127.0.0.1>;tag=t{n}\r\n"
            f"Call-ID: relay-{n}\r\nCSeq: 1 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode(), ("127.0.0.1", balancer))
        return sock.recv(4096).decode()

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as victim:
        for s in (stranger, victim):
            s.bind(("127.0.0.1", 0))
            s.settimeout(5)
        elsewhere = f"sip:victim@127.0.0.1:{victim.getsockname()[1]}"
        assert bye(stranger, elsewhere, route=True, n=1).startswith("SIP/2.0 403 ")  # loose-routed
        assert bye(stranger, elsewhere, route=False, n=2).startswith("SIP/2.0 403 ")  # Record-Route ignored
        victim.settimeout(1)
        with pytest.raises(TimeoutError):
            victim.recv(4096)  # nothing was relayed to it
        # to a worker it goes on (a caller's BYE): the worker answers, for a dialog it does not know, 481
        answer = bye(stranger, f"sip:ivr@127.0.0.1:{workers[0].port}", route=True, n=3)
        assert answer.startswith("SIP/2.0 481 "), answer


@pytest.mark.parametrize(("worker_settings", "kamailio_defines"), [(REGISTERING, ("AUTH_FAILURES=3", "AUTH_BAN_SECONDS=5"))])
def test_the_balancer_bars_an_address_that_keeps_failing_logins_though_the_workers_trust_it(  # type: ignore[no-untyped-def]
        workers, balancer, tmp_path: Path) -> None:
    """The workers see only the balancer (trusted, never banned): the balancer counts each 403 against the phone."""
    uri = f"sip:127.0.0.1:{balancer}"

    def register(sock: socket.socket, n: int, authorization: str = "") -> str:
        port = sock.getsockname()[1]
        sock.sendto((
            f"REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.9:{port};rport;branch=z9hG4bK-guess-{n}\r\n"
            f"From: <sip:822@127.0.0.1>;tag=g{n}\r\nTo: <sip:822@127.0.0.1>\r\nCall-ID: guess@127.0.0.9\r\n"
            f"CSeq: {n} REGISTER\r\nContact: <sip:822@127.0.0.9:{port}>\r\nExpires: 60\r\nMax-Forwards: 70\r\n"
            + (f"Authorization: {authorization}\r\n" if authorization else "") + "Content-Length: 0\r\n\r\n"
        ).encode(), ("127.0.0.1", balancer))
        return sock.recv(4096).decode()

    def login(sock: socket.socket, n: int, password: str) -> str:
        challenge = register(sock, 2 * n)
        assert challenge.startswith("SIP/2.0 401 "), challenge
        return register(sock, 2 * n + 1, digest_authorization(
            header(challenge, "WWW-Authenticate"), username="822", password=password, method="REGISTER", uri=uri))

    guesser = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    guesser.bind(("127.0.0.9", 0))
    guesser.settimeout(5)
    with guesser:
        for n in range(3):  # AUTH_FAILURES=3 wrong passwords, each refused by the worker
            answer = login(guesser, n, f"guess{n}")
            assert answer.startswith("SIP/2.0 403 "), answer
        barred = time.monotonic()
        guesser.settimeout(2)
        with pytest.raises(TimeoutError):  # barred now: even its first REGISTER gets no answer
            register(guesser, 10)
        kamailio_log = (tmp_path / "kamailio.log").read_text()
        assert "auth_banned source 127.0.0.9 for 5 s" in kamailio_log, kamailio_log[-2000:]
        assert sum(w.log().count("event='auth_failed'") for w in workers) == 3, "the barred REGISTER reached no worker"
        # another address logs in as ever
        phone = softphone_agent(balancer, "822", "pw822", talk=1, calls=0)
        try:
            assert wait_line(phone, "registered") == "registered 200"
        finally:
            phone.kill()
        # AUTH_BAN_SECONDS later (htable's expiry timer runs every few seconds) the address is heard again
        guesser.settimeout(0.5)
        while True:
            with contextlib.suppress(TimeoutError):
                if register(guesser, 20).startswith("SIP/2.0 401 "):
                    break
            assert time.monotonic() - barred < 5 + 15, "still barred long after AUTH_BAN_SECONDS"
        assert time.monotonic() - barred >= 5
