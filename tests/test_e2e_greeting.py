"""End to end: a senior caller the CRM knows is greeted by surname ([tiers] greet_senior_by_name).

The IVR renders the salutation at start from the CRM's customers, looks the
caller up while the phone rings, and plays "张女士" before the greeting; the
silent routine's later attempts are not said by name. SIPp over UDP on
loopback, the CRM in SQLite.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ivr.config import load_config
from ivr.greeting import greeting_prompt_id
from prompts.catalogue import catalogue_for
from prompts.library import load_prompts

from .conftest import load_customers, sipp
from .test_e2e_sip import call_id_of, crm_events, finished, wait_for_row

pytestmark = pytest.mark.e2e
CALLER = "13800000001"  # the first caller of loadtest/scenarios/callers.csv


def import_one(tmp: Path, db_url: str, row: str) -> None:
    load_customers(tmp, db_url, f"phone,name,assets,volume,tier,gender\n{row}\n")


def prompt_seconds(tmp: Path, people: list[tuple[str, str]]) -> dict[str, float]:
    config = load_config(tmp / "sip.conf")
    p = config.prompts
    texts = catalogue_for(config, people)
    loaded = load_prompts(texts, voice=p.voice, rate=p.rate, cache_dir=p.cache_dir, recorded_dir=p.recorded_dir)
    return {pid: prompt.seconds for pid, prompt in loaded.items()}


def test_a_known_senior_caller_hears_the_surname_and_title_before_the_greeting(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    import_one(tmp_path, db_url, f"{CALLER},张敏,9000000,0,,女士")
    ivr = ivr_factory(db_url=db_url, extra="[tiers]\ngreet_senior_by_name = yes\n")
    assert re.search(r"event='senior_names'.*customers=1", ivr.log()), ivr.log()

    run = sipp(tmp_path, "silent_caller", ivr.port)
    finished(run)
    row = wait_for_row(ivr, call_id_of(run, ivr))
    assert (row["tier"], row["outcome"], row["silent_attempts"]) == ("senior", "silent", 3)
    greeting = greeting_prompt_id(row["greeting"])
    events = crm_events(ivr, row["sip_call_id"])
    assert [d for k, d in events if k == "prompt"] == [
        f"attempt=1 prompt={greeting} salutation=salutation_张女士", "attempt=2 prompt=silent_2",
        "attempt=3 prompt=silent_3",
    ]

    # the salutation's audio really went out: answer to BYE is longer by its length, and no more
    logged = run.logged()
    answer_to_bye = (int(re.search(r"bye (\d+)", logged).group(1)) - int(re.search(r"answered (\d+)", logged).group(1))) / 1000
    seconds = prompt_seconds(tmp_path, [("张敏", "female")])
    routine = seconds[greeting] + seconds["silent_2"] + seconds["silent_3"] + 3 * 5.0
    salutation = seconds["salutation_张女士"]
    assert 0.3 < salutation < 3
    assert routine + salutation - 0.1 <= answer_to_bye <= routine + salutation + 1.5, (answer_to_bye, routine, salutation)


def test_without_a_gender_a_senior_caller_hears_the_normal_greeting(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    import_one(tmp_path, db_url, f"{CALLER},张敏,9000000,0,,")
    ivr = ivr_factory(db_url=db_url, extra="[tiers]\ngreet_senior_by_name = yes\n")
    run = sipp(tmp_path, "cancel_caller", ivr.port, timeout_s=10)  # the look-up happens while it rings
    finished(run, 20)
    run = sipp(tmp_path, "silent_caller", ivr.port)
    finished(run)
    row = wait_for_row(ivr, call_id_of(run, ivr))
    prompts = [d for k, d in crm_events(ivr, row["sip_call_id"]) if k == "prompt"]
    assert row["tier"] == "senior" and "salutation" not in prompts[0], prompts
