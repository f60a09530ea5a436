"""The prompt catalogue follows the scripts; audio is rendered once, encoded once per codec."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from aiortp.codecs import get_codec

from ivr.config import load_config
from ivr.greeting import DEFAULT_DAYPARTS
from ivr.service import SEAT_GROUPS, SERVICES
from ivr.waiting import wait_prompt, whisper_prompts
from prompts.catalogue import (
    MAX_SALUTATIONS,
    build_catalogue,
    catalogue_for,
    salutation_prompt,
    salutation_texts,
    senior_salutation,
    surname_of,
)
from prompts.library import FRAME_SAMPLES, PromptLibrary, load_prompts, read_wav_8k

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "docs" / "call-scripts.md"


def test_catalogue_uses_the_scripts_wording_with_the_company_name() -> None:
    texts = build_catalogue("星光", DEFAULT_DAYPARTS, {})
    assert texts["greeting_morning"] == "早上好!星光客服中心,欢迎您的来电。请问有什么可以帮您?"
    assert texts["greeting_normal"] == "您好!星光客服中心,欢迎您的来电。请问有什么可以帮您?"
    assert texts["silent_2"] == "您好!请问有什么可以帮您?"
    assert texts["silent_3"] == "非常抱歉,您的电话没有声音,请您换一部电话再打来,再见!"
    assert texts["greeting_holiday_spring_festival"] == "新年好!星光客服中心,请问有什么可以帮您!"
    assert texts["greeting_holiday_national_day"] == "国庆节快乐!星光客服中心,请问有什么可以帮您!"
    assert all("喂" not in t and "再不说话" not in t for t in texts.values())


def test_default_prompts_are_quoted_in_the_service_scripts() -> None:
    scripts = SCRIPTS.read_text(encoding="utf-8")
    texts = build_catalogue("XX", DEFAULT_DAYPARTS, {}, agents=["801"])
    for pid in (
        "greeting_morning", "greeting_normal", "silent_2", "silent_3", "silent_3_alt",
        "greeting_holiday_new_year", "greeting_holiday_spring_festival", "greeting_holiday_labour_day",
        "greeting_holiday_mid_autumn", "greeting_holiday_national_day",
        "hold", "queue_position_1", "queue_position_3", "queue_position_many", "wait_minutes_2", "wait_minutes_30",
        "wait_under_minute", "wait_minutes_many", "no_agent", "callback_offer", "callback_confirmed",
        "transfer", "whisper_callback", "agent_801", "closed_default",
        "survey", "thanks",
    ):
        assert texts[pid] in scripts, pid
    assert texts["menu"].removesuffix("。") in scripts
    assert texts["menu_invalid"].split("。")[0] in scripts
    # greeting by name: the salutation, then the greeting of the hour
    assert f"{senior_salutation('张敏', 'male')},{texts['greeting_normal']}" in scripts
    assert "".join(texts[p] for p in whisper_prompts("senior", "consulting")) in scripts
    assert texts["greeting_morning"].replace("早上好", "上午好") not in scripts  # the five-part words are configuration


def test_the_service_scripts_stand_alone() -> None:
    scripts = SCRIPTS.read_text(encoding="utf-8").lower()
    for outside in ("../", "shared/", "seeds/"):
        assert outside not in scripts, outside


def test_positions_and_minutes_are_counted_the_mandarin_way() -> None:
    texts = build_catalogue("XX", DEFAULT_DAYPARTS, {})
    # position 1 is the head of the queue (ivr.acd.Acd.position): nobody ahead
    assert texts["queue_position_1"] == "您已排在第一位,请您稍候。"
    assert texts["queue_position_2"] == "您前面还有一位客户在等待,请您稍候。"
    assert texts["queue_position_3"] == "您前面还有两位客户在等待,请您稍候。"
    assert texts["queue_position_9"] == "您前面还有八位客户在等待,请您稍候。"
    assert texts["wait_minutes_2"] == "预计等待时间约两分钟。"
    assert texts["wait_minutes_10"] == "预计等待时间约十分钟。"
    assert texts["wait_minutes_25"] == "预计等待时间约二十五分钟。"
    assert texts["wait_under_minute"] == "预计等待时间不到一分钟。"
    assert not any("二位" in t or "二分钟" in t.replace("十二分钟", "") for t in texts.values())


def test_every_wait_estimate_has_its_prompt() -> None:
    texts = build_catalogue("XX", DEFAULT_DAYPARTS, {})
    for seconds in range(0, 40 * 60, 15):
        assert wait_prompt(seconds) in texts, seconds


@pytest.mark.parametrize(("key", "words"), [("#", "请按井号键"), ("*", "请按星号键"), ("9", "请按9")])
def test_callback_offer_names_the_configured_key(key: str, words: str) -> None:
    texts = build_catalogue("XX", DEFAULT_DAYPARTS, {}, callback_key=key)
    assert texts["callback_offer"] == f"如需稍后给您回电,{words}。"


def test_agents_hear_tier_service_and_callback_whispers() -> None:
    texts = build_catalogue("XX", DEFAULT_DAYPARTS, {})
    for tier in SEAT_GROUPS:
        for service in SERVICES:
            for callback in (False, True):
                assert all(pid in texts for pid in whisper_prompts(tier, service, callback))
    assert [texts[p] for p in whisper_prompts("senior", "consulting", True)] == ["高端客户,", "业务咨询。", "回拨。"]
    assert "".join(texts[p] for p in whisper_prompts("junior", "complaint")) == "低端客户,投诉处理。"


def test_closed_messages_follow_the_configured_hours(tmp_path: Path) -> None:
    conf = tmp_path / "sip.conf"
    conf.write_text(
        "[general]\nnumbers = 95000, 4008000000\n"
        "[hours]\ndefault = 08:00-22:00\nsenior = 00:00-24:00\n"
        "4008000000 = mon-fri 08:30-17:30, sat-sun closed, holiday closed\n",
        encoding="utf-8",
    )
    texts = catalogue_for(load_config(conf))
    assert texts["closed_default"] == "您好,现在是非工作时间,我们的服务时间是每天八点到二十二点,请您在服务时间内再次来电,谢谢!再见!"
    assert "我们的服务时间是周一至周五八点半到十七点半,节假日休息," in texts["closed_4008000000"]
    assert "closed_senior" not in texts, "a schedule that never closes needs no closed message"


def test_example_config_renders_a_reasonable_number_of_prompts() -> None:
    # TTS takes about 20 ms a prompt on first start; the catalogue must stay small
    assert len(catalogue_for(load_config(ROOT / "sip.conf.example"))) < 100


@pytest.mark.parametrize(
    ("name", "gender", "salutation"),
    [
        ("张敏", "male", "张先生"),
        ("张敏", "female", "张女士"),
        ("王小明", "male", "王先生"),
        ("欧阳修", "male", "欧阳先生"),  # compound surname
        ("司马相如", "male", "司马先生"),
        ("上官婉儿", "female", "上官女士"),
        (" 李强 ", "male", "李先生"),
        ("张敏", None, None),  # "先生/女士" cannot be spoken: unknown title, normal greeting
        ("张敏", "other", None),
        ("", "male", None),
        (None, "male", None),
        ("张", "male", None),  # surname alone
        ("欧阳", "male", None),
        ("John Smith", "male", None),
        ("Zhang Min", "male", None),
        ("阿卜杜·热合曼", "male", None),  # transliterated, with a separator dot
        ("陈李淑贞", "female", None),  # four characters, no compound surname: don't guess
        ("张 敏", "male", None),
        ("张敏2", "male", None),
        ("星光科技有限公司", "male", None),
        ("曾国藩", "male", None),  # 曾 as a surname is Zēng: the voice would misread it
        ("单田芳", "male", None),  # 单 Shàn
    ],
)
def test_senior_salutation_by_surname(name: str | None, gender: str | None, salutation: str | None) -> None:
    assert senior_salutation(name, gender) == salutation
    texts = salutation_texts([(name, gender)])
    assert texts == ({} if salutation is None else {f"salutation_{salutation}": salutation})


def test_one_salutation_prompt_per_title_not_per_customer() -> None:
    people = [("张敏", "male"), ("张伟", "male"), ("张丽", "female"), ("欧阳修", "male"), ("John", "male"), ("李强", None)]
    assert salutation_texts(people) == {
        "salutation_张先生": "张先生", "salutation_张女士": "张女士", "salutation_欧阳先生": "欧阳先生",
    }
    assert salutation_prompt("张先生") == "salutation_张先生"


def test_salutations_are_bounded_keeping_the_most_frequent() -> None:
    han = [chr(c) for c in range(0x4E00, 0x4E00 + 3 * MAX_SALUTATIONS) if chr(c) not in "单曾解仇区查朴盖华任种繁员乐覃缪莘尉隗俟長长秘召折藏翟祭句那"]
    people = [(f"{ch}敏", "male") for ch in han] + [("王芳", "female")] * 3
    texts = salutation_texts(people)
    assert len(texts) == MAX_SALUTATIONS
    assert "salutation_王女士" in texts


def test_salutations_join_the_catalogue_only_when_greeting_by_name_is_on(tmp_path: Path) -> None:
    people = [("张敏", "female")]
    off = load_config(ROOT / "sip.conf.example")
    assert not any(pid.startswith("salutation_") for pid in catalogue_for(off, people))
    conf = tmp_path / "sip.conf"
    conf.write_text("[tiers]\ngreet_senior_by_name = yes\n", encoding="utf-8")
    assert catalogue_for(load_config(conf), people)["salutation_张女士"] == "张女士"


def test_surname_of_fullwidth_and_compound() -> None:
    assert surname_of("ＡＢ") is None
    assert surname_of("诸葛亮") == "诸葛"
    assert surname_of("东方不败") == "东方"


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


def test_ivrs_starting_at_once_render_into_one_cache_without_tripping_over_each_other(tmp_path: Path) -> None:
    """Workers on one host, or IVRs a test starts together, share the prompt cache: each renders to a
    file of its own and replaces the cached WAV whole, so none reads another's half-written file."""
    import subprocess
    import sys

    code = ("import sys, pathlib; sys.path.insert(0, sys.argv[1]); from prompts.library import load_prompts; "
            "p = load_prompts({f'p{i}': f'您好,{i}号' for i in range(6)}, voice='sit/cmn', rate=240, "
            "cache_dir=pathlib.Path(sys.argv[2]), recorded_dir=pathlib.Path(sys.argv[2]) / 'none'); "
            "assert all(x.pcm for x in p.values())")
    root = str(Path(__file__).resolve().parent.parent)
    procs = [subprocess.Popen([sys.executable, "-c", code, root, str(tmp_path / "cache")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert not list((tmp_path / "cache").glob("*.raw.wav")) and not list((tmp_path / "cache").glob("*.tmp"))
