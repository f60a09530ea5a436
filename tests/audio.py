"""Audio for end-to-end tests: known speech, finding one sound inside another, a phone's RTP in Python.

- `render_speech`: a sentence spoken by espeak-ng, as 8 kHz A-law WAV (SIPp's rtp_stream plays it) and samples;
- `locate` / `best_correlation`: where, and how well, one sound is found in another (normalised
  cross-correlation), so a test says "the caller heard this prompt, here" rather than "something was loud";
- `RtpPeer`: a party's RTP (a SIPp scenario's SDP points at it): sends a tone or given samples from the port
  the SDP named and keeps, with arrival times, what it receives.

Audio made with these goes to the test's tmp_path, never into the repository.
"""

from __future__ import annotations

import math
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import soundfile  # type: ignore[import-untyped]
from aiortp.codecs import get_codec

from .conftest import free_port

RATE = 8000
ULAW = get_codec(0)


def render_speech(directory: Path, name: str, text: str, voice: str, pitch: int) -> np.ndarray:
    """`name`.wav in `directory`: 8 kHz mono A-law as SIPp's rtp_stream plays it; returns its samples (int16)."""
    raw, wav = directory / f"{name}-raw.wav", directory / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", "150", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "8000", "-c", "1", "-e", "a-law", str(wav)], check=True)
    samples, rate = soundfile.read(wav, dtype="int16")
    assert rate == RATE
    return np.asarray(samples)


def tone(hz: float, seconds: float, rate: int = RATE, level: float = 0.25) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (level * 32767 * np.sin(2 * math.pi * hz * t)).astype("<i2")


def strength(samples: np.ndarray, hz: float, rate: int = 8000) -> float:
    """The amplitude of `hz` in `samples` (a single-bin DFT), as a fraction of full scale."""
    if len(samples) == 0:
        return 0.0
    t = np.arange(len(samples)) / rate
    return float(abs(np.dot(samples.astype(np.float64), np.exp(-2j * math.pi * hz * t))) * 2 / len(samples) / 32767)


def locate(needle: np.ndarray, haystack: np.ndarray) -> tuple[int, float]:
    """Where `needle` fits best inside `haystack` (sample offset) and how well: the normalised cross-correlation's
    largest magnitude, 1.0 for the same sound at any loudness.

    Its magnitude: aiortp's A-law decoder gives the opposite sign to libsndfile's (the polarity of
    the whole signal, inaudible), so the same speech correlates at -1 or +1 depending on who decodes.
    """
    reference = haystack.astype(np.float64)
    w = needle.astype(np.float64) - needle.mean()
    if len(w) == 0 or len(reference) < len(w):
        return 0, 0.0
    n = len(reference) + len(w)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(reference, size) * np.conj(np.fft.rfft(w, size)), size)[
        : len(reference) - len(w) + 1]
    energy = np.cumsum(np.concatenate(([0.0], reference**2)))
    local = energy[len(w):] - energy[: len(reference) - len(w) + 1]
    scores = np.abs(corr) / np.sqrt(np.maximum(local, 1e-9) * max(float((w**2).sum()), 1e-9))
    at = int(scores.argmax())
    return at, float(scores[at])


def best_correlation(window: np.ndarray, sent: np.ndarray) -> float:
    """The highest normalised cross-correlation of `window` against the looped `sent` audio (any offset)."""
    return locate(window, np.tile(sent, 3))[1]


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0


class RtpPeer:
    """A party's RTP: learns the IVR's address from its first packet, then sends back from the same port.

    Sending from the port its SDP named keeps a strict IVR (`rtp_strict`) taking its audio. It says
    `sound` (a tone's frequency in Hz, or 8 kHz int16 samples) once `talking` is set: looped, or
    once and then silence frames (`loop=False`). `first_sent` is when its first frame went out.
    """

    def __init__(self, sound: float | np.ndarray, *, loop: bool = True) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", free_port(even=True)))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.remote: tuple[str, int] | None = None
        self.received: list[tuple[float, bytes]] = []  # (arrival, decoded PCM)
        self.talking = threading.Event()
        samples = tone(sound, 1.0) if isinstance(sound, float | int) else np.asarray(sound, dtype="<i2")
        self.frames = samples.tobytes()
        self.loop = loop
        self.first_sent: float | None = None
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._receive, daemon=True),
                         threading.Thread(target=self._send, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except (TimeoutError, OSError):
                continue
            if len(data) > 12 and data[1] & 0x7F == 0:
                self.remote = self.remote or addr
                self.received.append((time.monotonic(), ULAW.decode(data[12:])))

    def _send(self) -> None:
        seq, ts, offset = 1, 0, 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            if not self.talking.is_set() or self.remote is None:
                time.sleep(0.02)
                next_at = time.monotonic()
                continue
            pcm = self.frames[offset:offset + 320].ljust(320, b"\0")  # past the end of a one-off: silence
            offset = (offset + 320) % len(self.frames) if self.loop else offset + 320
            header = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, ts & 0xFFFFFFFF, 0x1234)
            self.sock.sendto(header + ULAW.encode(pcm), self.remote)
            self.first_sent = self.first_sent or time.monotonic()
            seq, ts = seq + 1, ts + 160
            next_at += 0.02
            time.sleep(max(0.0, next_at - time.monotonic()))

    def heard(self, start: float, end: float) -> np.ndarray:
        return np.frombuffer(b"".join(pcm for at, pcm in self.received if start <= at < end), "<i2")

    def stream(self) -> np.ndarray:
        """Everything received, frame after frame in arrival order (the IVR sends one frame every 20 ms)."""
        return np.frombuffer(b"".join(pcm for _, pcm in self.received), "<i2")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.sock.close()
