"""The prompt catalogue follows the scripts; audio is rendered once, encoded once per codec."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from aiortp.codecs import get_codec

from ivr.greeting import DEFAULT_DAYPARTS, FIVE_PART_DAYPARTS
from prompts.catalogue import build_catalogue
from prompts.library import FRAME_SAMPLES, PromptLibrary, load_prompts, read_wav_8k

SPEC = (Path(__file__).resolve().parents[2] / "shared" / "spec" / "call-scripts.md")


def test_catalogue_uses_the_scripts_wording_with_the_company_name() -> None:
    texts = build_catalogue("星光", DEFAULT_DAYPARTS, {})
    assert texts["greeting_morning"] == "早上好!星光客服中心,欢迎您的来电。请问有什么可以帮您?"
    assert texts["greeting_normal"] == "您好!星光客服中心,欢迎您的来电。请问有什么可以帮您?"
    assert texts["silent_2"] == "您好!请问有什么可以帮您?"
    assert texts["silent_3"] == "非常抱歉,您的电话没有声音,请您换一部电话再打来,再见!"
    assert texts["greeting_holiday_spring_festival"] == "新年好!星光客服中心,请问有什么可以帮您!"
    assert texts["greeting_holiday_national_day"] == "国庆节快乐!星光客服中心,请问有什么可以帮您!"
    assert all("喂" not in t and "再不说话" not in t for t in texts.values())


@pytest.mark.skipif(not SPEC.exists(), reason="shared/spec not beside the repo")
def test_fixed_prompts_are_quoted_in_the_spec() -> None:
    spec = SPEC.read_text(encoding="utf-8")
    texts = build_catalogue("XX", FIVE_PART_DAYPARTS, {})
    for pid in ("silent_2", "silent_3", "silent_3_alt", "greeting_holiday_new_year", "greeting_holiday_labour_day",
                "greeting_holiday_mid_autumn", "greeting_holiday_national_day"):
        assert texts[pid] in spec, pid


def test_text_override_and_unknown_override() -> None:
    assert build_catalogue("XX", DEFAULT_DAYPARTS, {"hold": "请稍等,{company}"})["hold"] == "请稍等,XX"
    with pytest.raises(KeyError, match="unknown prompts: holdd"):
        build_catalogue("XX", DEFAULT_DAYPARTS, {"holdd": "x"})


def tone_wav(path: Path, rate: int, seconds: float, channels: int = 1) -> None:
    t = np.arange(int(rate * seconds)) / rate
    samples = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    if channels == 2:
        samples = np.repeat(samples, 2)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())


def test_recorded_wav_overrides_tts_and_is_resampled_to_8k(tmp_path: Path) -> None:
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    tone_wav(recorded / "hold.wav", 44100, 1.5, channels=2)
    prompts = load_prompts({"hold": "现在为您查询,请稍等。"}, voice="sit/cmn", rate=240,
                           cache_dir=tmp_path / "cache", recorded_dir=recorded)
    assert prompts["hold"].source.startswith("recorded:")
    assert prompts["hold"].seconds == pytest.approx(1.5, abs=0.01)
    assert not (tmp_path / "cache").exists(), "no TTS rendered for a recorded prompt"


def test_tts_renders_mandarin_once_and_caches_it(tmp_path: Path) -> None:
    kwargs = dict(voice="sit/cmn", rate=240, cache_dir=tmp_path / "cache", recorded_dir=tmp_path / "none")
    first = load_prompts({"silent_2": "您好!请问有什么可以帮您?"}, **kwargs)["silent_2"]
    assert first.source.startswith("tts:")
    assert 1.0 < first.seconds < 8.0
    cached = sorted((tmp_path / "cache").glob("*.wav"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    again = load_prompts({"silent_2": "您好!请问有什么可以帮您?"}, **kwargs)["silent_2"]
    assert again.pcm == first.pcm and cached[0].stat().st_mtime_ns == mtime
    level = np.abs(np.frombuffer(first.pcm, dtype="<i2").astype(np.int32)).mean()
    assert level > 300, "rendered audio is not silence"
    assert read_wav_8k(cached[0]) == first.pcm


def test_library_holds_20ms_frames_per_codec(tmp_path: Path) -> None:
    tone_wav(tmp_path / "hold.wav", 8000, 1.01)
    prompts = load_prompts({"hold": "x"}, voice="sit/cmn", rate=240, cache_dir=tmp_path, recorded_dir=tmp_path)
    library = PromptLibrary(prompts, {0: get_codec(0).encode, 8: get_codec(8).encode})
    for pt in (0, 8):
        frames = library.frames("hold", pt)
        assert len(frames) == 51  # 1.01 s padded up to whole 20 ms frames
        assert {len(f) for f in frames} == {FRAME_SAMPLES}
    assert library.frames("hold", 0) != library.frames("hold", 8)
    assert library.frames("hold", 0) is library.frames("hold", 0), "encoded once, not per call"
