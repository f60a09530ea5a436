"""Conversation characteristics on a constructed stereo recording whose speech and silences are known.

Mandarin speech rendered by espeak-ng (trimmed of its own leading and trailing
silence, resampled to 8 kHz by sox) is placed at chosen offsets on the caller
(left) and agent (right) channels over a faint noise floor, so every figure
has an expected value computed from the placements alone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import wave
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from sqlalchemy.orm import Session

from crm_bridge.characteristics import (
    Characteristics,
    CharacteristicsError,
    characteristics,
    compute_and_store,
    missing,
)
from crm_bridge.db import make_engine, migrate
from crm_bridge.models import Recording

RATE = 8000
PHRASES = {
    "greeting": "您好请问有什么可以帮您",
    "balance": "我想查询一下我的账户余额",
    "wait": "好的请您稍等我帮您查一下",
    "thanks": "谢谢你",
}


def render(text: str, out: Path) -> NDArray[np.int16]:
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "cmn", "-w", str(raw), text], check=True, capture_output=True)
    # trim espeak's own silence at both ends: the placement is then exactly where speech starts and ends
    subprocess.run(["sox", str(raw), "-r", str(RATE), "-b", "16", "-c", "1", str(out),
                    "silence", "1", "0.02", "0.5%", "reverse", "silence", "1", "0.02", "0.5%", "reverse"],
                   check=True, capture_output=True)
    with wave.open(str(out), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


@dataclass(frozen=True)
class Placed:
    speaker: str  # caller | agent
    start: float
    audio: NDArray[np.int16]

    @property
    def end(self) -> float:
        return self.start + len(self.audio) / RATE


@pytest.fixture(scope="module")
def phrases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, NDArray[np.int16]]:
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.fail("espeak-ng and sox are needed: scripts/bootstrap.sh installs them")
    folder = tmp_path_factory.mktemp("phrases")
    return {name: render(text, folder / f"{name}.wav") for name, text in PHRASES.items()}


def build_call(phrases: dict[str, NDArray[np.int16]], path: Path) -> list[Placed]:
    """The conversation, and the stereo WAV of it at `path`.

    caller: balance ......................... thanks ............ greeting ................. thanks
    agent:            greeting ........... (caller talks over)   wait      (agent talks over)
    with a 6 s silence after the agent's greeting and a 4 s one after the caller's greeting.
    """
    p = phrases
    placed: list[Placed] = []

    def at(speaker: str, start: float, name: str) -> float:
        placed.append(Placed(speaker, start, p[name]))
        return placed[-1].end

    end = at("caller", 1.0, "balance")
    agent_end = at("agent", end + 0.8, "greeting")
    caller_end = at("caller", agent_end - 1.5, "thanks")  # the caller interrupts the agent
    assert caller_end < agent_end - 0.2  # ... and stops first: the agent spoke last
    end = at("agent", agent_end + 6.0, "wait")  # 6 s of silence after the agent
    caller_end = at("caller", end + 1.0, "greeting")
    at("agent", caller_end - 2.5, "thanks")  # the agent interrupts the caller, and stops first
    at("caller", caller_end + 4.0, "thanks")  # 4 s of silence after the caller
    total = max(x.end for x in placed) + 1.0
    rng = np.random.default_rng(7)
    stereo = rng.normal(0, 20, size=(round(total * RATE), 2))  # a faint line-noise floor on both channels
    for x in placed:
        channel = 0 if x.speaker == "caller" else 1
        first = round(x.start * RATE)
        stereo[first : first + len(x.audio), channel] += x.audio
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.clip(stereo, -32768, 32767).astype("<i2").tobytes())
    return placed


def talk(placed: list[Placed], speaker: str) -> float:
    return sum(x.end - x.start for x in placed if x.speaker == speaker)


def test_talk_times_overtalk_and_silences_match_the_constructed_call(phrases, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "call.wav"
    placed = build_call(phrases, path)
    found = characteristics(path)

    assert found.caller_talk_s == pytest.approx(talk(placed, "caller"), abs=0.3)
    assert found.agent_talk_s == pytest.approx(talk(placed, "agent"), abs=0.3)
    assert found.overtalk_count == 2
    assert found.caller_interruptions == 1 and found.agent_interruptions == 1
    # the overlaps: each interrupting phrase lies wholly inside the other's phrase
    assert found.overtalk_s == pytest.approx((len(phrases["thanks"]) * 2) / RATE, abs=0.3)
    # the 6 s after the agent's greeting is the longest, the agent spoke last; then 4 s after the caller
    assert found.longest_silence_s == pytest.approx(6.0, abs=0.3)
    assert [(s.last_speaker, round(s.duration_s)) for s in found.silences] == [("agent", 6), ("caller", 4)]
    agent_greeting_end = placed[1].end
    assert found.silences[0].start_s == pytest.approx(agent_greeting_end, abs=0.3)
    spoken = sum(x.end - x.start for x in placed) - found.overtalk_s
    assert found.non_talk_s == pytest.approx(found.duration_s - spoken, abs=0.5)
    assert len(found.caller_segments) == 4 and len(found.agent_segments) == 3  # syllable gaps are not silences


def test_the_json_carries_the_keys_qa_forms_read_and_reads_back(phrases, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "call.wav"
    build_call(phrases, path)
    found = characteristics(path)
    data = json.loads(found.to_json())
    for key in ("caller_talk_s", "agent_talk_s", "non_talk_s", "longest_silence_s", "overtalk_count", "overtalk_s",
                "agent_interruptions", "caller_interruptions", "silences", "segments", "version"):
        assert key in data
    assert set(data["segments"]) == {"caller", "agent"}
    assert set(data["silences"][0]) == {"start_s", "duration_s", "last_speaker"}
    assert Characteristics.from_json(found.to_json()) == found


def test_a_file_that_is_not_stereo_8khz_is_refused_with_a_reason(tmp_path: Path) -> None:
    mono = tmp_path / "mono.wav"
    with wave.open(str(mono), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(b"\0\0" * RATE)
    with pytest.raises(CharacteristicsError, match="expected stereo 16-bit 8000 Hz"):
        characteristics(mono)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a wav at all")
    with pytest.raises(CharacteristicsError, match="not a readable WAV"):
        characteristics(junk)
    with pytest.raises(CharacteristicsError, match="no such file"):
        characteristics(tmp_path / "absent.wav")


def _recording(s: Session, path: str, state: str = "complete") -> int:
    row = Recording(sip_call_id=f"call-{path}", agent_number="801", path=path, format="wav-pcm16",
                    started_at=datetime(2026, 12, 1, 2, 0, tzinfo=UTC), state=state)
    s.add(row)
    s.flush()
    return row.id


def test_compute_and_store_fills_the_row_and_the_catch_up_finds_only_the_rest(phrases, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(engine)
    records = tmp_path / "recordings"
    (records / "2026-12-01").mkdir(parents=True)
    build_call(phrases, records / "2026-12-01" / "1.wav")
    with Session(engine) as s, s.begin():
        good = _recording(s, "2026-12-01/1.wav")
        absent = _recording(s, "2026-12-01/2.wav")
        escaping = _recording(s, "../outside.wav")
        _recording(s, "2026-12-01/3.wav", state="recording")
    assert missing(engine) == [good, absent, escaping]

    stored = compute_and_store(engine, good, records)
    assert stored is not None and stored.overtalk_count == 2
    assert compute_and_store(engine, absent, records) is None  # logged, never raised: the recorder's thread goes on
    assert compute_and_store(engine, escaping, records) is None
    assert compute_and_store(engine, 999, records) is None
    with Session(engine) as s:
        text = s.get_one(Recording, good).characteristics
    assert text is not None and Characteristics.from_json(text) == stored
    assert missing(engine) == [absent, escaping]


def test_the_command_computes_every_missing_recording_and_says_which_failed(  # type: ignore[no-untyped-def]
        phrases, tmp_path: Path, capsys) -> None:
    from crm_bridge.__main__ import main

    url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = make_engine(url)
    migrate(engine)
    build_call(phrases, tmp_path / "1.wav")
    with Session(engine) as s, s.begin():
        good, absent = _recording(s, "1.wav"), _recording(s, "2.wav")
    config = ["--db-url", url, "--config", str(tmp_path / "none.conf")]
    assert main([*config, "characteristics", "--directory", str(tmp_path), "--all-missing"]) == 1
    out = capsys.readouterr().out
    assert f"recording {good}: caller" in out and f"recording {absent}: not computed" in out
    assert "1 computed, 1 failed" in out
    assert main([*config, "characteristics", "--all-missing"]) == 2  # no directory: a clear error, not a crash
    assert missing(engine) == [absent]


def test_a_span_paused_for_sensitive_data_is_neither_silence_nor_non_talk(phrases, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from crm_bridge.models import RecordingPause

    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(engine)
    placed = build_call(phrases, tmp_path / "1.wav")
    unpaused = characteristics(tmp_path / "1.wav")
    quiet_from = placed[1].end  # the 6 s after the agent's greeting: the agent paused the recording for a card number
    with Session(engine) as s, s.begin():
        rid = _recording(s, "1.wav")
        s.add(RecordingPause(recording_id=rid, paused_by="801", started_at=datetime(2026, 12, 1, 2, 1, tzinfo=UTC),
                             offset_s=quiet_from, duration_s=6.0))
    found = compute_and_store(engine, rid, tmp_path)
    assert found is not None
    assert [(s.last_speaker, round(s.duration_s)) for s in found.silences] == [("caller", 4)]
    assert found.longest_silence_s == pytest.approx(4.0, abs=0.3)
    assert found.paused_s == pytest.approx(6.0, abs=0.05)
    assert found.non_talk_s == pytest.approx(unpaused.non_talk_s - 6.0, abs=0.1)
    assert (found.caller_talk_s, found.agent_talk_s) == (unpaused.caller_talk_s, unpaused.agent_talk_s)
