"""Prompt audio: rendered once, encoded once per codec, held in memory.

At start-up every prompt of the catalogue is turned into 8 kHz 16-bit mono
PCM — from a recorded WAV when one exists under `recorded_dir`, otherwise
from TTS (pyttsx3 over espeak-ng, Mandarin voice) cached on disk by a hash of
text, voice and rate — and then encoded into 20 ms frames for each codec the
IVR offers. Calls only pick ready frames from `PromptLibrary.frames`; nothing
is encoded per call.
"""

from __future__ import annotations

import hashlib
import os
import threading
import wave
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
import structlog

log = structlog.get_logger(__name__)

SAMPLE_RATE = 8000
FRAME_SAMPLES = 160  # 20 ms at 8 kHz
TRIM_THRESHOLD = 300  # int16 amplitude below which leading/trailing audio counts as silence
TTS_TIMEOUT_S = 30.0
TRIM_KEEP = 800  # samples (100 ms) of silence kept at each end

Encoder = Callable[[bytes], bytes]


class PromptError(RuntimeError):
    """A prompt could not be rendered or loaded; says which and what to do."""


@dataclass(frozen=True, slots=True)
class Prompt:
    id: str
    text: str
    source: str  # "recorded:<path>" or "tts:<cache path>"
    pcm: bytes  # 8 kHz int16 mono

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / SAMPLE_RATE


def read_wav_8k(path: Path) -> bytes:
    """Read a 16-bit PCM WAV of any rate and channel count as 8 kHz mono int16 bytes."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise PromptError(f"{path}: expected 16-bit PCM, got {8 * wav.getsampwidth()}-bit")
        channels, rate = wav.getnchannels(), wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    if rate != SAMPLE_RATE:
        samples = soxr.resample(samples, rate, SAMPLE_RATE)
    return np.asarray(samples, dtype="<i2").tobytes()


def trim_silence(pcm: bytes) -> bytes:
    """Cut TTS lead-in and tail silence, keeping 100 ms at each end."""
    samples = np.frombuffer(pcm, dtype="<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > TRIM_THRESHOLD)
    if loud.size == 0:
        return pcm
    start = max(0, int(loud[0]) - TRIM_KEEP)
    end = min(samples.size, int(loud[-1]) + TRIM_KEEP)
    return samples[start:end].tobytes()


def write_wav_8k(path: Path, pcm: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of this process's own: IVRs starting at once (workers on a host, parallel tests) may
    # render the same prompt into the same cache; each replaces the file whole, none reads a half
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    with wave.open(str(tmp), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm)
    tmp.replace(path)


def render_tts(jobs: Mapping[Path, str], voice: str, rate: int) -> None:
    """Speak each text into its WAV path with pyttsx3 (espeak-ng driver)."""
    if not jobs:
        return
    import pyttsx3

    try:
        engine = pyttsx3.init("espeak")
    except Exception as exc:  # pyttsx3 raises bare RuntimeError/OSError variants
        raise PromptError(
            f"cannot start the TTS engine ({exc}); install espeak-ng (apt-get install espeak-ng) "
            "or put recorded WAVs in the recorded prompts folder"
        ) from exc
    engine.setProperty("voice", voice)
    engine.setProperty("rate", rate)
    # pyttsx3 2.99 (espeak driver): runAndWait() can return before espeak-ng has
    # finished synthesising; the WAV is written later from espeak's callback,
    # followed by a 'finished-utterance' notification. Wait for that instead.
    done = threading.Event()
    engine.connect("finished-utterance", lambda name=None, completed=True: done.set())
    for path, text in jobs.items():
        path.parent.mkdir(parents=True, exist_ok=True)  # pyttsx3 fails silently on a missing folder
        raw = path.with_suffix(f".{os.getpid()}.raw.wav")  # this process's own (see write_wav_8k)
        pcm = b""
        for _ in range(2):  # pyttsx3 now and then hands back nothing (an empty file): once more, then give up
            done.clear()
            engine.save_to_file(text, str(raw))
            engine.runAndWait()
            if done.wait(TTS_TIMEOUT_S) and raw.exists():
                pcm = trim_silence(read_wav_8k(raw))
                raw.unlink()
            if pcm:
                break
        if not pcm:
            raise PromptError(f"TTS produced no audio for {path.name} (voice {voice!r}); "
                              "check `espeak-ng --voices=cmn`")
        write_wav_8k(path, pcm)


def load_prompts(
    texts: Mapping[str, str], *, voice: str, rate: int, cache_dir: Path, recorded_dir: Path
) -> dict[str, Prompt]:
    """PCM for every prompt: recorded override if present, else cached or freshly rendered TTS."""
    cached: dict[str, Path] = {}
    jobs: dict[Path, str] = {}
    for pid, text in texts.items():
        if (recorded_dir / f"{pid}.wav").exists():
            continue
        key = hashlib.sha256(f"{voice}|{rate}|{text}".encode()).hexdigest()[:16]
        cached[pid] = cache_dir / f"{pid}-{key}.wav"
        if not cached[pid].exists():
            jobs[cached[pid]] = text
    if jobs:
        log.info("prompts_rendering", count=len(jobs), voice=voice)
    render_tts(jobs, voice, rate)
    for pid, current in cached.items():  # renders of texts, voices or rates no longer in use
        for stale in cache_dir.glob(f"{pid}-*.wav"):
            if stale != current and stale.suffixes == [".wav"]:  # not another process's render in progress
                stale.unlink(missing_ok=True)

    prompts: dict[str, Prompt] = {}
    for pid, text in texts.items():
        recorded = recorded_dir / f"{pid}.wav"
        if recorded.exists():
            prompts[pid] = Prompt(pid, text, f"recorded:{recorded}", read_wav_8k(recorded))
        else:
            prompts[pid] = Prompt(pid, text, f"tts:{cached[pid]}", read_wav_8k(cached[pid]))
    return prompts


class PromptLibrary:
    """Encoded 20 ms frames per prompt and payload type, ready to send."""

    def __init__(self, prompts: Mapping[str, Prompt], encoders: Mapping[int, Encoder]) -> None:
        self.prompts = dict(prompts)
        self._frames: dict[tuple[str, int], tuple[bytes, ...]] = {}
        frame_bytes = FRAME_SAMPLES * 2
        for pid, prompt in self.prompts.items():
            pcm = prompt.pcm + b"\x00" * (-len(prompt.pcm) % frame_bytes)
            for pt, encode in encoders.items():
                encoded = encode(pcm)  # one pass per prompt and codec; G.711 is 1 byte per sample
                step = len(encoded) * frame_bytes // len(pcm)
                self._frames[(pid, pt)] = tuple(encoded[i : i + step] for i in range(0, len(encoded), step))

    def frames(self, prompt: str, payload_type: int) -> tuple[bytes, ...]:
        return self._frames[(prompt, payload_type)]

    def __contains__(self, prompt: str) -> bool:
        return prompt in self.prompts
