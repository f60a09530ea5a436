"""Conversation characteristics of a recorded call, without speech recognition.

From the stereo recording (caller on the left channel, agent on the right,
8 kHz 16-bit) and the same webrtcvad the IVR listens with (`ivr.vad`): who
talked how long, how much of the call nobody talked, the longest silence and
who spoke last before each long one, and over-talk — both speaking at once,
and who started talking over whom.

How a channel becomes speech segments:

1. 20 ms frames (numpy reshapes the samples; one VAD call per frame, no
   per-sample loop). A frame is voiced when webrtcvad says so AND its RMS is
   above `ENERGY_FLOOR` (line hiss can fool the VAD; a quiet channel cannot).
2. Hangover: unvoiced gaps shorter than `hangover_s` between voiced frames
   count as speech, so the gaps between syllables and words are not silences.
   Only gaps are filled; a segment's end is not stretched, so talk times stay
   what was said.
3. Voiced runs shorter than `min_speech_s` (a click, a cough) are dropped.

Then, frame by frame: non-talk is neither channel speaking; a silence is a
non-talk run of at least `silence_s`; over-talk is a run where both speak of
at least `min_overtalk_s`, and its interruption is charged to whoever started
last (the agent interrupts when an agent segment starts while a caller
segment is under way, and the overlap is at least `min_overtalk_s`). Spans
the recording was paused for sensitive data are silent by design: they are
left out of non-talk time and silences, and counted as `paused_s`.

`characteristics(path)` returns a frozen `Characteristics`; `to_json()` is
what `recordings.characteristics` holds (QA forms read those keys).
The IVR computes `characteristics(path)` for each finished file in a child
process (`run_ivr.Analyser`); `compute_and_store(...)` computes and stores it
for one recording row, which `python -m crm_bridge characteristics
--all-missing` does for the rest.
"""

from __future__ import annotations

import json
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import webrtcvad
from numpy.typing import NDArray
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from crm_bridge.models import Recording

log = structlog.get_logger(__name__)

VERSION = 1  # bump when a definition changes: rows with an older version can be recomputed
SAMPLE_RATE = 8000
FRAME_S = 0.02
FRAME_SAMPLES = int(SAMPLE_RATE * FRAME_S)  # 160
ENERGY_FLOOR = 100.0  # RMS of int16 samples (about -50 dBFS): quieter frames are never speech
SPEAKERS = ("caller", "agent")  # left channel, right channel
SILENCE_S = 3.0  # silences at least this long are listed, with who spoke last


class CharacteristicsError(Exception):
    """The file cannot be analysed (missing, not a WAV, not 8 kHz 16-bit stereo)."""


@dataclass(frozen=True, slots=True)
class Settings:
    vad_aggressiveness: int = 2  # as ivr.vad.SpeechDetector
    hangover_s: float = 0.3
    min_speech_s: float = 0.06
    silence_s: float = SILENCE_S
    min_overtalk_s: float = 0.2


@dataclass(frozen=True, slots=True)
class Silence:
    start_s: float
    duration_s: float
    last_speaker: str | None  # "caller", "agent", or None before anyone spoke


Span = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Characteristics:
    duration_s: float
    caller_talk_s: float
    agent_talk_s: float
    non_talk_s: float
    longest_silence_s: float
    overtalk_count: int
    overtalk_s: float
    agent_interruptions: int
    caller_interruptions: int
    silences: tuple[Silence, ...]
    caller_segments: tuple[Span, ...]
    agent_segments: tuple[Span, ...]
    overtalk: tuple[Span, ...]
    silence_threshold_s: float
    paused_s: float = 0.0  # spans paused for sensitive data: neither non-talk nor silence
    version: int = VERSION

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "duration_s": self.duration_s,
            "caller_talk_s": self.caller_talk_s,
            "agent_talk_s": self.agent_talk_s,
            "non_talk_s": self.non_talk_s,
            "longest_silence_s": self.longest_silence_s,
            "overtalk_count": self.overtalk_count,
            "overtalk_s": self.overtalk_s,
            "agent_interruptions": self.agent_interruptions,
            "caller_interruptions": self.caller_interruptions,
            "silence_threshold_s": self.silence_threshold_s,
            "paused_s": self.paused_s,
            "silences": [
                {"start_s": s.start_s, "duration_s": s.duration_s, "last_speaker": s.last_speaker}
                for s in self.silences
            ],
            "segments": {
                "caller": [list(span) for span in self.caller_segments],
                "agent": [list(span) for span in self.agent_segments],
            },
            "overtalk": [list(span) for span in self.overtalk],
        }

    @classmethod
    def from_json(cls, text: str) -> Characteristics:
        """Read back what `to_json` wrote; CharacteristicsError when it is not that."""
        try:
            d = json.loads(text)
            segments = d["segments"]
            return cls(
                duration_s=float(d["duration_s"]),
                caller_talk_s=float(d["caller_talk_s"]),
                agent_talk_s=float(d["agent_talk_s"]),
                non_talk_s=float(d["non_talk_s"]),
                longest_silence_s=float(d["longest_silence_s"]),
                overtalk_count=int(d["overtalk_count"]),
                overtalk_s=float(d["overtalk_s"]),
                agent_interruptions=int(d["agent_interruptions"]),
                caller_interruptions=int(d["caller_interruptions"]),
                silences=tuple(Silence(float(s["start_s"]), float(s["duration_s"]), s["last_speaker"])
                               for s in d["silences"]),
                caller_segments=tuple((float(a), float(b)) for a, b in segments["caller"]),
                agent_segments=tuple((float(a), float(b)) for a, b in segments["agent"]),
                overtalk=tuple((float(a), float(b)) for a, b in d.get("overtalk", [])),
                silence_threshold_s=float(d.get("silence_threshold_s", SILENCE_S)),
                paused_s=float(d.get("paused_s", 0.0)),
                version=int(d["version"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CharacteristicsError(f"not a characteristics record: {exc}") from None


# --- signal -----------------------------------------------------------------------------


def read_stereo(path: Path) -> tuple[NDArray[np.int16], NDArray[np.int16]]:
    """The caller (left) and agent (right) channels of an 8 kHz 16-bit stereo WAV."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except FileNotFoundError:
        raise CharacteristicsError(f"{path}: no such file") from None
    except (wave.Error, EOFError, OSError) as exc:
        raise CharacteristicsError(f"{path}: not a readable WAV file ({exc})") from None
    if (channels, width, rate) != (2, 2, SAMPLE_RATE):
        raise CharacteristicsError(
            f"{path}: {channels} channel(s), {8 * width}-bit, {rate} Hz; expected stereo 16-bit 8000 Hz "
            "(caller left, agent right)")
    samples = np.frombuffer(raw, dtype="<i2")[: len(raw) // 4 * 2].reshape(-1, 2)
    return samples[:, 0].copy(), samples[:, 1].copy()


def _runs(mask: NDArray[np.bool_]) -> NDArray[np.intp]:
    """[start, end) frame indices of each run of True, as an (n, 2) array."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return edges.reshape(-1, 2)


def voiced_frames(channel: NDArray[np.int16], vad: webrtcvad.Vad) -> NDArray[np.bool_]:
    """Per 20 ms frame: webrtcvad says speech and the frame is louder than the energy floor."""
    n = len(channel) // FRAME_SAMPLES
    frames = channel[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    loud = rms >= ENERGY_FLOOR
    voiced = np.zeros(n, dtype=bool)
    for i in np.flatnonzero(loud):  # one VAD call per loud frame; quiet frames never reach it
        voiced[i] = vad.is_speech(frames[i].tobytes(), SAMPLE_RATE)
    return voiced


def smooth(voiced: NDArray[np.bool_], settings: Settings) -> NDArray[np.bool_]:
    """Fill gaps shorter than the hangover between voiced frames, then drop runs shorter than min_speech."""
    speech = voiced.copy()
    hang = round(settings.hangover_s / FRAME_S)
    gaps = _runs(~voiced)
    for start, end in gaps:
        if start > 0 and end < len(voiced) and end - start <= hang:  # inner gaps only: never stretch an end
            speech[start:end] = True
    shortest = round(settings.min_speech_s / FRAME_S)
    for start, end in _runs(speech):
        if end - start < shortest:
            speech[start:end] = False
    return speech


def speech_mask(channel: NDArray[np.int16], settings: Settings = Settings()) -> NDArray[np.bool_]:
    return smooth(voiced_frames(channel, webrtcvad.Vad(settings.vad_aggressiveness)), settings)


# --- figures ------------------------------------------------------------------------------


def _s(frames: int | np.integer[Any]) -> float:
    return round(float(frames) * FRAME_S, 2)


def _spans(runs: NDArray[np.intp]) -> tuple[Span, ...]:
    return tuple((_s(a), _s(b)) for a, b in runs)


def _interruptions(by: NDArray[np.intp], over: NDArray[np.bool_], overlap: NDArray[np.bool_], least: int) -> int:
    """Segments of `by` that start while `over` is already speaking and overlap it by at least `least` frames."""
    count = 0
    for start, end in by:
        if start > 0 and over[start - 1] and over[start] and int(overlap[start:end].sum()) >= least:
            count += 1
    return count


def from_masks(caller: NDArray[np.bool_], agent: NDArray[np.bool_], settings: Settings = Settings(),
               paused: Sequence[Span] = ()) -> Characteristics:
    """The figures from two per-frame speech masks (of equal length).

    `paused`: (start, end) seconds where the recording was paused for
    sensitive data: the file is silent there by design, so those frames are
    neither non-talk time nor part of a silence (an agent taking a card
    number is not leaving the caller in silence).
    """
    n = min(len(caller), len(agent))
    caller, agent = caller[:n], agent[:n]
    both = caller & agent
    held = np.zeros(n, dtype=bool)
    for a, b in paused:
        held[max(0, round(a / FRAME_S)):max(0, round(b / FRAME_S))] = True
    anyone = caller | agent
    quiet_frames = ~anyone & ~held
    least_overtalk = max(1, round(settings.min_overtalk_s / FRAME_S))
    overtalk = np.array([r for r in _runs(both) if r[1] - r[0] >= least_overtalk], dtype=np.intp).reshape(-1, 2)
    caller_runs, agent_runs = _runs(caller), _runs(agent)
    # who spoke last before frame i: the speaker whose latest speech frame before i is the later one
    index = np.arange(n)
    last_caller = np.maximum.accumulate(np.where(caller, index, -1)) if n else index
    last_agent = np.maximum.accumulate(np.where(agent, index, -1)) if n else index
    silences: list[Silence] = []
    quiet = _runs(quiet_frames)
    longest = int(max((end - start for start, end in quiet), default=0))
    least_silence = round(settings.silence_s / FRAME_S)
    for start, end in quiet:
        if end - start < least_silence:
            continue
        lc, la = (int(last_caller[start - 1]), int(last_agent[start - 1])) if start > 0 else (-1, -1)
        last = None if max(lc, la) < 0 else ("caller" if lc > la else "agent" if la > lc else _started_later(
            caller_runs, agent_runs, lc))
        silences.append(Silence(_s(start), _s(end - start), last))
    return Characteristics(
        duration_s=_s(n),
        caller_talk_s=_s(int(caller.sum())),
        agent_talk_s=_s(int(agent.sum())),
        non_talk_s=_s(int(quiet_frames.sum())),
        longest_silence_s=_s(longest),
        overtalk_count=len(overtalk),
        overtalk_s=_s(int(sum(end - start for start, end in overtalk))),
        agent_interruptions=_interruptions(agent_runs, caller, both, least_overtalk),
        caller_interruptions=_interruptions(caller_runs, agent, both, least_overtalk),
        silences=tuple(silences),
        caller_segments=_spans(caller_runs),
        agent_segments=_spans(agent_runs),
        overtalk=_spans(overtalk),
        silence_threshold_s=settings.silence_s,
        paused_s=_s(int(held.sum())),
    )


def _started_later(caller_runs: NDArray[np.intp], agent_runs: NDArray[np.intp], last_frame: int) -> str:
    """Both stopped on the same frame: the one whose segment began later had the last word."""
    def began(runs: NDArray[np.intp]) -> int:
        return int(next((a for a, b in runs if a <= last_frame < b), -1))
    return "agent" if began(agent_runs) > began(caller_runs) else "caller"


def characteristics(path: Path, settings: Settings = Settings(), paused: Sequence[Span] = ()) -> Characteristics:
    """The conversation characteristics of one stereo recording (CharacteristicsError when unreadable)."""
    left, right = read_stereo(path)
    return from_masks(speech_mask(left, settings), speech_mask(right, settings), settings, paused)


# --- storing ----------------------------------------------------------------------------------

SessionFactory = Callable[[], Session]


def _session(source: Engine | SessionFactory) -> Session:
    return Session(source) if isinstance(source, Engine) else source()


def recording_file(directory: Path, relative: str) -> Path:
    """The file of a recording row, refusing a path that would leave the recording directory."""
    base = directory.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise CharacteristicsError(f"{relative}: outside the recording directory")
    return path


def compute_and_store(
    source: Engine | SessionFactory, recording_id: int, directory: Path | str, settings: Settings = Settings()
) -> Characteristics | None:
    """Compute one recording's characteristics and store them in its row; blocking (run it in a thread).

    Returns None, with a warning logged, when the row is missing, not
    complete, or its file cannot be analysed: a recorder calling this after a
    call must never fail because of it.
    """
    with _session(source) as s:
        row = s.get(Recording, recording_id)
        if row is None:
            log.warning("characteristics_skipped", recording_id=recording_id, reason="no such recording")
            return None
        call_id, state, relative = row.sip_call_id, row.state, row.path
        paused = [(p.offset_s, p.offset_s + p.duration_s) for p in row.pauses if p.duration_s is not None]
    if state != "complete":
        log.warning("characteristics_skipped", recording_id=recording_id, call_id=call_id,
                    reason=f"recording is {state}")
        return None
    try:
        found = characteristics(recording_file(Path(directory), relative), settings, paused)
    except CharacteristicsError as exc:
        log.warning("characteristics_failed", recording_id=recording_id, call_id=call_id, error=str(exc))
        return None
    with _session(source) as s, s.begin():
        row = s.get(Recording, recording_id)
        if row is not None:
            row.characteristics = found.to_json()
    log.info("characteristics_stored", recording_id=recording_id, call_id=call_id,
             caller_talk_s=found.caller_talk_s, agent_talk_s=found.agent_talk_s, overtalk=found.overtalk_count)
    return found


def missing(source: Engine | SessionFactory) -> list[int]:
    """Complete recordings without characteristics (or computed by an older version), oldest first."""
    with _session(source) as s:
        rows = s.execute(
            select(Recording.id, Recording.characteristics)
            .where(Recording.state == "complete").order_by(Recording.started_at, Recording.id)
        ).all()
    return [rid for rid, text in rows if text is None or _version(text) < VERSION]


def _version(text: str) -> int:
    try:
        return int(json.loads(text).get("version", 0))
    except (ValueError, AttributeError, TypeError):
        return 0


def compute_many(source: Engine | SessionFactory, ids: Sequence[int], directory: Path | str,
                 settings: Settings = Settings()) -> tuple[int, int]:
    """Compute for each id in turn; (stored, failed)."""
    stored = sum(compute_and_store(source, rid, directory, settings) is not None for rid in ids)
    return stored, len(ids) - stored
