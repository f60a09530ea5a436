"""Music on hold: one loop, encoded once per codec, shared by every waiting caller.

The default is a short original piece the IVR composes itself (numpy, no
recording, nothing copyrighted): a soft three-voice pad under a slow
pentatonic chime, 24 s, written at first start into the prompt cache
(var/prompts) and read back on later starts. Every note and the pad are
laid into a circular buffer (a tail that runs past the end continues at the
start), so the loop has no seam.

Ops may provide their own music instead (`[queues] music` = a WAV file or a
folder of WAVs, played in name order): any rate, channel count and PCM or
float sample format. It is converted once at start — mixed to mono,
resampled to 8 kHz with soxr (as prompts/library.py does for recorded
prompts), brought to `[queues] music_volume` (RMS, dBFS) with its peaks kept
below clipping, and faded in and out over 20 ms per file so neither the
joins nor the loop click.

The result is 20 ms G.711 frames (160 samples) per payload type. A call
keeps a `MusicCursor`: the frame index it reached, so an announcement
("您前面还有两位客户…") pauses the music and the caller hears it resume
where it stopped, not from the top.
"""

from __future__ import annotations

import struct
import wave
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import soxr

from prompts.library import FRAME_SAMPLES, SAMPLE_RATE, write_wav_8k

Encoder = Callable[[bytes], bytes]

MUSIC_KEY = "[queues] music"
DEFAULT_LEVEL_DBFS = -24.0  # RMS: background level under a voice prompt at about -16 dBFS
PEAK_LIMIT = 0.5  # -6 dBFS: headroom for G.711 companding
FADE_SECONDS = 0.02
MAX_SECONDS = 15 * 60  # longer music is refused (memory: two codecs' frames held for every call to share)
GENERATOR_VERSION = 1  # bump when generate_music changes, so a cached old render is replaced
LOOP_SECONDS = 24.0


class MusicError(ValueError):
    """The music for `[queues] music` cannot be used; names the file and the key."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {MUSIC_KEY}: {reason}")
        self.path, self.reason = path, reason


# --- reading any WAV ---------------------------------------------------------------

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


def _parse_wav(path: Path, data: bytes) -> tuple[int, int, int, int, memoryview]:
    """(format, channels, rate, bits, sample bytes) of a RIFF/WAVE file; MusicError if it is not one we read."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise MusicError(path, "not a WAV file (no RIFF/WAVE header); convert it to WAV")
    fmt: tuple[int, int, int, int] | None = None
    samples: memoryview | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = memoryview(data)[pos + 8 : pos + 8 + size]
        if chunk == b"fmt ":
            if len(body) < 16:
                raise MusicError(path, "broken WAV header (short fmt chunk)")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
            if tag == _EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack_from("<H", body, 24)[0]  # the sub-format GUID starts with the format tag
            fmt = (tag, channels, rate, bits)
        elif chunk == b"data":
            samples = body
        pos += 8 + size + (size & 1)  # chunks are padded to even sizes
    if fmt is None or samples is None:
        raise MusicError(path, "broken WAV file (no fmt or data chunk)")
    tag, channels, rate, bits = fmt
    if (tag, bits) not in ((_PCM, 8), (_PCM, 16), (_PCM, 24), (_PCM, 32), (_FLOAT, 32), (_FLOAT, 64)):
        raise MusicError(path, f"WAV sample format {tag}/{bits}-bit is not supported; use PCM or float WAV")
    if channels < 1 or not 4000 <= rate <= 384_000:
        raise MusicError(path, f"WAV with {channels} channels at {rate} Hz cannot be music")
    frame_bytes = channels * bits // 8
    usable = len(samples) - len(samples) % frame_bytes
    if usable == 0:
        raise MusicError(path, "WAV file has no audio")
    if usable // frame_bytes / rate > MAX_SECONDS:
        raise MusicError(path, f"longer than {MAX_SECONDS // 60} minutes; a loop of a few minutes is plenty")
    return tag, channels, rate, bits, samples[:usable]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MusicError(path, f"cannot read: {exc.strerror or exc}") from None


def read_wav_mono(path: Path) -> tuple[np.ndarray, int]:
    """Samples as float32 mono in [-1, 1], and the rate."""
    tag, channels, rate, bits, raw = _parse_wav(path, _read(path))
    x: np.ndarray
    if tag == _FLOAT:
        x = np.frombuffer(raw, dtype="<f4" if bits == 32 else "<f8").astype(np.float32)
    elif bits == 8:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128) / 128  # 8-bit WAV is unsigned
    elif bits == 24:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / 2**23
    else:
        x = np.frombuffer(raw, dtype="<i2" if bits == 16 else "<i4").astype(np.float32) / 2 ** (bits - 1)
    x = np.nan_to_num(x.reshape(-1, channels).mean(axis=1), nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(x, -1.0, 1.0), rate


def music_files(source: Path) -> list[Path]:
    """The WAVs a `[queues] music` setting names (a file, or a folder's *.wav in name order), headers checked."""
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() == ".wav" and p.is_file())
        if not files:
            raise MusicError(source, "the folder has no .wav files")
    elif source.exists():
        files = [source]
    else:
        raise MusicError(source, "no such file or folder")
    for path in files:
        _parse_wav(path, _read(path))
    return files


# --- the default piece ----------------------------------------------------------------

# A major pentatonic around G4-E6: inside the telephone band (300-3400 Hz), no dissonance.
_PENTATONIC = (392.00, 440.00, 493.88, 587.33, 659.25, 783.99, 880.00, 987.77, 1174.66, 1318.51)
_PAD_CHORDS = ((392.00, 493.88, 587.33), (440.00, 523.25, 659.25), (349.23, 440.00, 523.25), (392.00, 493.88, 587.33))


def generate_music(seconds: float = LOOP_SECONDS, rate: int = SAMPLE_RATE) -> np.ndarray:
    """The default hold music: float32 samples in [-1, 1], one seamless loop, the same on every run."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    out = np.zeros(n, dtype=np.float64)
    # Pad: one chord per quarter of the loop, raised-cosine cross-fades, a slow shimmer.
    # The fade of the last chord wraps round into the first, so the pad is continuous at the seam.
    quarter = n // len(_PAD_CHORDS)
    fade = int(1.5 * rate)
    for i, chord in enumerate(_PAD_CHORDS):
        env = np.zeros(n)
        idx = (np.arange(-fade // 2, quarter + fade // 2) + i * quarter) % n
        ramp = np.ones(quarter + 2 * (fade // 2))
        ramp[:fade] = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
        ramp[-fade:] = ramp[:fade][::-1]
        env[idx] = ramp
        for k, f in enumerate(chord):
            # whole cycles per loop, so each partial ends where it began
            f = round(f * seconds) / seconds
            out += 0.10 * env * np.sin(2 * np.pi * f * t + k) * (1 + 0.15 * np.sin(2 * np.pi * t / seconds * (k + 2)))
    # Chime: 32 struck tones (fundamental and octave, both under 3400 Hz, exponential decay)
    # laid into a circular buffer.
    rng = np.random.default_rng(20261127)
    beat = n // 32
    decay = np.exp(-np.arange(3 * rate) / (0.6 * rate))
    strike = np.minimum(1.0, np.arange(3 * rate) / (0.012 * rate))  # 12 ms attack: soft, no click
    note_t = np.arange(3 * rate) / rate
    step = 4
    for b in range(32):
        if b % 8 == 7:
            continue  # a rest at the end of each bar: calm, not busy
        step = int(np.clip(step + rng.choice((-2, -1, 1, 2)), 0, len(_PENTATONIC) - 1))
        f = _PENTATONIC[step]
        note = strike * decay * (np.sin(2 * np.pi * f * note_t) + 0.15 * np.sin(2 * np.pi * 2 * f * note_t))
        idx = (b * beat + np.arange(note.size)) % n
        np.add.at(out, idx, 0.22 * note)
    normalised: np.ndarray = (out / np.max(np.abs(out))).astype(np.float32)
    return normalised


# --- conversion -------------------------------------------------------------------------


def _fade(x: np.ndarray, rate: int) -> np.ndarray:
    k = min(int(FADE_SECONDS * rate), x.size // 2)
    if k:
        ramp = np.linspace(0.0, 1.0, k, dtype=np.float32)
        x = x.copy()
        x[:k] *= ramp
        x[-k:] *= ramp[::-1]
    return x


def _level(x: np.ndarray, level_dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    if rms < 1e-5:
        return x  # silence stays silence; ops will hear it and fix the file
    gain = 10 ** (level_dbfs / 20) / rms
    peak = float(np.max(np.abs(x)))
    gain = min(gain, PEAK_LIMIT / peak)
    return x * gain


def _to_pcm(x: np.ndarray) -> bytes:
    pcm: bytes = np.round(np.clip(x, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    return pcm


def convert_music(files: list[Path], level_dbfs: float = DEFAULT_LEVEL_DBFS) -> bytes:
    """Ops' WAVs as one 8 kHz int16 mono loop, at the music level, each file faded in and out."""
    parts = []
    for path in files:
        x, rate = read_wav_mono(path)
        if rate != SAMPLE_RATE:
            x = soxr.resample(x, rate, SAMPLE_RATE).astype(np.float32)
        parts.append(_fade(x, SAMPLE_RATE))
    joined = np.concatenate(parts)
    if np.sqrt(np.mean(np.square(joined, dtype=np.float64))) < 1e-4:
        raise MusicError(files[0] if len(files) == 1 else files[0].parent, "the music is silent")
    return _to_pcm(_level(joined, level_dbfs))


def load_music(source: Path | None, cache_dir: Path, level_dbfs: float = DEFAULT_LEVEL_DBFS) -> bytes:
    """8 kHz int16 mono PCM of the hold music: ops' WAV(s) if `source` is set, else the generated piece."""
    if source is not None:
        return convert_music(music_files(source), level_dbfs)
    cached = cache_dir / f"music-default-v{GENERATOR_VERSION}-{-level_dbfs:g}dB.wav"
    if cached.exists():
        with wave.open(str(cached), "rb") as wav:
            if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (SAMPLE_RATE, 1, 2):
                return wav.readframes(wav.getnframes())
    pcm = _to_pcm(_level(generate_music(), level_dbfs))
    write_wav_8k(cached, pcm)
    return pcm


# --- frames and cursors -----------------------------------------------------------------


class MusicOnHold:
    """The loop as 20 ms frames per payload type, encoded once, shared by every call."""

    def __init__(self, pcm: bytes, encoders: Mapping[int, Encoder]) -> None:
        frame_bytes = FRAME_SAMPLES * 2
        usable = len(pcm) - len(pcm) % frame_bytes  # whole frames only: no padding silence at the seam
        if usable == 0:
            raise ValueError("music shorter than one frame")
        self.pcm = pcm[:usable]
        self._frames: dict[int, tuple[bytes, ...]] = {}
        for pt, encode in encoders.items():
            encoded = encode(self.pcm)
            step = len(encoded) * frame_bytes // usable
            self._frames[pt] = tuple(encoded[i : i + step] for i in range(0, len(encoded), step))
        self.frame_count = usable // frame_bytes

    @property
    def seconds(self) -> float:
        return self.frame_count * FRAME_SAMPLES / SAMPLE_RATE

    def frames(self, payload_type: int) -> tuple[bytes, ...]:
        return self._frames[payload_type]

    def cursor(self, start: int = 0) -> MusicCursor:
        return MusicCursor(self, start % self.frame_count)


class MusicCursor:
    """Where one call is in the loop; it stays put while an announcement plays, then carries on."""

    __slots__ = ("index", "music")

    def __init__(self, music: MusicOnHold, index: int = 0) -> None:
        self.music, self.index = music, index

    def next_frame(self, payload_type: int) -> bytes:
        frame = self.music.frames(payload_type)[self.index]
        self.index = (self.index + 1) % self.music.frame_count
        return frame
