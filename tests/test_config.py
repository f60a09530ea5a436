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
