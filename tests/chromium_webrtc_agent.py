"""A browser agent's media against headless Chromium: our offer, Chromium's answer, audio both ways.

Run by tests/test_webrtc.py inside a network namespace of its own whose only
interface is `lo` (Chromium gathers loopback candidates only with
--allow-loopback-in-peer-connection, and no other interface exists there):

    python tests/chromium_webrtc_agent.py                   # prints one JSON object
    python tests/chromium_webrtc_agent.py --handshakes 20   # handshake times against Chromium

The IVR side is `ivr.media.open_webrtc` in this process; Chromium (Selenium,
Debian's chromium + chromium-driver) takes the offer with
RTCPeerConnection.setRemoteDescription, answers with a WebAudio oscillator
(600 Hz) as its microphone, and reports its inbound-rtp statistics while the
IVR sends a 1 kHz tone.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ivr.media import RtpPortPool, open_webrtc  # noqa: E402

RATE, FRAME = 8000, 160

ANSWER_JS = """
const [offer, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const ctx = new AudioContext({sampleRate: 48000});
  const osc = ctx.createOscillator();
  osc.frequency.value = 600;
  const gain = ctx.createGain();
  gain.gain.value = 0.3;
  const dest = ctx.createMediaStreamDestination();
  osc.connect(gain).connect(dest);
  osc.start();
  await ctx.resume();
  const pc = new RTCPeerConnection();
  window.pc = pc;
  pc.ontrack = (e) => {  // a remote track only flows when something plays it
    const stream = e.streams[0] || new MediaStream([e.track]);
    const audio = new Audio(); audio.muted = true; audio.srcObject = stream;
    audio.play().catch(() => {});
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 4096;
    ctx.createMediaStreamSource(stream).connect(analyser);
    window.analyser = analyser;
  };
  await pc.setRemoteDescription({type: "offer", sdp: offer});
  pc.addTrack(dest.stream.getAudioTracks()[0], dest.stream);
  const answer = await pc.createAnswer();
  await pc.setLocalDescription(answer);
  done({sdp: pc.localDescription.sdp});
})().catch((e) => done({error: String(e)}));
"""

STATS_JS = """
const done = arguments[arguments.length - 1];
window.pc.getStats().then((report) => {
  const out = {connection: window.pc.connectionState, ice: window.pc.iceConnectionState};
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      out.packetsReceived = s.packetsReceived; out.packetsLost = s.packetsLost;
      out.totalAudioEnergy = s.totalAudioEnergy; out.audioLevel = s.audioLevel;
      out.totalSamplesDuration = s.totalSamplesDuration;
    }
    if (s.type === "outbound-rtp" && s.kind === "audio") { out.packetsSent = s.packetsSent; }
    if (s.type === "codec") { out.codecs = (out.codecs || []).concat([s.mimeType]); }
    if (s.type === "transport") { out.dtlsState = s.dtlsState; out.srtpCipher = s.srtpCipher;
                                  out.tlsVersion = s.tlsVersion; out.dtlsRole = s.dtlsRole; }
  });
  if (window.analyser) {  // the loudest frequency of what the browser hears, and how loud
    const bins = new Float32Array(window.analyser.frequencyBinCount);
    window.analyser.getFloatFrequencyData(bins);
    let best = 0;
    for (let i = 1; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
    out.peakHz = best * window.analyser.context.sampleRate / window.analyser.fftSize;
    out.peakDb = bins[best];
  }
  done(out);
}).catch((e) => done({error: String(e)}));
"""


def chromium() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="webrtc-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
                 "--disable-features=WebRtcHideLocalIpsWithMdns", "--disable-audio-output",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_script_timeout(20)
    driver._profile_dir = profile
    return driver


def energy_at(samples: np.ndarray, freq: float) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / RATE)
    total = float(spectrum.sum())
    return float(spectrum[np.abs(freqs - freq) < 50].sum()) / total if total else 0.0


async def main() -> dict[str, Any]:
    driver = await asyncio.to_thread(chromium)
    result: dict[str, Any] = {}
    session, _port, offer = await open_webrtc(RtpPortPool(40000, 40100), "127.0.0.1", 0)
    heard: list[bytes] = []
    session.on_audio = lambda pcm, _ts: heard.append(pcm)
    try:
        await asyncio.to_thread(driver.get, "data:text/html,<title>agent</title>")
        answered = await asyncio.to_thread(driver.execute_async_script, ANSWER_JS, offer)
        if "error" in answered:
            return {"error": "chromium: " + answered["error"], "offer": offer}
        result["answer"] = answered["sdp"]
        session.accept_answer(answered["sdp"])
        await asyncio.wait_for(session.connected(), 15)
        result["handshake_ms"] = round(1000 * (session.handshake_seconds or 0.0), 1)
        loop = asyncio.get_running_loop()

        async def speak() -> None:
            start = loop.time()
            for n in range(150):  # 3 s of a 1 kHz tone, 20 ms frames
                t = (np.arange(FRAME) + n * FRAME) / RATE
                pcm = (8000 * np.sin(2 * math.pi * 1000 * t)).astype(np.int16).tobytes()
                session.send_audio_pcm(pcm, n * FRAME)
                await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))

        speaking = asyncio.ensure_future(speak())
        await asyncio.sleep(2.0)
        result["browser"] = await asyncio.to_thread(driver.execute_async_script, STATS_JS)  # while it plays
        await speaking
        samples = np.frombuffer(b"".join(heard), np.int16)
        result["ivr_heard_samples"] = len(samples)
        result["ivr_energy_at_600hz"] = round(energy_at(samples[-50 * FRAME:], 600.0), 3) if len(samples) else 0.0
        result["state"] = session.state
    finally:
        await session.close()
        await asyncio.to_thread(driver.quit)
        shutil.rmtree(driver._profile_dir, ignore_errors=True)
    return result


async def handshakes(count: int) -> dict[str, Any]:
    """`count` fresh browser legs one after the other: each one's time from taking the answer to SRTP keys."""
    driver = await asyncio.to_thread(chromium)
    times: list[float] = []
    pool = RtpPortPool(40000, 40000 + 4 * count + 10)
    try:
        for _ in range(count):
            await asyncio.to_thread(driver.get, "data:text/html,<title>agent</title>")
            session, port, offer = await open_webrtc(pool, "127.0.0.1", 0)
            try:
                answered = await asyncio.to_thread(driver.execute_async_script, ANSWER_JS, offer)
                if "error" in answered:
                    return {"error": "chromium: " + answered["error"]}
                session.accept_answer(answered["sdp"])
                await asyncio.wait_for(session.connected(), 15)
                times.append(1000 * (session.handshake_seconds or 0.0))
            finally:
                await session.close()
                pool.release(port)
    finally:
        await asyncio.to_thread(driver.quit)
        shutil.rmtree(driver._profile_dir, ignore_errors=True)
    ordered = sorted(times)
    return {"handshakes": len(times), "ms_p50": round(ordered[len(ordered) // 2], 2),
            "ms_p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
            "ms_max": round(ordered[-1], 2), "ms": [round(t, 2) for t in times]}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--handshakes":  # the measurement docs/browser-agents.md reports
        print(json.dumps(asyncio.run(handshakes(int(sys.argv[2])))))
    else:
        print(json.dumps(asyncio.run(main())))
