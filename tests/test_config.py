"""sip.conf loading: the example is valid and complete; bad files name file, line, key and reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ivr.config import _KNOWN, ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "sip.conf.example"


def test_example_config_loads_with_the_documented_defaults() -> None:
    config = load_config(EXAMPLE)
    g = config.general
    assert (g.bind, g.port, g.ring_seconds, g.timezone) == ("127.0.0.1", 5060, 6.0, "Asia/Shanghai")
    assert g.payload_types == [0, 8]
    assert config.silence.routine.prompts == ("{greeting}", "silent_2", "silent_3")
    assert config.silence.routine.wait_seconds == 5.0
    assert config.holidays_file == ROOT / "holidays.toml.example"
    assert config.database_url.startswith("sqlite:///") and config.database_url.endswith("var/hotline.db")


def test_example_config_documents_every_setting() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for section, keys in _KNOWN.items():
        assert f"[{section}]" in text
        for key in keys:
            if key.isdigit():  # [menu] and [survey] digit keys: a few are shown, all are alike
                continue
            assert re.search(rf"^;?{key} = ", text, re.M), f"[{section}] {key} is not in sip.conf.example"


def config_with(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sip.conf"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "line", "key", "reason"),
    [
        ("[general]\nbind = 127.0.0.1\nport = 50x0\n", 3, "[general] port", "is not a whole number from 1 to 65535"),
        ("[general]\nring_seconds = 12\n", 2, "[general] ring_seconds", "from 0 to 11"),
        ("[general]\ncodecs = g729\n", 2, "[general] codecs", "supported codecs are pcmu, pcma"),
        ("[general]\ntimezone = Mars/Olympus\n", 2, "[general] timezone", "unknown IANA time zone"),
        ("[general]\nrtp_port_min = 30000\nrtp_port_max = 20000\n", 3, "[general] rtp_port_max", "must be above rtp_port_min"),
        ("[silence]\n\nattempts = 2\n", 3, "[silence] attempts", "from 3 to 10"),
        ("[general]\nprot = 5060\n", 2, "[general] prot", "unknown key"),
        ("[genral]\nport = 5060\n", 1, "[genral]", "unknown section"),
        ("[general]\nport = 5060\nport = 5061\n", 3, "[general] port", "set twice"),
        ("port = 5060\n", 1, "file", "must follow a [section] header"),
        ("[greeting]\ndayparts = 08:00 morning 早上好\n", 2, "[greeting] dayparts", "must start at 00:00"),
        ("[holidays]\nfile = missing.toml\n", 2, "[holidays] file", "file not found"),
        ("[queues]\nmusic = moh/missing.wav\n", 2, "[queues] music", "missing.wav: no such file or folder"),
        ("[queues]\nmusic_volume = 0\n", 2, "[queues] music_volume", "from -40 to -10"),
        ("[queues]\nmax_wait_seconds = -1\n", 2, "[queues] max_wait_seconds", "from 0 to 7200"),
        ("[queues]\ncallback_key = ##\n", 2, "[queues] callback_key", "one key: 0-9, * or #"),
        ("[queues]\nannounce_wait = maybe\n", 2, "[queues] announce_wait", "write yes or no"),
        ("[queues]\ncomplaint_group = vip\n", 2, "[queues] complaint_group", "choose senior, middle, junior"),
        ("[hours]\ndefault = 8-22\n", 2, "[hours] default", "expected a window like 08:00-22:00"),
        ("[hours]\ntimezone = Asia/Beijing\n", 2, "[hours] timezone", "unknown IANA time zone"),
        ("[hours]\nvip = 00:00-24:00\n", 2, "[hours] vip", "unknown key"),
        ("[hours]\n\n12345 = 08:00-22:00\n", 3, "[hours] 12345", "not a hotline number"),
        ("[callbacks]\nmax_attempts = 0\n", 2, "[callbacks] max_attempts", "from 1 to 10"),
        ("[callbacks]\nretry_seconds = 5\n", 2, "[callbacks] retry_seconds", "from 30 to 86400"),
        ("[websocket]\nenabled = yes\nport = 6667\n", 3, "[websocket] port", "Chromium and Firefox refuse to open it"),
        ("[queues]\nretry_seconds = 61\n", 2, "[queues] retry_seconds", "from 0 to 60"),
        ("[general]\nport = 5070\n[801]\ntype = agent\nseat_group = junior\nhost = 127.0.0.1:5070\n", 6, "[801] host",
         "is this IVR's own address"),
        ("[general]\nbind = 0.0.0.0\nadvertised_ip = 10.0.0.5\n[801]\ntype = agent\nseat_group = junior\n"
         "host = 127.0.0.1:5060\n", 7, "[801] host", "is this IVR's own address"),
        ("[tiers]\ngreet_senior_by_name = sometimes\n", 2, "[tiers] greet_senior_by_name", "write yes or no"),
        ("[801]\ntype = agent\nseat_group = senior\nsecret = pw\ndigest = none\n", 5, "[801] digest",
         "choose strict, md5, legacy"),
    ],
)
def test_bad_setting_names_file_line_key_and_reason(tmp_path: Path, text: str, line: int, key: str, reason: str) -> None:
    path = config_with(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (err.value.file, err.value.line, err.value.key) == (path, line, key)
    assert reason in str(err.value)
    assert str(err.value).startswith(f"{path}:{line}: {key}: ")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.conf")


def test_run_ivr_refuses_a_bad_config_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import run_ivr

    path = config_with(tmp_path, "[general]\nport = 0\n")
    assert run_ivr.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: [general] port:" in err


def test_waiting_callers_settings_default_to_music_estimates_and_callbacks() -> None:
    config = load_config(EXAMPLE)
    q = config.queues
    assert (q.music, q.music_volume, q.announce_wait) == (None, -24.0, True)
    assert (q.max_wait_seconds, q.callback_key, q.mean_handle_seconds, q.complaint_group) == (300.0, "#", 180.0, None)
    assert (config.callbacks.max_attempts, config.callbacks.retry_seconds) == (3, 300.0)
    assert config.greet_senior_by_name is False
    assert config.hours.timezone == "Asia/Shanghai" and set(config.hours.schedules) == {"default"}


def test_waiting_callers_settings_are_read(tmp_path: Path) -> None:
    import wave

    music = tmp_path / "moh"
    music.mkdir()
    with wave.open(str(music / "a.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(b"\x01\x00" * 2 * 4410)
    path = config_with(
        tmp_path,
        "[general]\nnumbers = 95000, 4008000000\ntimezone = Asia/Shanghai\n"
        "[hours]\ndefault = 08:00-22:00\nsenior = 00:00-24:00\n4008000000 = mon-fri 09:00-18:00, holiday closed\n"
        "[queues]\nmusic = moh\nmusic_volume = -30\nannounce_wait = no\nmax_wait_seconds = 0\n"
        "callback_key = *\ncomplaint_group = senior\nmean_handle_seconds = 240\n"
        "[callbacks]\nmax_attempts = 5\nretry_seconds = 120\n"
        "[tiers]\ngreet_senior_by_name = yes\n",
    )
    config = load_config(path)
    q = config.queues
    assert (q.music, q.music_volume, q.announce_wait, q.max_wait_seconds) == (music, -30.0, False, 0.0)
    assert (q.callback_key, q.complaint_group, q.mean_handle_seconds) == ("*", "senior", 240.0)
    assert (config.callbacks.max_attempts, config.callbacks.retry_seconds) == (5, 120.0)
    assert config.greet_senior_by_name is True
    assert config.hours.timezone == "Asia/Shanghai"
    assert set(config.hours.schedules) == {"default", "senior", "4008000000"}
    assert config.hours.schedules["4008000000"].holiday == ()


def test_unreadable_music_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    (tmp_path / "hold.mp3").write_bytes(b"ID3\x03\x00 not a wav")
    path = config_with(tmp_path, "[queues]\n\nmusic = hold.mp3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}:3: [queues] music: {tmp_path / 'hold.mp3'}: not a WAV file")


def test_sections_of_other_readers_are_left_to_them(tmp_path: Path) -> None:
    path = config_with(tmp_path, "[general]\nport = 5070\n[desk]\nport = 8080\nanything = goes\n")
    assert load_config(path).general.port == 5070


def test_sip_transports_default_to_udp_and_tcp_with_stream_limits() -> None:
    g = load_config(EXAMPLE).general
    assert g.transports == frozenset({"udp", "tcp"})
    assert (g.tls_port, g.tls_certificate, g.tls_key) == (5061, None, None)
    assert (g.tcp_idle_seconds, g.max_connections) == (300.0, 1000)


def test_tls_reads_its_certificate_and_key_relative_to_the_config(tmp_path: Path) -> None:
    from .test_e2e_tcp import self_signed_certificate

    self_signed_certificate(tmp_path)
    path = config_with(tmp_path, "[general]\ntransports = udp, TCP, tls\ntls_port = 5071\n"
                                 "tls_certificate = cert.pem\ntls_key = key.pem\ntcp_idle_seconds = 60\n"
                                 "max_connections = 20\n")
    g = load_config(path).general
    assert g.transports == frozenset({"udp", "tcp", "tls"})
    assert (g.tls_port, g.tls_certificate, g.tls_key) == (5071, tmp_path / "cert.pem", tmp_path / "key.pem")
    assert (g.tcp_idle_seconds, g.max_connections) == (60.0, 20)


@pytest.mark.parametrize(
    ("text", "line", "key", "reason"),
    [
        ("[general]\ntransports = udp, sctp\n", 2, "[general] transports", "choose from udp, tcp, tls"),
        ("[general]\ntransports = tls\n", 1, "[general] tls_certificate", "required when transports includes tls"),
        ("[general]\ntransports = tls\ntls_certificate = nope.pem\n\ntls_key = nope.key\n", 3,
         "[general] tls_certificate", "cannot read"),
        ("[general]\ntransports = tls\ntls_certificate = sip.conf\ntls_key = sip.conf\n", 3,
         "[general] tls_certificate", "are not a PEM certificate and its key"),
        ("[general]\ntcp_idle_seconds = 1\n", 2, "[general] tcp_idle_seconds", "from 10 to 86400"),
        ("[general]\nmax_connections = 0\n", 2, "[general] max_connections", "from 1 to 100000"),
        ("[general]\ntls_port = 70000\n", 2, "[general] tls_port", "from 1 to 65535"),
    ],
)
def test_bad_transport_setting_names_file_line_key_and_reason(tmp_path: Path, text: str, line: int, key: str,
                                                              reason: str) -> None:
    path = config_with(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (err.value.file, err.value.line, err.value.key) == (path, line, key)
    assert reason in str(err.value)


def test_srtp_is_optional_unless_media_says_otherwise(tmp_path: Path) -> None:
    assert load_config(EXAMPLE).media.srtp == "optional"
    assert load_config(config_with(tmp_path, "[general]\nport = 5070\n")).media.srtp == "optional"
    for mode in ("off", "optional", "Required"):
        assert load_config(config_with(tmp_path, f"[media]\nsrtp = {mode}\n")).media.srtp == mode.lower()


@pytest.mark.parametrize(
    ("text", "line", "key", "reason"),
    [
        ("[general]\nport = 5070\n\n[media]\nsrtp = mandatory\n", 5, "[media] srtp", "choose off, optional"),
        ("[media]\nsrtp =\n", 2, "[media] srtp", "choose off, optional or required"),
        ("[media]\nsrtp = off\nsdes = yes\n", 3, "[media] sdes", "unknown key; known keys are agent_media_timeout, srtp"),
    ],
)
def test_bad_media_setting_names_file_line_key_and_reason(tmp_path: Path, text: str, line: int, key: str,
                                                          reason: str) -> None:
    path = config_with(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (err.value.file, err.value.line, err.value.key) == (path, line, key)
    assert reason in str(err.value)
