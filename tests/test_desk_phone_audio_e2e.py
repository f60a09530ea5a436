"""End to end with the real IVR and the desk page as agent 801's phone, audio measured both ways.

As `test_desk_phone_ivr_e2e.py` (the IVR's SIP WebSocket, the desk's derived credentials, headless
Chromium running the page's JsSIP), but the agent's microphone is Chromium's fake capture device
playing a known Mandarin sentence from a WAV file, and the caller is SIPp signalling with a Python
RTP peer (`RtpPeer`) playing a different one. What is asserted is what would fail if the browser's
audio path broke:

- the supervisor's wallboard shows seat 801 未登录 before 上线, 空闲 after it, 通话中 in the call;
- the caller hears the agent's sentence (received RTP correlated against the sent audio, against the
  caller's own sentence as the control) and the page hears the caller (`getStats()` inbound-rtp
  `totalAudioEnergy` grows while the caller talks);
- the browser leg on the wire (a raw capture on lo, as root; skipped otherwise) is SRTP: every RTP
  packet is 160 bytes of G.711 plus SRTP's 10-byte tag, and none carries the G.711 frames the caller
  leg carries in clear;
- after 挂断 the caller hears the survey prompt (correlated against the prompt's audio) and the CRM
  row is completed by agent 801, hung up by the agent.

Chromium (Debian's 156) takes the microphone file as 48 kHz mono 16-bit WAV and loops it. The page
asks for the microphone as JsSIP does (`audio: true`), so Chromium's audio processing (gain control,
noise suppression, echo cancellation) is on: the agent's speech reaches the caller reshaped (its
correlation with the sent sentence about 0.8 once settled, another sentence's about 0.15) and takes a
few seconds to settle, hence the measurement from SETTLE_SECONDS into the talk.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from ivr.config import load_config

from .audio import RtpPeer, render_speech
from .conftest import ROOT, IvrProcess, sipp
from .test_desk_e2e import login, start_desk
from .test_desk_phone_e2e import chromium, go_online
from .test_desk_phone_ivr_e2e import NAME, browser_phone_ivr
from .test_docs import cookie_header, desk_login
from .test_e2e_monitoring import wait_for_log
from .test_e2e_phones_secure import G711_FRAME, SRTP_TAG, open_capture
from .test_e2e_recording import channel_matches
from .test_e2e_sip import crm_events, crm_rows, finished, ivr_prompts

pytestmark = pytest.mark.e2e
SUPERVISOR, SUPERVISOR_PW = "王经理", "supervisor-pw"
AGENT_SAYS = "您好,这里是客户服务中心,我是坐席张敏。您的理财产品已经到期,本金和收益会在三个工作日内到账。"
CALLER_SAYS = "你好,我想问一下我上个月买的基金,为什么到现在还没有看到收益,麻烦帮我查一下。"
TALK_SECONDS = 8  # of the agent's sentence at the caller, measured
SETTLE_SECONDS = 5  # of the talk before it is measured

# Every RTCPeerConnection the page makes, kept for the test to read its statistics (JsSIP keeps its own in
# a closure of phone.js); installed before any page script runs. The page's behaviour is unchanged.
KEEP_PEER_CONNECTIONS = """
(() => {
  const Native = window.RTCPeerConnection;
  if (!Native) return;
  window.testPeerConnections = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...args) { super(...args); window.testPeerConnections.push(this); }
  };
})();
"""

# The page's call as its own statistics see it: the inbound audio's energy, the DTLS transport, the
# selected pair's local port, and the IVR's offer (its media port).
PAGE_STATS = """
const done = arguments[arguments.length - 1];
const pcs = window.testPeerConnections || [];
const pc = pcs[pcs.length - 1];
if (!pc) { done(null); return; }
pc.getStats().then((report) => {
  const out = {energy: null, packets: 0, dtls: null, cipher: null, local_port: null,
               offer: pc.remoteDescription ? pc.remoteDescription.sdp : ""};
  const byId = {};
  report.forEach((s) => { byId[s.id] = s; });
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") { out.energy = s.totalAudioEnergy; out.packets = s.packetsReceived; }
    if (s.type === "transport") {
      out.dtls = s.dtlsState; out.cipher = s.srtpCipher;
      const pair = byId[s.selectedCandidatePairId];
      const local = pair && byId[pair.localCandidateId];
      if (local) out.local_port = local.port;
    }
  });
  done(out);
}, () => done(null));
"""


@pytest.fixture
def speech(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """The agent's microphone file (48 kHz mono 16-bit WAV), and both sentences as sent at 8 kHz."""
    agent = render_speech(tmp_path, "agent_speech", AGENT_SAYS, "cmn", 40)
    caller = render_speech(tmp_path, "caller_speech", CALLER_SAYS, "cmn", 80)
    microphone = tmp_path / "agent-microphone.wav"
    subprocess.run(["sox", str(tmp_path / "agent_speech-raw.wav"), "-r", "48000", "-c", "1", "-b", "16",
                    "-e", "signed-integer", str(microphone)], check=True)
    return microphone, agent, caller


@pytest.fixture
def speaking_browser(speech: tuple[Path, np.ndarray, np.ndarray]) -> Iterator[Any]:
    """Chromium whose microphone plays the agent's sentence (looped) and whose WebRTC may use loopback."""
    microphone = speech[0]
    for driver in chromium("--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={microphone}",
                           "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns"):
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": KEEP_PEER_CONNECTIONS})
        yield driver


def seat_on_the_wallboard(base: str, cookies: dict[str, str], agent: str) -> str:
    """What the supervisor's wallboard says of a seat: its state's label (空闲, 通话中 …)."""
    with httpx.Client(base_url=base, timeout=10) as client:
        page = client.get("/wallboard", headers=cookie_header(cookies))
    assert page.status_code == 200, page.status_code
    found = re.search(rf"<tr><td>{agent}</td><td>[^<]*</td><td class=\"state-[a-z_]+\">([^<]+)</td>", page.text)
    assert found, page.text[:2000]
    return found.group(1)


def wait_until(timeout: float, what: str, condition: Any) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.2)


def rtp_range(ivr: IvrProcess) -> tuple[int, int]:
    general = load_config(ivr.log_path.parent / "sip.conf").general
    return general.rtp_port_min, general.rtp_port_max + 1


def test_the_desk_page_agent_and_a_caller_hear_each_other_over_srtp_and_the_caller_rates_after_hang_up(
    ivr_factory, speaking_browser: Any, speech: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver = speaking_browser
    _, agent_sent, caller_sent = speech

    def wait(timeout: float, condition: Any) -> None:
        WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(WebDriverException,)).until(condition)

    def text(element_id: str) -> str:
        return str(driver.find_element("id", element_id).text)

    def page_stats() -> dict[str, Any]:
        stats = driver.execute_async_script(PAGE_STATS)
        assert stats is not None, "the page has no RTCPeerConnection"
        return dict(stats)

    ivr, base, desk_port = browser_phone_ivr(ivr_factory, tmp_path)
    conf = tmp_path / "sip.conf"  # the IVR's file: one for both
    made = subprocess.run([sys.executable, "-m", "desk", "--config", str(conf), "add-supervisor", SUPERVISOR],
                          cwd=ROOT, input=f"{SUPERVISOR_PW}\n", capture_output=True, text=True, timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    capture = open_capture(*rtp_range(ivr))
    if isinstance(capture, str):
        pytest.skip(capture)
    desk = start_desk(conf, desk_port, tmp_path / "desk.log")
    caller_peer = RtpPeer(caller_sent)
    caller = None
    try:
        _, supervisor = desk_login(base, SUPERVISOR, SUPERVISOR_PW)
        assert seat_on_the_wallboard(base, supervisor, "801") == "未登录"

        # the agent goes online: registered over the WebSocket, and the supervisor sees the seat free
        login(driver, base, "801", "pw801-ivr-e2e")
        go_online(driver, registered_within=20)
        wait_for_log(ivr, r"event='agent_registered' agent='801'")
        wait_until(10, "801 空闲 on the wallboard", lambda: seat_on_the_wallboard(base, supervisor, "801") == "空闲")

        # a senior caller is routed to 801: the page rings with the screen-pop and the agent answers
        caller = sipp(tmp_path, "monitored_caller", ivr.port, extra=("-key", "sink_port", str(caller_peer.port)),
                      timeout_s=150)
        wait(40, lambda d: text("phone-call").startswith("来电"))
        assert "ringing" in driver.find_element("id", "phone-call").get_attribute("class")
        wait(10, lambda d: d.find_element("id", "pop-name").text == NAME)
        driver.find_element("id", "phone-answer").click()
        wait(20, lambda d: text("phone-call").startswith("通话中"))
        wait_for_log(ivr, r"event='webrtc_connected'")
        wait_for_log(ivr, r"event='bridged'")
        caller_peer.talking.set()
        # measured from SETTLE_SECONDS in: Chromium's audio processing (gain control, noise suppression, echo
        # cancellation, on for the microphone JsSIP asks for) takes seconds to adapt, and shapes the speech
        talk_from = time.monotonic() + SETTLE_SECONDS
        first = wait_until(15, "the caller's audio in the page", lambda: (s := page_stats())["packets"] > 0 and s)
        assert (first["dtls"], first["cipher"]) == ("connected", "SRTP_AES128_CM_HMAC_SHA1_80"), first
        wait_until(10, "801 通话中 on the wallboard", lambda: seat_on_the_wallboard(base, supervisor, "801") == "通话中")

        # the talk: the caller hears the agent for TALK_SECONDS, the page hears the caller
        wait_until(SETTLE_SECONDS + TALK_SECONDS + 20, "the agent's speech at the caller",
                   lambda: len(caller_peer.heard(talk_from, time.monotonic())) >= TALK_SECONDS * 8000)
        talk_to = time.monotonic()
        last = page_stats()
        driver.find_element("id", "phone-hangup").click()
        hung_up = time.monotonic()
        wait(15, lambda d: text("phone-call") == "通话已结束")
        finished(caller, timeout=90)  # the survey's prompts, no answer, the IVR's BYE

        # the wire: the browser's leg is the IVR's offered port and whichever of the page's candidates it used
        ivr_port = int(re.search(r"^m=audio (\d+) ", first["offer"], re.M).group(1))  # type: ignore[union-attr]
        page_ports = {d.destination for d in list(capture.datagrams) if d.source == ivr_port}
        to_page = [p for port in sorted(page_ports) for p in capture.rtp(ivr_port, port)]
        from_page = [p for port in sorted(page_ports) for p in capture.rtp(port, ivr_port)]
        assert caller_peer.remote is not None
        caller_leg = caller_peer.remote[1]
        to_caller, from_caller = capture.rtp(caller_leg, caller_peer.port), capture.rtp(caller_peer.port, caller_leg)
    finally:
        capture.close()
        caller_peer.stop()
        if caller is not None and caller.proc.poll() is None:
            caller.proc.kill()
        desk.terminate()
        desk.wait(10)

    # (a) at the caller's RTP: the agent's sentence, not the caller's own, and not just noise
    heard = caller_peer.heard(talk_from, talk_to)
    agent_at_caller, own = channel_matches(heard, agent_sent), channel_matches(heard, caller_sent)
    print(f"agent's sentence at the caller {np.round(agent_at_caller, 2)}, the caller's own {np.round(own, 2)}")
    assert len(agent_at_caller) >= 4, f"too little speech at the caller: {agent_at_caller}"
    assert np.median(agent_at_caller) > 0.6, agent_at_caller  # about 0.8: Chromium's processing reshapes it
    assert max(own) < 0.4, own  # about 0.15: another sentence
    # (b) in the page: the caller's audio has energy, and more of it as the call goes on
    print(f"page inbound energy {first['energy']:.4f} -> {last['energy']:.4f}, packets {last['packets']}")
    assert last["packets"] - first["packets"] >= TALK_SECONDS * 40, (first, last)
    assert last["energy"] - first["energy"] > 0.1, (first, last)

    # SRTP on the browser's leg, which ends at the candidate the page's statistics name (Chromium gathers one
    # per address of the machine and may nominate another than 127.0.0.1's: still delivered over lo)
    assert last["local_port"] in page_ports, (last, page_ports)
    print(f"wire: {len(to_page)} SRTP packets to the page's ports {sorted(page_ports)}, {len(from_page)} from them")
    assert min(len(to_page), len(from_page)) >= TALK_SECONDS * 50, (len(to_page), len(from_page))
    for packets in (to_page, from_page):
        assert {len(p) for p in packets} == {12 + G711_FRAME + SRTP_TAG}, "20 ms of G.711 and an 80-bit tag"
    # the control: the caller's leg carries G.711 in clear, the agent's speech and the caller's. The bridge
    # decodes and re-encodes each 20 ms frame (G.711 comes back as the same bytes, but for μ-law's negative
    # zero), so a browser leg in clear would carry the very same frames
    said_by_caller = {p[12:] for p in from_caller if len(set(p[12:])) > 8}  # speech, not a pause's silence
    said_by_agent = {p[12:] for p in to_caller if len(set(p[12:])) > 8}
    assert len(said_by_caller) > 200 and len(said_by_agent) > 200, (len(said_by_caller), len(said_by_agent))
    assert not [p for p in to_page if p[12:12 + G711_FRAME] in said_by_caller], "the caller's G.711 in clear"
    assert not [p for p in from_page if p[12:12 + G711_FRAME] in said_by_agent], "the agent's G.711 in clear"

    # after 挂断 the caller is asked to rate the agent: the survey's prompt, heard at the caller
    call_id = f"1-{caller.proc.pid}@127.0.0.1"
    kinds = crm_events(ivr, call_id)
    asked = [detail for kind, detail in kinds if kind == "survey_prompt"]
    assert asked, kinds
    prompt_id = re.search(r"prompt=(\S+)", asked[0]).group(1)  # type: ignore[union-attr]
    survey = np.frombuffer(ivr_prompts(tmp_path)[prompt_id].pcm, "<i2")
    after = caller_peer.heard(hung_up, time.monotonic())
    survey_at_caller = channel_matches(after, survey)
    print(f"survey at caller {np.round(survey_at_caller, 2)}")
    assert len(survey_at_caller) >= 3 and np.median(survey_at_caller) > 0.9, survey_at_caller
    assert max(channel_matches(after, agent_sent), default=0) < 0.5, "the agent was still heard after 挂断"

    (row,) = crm_rows(ivr)
    assert (row["outcome"], row["agent_number"], row["hangup_by"], row["tier"]) == (
        "completed", "801", "agent", "senior"), dict(row)
    assert row["talk_s"] >= TALK_SECONDS
