"""The media watch: an agent's phone in talk that sends nothing for [media] agent_media_timeout is gone (no BYE
ever comes from a phone powered off or a browser that vanished); one on hold, or talking, is not."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ivr.acd import Acd, Offer
from ivr.agents import AgentLeg, Agents
from ivr.config import AgentConfig, QueueConfig
from ivr.events import AgentHungUp
from ivr.media import MediaClock
from ivr.service import SEAT_GROUPS


def talk(agent: str) -> tuple[AgentLeg, Any]:
    """An answered agent leg bridged to its caller; its RTP session, whose count of packets heard the test sets."""
    caller = SimpleNamespace(events=[], log=SimpleNamespace(warning=lambda *a, **k: None), bridge=None)
    caller.dispatch = caller.events.append
    leg = AgentLeg(caller, Offer(f"call-{agent}", agent, "senior", ("127.0.0.1", 5070)))  # type: ignore[arg-type]
    leg.answered = True
    heard = SimpleNamespace(packets_heard=0)  # the agent's RTP session's count
    leg.rtp = heard  # type: ignore[assignment]
    caller.bridge = SimpleNamespace(agent=leg)
    return leg, heard


def test_only_the_agent_phone_quiet_for_the_timeout_and_not_on_hold_is_hung_up() -> None:
    pool = Acd.from_agents((AgentConfig("801", "senior", "pw", None),), QueueConfig(), tuple(SEAT_GROUPS))
    config = SimpleNamespace(queues=QueueConfig(), agents=())
    agents = Agents(pool, config, None, None, {}, lambda coro: coro.close(), "127.0.0.1",  # type: ignore[arg-type]
                    MediaClock())
    hung_up: list[str] = []

    def end_leg(agent_leg: AgentLeg, *, hang_up: bool, release: bool = True) -> None:
        hung_up.append(agent_leg.agent)
        agent_leg.ended = True

    agents.end_leg = end_leg  # type: ignore[method-assign]
    (quiet, _), (held, _), (talking, talking_heard), (late, late_heard) = talk("801"), talk("802"), talk("803"), talk("804")
    held.held = True
    for leg in (quiet, held, talking, late):
        agents.legs_by_agent_call[leg.offer.call_id] = leg
    for second in range(1, 6):
        talking_heard.packets_heard += 50  # a phone sending its 50 packets a second, speech, silence or CN
        if second == 3:
            late_heard.packets_heard += 50  # quiet 2 s, then heard: its count starts again
        agents.watch_media(3)
        if second == 3:
            assert hung_up == [], "the first look only notes the count: 2 s quiet so far"
        if second == 4:
            assert hung_up == ["801"], "3 s quiet"
    assert hung_up == ["801"]
    [event] = quiet.caller.events  # type: ignore[attr-defined]
    assert isinstance(event, AgentHungUp) and event.gone == "no audio from the agent's phone for 3 s"
    assert late.quiet_s == 2 and not late.ended
    agents.watch_media(3)
    assert hung_up == ["801", "804"]
