"""The loss fixtures drop about the share they are set to, each way, and leave nothing behind;
the lossy SIPp scenarios complete through that loss."""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SCENARIOS, free_port, sipp_media_port
from tests.lossy import LossUnavailable, LossyRelay, Namespace, lossy_namespace, lossy_namespace_or_skip, running_relay

DATAGRAMS = 1000

# Sends DATAGRAMS from socket a to socket b, which echoes each one back; counts what arrives
# at b (one way) and back at a (both ways). Paced, so no socket buffer overflows and every
# missing datagram is the loss under test. Runs inside the namespace.
ECHO_COUNT = """
import json, socket, sys, threading, time
n = int(sys.argv[1])
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(("127.0.0.1", 0))
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.bind(("127.0.0.1", 0))
counts = {"one_way": 0, "round_trip": 0}
def serve(sock, key, echo):
    sock.settimeout(1.5)
    while True:
        try:
            data, addr = sock.recvfrom(2048)
        except TimeoutError:
            return
        counts[key] += 1
        if echo:
            sock.sendto(data, addr)
threads = [threading.Thread(target=serve, args=(b, "one_way", True)),
           threading.Thread(target=serve, args=(a, "round_trip", False))]
for t in threads:
    t.start()
for i in range(n):
    a.sendto(str(i).encode().ljust(160, b"."), b.getsockname())
    if i % 20 == 19:
        time.sleep(0.005)
for t in threads:
    t.join()
print(json.dumps(counts))
"""

pytestmark = pytest.mark.usefixtures("namespaces_alone")  # see conftest.namespaces_alone


def about(count: int, trials: int, keep: float) -> bool:
    """`count` successes of `trials` is within 5 standard deviations of the share `keep`."""
    sd: float = (trials * keep * (1 - keep)) ** 0.5
    return abs(count - trials * keep) <= 5 * sd


def namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}


# --- the namespace ------------------------------------------------------------------------------


@pytest.fixture
def ns10() -> Iterator[Namespace]:
    with lossy_namespace_or_skip(10.0) as ns:
        yield ns


def test_the_namespace_drops_about_the_share_each_way_and_is_deleted(ns10: Namespace) -> None:
    assert ns10.name in namespaces()
    done = ns10.run(sys.executable, "-c", ECHO_COUNT, str(DATAGRAMS), timeout=60)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    print(f"{ns10.method}: {counts}, {ns10.dropped()} dropped")
    assert ns10.dropped() == (DATAGRAMS - counts["one_way"]) + (counts["one_way"] - counts["round_trip"])
    assert about(counts["one_way"], DATAGRAMS, 0.9), counts
    assert about(counts["round_trip"], counts["one_way"], 0.9), counts  # the way back loses as much


def test_the_namespace_is_deleted_and_its_processes_stopped_even_when_the_test_fails() -> None:
    with pytest.raises(RuntimeError, match="the test failed"), lossy_namespace_or_skip(5.0) as ns:
        sleeper = ns.popen("sleep", "600")
        name = ns.name
        raise RuntimeError("the test failed")
    assert name not in namespaces()
    assert sleeper.wait(10) != 0  # killed


def test_no_loss_is_no_loss() -> None:
    with lossy_namespace_or_skip(0.0) as ns:
        counts = json.loads(ns.run(sys.executable, "-c", ECHO_COUNT, "200", timeout=60).stdout)
    assert counts == {"one_way": 200, "round_trip": 200}


def test_a_bad_share_is_refused_before_anything_is_created() -> None:
    before = namespaces() if shutil.which("ip") else set()
    with pytest.raises(ValueError, match="within 0..100"), lossy_namespace(120):
        pass
    if shutil.which("ip"):
        assert namespaces() == before


def test_an_unavailable_method_is_reported_and_cleaned_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # as on a machine without tc or nft: LossUnavailable says so, and the namespace made for it is gone
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name in ("tc", "nft") else real_which(name))
    before = namespaces() if real_which("ip") else set()
    with pytest.raises(LossUnavailable) as raised, lossy_namespace(10):
        pass
    if raised.value.permitted:
        assert "tc is not installed" in str(raised.value) and "nft is not installed" in str(raised.value)
        assert namespaces() == before


# --- the relay ----------------------------------------------------------------------------------


class Echo:
    """A UDP echo server on loopback that records where datagrams came from."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address: tuple[str, int] = self.sock.getsockname()
        self.received = 0
        self.sources: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            self.received += 1
            self.sources.add(addr)
            self.sock.sendto(data, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = Echo()
    yield server
    server.close()


def pump(client: socket.socket, to: tuple[str, int], count: int) -> int:
    """Send `count` datagrams, paced; returns how many came back."""
    back = 0
    done = threading.Event()

    def receive() -> None:
        nonlocal back
        client.settimeout(0.2)
        while True:
            try:
                client.recvfrom(2048)
            except TimeoutError:
                if done.is_set():
                    return
                continue
            back += 1

    receiver = threading.Thread(target=receive)
    receiver.start()
    for i in range(count):
        client.sendto(str(i).encode().ljust(160, b"."), to)
        if i % 20 == 19:
            time.sleep(0.005)
    time.sleep(0.5)
    done.set()
    receiver.join(10)
    return back


def expected_drops(seed: int, direction: str, draws: int, share: float) -> int:
    rng = random.Random(f"{seed}:{direction}")
    return sum(rng.random() < share for _ in range(draws))


def test_the_relay_drops_about_the_share_each_way_from_its_seed(echo: Echo) -> None:
    with running_relay(echo.address, 10.0, seed=7) as relay, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind(("127.0.0.1", 0))
        back = pump(client, relay.address, DATAGRAMS)
        stats = relay.stats
    print(f"relay: upstream {stats.upstream_dropped}/{stats.upstream_seen} dropped, "
          f"downstream {stats.downstream_dropped}/{stats.downstream_seen}, back {back}")
    assert stats.upstream_seen == DATAGRAMS
    assert echo.received == DATAGRAMS - stats.upstream_dropped
    assert about(echo.received, DATAGRAMS, 0.9)
    assert stats.downstream_seen == echo.received
    assert back == echo.received - stats.downstream_dropped
    assert about(back, echo.received, 0.9)
    # seeded: the same drops every run, whatever the timing
    assert stats.upstream_dropped == expected_drops(7, "up", DATAGRAMS, 0.1)
    assert stats.downstream_dropped == expected_drops(7, "down", echo.received, 0.1)


def test_each_client_gets_its_own_upstream_socket_and_its_own_replies(echo: Echo) -> None:
    with running_relay(echo.address, 0.0) as relay:
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        try:
            for n, client in enumerate(clients):
                client.bind(("127.0.0.1", 0))
                client.settimeout(2)
                client.sendto(f"from {n}".encode(), relay.address)
            assert [c.recvfrom(2048)[0] for c in clients] == [f"from {n}".encode() for n in range(3)]
        finally:
            for client in clients:
                client.close()
    assert len(echo.sources) == 3 and relay.address not in echo.sources


def test_the_relay_lets_go_of_its_ports_when_closed(echo: Echo) -> None:
    with running_relay(echo.address, 0.0) as relay, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(2)
        client.sendto(b"x" * 10, relay.address)
        client.recvfrom(2048)
        listening = relay.address
        upstream_ports = set(echo.sources)
    assert len(upstream_ports) == 1
    for address in [listening, *upstream_ports]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(address)  # free again


def test_the_relay_refuses_a_bad_share() -> None:
    with pytest.raises(ValueError, match="within 0..100"):
        LossyRelay(("127.0.0.1", 9), -1)


# --- the lossy SIPp scenarios -------------------------------------------------------------------

# The 200 OK with SDP both UASes answer the INVITE with (retransmitted until the ACK)
ANSWER_INVITE = """  <send retrans="500">
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Record-Route:]
      Contact: <sip:ivr@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=ivr 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
"""

# Stands in for the IVR hanging up: answers, waits half a second, sends BYE (retransmitted).
HANGUP_UAS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="hangup_uas">
  <recv request="INVITE" crlf="true" rrs="true">
    <action><ereg regexp=".*" search_in="hdr" header="From:" assign_to="caller"/></action>
  </recv>
""" + ANSWER_INVITE + """  <recv request="ACK"/>
  <pause milliseconds="500"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:ivr@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]
      To: [$caller]
      Call-ID: [call_id]
      CSeq: 1 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
"""
# Answers and waits for the caller's BYE. SIPp's built-in `uas` sends 180 and then 200 after the
# INVITE; SIPp 3.6 resends only the one message sent right after a request, so when both are lost
# the retransmitted INVITE finds the built-in UAS waiting for the ACK and ends the call as
# "unexpected". One 200 after the INVITE lets a retransmitted INVITE be answered again.
ANSWER_UAS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="answer_uas">
  <recv request="INVITE" crlf="true"/>
""" + ANSWER_INVITE + """  <recv request="ACK" optional="true"/>
  <recv request="BYE"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <!-- a retransmitted BYE (its 200 lost) is answered again -->
  <timewait milliseconds="4000"/>
</scenario>
"""
CALLS = 10


def sipp_pair(tmp_path: Path, scenario: str, target: tuple[str, int], uas_ports: tuple[int, int],
              caller_ports: tuple[int, int]) -> tuple[list[str], list[str]]:
    """The UAS and caller command lines: the caller calls `target` (the UAS itself, or a relay to it).
    The ports are (SIP, media) for each."""
    uas_file = tmp_path / "uas.xml"
    uas_file.write_text(HANGUP_UAS if scenario == "lossy_silent_caller" else ANSWER_UAS)
    uas_scenario = ["-sf", str(uas_file)]
    common = ["-m", str(CALLS), "-nostdin", "-timeout", "90s", "-timeout_error", "-bind_local", "-i", "127.0.0.1"]
    uas = ["sipp", *uas_scenario, "-p", str(uas_ports[0]), "-mp", str(uas_ports[1]), *common,
           "-trace_err", "-error_file", str(tmp_path / "uas.err")]
    caller = ["sipp", f"{target[0]}:{target[1]}", "-sf", str(SCENARIOS / f"{scenario}.xml"),
              "-inf", str(SCENARIOS / "callers.csv"), "-s", "95000", "-r", "5", "-l", str(CALLS),
              "-p", str(caller_ports[0]), "-mp", str(caller_ports[1]), *common,
              "-trace_err", "-error_file", str(tmp_path / "caller.err"), "-trace_stat", "-stf",
              str(tmp_path / "caller.csv")]
    return uas, caller


def finish(caller: subprocess.Popen[str], uas: subprocess.Popen[str], tmp_path: Path) -> None:
    try:
        caller_rc = caller.wait(120)
        uas_rc = uas.wait(30)
    finally:
        for proc in (caller, uas):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    errors = "\n".join(p.read_text()[-3000:] for p in tmp_path.glob("*.err"))
    assert (caller_rc, uas_rc) == (0, 0), f"every call completed on both sides:\n{errors}"


@pytest.mark.e2e
@pytest.mark.parametrize("scenario", ["lossy_caller", "lossy_silent_caller"])
def test_the_lossy_scenarios_complete_through_a_lossy_relay(scenario: str, tmp_path: Path) -> None:
    if shutil.which("sipp") is None:
        pytest.fail("sipp not installed: scripts/bootstrap.sh installs Debian's sip-tester")
    uas_port = free_port()
    with running_relay(("127.0.0.1", uas_port), 10.0, seed=3) as relay:
        uas_cmd, caller_cmd = sipp_pair(tmp_path, scenario, relay.address, (uas_port, sipp_media_port()),
                                        (free_port(), sipp_media_port()))
        uas = subprocess.Popen(uas_cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        time.sleep(0.3)
        caller = subprocess.Popen(caller_cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  text=True)
        finish(caller, uas, tmp_path)
        stats = relay.stats
    print(f"{scenario}: upstream {stats.upstream_dropped}/{stats.upstream_seen} dropped, "
          f"downstream {stats.downstream_dropped}/{stats.downstream_seen}")
    assert stats.upstream_dropped > 0 and stats.downstream_dropped > 0, "the calls went through loss both ways"


@pytest.mark.e2e
@pytest.mark.parametrize("scenario", ["lossy_caller", "lossy_silent_caller"])
def test_the_lossy_scenarios_complete_in_a_lossy_namespace(scenario: str, tmp_path: Path) -> None:
    if shutil.which("sipp") is None:
        pytest.fail("sipp not installed: scripts/bootstrap.sh installs Debian's sip-tester")
    with lossy_namespace_or_skip(10.0) as ns:
        # a namespace of our own: every port is free
        uas_cmd, caller_cmd = sipp_pair(tmp_path, scenario, ("127.0.0.1", 5060), (5060, 6000), (5070, 6100))
        uas = ns.popen(*uas_cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        caller = ns.popen(*caller_cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finish(caller, uas, tmp_path)
        dropped = ns.dropped()
    print(f"{scenario} ({ns.method}): {dropped} packets dropped, "
          f"caller retransmissions {retransmissions(tmp_path / 'caller.csv')}")
    assert dropped > 0, "the calls went through loss"


def retransmissions(stat_file: Path) -> int:
    """SIPp's cumulative retransmission count from its -trace_stat file (last row)."""
    header, *rows = [line.split(";") for line in stat_file.read_text().splitlines() if line.strip()]
    return int(rows[-1][header.index("Retransmissions(C)")])
