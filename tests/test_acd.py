"""The ACD: queue order, longest idle first, skip on no answer, overflow, agent states — fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ivr.acd import Acd, AcdError, AgentState
from ivr.config import AgentConfig, QueueConfig
from ivr.service import SEAT_GROUPS

T0 = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
PHONE = ("127.0.0.1", 5090)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def acd(*agents: tuple[str, str], **settings: object) -> Acd:
    configs = tuple(AgentConfig(number, group, "pw", None) for number, group in agents)
    return Acd.from_agents(configs, QueueConfig(**settings), tuple(SEAT_GROUPS))  # type: ignore[arg-type]


def test_logged_out_agents_get_no_calls_and_callers_wait() -> None:
    d = acd(("801", "senior"))
    d.join("c1", "senior", "consulting", at(0))
    assert d.assign(at(1)) == []
    assert d.position("c1") == 1
    d.login("801", PHONE, at(2))
    [offer] = d.assign(at(2))
    assert (offer.call_id, offer.agent, offer.seat_group, offer.contact) == ("c1", "801", "senior", PHONE)
    assert d.seats["801"].state is AgentState.RINGING
    assert d.position("c1") is None


def test_longest_idle_agent_first_and_callers_in_arrival_order() -> None:
    d = acd(("821", "junior"), ("822", "junior"), ("823", "junior"))
    d.login("822", PHONE, at(0))
    d.login("823", PHONE, at(5))
    d.login("821", PHONE, at(10))
    for n, call in enumerate(("c1", "c2", "c3")):
        d.join(call, "junior", "consulting", at(20 + n))
    offers = d.assign(at(30))
    assert [(o.call_id, o.agent) for o in offers] == [("c1", "822"), ("c2", "823"), ("c3", "821")]


def test_callers_stay_in_their_tiers_group() -> None:
    d = acd(("801", "senior"), ("821", "junior"))
    d.login("801", PHONE, at(0))
    d.join("junior-caller", "junior", "consulting", at(1))
    assert d.assign(at(2)) == [], "a junior caller is never sent to the senior group"
    assert d.position("junior-caller") == 1


def test_no_answer_skips_to_the_next_agent_and_keeps_the_callers_place() -> None:
    d = acd(("821", "junior"), ("822", "junior"))
    d.login("821", PHONE, at(0))
    d.login("822", PHONE, at(1))
    d.join("c1", "junior", "consulting", at(2))
    d.join("c2", "junior", "consulting", at(3))
    first = d.assign(at(4))
    assert [(o.call_id, o.agent) for o in first] == [("c1", "821"), ("c2", "822")]
    d.no_answer("821", at(19))
    assert d.position("c1") == 1 and d.seats["821"].state is AgentState.AVAILABLE
    d.answered("822")
    d.released("822", at(20))
    d.wrap_up_done("822", at(20))
    # 822 has been idle since 20 s, 821 was pushed to the back at 19 s: 821 is longer idle
    [offer] = d.assign(at(21))
    assert (offer.call_id, offer.agent) == ("c1", "821")


def test_a_resting_agent_is_passed_over_for_another_or_the_caller_waits() -> None:
    d = acd(("821", "junior"), ("822", "junior"))
    d.login("821", PHONE, at(0))
    d.join("c1", "junior", "consulting", at(2))
    [offer] = d.assign(at(3))
    d.no_answer(offer.agent, at(3))  # 821's phone refused at once: the Agents layer lets it rest
    assert d.assign(at(3), frozenset({"821"})) == [], "the only free agent rests: the caller waits"
    assert d.position("c1") == 1
    d.login("822", PHONE, at(4))
    [offer] = d.assign(at(4), frozenset({"821"}))
    assert (offer.call_id, offer.agent) == ("c1", "822"), "another agent, though 821 is longer idle"
    # a caller waiting for a named agent waits out that agent's rest
    d.join("c2", "agent:821", "transfer", at(5))
    assert d.assign(at(5), frozenset({"821"})) == []
    assert [o.agent for o in d.assign(at(6))] == ["821"]


def test_overflow_to_the_next_group_after_the_wait_never_upward() -> None:
    d = acd(("801", "senior"), ("811", "middle"), overflow_after_seconds=60)
    d.login("811", PHONE, at(0))
    d.join("senior-caller", "senior", "consulting", at(0))
    assert d.assign(at(59)) == []
    [offer] = d.assign(at(60))
    assert (offer.agent, offer.seat_group) == ("811", "middle")

    d2 = acd(("801", "senior"), ("811", "middle"), overflow_after_seconds=60)
    d2.login("801", PHONE, at(0))
    d2.join("middle-caller", "middle", "consulting", at(0))
    assert d2.assign(at(600)) == [], "overflow never goes upward"


@pytest.mark.parametrize(("allowed", "expected"), [(False, []), (True, ["811"])])
def test_complaints_overflow_only_when_configured(allowed: bool, expected: list[str]) -> None:
    d = acd(("801", "senior"), ("811", "middle"), overflow_after_seconds=60, complaints_overflow=allowed)
    d.login("811", PHONE, at(0))
    d.join("c", "senior", "complaint", at(0))
    assert [o.agent for o in d.assign(at(120))] == expected


def test_agent_states_through_a_call() -> None:
    d = acd(("801", "senior"), wrap_up_seconds=10)
    seat = d.seats["801"]
    assert seat.state is AgentState.LOGGED_OUT
    d.login("801", PHONE, at(0))
    assert seat.state is AgentState.AVAILABLE
    d.pause("801", True, at(1))
    d.join("c1", "senior", "consulting", at(1))
    assert seat.state is AgentState.PAUSED and d.assign(at(2)) == []
    d.pause("801", False, at(3))
    d.assign(at(3))
    assert seat.state is AgentState.RINGING
    d.answered("801")
    assert seat.state is AgentState.TALKING
    assert d.released("801", at(30)) == 10
    assert seat.state is AgentState.WRAP_UP
    d.join("c2", "senior", "consulting", at(31))
    assert d.assign(at(35)) == [], "no call during wrap-up"
    d.wrap_up_done("801", at(40))
    assert [o.call_id for o in d.assign(at(40))] == ["c2"]
    with pytest.raises(AcdError):
        acd(("802", "senior")).answered("802")  # answering while logged out


def test_caller_leaving_frees_the_agent_being_rung() -> None:
    d = acd(("801", "senior"))
    d.login("801", PHONE, at(0))
    d.join("c1", "senior", "consulting", at(0))
    d.assign(at(1))
    assert d.leave("c1") == "801"
    assert d.seats["801"].state is AgentState.AVAILABLE
    d.join("c2", "senior", "consulting", at(2))
    assert d.leave("c2") is None and d.waiting() == 0


def test_logout_after_the_call_when_the_registration_lapsed() -> None:
    d = acd(("801", "senior"))
    d.login("801", PHONE, at(0))
    d.join("c1", "senior", "consulting", at(0))
    d.assign(at(0))
    d.answered("801")
    d.logout("801")  # registration expired mid-call
    assert d.seats["801"].state is AgentState.TALKING
    d.released("801", at(60))
    assert d.seats["801"].state is AgentState.LOGGED_OUT


def test_a_caller_transferred_to_a_named_agent_waits_for_that_agent_alone() -> None:
    from ivr.acd import agent_queue

    acd = Acd.from_agents(
        (AgentConfig("801", "senior", "", ("127.0.0.1", 5061)), AgentConfig("802", "senior", "", ("127.0.0.1", 5062))),
        QueueConfig(), ("senior", "middle", "junior"))
    acd.start((), T0)
    acd.login("801", ("127.0.0.1", 5061), T0)
    acd.login("802", ("127.0.0.1", 5062), T0)
    acd.pause("802", True, T0)
    acd.join("c1", agent_queue("802"), "consulting", T0)
    assert acd.assign(T0) == [] and acd.position("c1") == 1  # 801 is free, but the caller asked for 802
    acd.pause("802", False, T0)
    (offer,) = acd.assign(T0)
    assert (offer.call_id, offer.agent, offer.seat_group) == ("c1", "802", "senior")
