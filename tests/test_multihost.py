"""The two-worker layout with every part on its own host (tests/multihost.py): no address but the right one.

Caller, balancer, two workers, database and agents each have their own
network namespace and address on a private bridge. Two callers go through
Kamailio, one to each worker (round-robin), are queued, and are bridged to an
agent phone on the agents host. What must hold:

- every SIP message and SDP body seen at the caller and at the agents host
  names hosts of the layout only: never 127.0.0.1 or 0.0.0.0 (worker2 binds
  0.0.0.0 and advertises its address; worker1 binds its one address);
- what a worker wrote carries that worker's address: Contact and SDP (c=, o=)
  in its 200 OK to the caller, Via, Contact, From and SDP in its INVITE to the
  agent; the desk link (Call-Info) names the desk's host, and it answers there;
- the caller's dialog follows Kamailio's Record-Route: the worker's BYE to the
  caller comes through the balancer;
- audio both ways between hosts: the caller's speech reaches the agent's host
  from the worker, and the agent's speech the caller's, as the same G.711 bytes;
- both calls are rows of the shared CRM on the database host, one per worker.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROMPT_CACHE
from tests.multihost import (
    DESK_PORT,
    Layout,
    LayoutUnavailable,
    ip_of,
    pcap_payloads,
    psql,
    read_capture,
    running_layout,
    sip_messages,
    start_agents,
    start_callers,
    start_sniffer,
    stop_group,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.usefixtures("namespaces_alone")]  # see conftest.namespaces_alone
LEAKS = ("127.0.0.1", "0.0.0.0")


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[Layout]:
    try:
        with running_layout(tmp_path / "layout", PROMPT_CACHE) as running:
            yield running
    except LayoutUnavailable as exc:
        pytest.skip(f"multi-host layout unavailable: {exc}")


def test_two_callers_through_the_balancer_reach_agents_on_other_hosts_with_no_address_leaked(
        layout: Layout, tmp_path: Path) -> None:
    hosts, state = layout.hosts, layout.state
    caller_cap, agents_cap = state / "caller.cap", state / "agents.cap"
    sniffers = [start_sniffer(hosts["caller"], caller_cap), start_sniffer(hosts["agents"], agents_cap)]
    try:
        agents = start_agents(hosts["agents"], state, calls=1)
        callers = start_callers(hosts["caller"], state, calls=2, rate=2)
        assert callers.wait(90) == 0, (state / "callers.err").read_text(errors="replace")[-2000:]
        for phone in agents:
            assert phone.wait(30) == 0
        time.sleep(0.5)
    finally:
        for proc in sniffers:
            stop_group(proc)
    at_caller, at_agents = read_capture(caller_cap), read_capture(agents_cap)
    workers = {ip_of("worker1"): "ivr-1", ip_of("worker2"): "ivr-2"}

    # --- SIP: nothing names loopback or the wildcard address ---
    caller_sip, agents_sip = sip_messages(at_caller), sip_messages(at_agents)
    assert caller_sip and agents_sip
    for msg in caller_sip + agents_sip:
        for leak in LEAKS:
            assert leak not in msg.text, f"{leak} in a message {msg.src} -> {msg.dst}:\n{msg.text}"

    # --- at the caller: the workers' answers, relayed by the balancer ---
    balancer = ip_of("balancer")
    answers = [m for m in caller_sip if m.first_line.startswith("SIP/2.0 200") and "INVITE" in m.header("cseq")]
    assert {m.src for m in answers} == {balancer}
    answered_by = set()
    for m in answers:
        contact = re.search(r"sip:(?:[^@>]*@)?([\d.]+):", m.header("contact"))
        assert contact and contact.group(1) in workers, m.text
        worker = contact.group(1)
        answered_by.add(worker)
        assert f"c=IN IP4 {worker}" in m.body and re.search(rf"^o=.* IN IP4 {re.escape(worker)}\r?$", m.body, re.M)
        assert f"sip:{balancer}" in m.header("record-route"), "the 200 OK carries the balancer's Record-Route"
    assert answered_by == set(workers), "round-robin: one call answered by each worker"
    byes = [m for m in caller_sip if m.first_line.startswith("BYE ") and m.dst == ip_of("caller")]
    assert len(byes) == 2 and {m.src for m in byes} == {balancer}, "the workers' BYEs follow the route set"
    assert {re.search(r"SIP/2.0/UDP ([\d.]+)", v).group(1) for m in byes for v in m.headers["via"][1:2]} \
        == set(workers), "below the balancer's Via, each BYE names the worker that sent it"

    # --- at the agents' host: the workers' INVITEs, straight from each worker ---
    invites = [m for m in agents_sip if m.first_line.startswith("INVITE ")]
    assert {m.src for m in invites} == set(workers)
    for m in invites:
        me = m.src
        assert f"SIP/2.0/UDP {me}:5060" in m.header("via")
        assert f"sip:{me}:5060" in m.header("contact")
        assert f"@{me}:5060" in m.header("from")
        assert f"c=IN IP4 {me}" in m.body and f"IN IP4 {me}\r\n" in m.body.split("\r\n", 2)[1] + "\r\n"
        desk = f"http://{ip_of('db')}:{DESK_PORT}/"
        assert m.header("call-info").startswith(f"<{desk}"), m.header("call-info")
    url = invites[0].header("call-info").split(">")[0].lstrip("<")
    fetch = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).status)"
    reached = hosts["agents"].run(sys.executable, "-c", fetch, url)
    assert reached.stdout.strip() == "200", f"the desk link answers from the agents' host: {reached.stderr}"

    # --- audio both ways, across three hosts, as the bytes that were spoken ---
    # The pcap's packets are 30 ms; the bridge carries 20 ms frames (ivr/bridge.py), so a packet heard is a
    # piece of the spoken stream, byte for byte, not one of the spoken packets (G.711 A-law decodes and
    # encodes back to the same bytes).
    speech = b"".join(pcap_payloads(Path("/usr/share/sip-tester/g711a.pcap")))

    def spoken(capture: list, to: str) -> Counter[str]:  # type: ignore[type-arg]
        heard: Counter[str] = Counter()
        for d in capture:
            rtp = d.rtp_payload
            if (d.dst == to and rtp is not None and rtp[0] == 8 and len(set(rtp[1])) > 8  # not silence
                    and rtp[1] in speech):
                heard[d.src] += 1
        return heard

    to_agents, to_caller = spoken(at_agents, ip_of("agents")), spoken(at_caller, ip_of("caller"))
    for worker in workers:
        assert to_agents[worker] >= 50, f"caller -> {worker} -> agent: {to_agents[worker]} speech packets"
        assert to_caller[worker] >= 50, f"agent -> {worker} -> caller: {to_caller[worker]} speech packets"
    sent = Counter(d.dst for d in at_caller if d.src == ip_of("caller") and d.rtp_payload
                   and d.rtp_payload[1] in speech)
    assert set(sent) == set(workers), "the caller's RTP goes to the worker named in the SDP, not the balancer"

    # --- the shared CRM on the database host ---
    rows = psql(hosts["db"], "SELECT outcome, agent_number, ivr_worker FROM calls ORDER BY ivr_worker")
    assert [(r[0], r[2]) for r in rows] == [("completed", "ivr-1"), ("completed", "ivr-2")], rows
    assert {r[1] for r in rows} <= {"821", "822"}


# --- the settings that decide which address goes out --------------------------------------------


def test_binding_every_address_without_advertised_ip_is_refused_at_start(tmp_path: Path) -> None:
    """bind = 0.0.0.0 alone would write 0.0.0.0 into Via, Contact and SDP: the config says so instead."""
    from ivr.config import ConfigError, load_config

    conf = tmp_path / "sip.conf"
    conf.write_text("[general]\nbind = 0.0.0.0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"sip.conf:\d+: \[general\] advertised_ip: required when bind is 0.0.0.0"):
        load_config(conf)
    conf.write_text("[general]\nbind = 0.0.0.0\nadvertised_ip = 0.0.0.0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="advertised_ip: '0.0.0.0' is not an address other hosts can reach"):
        load_config(conf)
    conf.write_text("[general]\nbind = 0.0.0.0\nadvertised_ip = 10.77.0.12\n", encoding="utf-8")
    assert load_config(conf).general.advertised_ip == "10.77.0.12"


def test_desk_link_names_a_reachable_host_or_none() -> None:
    from ivr.screenpop import desk_base_url

    assert desk_base_url(None, "10.77.0.5", 8080) == "http://10.77.0.5:8080"
    assert desk_base_url("https://desk.example.com", "0.0.0.0", 8080) == "https://desk.example.com"
    assert desk_base_url(None, "0.0.0.0", 8080) is None  # was http://0.0.0.0:8080 in every agent's Call-Info
    assert desk_base_url(None, "::", 8080) is None
    assert desk_base_url(None, "fd00::5", 8080) == "http://[fd00::5]:8080"
