"""sip.conf's schema: each key is written once, as a field of its section's model, and its errors read as before."""

from __future__ import annotations

import configparser
import dataclasses
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from desk.config import DeskConfig
from ivr.config import _KNOWN, SECTIONS, AgentConfig, ConfigError, GeneralConfig, QueueConfig, load_config
from ivr.sipconf import Collects, Given

from .test_config import EXAMPLE, config_with


def gatherers(model: type) -> dict[str, Collects]:
    """The fields of a section model that gather a family of keys (digits, text.<id>, schedules)."""
    return {
        name: meta
        for name, info in model.__pydantic_fields__.items()  # type: ignore[attr-defined]
        for meta in info.metadata
        if isinstance(meta, Collects)
    }


@pytest.mark.parametrize("section", SECTIONS)
def test_the_keys_a_section_accepts_are_its_models_fields(section: str) -> None:
    model = SECTIONS[section]
    fields = {f.name for f in dataclasses.fields(model)}
    collected = gatherers(model)
    assert _KNOWN[section] == (fields - set(collected)) | {key for c in collected.values() for key in c.keys}


@pytest.mark.parametrize(("section", "key"), [(s, k) for s, keys in _KNOWN.items() for k in sorted(keys)])
def test_every_declared_key_reaches_its_field(tmp_path: Path, section: str, key: str) -> None:
    """A value no parser accepts either loads (free text) or is refused under its own key, never as unknown."""
    path = config_with(tmp_path, f"[{section}]\n{key} = ?\n")
    try:
        load_config(path)
    except ConfigError as err:
        assert (err.key, err.line) == (f"[{section}] {key}", 2)
        assert "unknown key" not in err.reason and "Input should be" not in err.reason


def example_lines() -> list[tuple[str, str, str]]:
    """(section, key, value) of every setting in sip.conf.example, those commented out (`;key = value`) too."""
    found, section = [], ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^\[([^\]]+)\]", line):
            section = m.group(1)
        elif m := re.match(r"^;?([\w.]+) = ([^;]*)", line):
            found.append((section, m.group(1), m.group(2).strip()))
    return [(s, k, v) for s, k, v in found if s in SECTIONS]


@pytest.mark.parametrize(("section", "key", "value"), example_lines())
def test_every_setting_shown_in_the_example_parses(tmp_path: Path, section: str, key: str, value: str) -> None:
    if (section, key) in {("queues", "music"), ("general", "tls_certificate"), ("general", "tls_key")}:
        value = ""  # files the example names but does not ship
    (tmp_path / "holidays.toml.example").write_text((EXAMPLE.parent / "holidays.toml.example").read_text())
    # the questionnaires file the example names is the shipped example, copied
    (tmp_path / "questionnaires.toml").write_text((EXAMPLE.parent / "questionnaires.toml.example").read_text())
    numbers = "" if section == "general" else "[general]\nnumbers = 95000, 4008000000\n"  # for [hours] 4008000000
    companion = "secret = a-secret-of-16-chars\n" if (section, key) == ("webhook", "url") else ""  # a url needs one
    if (section, key) == ("monitoring", "supervisors"):  # supervisors are agent peers
        companion = "".join(f"[{n}]\ntype = agent\nseat_group = junior\nsecret = pw{n}\n" for n in value.split(", "))
    load_config(config_with(tmp_path, f"{numbers}[{section}]\n{key} = {value}\n{companion}"))


def test_the_example_has_only_known_settings() -> None:
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    parser.read(EXAMPLE, encoding="utf-8")
    for section in SECTIONS:
        collected = gatherers(SECTIONS[section]).values()
        for key in parser.options(section):
            assert key in _KNOWN[section] or any(c.takes(key) for c in collected), f"[{section}] {key}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # a bad whole number, a bad choice, a bad yes/no: pydantic's checks, this module's words
        ("[limits]\nauth_failures = many\n",
         ":2: [limits] auth_failures: 'many' is not a whole number from 1 to 10000 "
         "(invalid literal for int() with base 10: 'many')"),
        ("[limits]\nauth_failures = 0\n",
         ":2: [limits] auth_failures: '0' is not a whole number from 1 to 10000 (must be between 1 and 10000)"),
        ("[log]\n\nlevel = loud\n", ":3: [log] level: 'loud' is not a log level (choose debug, info, warning or error)"),
        ("[cluster]\nworker = a\nshared_agents = perhaps\n",
         ":3: [cluster] shared_agents: 'perhaps' is not yes or no (write yes or no)"),
        # a key of a family, a check across two keys, a key that must be there
        ("[survey]\n1 = good\n4 =\n", ":3: [survey] 4: '' is not a label (empty)"),
        ("[webhook]\nurl = https://crm.example.com/calls\nsecret = short\n",
         ":3: [webhook] secret: needs 16 characters or more: the receiver checks each push's HMAC with it"),
        ("[801]\ntype = agent\nsecret = pw\n",
         ":1: [801] seat_group: missing; every agent belongs to one of senior, middle, junior"),
        ("[hours]\nvip = 08:00-22:00\n",
         ":2: [hours] vip: unknown key; known keys are default, timezone, or a seat group or number"),
        # two problems in one section: the first in the file
        ("[queues]\nwrap_up_seconds = -5\nring_agent_seconds = 1\n",
         ":2: [queues] wrap_up_seconds: '-5' is not a number from 0 to 600 (must be between 0 and 600)"),
    ],
)
def test_errors_name_file_line_key_in_the_validators_words(tmp_path: Path, text: str, message: str) -> None:
    path = config_with(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}{message}"


def test_objects_built_in_code_are_frozen_and_take_values_as_given() -> None:
    general = dataclasses.replace(GeneralConfig(), port=5070)
    assert (general.port, general.status_file, general.rtp_ports) == (5070, Path("var/ivr-status.json"), (20000, 30000))
    with pytest.raises(dataclasses.FrozenInstanceError):
        general.port = 5080  # type: ignore[misc]
    assert QueueConfig(wrap_up_seconds=0).wrap_up_seconds == 0.0  # tests use short timers; the file's ranges are for ops
    with pytest.raises(ValidationError):
        QueueConfig(wrap_up=5)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="rtp_port_min"):
        GeneralConfig(rtp_port_min=30000, rtp_port_max=30001)


def example_keys() -> dict[str, set[str]]:
    """The keys sip.conf.example shows per section, commented out (`;key = value`) or not, [desk] included;
    the agent peers' keys under "agent" (their sections and the `;   key` list above them)."""
    shown: dict[str, set[str]] = {}
    section = ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^\[([^\]]+)\]", line):
            section = "agent" if m.group(1).isdigit() else m.group(1)
        elif m := re.match(r"^;?([\w.]+)\s*=", line):
            shown.setdefault(section, set()).add(m.group(1))
        elif m := re.match(r"^;   (\w+)", line):  # the agent peers' key list
            shown.setdefault("agent", set()).add(m.group(1))
    return shown


@pytest.mark.parametrize(
    ("section", "model"),
    [pytest.param(s, m, id=s) for s, m in [*SECTIONS.items(), ("agent", AgentConfig), ("desk", DeskConfig)]],
)
def test_every_key_of_every_section_model_is_shown_in_the_example(section: str, model: type) -> None:
    """sip.conf.example is where ops meet each key first: a field without a line there is a key nobody finds."""
    shown = example_keys().get(section, set())
    collected = gatherers(model)
    for name, info in model.__pydantic_fields__.items():  # type: ignore[attr-defined]
        if any(isinstance(meta, Given) for meta in info.metadata):
            continue
        if name in collected:
            assert any(collected[name].takes(key) for key in shown), f"[{section}] no key of {name} in the example"
        else:
            assert name in shown, f"[{section}] {name} is not in sip.conf.example"
