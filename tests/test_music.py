"""Music on hold: the generated loop, ops' WAVs of any format, shared frames, resuming cursors."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest
from aiortp.codecs import get_codec

from ivr.config import QueueConfig
from prompts.library import FRAME_SAMPLES, SAMPLE_RATE
from prompts.music import (
    DEFAULT_LEVEL_DBFS,
    MUSIC_KEY,
    MusicError,
    MusicOnHold,
    generate_music,
    load_music,
    music_files,
    read_wav_mono,
)

ENCODERS = {0: get_codec(0).encode, 8: get_codec(8).encode}


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def dbfs(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x / 32768))) + 1e-12))


@pytest.fixture(scope="module")
def default_pcm(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return load_music(None, tmp_path_factory.mktemp("cache"))


def test_generated_music_is_20_to_30_seconds_and_the_same_every_time() -> None:
    x = generate_music()
    assert 20 <= x.size / SAMPLE_RATE <= 30
    assert np.array_equal(x, generate_music())
    assert np.max(np.abs(x)) <= 1.0


def test_generated_music_is_never_silent_in_any_2_second_window(default_pcm: bytes) -> None:
    x = samples(default_pcm)
    window = 2 * SAMPLE_RATE
    for start in range(0, x.size, SAMPLE_RATE // 2):  # every 2 s window, sliding by 0.5 s, round the loop
        part = np.take(x, np.arange(start, start + window), mode="wrap")
        assert dbfs(part) > -40, f"quiet 2 s window at {start / SAMPLE_RATE:.1f} s"


def test_generated_music_is_at_a_modest_level(default_pcm: bytes) -> None:
    assert QueueConfig().music_volume == DEFAULT_LEVEL_DBFS
    x = samples(default_pcm)
    assert -26 < dbfs(x) < -22
    assert np.max(np.abs(x)) <= 0.5 * 32768 + 1  # -6 dBFS peak


def test_loop_seam_is_as_smooth_as_the_music_itself(default_pcm: bytes) -> None:
    x = samples(default_pcm)
    steps = np.abs(np.diff(x))
    seam = abs(x[0] - x[-1])
    assert seam <= np.percentile(steps, 99), (seam, np.percentile(steps, 99))
    # and the level does not jump: the last and first 100 ms are alike
    tail, head = x[-800:], x[:800]
    assert abs(dbfs(tail) - dbfs(head)) < 6


def test_generated_music_is_written_once_into_the_cache(tmp_path: Path) -> None:
    first = load_music(None, tmp_path)
    written = list(tmp_path.glob("music-default-*.wav"))
    assert len(written) == 1
    mtime = written[0].stat().st_mtime_ns
    assert load_music(None, tmp_path) == first
    assert written[0].stat().st_mtime_ns == mtime


def test_frames_are_shared_160_samples_per_codec(default_pcm: bytes) -> None:
    music = MusicOnHold(default_pcm, ENCODERS)
    assert music.frame_count == len(default_pcm) // (2 * FRAME_SAMPLES)
    for pt in (0, 8):
        frames = music.frames(pt)
        assert len(frames) == music.frame_count
        assert {len(f) for f in frames} == {FRAME_SAMPLES}
    assert music.frames(0) != music.frames(8)
    assert music.frames(0) is music.frames(0)
    # every 2 s of encoded frames decodes to audible music
    decoded = samples(get_codec(0).decode(b"".join(music.frames(0))))
    for start in range(0, decoded.size - 2 * SAMPLE_RATE, 2 * SAMPLE_RATE):
        assert dbfs(decoded[start : start + 2 * SAMPLE_RATE]) > -40


def test_cursor_resumes_where_an_announcement_interrupted_it(default_pcm: bytes) -> None:
    music = MusicOnHold(default_pcm, ENCODERS)
    cursor = music.cursor()
    heard = [cursor.next_frame(0) for _ in range(250)]  # 5 s of music
    assert heard == list(music.frames(0)[:250])
    # "您前面还有两位客户…" plays for 3 s: the cursor is not advanced meanwhile
    assert cursor.index == 250
    assert cursor.next_frame(8) == music.frames(8)[250]  # same place, whichever codec
    other = music.cursor()
    assert other.next_frame(0) == music.frames(0)[0], "each call has its own place"


def test_cursor_wraps_round_the_loop(default_pcm: bytes) -> None:
    music = MusicOnHold(default_pcm, ENCODERS)
    cursor = music.cursor(music.frame_count - 1)
    assert cursor.next_frame(0) == music.frames(0)[-1]
    assert cursor.next_frame(0) == music.frames(0)[0]


def write_wav(path: Path, x: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        if width == 2:
            w.writeframes(np.round(x * 32767).astype("<i2").tobytes())
        else:
            w.writeframes((np.round(x * 127) + 128).astype(np.uint8).tobytes())


def stereo_tone(rate: int, seconds: float, freq: float = 440.0, amplitude: float = 0.8) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    left = amplitude * np.sin(2 * np.pi * freq * t)
    right = amplitude * np.sin(2 * np.pi * freq * t + 0.3)
    return np.stack([left, right], axis=1).reshape(-1)


def test_ops_music_44k_stereo_is_converted_to_8k_at_the_music_level(tmp_path: Path) -> None:
    path = tmp_path / "hold.wav"
    write_wav(path, stereo_tone(44100, 3.0), 44100, channels=2)
    pcm = load_music(path, tmp_path / "cache", level_dbfs=-20)
    x = samples(pcm)
    assert x.size == pytest.approx(3 * SAMPLE_RATE, abs=2)
    assert -21 < dbfs(x) < -19
    spectrum = np.abs(np.fft.rfft(x))
    assert np.argmax(spectrum) * SAMPLE_RATE / x.size == pytest.approx(440, abs=2)
    assert abs(x[0]) < 50 and abs(x[-1]) < 50, "faded in and out: the loop does not click"
    assert not (tmp_path / "cache").exists(), "ops' music is converted, nothing generated"


def test_folder_of_wavs_in_name_order_any_format(tmp_path: Path) -> None:
    folder = tmp_path / "moh"
    folder.mkdir()
    write_wav(folder / "b.wav", stereo_tone(22050, 1.0, 880), 22050, channels=2)
    write_wav(folder / "a.wav", 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000), 16000, width=1)  # 8-bit
    # 32-bit float WAV, 48 kHz (the wave module cannot write it: build the header by hand)
    t = np.arange(48000) / 48000
    data = (0.5 * np.sin(2 * np.pi * 660 * t)).astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 48000, 48000 * 4, 4, 32)
    (folder / "c.WAV").write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + 16 + 8 + len(data)) + b"WAVE"
                                   + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data)
    (folder / "README.txt").write_text("not music")
    assert [p.name for p in music_files(folder)] == ["a.wav", "b.wav", "c.WAV"]
    x = samples(load_music(folder, tmp_path / "cache"))
    assert x.size == pytest.approx(3 * SAMPLE_RATE, abs=3)

    def peak_hz(part: np.ndarray) -> float:
        return float(np.argmax(np.abs(np.fft.rfft(part))) * SAMPLE_RATE / part.size)

    assert peak_hz(x[:SAMPLE_RATE]) == pytest.approx(440, abs=2)
    assert peak_hz(x[SAMPLE_RATE : 2 * SAMPLE_RATE]) == pytest.approx(880, abs=2)
    assert peak_hz(x[2 * SAMPLE_RATE :]) == pytest.approx(660, abs=2)
    _, rate = read_wav_mono(folder / "c.WAV")
    assert rate == 48000


def test_24_bit_extensible_wav_is_read(tmp_path: Path) -> None:
    rate, t = 44100, np.arange(44100) / 44100
    x = np.round(0.5 * np.sin(2 * np.pi * 440 * t) * 2**23).astype(np.int32)
    stereo = np.repeat(x, 2)
    data = np.stack([stereo & 0xFF, (stereo >> 8) & 0xFF, (stereo >> 16) & 0xFF], axis=1).astype(np.uint8).tobytes()
    # WAVE_FORMAT_EXTENSIBLE with the PCM sub-format
    fmt = struct.pack("<HHIIHH", 0xFFFE, 2, rate, rate * 6, 6, 24) + struct.pack("<HHI", 22, 24, 3) + struct.pack("<H", 1) + bytes(14)
    path = tmp_path / "hold24.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
                     + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)
    samples_, got_rate = read_wav_mono(path)
    assert got_rate == rate
    assert np.max(samples_) == pytest.approx(0.5, abs=1e-3) and np.min(samples_) == pytest.approx(-0.5, abs=1e-3)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"ID3\x03\x00 this is an mp3", "not a WAV file"),
        (b"", "not a WAV file"),
        (b"RIFF\x04\x00\x00\x00WAVE", "no fmt or data chunk"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + struct.pack("<HHIIHH", 85, 1, 8000, 1000, 1, 0)
         + b"data\x00\x00\x00\x00", "not supported"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
         + b"data\x00\x00\x00\x00", "no audio"),
    ],
)
def test_bad_music_file_names_the_file_and_the_key(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "hold.wav"
    path.write_bytes(content)
    with pytest.raises(MusicError) as err:
        load_music(path, tmp_path)
    assert str(err.value).startswith(f"{path}: {MUSIC_KEY}: ")
    assert reason in str(err.value)


def test_missing_music_and_empty_folder_are_errors(tmp_path: Path) -> None:
    with pytest.raises(MusicError, match="no such file or folder"):
        music_files(tmp_path / "nope.wav")
    with pytest.raises(MusicError, match="no .wav files"):
        music_files(tmp_path)


def test_silent_music_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "silence.wav"
    write_wav(path, np.zeros(8000), 8000)
    with pytest.raises(MusicError, match="silent"):
        load_music(path, tmp_path)
