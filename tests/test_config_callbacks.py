"""[callbacks] gateway: where customers are called back through (none by default: requests are kept, not dialled)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivr.config import ConfigError, load_config

from .test_config import config_with


def test_callbacks_are_not_dialled_without_a_gateway() -> None:
    assert load_config(Path(__file__).resolve().parent.parent / "sip.conf.example").callbacks.gateway is None


def test_the_gateway_is_read_as_host_and_port(tmp_path: Path) -> None:
    config = load_config(config_with(tmp_path, "[callbacks]\ngateway = 10.0.0.5:5070\n"))
    assert config.callbacks.gateway == ("10.0.0.5", 5070)


@pytest.mark.parametrize("raw", ["10.0.0.5", "10.0.0.5:0", ":5060", "10.0.0.5:sip"])
def test_a_bad_gateway_names_the_key(tmp_path: Path, raw: str) -> None:
    with pytest.raises(ConfigError, match=r"gateway.*host:port"):
        load_config(config_with(tmp_path, f"[callbacks]\ngateway = {raw}\n"))


def test_transfer_short_codes_are_read_and_checked(tmp_path: Path) -> None:
    config = load_config(config_with(tmp_path, "[queues]\ntransfer_codes = 9001>senior, 9009>complaint\n"))
    assert dict(config.queues.transfer_codes) == {"9001": "senior", "9009": "complaint"}
    assert not load_config(Path(__file__).resolve().parent.parent / "sip.conf.example").queues.transfer_codes
    with pytest.raises(ConfigError, match="transfer_codes"):
        load_config(config_with(tmp_path, "[queues]\ntransfer_codes = 9001>sales\n"))
