"""End to end: call recording checked in the audio itself, at the parties' RTP and in the recorded file.

A SIPp caller (monitored_caller.xml) and a SIPp agent phone (agent_sink_uas.xml) whose SDPs point their
RTP at Python peers (`tests.audio.RtpPeer`), so what each party sends is known to the sample and what the
caller receives is kept. Speech is rendered at test time with espeak-ng into tmp_path, never committed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile  # type: ignore[import-untyped]

from ivr.callflow import RECORDING_NOTICE_PROMPT, agent_prompt

from .audio import RATE, RtpPeer, best_correlation, locate, render_speech, rms
from .conftest import free_port, sipp
from .test_e2e_monitoring import wait_for_log
from .test_e2e_recording import wait_recordings
from .test_e2e_routing import agents_conf, customers
from .test_e2e_sip import finished, ivr_prompts, wait_for_row

pytestmark = pytest.mark.e2e

AGENT_SAYS = "Good morning, this is the service desk. Your order was shipped on Wednesday by express."
ONSET_WINDOW_S = 0.3  # the agent's first words are looked for 0.3 s at a time


def agent_onset(heard: np.ndarray, said: np.ndarray, step_s: float = 0.05) -> float | None:
    """The start (seconds into `heard`) of the first loud 0.3 s window that is the agent's looped speech, or None."""
    size, step = int(ONSET_WINDOW_S * RATE), int(step_s * RATE)
    for start in range(0, len(heard) - size, step):
        window = heard[start:start + size]
        if rms(window) > 300 and best_correlation(window, said) > 0.9:
            return start / RATE
    return None


def test_the_caller_hears_the_whole_recording_notice_before_the_first_word_of_the_agent(  # type: ignore[no-untyped-def]
        ivr_factory, tmp_path: Path) -> None:
    """Measured at the caller's RTP: the IVR's rendered notice ("为了提高服务质量,您的通话可能会被录音") is found in
    what the caller received, whole and unmixed (correlation with the prompt's PCM), and it ends before the
    agent's speech first arrives. The agent talks from the moment its phone answers, so a bridge made before
    the notice was over would put the agent's words into or before it."""
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)  # the caller is a senior customer: monitored_caller's keys reach agent 801
    agent_port = free_port()
    ivr = ivr_factory(db_url=db_url, extra="[queues]\nwrap_up_seconds = 0\n[survey]\ntimeout_seconds = 2\n"
                      "[recording]\n" + agents_conf(**{"801": ("senior", f"127.0.0.1:{agent_port}")}))
    said = render_speech(tmp_path, "agent_speech", AGENT_SAYS, "en-us", 80)
    caller_peer, agent_peer = RtpPeer(0.0), RtpPeer(said)  # the caller only listens
    agent_peer.talking.set()  # the agent talks as soon as its phone has the IVR's RTP address
    agent = sipp(tmp_path, "agent_sink_uas", ivr.port,
                 extra=("-d", "16000", "-p", str(agent_port), "-key", "sink_port", str(agent_peer.port)), timeout_s=120)
    caller = sipp(tmp_path, "monitored_caller", ivr.port, extra=("-key", "sink_port", str(caller_peer.port)),
                  timeout_s=120)
    try:
        finished(agent)
        finished(caller)
    finally:
        caller_peer.stop()
        agent_peer.stop()
    call_id = f"1-{caller.proc.pid}@127.0.0.1"
    row = wait_for_row(ivr, call_id)
    assert (row["outcome"], row["agent_number"]) == ("completed", "801")
    assert wait_recordings(ivr, call_id)[0]["state"] == "complete"  # a recorded call: the notice was owed

    heard = caller_peer.stream()
    prompts = ivr_prompts(tmp_path)  # the IVR's rendered prompts, as it loaded them from the cache
    notice, number = (np.frombuffer(prompts[p].pcm, "<i2") for p in (RECORDING_NOTICE_PROMPT, agent_prompt("801")))
    at, match = locate(notice, heard)
    notice_start, notice_end = at / RATE, (at + len(notice)) / RATE
    number_at, number_match = locate(number, heard)
    onset = agent_onset(heard, said)
    print(f"notice {notice_start:.2f}-{notice_end:.2f} s (correlation {match:.3f}), agent's number at "
          f"{number_at / RATE:.2f} s ({number_match:.3f}), agent from {onset} s of {len(heard) / RATE:.2f} s heard")
    assert match > 0.95, f"the caller did not hear the recording notice whole (best correlation {match:.3f})"
    assert onset is not None, "the caller never heard the agent"
    assert notice_end <= onset, f"the agent was heard at {onset:.2f} s, before the notice ended at {notice_end:.2f} s"
    # in between, whole and unmixed, "您好,八零一号客服为您服务": the notice, the number, then the agent (whose
    # onset is the start of the first 0.3 s window that is mostly the agent's speech: it may begin in the number's
    # last 0.3 s, quiet as it ends)
    assert number_match > 0.95 and notice_end <= number_at / RATE, (notice_end, number_at / RATE, number_match)
    assert (number_at + len(number)) / RATE <= onset + ONSET_WINDOW_S, (number_at + len(number), onset)
    # and the agent was heard, not one lucky window: the next 3 s are the agent's speech
    talk = heard[int(onset * RATE):int((onset + 3) * RATE)]
    windows = [talk[i:i + RATE] for i in range(0, len(talk) - RATE, RATE // 2) if rms(talk[i:i + RATE]) > 300]
    assert len(windows) >= 4 and np.median([best_correlation(w, said) for w in windows]) > 0.9


# --- the conversation characteristics against known speech and silence --------------------------------------

Span = tuple[float, float]
CALLER_VOICE, AGENT_VOICE = ("en", 40), ("en-us", 80)
# who says what, when: (name, speaker, sentence, where), where relative to a sentence already placed: ("after",
# name, gap) starts `gap` s after its end, ("into", name, lead) `lead` s before its end. Two over-talks of 1.2 s
# (the caller into the agent's first sentence, the agent into the caller's last), one 4 s silence after the
# caller; the other gaps 0.5-0.6 s: longer than the VAD's 0.3 s hangover, far shorter than a 3 s silence.
SCRIPT: tuple[tuple[str, str, str, tuple[str, str, float] | None], ...] = (
    ("c1", "caller", "my parcel never arrived at my house", None),
    ("a1", "agent", "good morning how can I help you today", ("after", "c1", 0.6)),
    ("c2", "caller", "yes the order number is seven seven two", ("into", "a1", 1.2)),
    ("a2", "agent", "one moment please let me check that for you", ("after", "c2", 4.0)),
    ("c3", "caller", "thank you I will wait on the line", ("after", "a2", 0.5)),
    ("a3", "agent", "I have found your order it is on the way", ("into", "c3", 1.2)),
)
TAIL_S = 1.0  # silence frames after the last word, before the peers fall quiet


@dataclass(frozen=True)
class Burst:
    """One sentence of the script: who says it, from which sample of the sent stream, its samples."""

    name: str
    who: str
    first: int
    samples: np.ndarray

    @property
    def span(self) -> Span:
        return self.first / RATE, (self.first + len(self.samples)) / RATE


def spoken_bursts(tmp: Path) -> tuple[dict[str, np.ndarray], list[Burst]]:
    """The caller's and the agent's whole streams (equal length, int16) and the sentences in them, each trimmed
    to its first and last loud sample, with digital silence between."""
    bursts: dict[str, Burst] = {}
    for name, who, text, where in SCRIPT:
        voice, pitch = CALLER_VOICE if who == "caller" else AGENT_VOICE
        said = render_speech(tmp, name, text, voice, pitch)
        loud = np.flatnonzero(np.abs(said.astype(np.int32)) > 300)
        start = 0.0
        if where is not None:
            how, other, gap = where
            start = bursts[other].span[1] + gap if how == "after" else bursts[other].span[1] - gap
        bursts[name] = Burst(name, who, round(start * RATE), said[loud[0]:loud[-1] + 1])
    total = max(b.first + len(b.samples) for b in bursts.values()) + int(TAIL_S * RATE)
    streams = {"caller": np.zeros(total, "<i2"), "agent": np.zeros(total, "<i2")}
    for burst in bursts.values():
        streams[burst.who][burst.first:burst.first + len(burst.samples)] = burst.samples
    return streams, list(bursts.values())


PIECE = int(0.3 * RATE)  # a sentence is found in the file 0.3 s at a time


def find_in_file(burst: Burst, channel: np.ndarray, offset: int) -> tuple[Span, float]:
    """Where the sentence starts and ends in the recorded channel, and how well it matches what was sent.

    `offset`: the file's sample of the sent stream's first. Each 0.3 s piece of the sentence is searched for
    within 0.25 s of where it was sent: a side's audio may slip by a 20 ms frame on the way (a late packet heard
    as a frame of silence), which blurs a whole sentence's correlation and the piece it falls in, not the others.
    The first piece places the start, the last the end, the median of the pieces' correlations is the match."""
    starts = [*range(0, len(burst.samples) - PIECE, PIECE), len(burst.samples) - PIECE]
    firsts, matches = [], []
    for start in starts:
        at = burst.first + offset + start
        lo = max(0, at - RATE // 4)
        where, match = locate(burst.samples[start:start + PIECE], channel[lo:at + PIECE + RATE // 4])
        firsts.append(lo + where - start)  # the sentence's first sample in the file, as this piece places it
        matches.append(match)
    return (firsts[0] / RATE, (firsts[-1] + len(burst.samples)) / RATE), float(np.median(matches))


def overlaps(one: list[Span], other: list[Span]) -> list[Span]:
    return [(max(a, c), min(b, d)) for a, b in one for c, d in other if min(b, d) > max(a, c)]


def quiet_runs(spans: dict[str, list[Span]], duration: float) -> list[tuple[float, float, str | None]]:
    """(start, length, who spoke last) of every stretch of [0, duration) in which nobody speaks."""
    runs: list[tuple[float, float, str | None]] = []
    now, last = 0.0, None
    for start, end, who in sorted((a, b, w) for w, ss in spans.items() for a, b in ss):
        if start > now:
            runs.append((now, start - now, last))
        if end >= now:
            now, last = end, who
    if duration > now:
        runs.append((now, duration - now, last))
    return runs


def test_the_stored_characteristics_of_a_recorded_call_match_the_speech_and_silence_the_parties_sent(  # type: ignore[no-untyped-def]
        ivr_factory, tmp_path: Path) -> None:
    """The caller and the agent send streams of known sentences and silences (`SCRIPT`: two over-talks, one 4 s
    silence after the caller) once the recording has started; the characteristics the IVR computed after the
    call and wrote through the CRM writer onto the recording's row must say what was sent.

    The truth is what was sent: talk times are the sentences' lengths, within 0.3 s; the over-talk count is
    exact (2), and who interrupted whom. To place the spans on the file's time line (the peers start after a
    poll of the IVR's log, so that offset is measured, not assumed) each sentence is found in its channel by
    cross-correlation, within 0.15 s of where the sent layout puts it: the network path keeps the layout but a
    side may slip by a 20 ms frame or lose the odd few (a late packet heard as silence, a burst after a stall
    dropped by the bridge's 80 ms receive queue). Against those found spans: segment edges within 0.1 s (the
    VAD decides per 20 ms frame), over-talk and non-talk time within 0.3 s, each silence of at least 3 s with
    who spoke last before it, and the longest silence.
    """
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    agent_port = free_port()
    ivr = ivr_factory(db_url=db_url, extra="[queues]\nwrap_up_seconds = 0\n[survey]\ntimeout_seconds = 2\n"
                      "[recording]\n" + agents_conf(**{"801": ("senior", f"127.0.0.1:{agent_port}")}))
    streams, bursts = spoken_bursts(tmp_path)
    caller_peer, agent_peer = RtpPeer(streams["caller"], loop=False), RtpPeer(streams["agent"], loop=False)
    # the agent answers 7-8 s before the bridge (the notice and its number first), then the script, then
    # seconds of silence before its BYE: a trailing silence well over the 3 s threshold
    hang_up_ms = int((7 + len(streams["agent"]) / RATE + 8) * 1000)
    agent = sipp(tmp_path, "agent_sink_uas", ivr.port, timeout_s=120,
                 extra=("-d", str(hang_up_ms), "-p", str(agent_port), "-key", "sink_port", str(agent_peer.port)))
    caller = sipp(tmp_path, "monitored_caller", ivr.port, extra=("-key", "sink_port", str(caller_peer.port)),
                  timeout_s=120)
    try:
        wait_for_log(ivr, r"recording_started")
        caller_peer.talking.set()
        agent_peer.talking.set()
        finished(agent)
        finished(caller)
    finally:
        caller_peer.stop()
        agent_peer.stop()
    call_id = f"1-{caller.proc.pid}@127.0.0.1"
    (rec,) = wait_recordings(ivr, call_id)
    assert rec["state"] == "complete"
    traits = stored_characteristics(ivr.db_url, rec["id"])

    data, _ = soundfile.read(tmp_path / "recordings" / rec["path"], dtype="int16")
    duration = len(data) / RATE
    channels = {"caller": data[:, 0], "agent": data[:, 1]}
    first = {who: next(b for b in bursts if b.who == who) for who in channels}
    # the file's sample of each sent stream's first: where the side's first sentence begins, less its place
    offset = {who: locate(b.samples[:RATE], channels[who])[0] - b.first for who, b in first.items()}
    known: dict[str, list[Span]] = {"caller": [], "agent": []}
    for burst in bursts:
        span, match = find_in_file(burst, channels[burst.who], offset[burst.who])
        sent = burst.span[0] + offset[burst.who] / RATE
        assert match > 0.9 and abs(span[0] - sent) < 0.15, (burst.name, span, sent, match)  # what was sent is there
        known[burst.who].append(span)
    over = overlaps(known["caller"], known["agent"])
    print(f"file {duration:.2f} s, offsets {offset}\nknown {known}\nstored {traits}")

    said = {who: sum(len(b.samples) for b in bursts if b.who == who) / RATE for who in channels}
    assert abs(traits["caller_talk_s"] - said["caller"]) <= 0.3
    assert abs(traits["agent_talk_s"] - said["agent"]) <= 0.3
    assert traits["overtalk_count"] == len(over) == 2
    assert abs(traits["overtalk_s"] - sum(b - a for a, b in over)) <= 0.3
    assert (traits["caller_interruptions"], traits["agent_interruptions"]) == (1, 1)
    assert abs(traits["duration_s"] - duration) <= 0.05
    quiet = quiet_runs(known, duration)
    assert abs(traits["non_talk_s"] - sum(length for _, length, _ in quiet)) <= 0.3
    for who in ("caller", "agent"):
        found = traits["segments"][who]
        assert len(found) == len(known[who]), (who, found, known[who])
        for (a, b), (c, d) in zip(found, known[who], strict=True):
            assert abs(a - c) <= 0.1 and abs(b - d) <= 0.1, (who, (a, b), (c, d))
    threshold = traits["silence_threshold_s"]
    long = [(start, length, who) for start, length, who in quiet if length >= threshold]
    assert all(abs(length - threshold) > 0.3 for _, length, _ in quiet), f"a silence too near {threshold} s: {quiet}"
    assert [s["last_speaker"] for s in traits["silences"]] == [who for _, _, who in long], (traits["silences"], long)
    for stored, (start, length, _) in zip(traits["silences"], long, strict=True):
        assert abs(stored["start_s"] - start) <= 0.3 and abs(stored["duration_s"] - length) <= 0.3, (stored, start)
    assert "caller" in [who for _, _, who in long]  # the 4 s silence after the caller's second sentence
    assert abs(traits["longest_silence_s"] - max(length for _, length, _ in quiet)) <= 0.3


def stored_characteristics(db_url: str, recording_id: int, timeout: float = 15) -> dict:  # type: ignore[type-arg]
    """The recording row's characteristics once the IVR has stored them (after the file was finished)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
            (found,) = conn.execute("SELECT characteristics FROM recordings WHERE id = ?", (recording_id,)).fetchone()
        if found is not None:
            return json.loads(found)  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"no characteristics stored for recording {recording_id}")
