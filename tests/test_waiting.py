"""Expected wait: unit rules, then a simulated seat group whose staffing changes."""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass, field

import pytest

from ivr.waiting import (
    MIN_RESIDUAL,
    HandleTimes,
    SeatGroupLoad,
    WaitEstimator,
    expected_wait,
    queue_announcement,
    spoken_minutes,
    wait_prompt,
)


def test_no_agent_logged_in_means_no_estimate() -> None:
    assert expected_wait(0, SeatGroupLoad(0), 180) is None
    assert expected_wait(5, SeatGroupLoad(0), 180) is None
    assert wait_prompt(None) is None


def test_an_idle_agent_means_no_wait() -> None:
    assert expected_wait(0, SeatGroupLoad(2, (30.0,)), 180) == 0.0


def test_next_in_line_waits_for_the_agent_who_finishes_first() -> None:
    assert expected_wait(0, SeatGroupLoad(2, (100.0, 30.0)), 180) == 80.0


def test_an_overlong_call_still_has_some_time_to_go() -> None:
    assert expected_wait(0, SeatGroupLoad(1, (900.0,)), 180) == MIN_RESIDUAL * 180


def test_long_queue_approaches_position_over_agents_times_handle_time() -> None:
    # 3 agents who have just started: caller 31 waits about 31/3 handle times minus nothing
    wait = expected_wait(30, SeatGroupLoad(3, (0.0, 0.0, 0.0)), 120)
    assert wait == pytest.approx(11 * 120)
    # the same queue with half the agents takes twice as long: staffing is read live
    assert expected_wait(30, SeatGroupLoad(6, (0.0,) * 6), 120) == pytest.approx(6 * 120)


def test_handle_times_start_from_the_prior_and_follow_recent_calls() -> None:
    times = HandleTimes(prior_seconds=180, calls=9)  # weight 0.2 on the newest
    assert times.mean == 180 and times.count == 0
    times.record(talk_seconds=50, wrap_up_seconds=10)
    assert times.mean == pytest.approx(180 + 0.2 * (60 - 180))
    for _ in range(50):
        times.record(100, 20)
    assert times.mean == pytest.approx(120, abs=0.1)
    with pytest.raises(ValueError):
        HandleTimes(prior_seconds=0)


def test_estimator_keeps_handle_times_per_seat_group_and_counts_positions_from_1() -> None:
    estimator = WaitEstimator(prior_seconds=200)
    for _ in range(100):
        estimator.record("senior", talk_seconds=90, wrap_up_seconds=10)
    load = SeatGroupLoad(1, (0.0,))
    assert estimator.expected_wait("senior", 1, load) == pytest.approx(100, abs=1)  # next in line
    assert estimator.expected_wait("senior", 2, load) == pytest.approx(200, abs=2)
    assert estimator.expected_wait("junior", 1, load) == 200  # no history: the prior
    assert estimator.expected_wait("junior", 1, SeatGroupLoad(0)) is None


@pytest.mark.parametrize(
    ("wait", "announce_wait", "callback", "prompts"),
    [
        (None, True, True, ("no_agent", "callback_offer")),
        (None, True, False, ("no_agent",)),
        (30.0, True, True, ("queue_position_3", "wait_under_minute")),
        (130.0, True, True, ("queue_position_3", "wait_minutes_2")),
        (130.0, False, True, ("queue_position_3",)),
        (300.0, True, True, ("queue_position_3", "wait_minutes_5", "callback_offer")),
        (300.0, True, False, ("queue_position_3", "wait_minutes_5")),
        (3000.0, True, True, ("queue_position_3", "wait_minutes_many", "callback_offer")),
    ],
)
def test_queue_announcement(wait: float | None, announce_wait: bool, callback: bool, prompts: tuple[str, ...]) -> None:
    got = queue_announcement(
        "queue_position_3", wait, announce_wait=announce_wait, max_wait_seconds=300, callback_possible=callback
    )
    assert got == prompts


@pytest.mark.parametrize(
    ("seconds", "minutes", "prompt"),
    [
        (0, 0, "wait_under_minute"),
        (59.9, 0, "wait_under_minute"),
        (60, 1, "wait_minutes_1"),
        (89, 1, "wait_minutes_1"),
        (90, 2, "wait_minutes_2"),
        (150, 3, "wait_minutes_3"),
        (10 * 60 + 29, 10, "wait_minutes_10"),
        (10 * 60 + 30, 15, "wait_minutes_15"),  # beyond ten minutes, in fives
        (14 * 60, 15, "wait_minutes_15"),
        (17 * 60 + 29, 15, "wait_minutes_15"),
        (17 * 60 + 30, 20, "wait_minutes_20"),
        (30 * 60, 30, "wait_minutes_30"),
        (30 * 60 + 29, 30, "wait_minutes_30"),
        (30 * 60 + 30, 31, "wait_minutes_many"),
    ],
)
def test_spoken_minutes_and_prompt(seconds: float, minutes: int, prompt: str) -> None:
    assert spoken_minutes(seconds) == minutes
    assert wait_prompt(seconds) == prompt


# --- a simulated seat group ----------------------------------------------------------
#
# Poisson arrivals, gamma-distributed handle times (shape 3: call lengths are
# neither constant nor memoryless), first come first served, c agents whose
# number changes during the day (agents log out after their current call).
# At each arrival both estimators predict the caller's wait; the caller's
# actual wait is known when an agent takes the call.

MEAN_HANDLE = 180.0
HOUR = 3600.0


@dataclass
class Agent:
    busy_since: float | None = None
    logged_in: bool = True


@dataclass
class Sim:
    seed: int
    staffing: tuple[tuple[float, int], ...]  # (from time, agents logged in)
    arrivals_per_hour: float
    end: float = 8 * HOUR
    agents: list[Agent] = field(default_factory=list)
    queue: deque[int] = field(default_factory=deque)
    arrived_at: dict[int, float] = field(default_factory=dict)
    ours: dict[int, float | None] = field(default_factory=dict)
    naive: dict[int, float] = field(default_factory=dict)
    actual: dict[int, float] = field(default_factory=dict)

    def run(self) -> None:
        rng = random.Random(self.seed)
        handle_times = HandleTimes(prior_seconds=MEAN_HANDLE, calls=20)
        past_wait = 0.0  # Asterisk's holdtime: ((3 * old) + new) / 4 over answered callers
        events: list[tuple[float, int, str, int]] = []
        seq = 0

        def push(at: float, kind: str, data: int) -> None:
            nonlocal seq
            seq += 1
            heapq.heappush(events, (at, seq, kind, data))

        def start(agent_index: int, caller: int, now: float) -> None:
            nonlocal past_wait
            self.agents[agent_index].busy_since = now
            self.actual[caller] = now - self.arrived_at[caller]
            past_wait = (3 * past_wait + self.actual[caller]) / 4
            push(now + rng.gammavariate(3.0, MEAN_HANDLE / 3.0), "done", agent_index)

        def serve(now: float) -> None:
            for index, agent in enumerate(self.agents):
                if not self.queue:
                    return
                if agent.logged_in and agent.busy_since is None:
                    start(index, self.queue.popleft(), now)

        for at, count in self.staffing:
            push(at, "staff", count)
        push(rng.expovariate(self.arrivals_per_hour / HOUR), "arrive", 0)
        while events:
            now, _, kind, data = heapq.heappop(events)
            if kind == "arrive":
                if now > self.end:
                    continue
                caller = data
                self.arrived_at[caller] = now
                on = [a for a in self.agents if a.logged_in]
                load = SeatGroupLoad(len(on), tuple(now - a.busy_since for a in on if a.busy_since is not None))
                self.ours[caller] = expected_wait(len(self.queue), load, handle_times.mean)
                self.naive[caller] = past_wait
                self.queue.append(caller)
                serve(now)
                push(now + rng.expovariate(self.arrivals_per_hour / HOUR), "arrive", caller + 1)
            elif kind == "done":
                agent = self.agents[data]
                assert agent.busy_since is not None
                handle_times.record(now - agent.busy_since)
                agent.busy_since = None
                serve(now)
            else:  # staffing change: new agents log in; leavers go when idle
                on = [a for a in self.agents if a.logged_in]
                for agent in on[data:]:
                    agent.logged_in = False
                while len([a for a in self.agents if a.logged_in]) < data:
                    idle_out = next((a for a in self.agents if not a.logged_in and a.busy_since is None), None)
                    if idle_out is not None:
                        idle_out.logged_in = True
                    else:
                        self.agents.append(Agent())
                serve(now)

    def errors(self, warm_up: float = 0.5 * HOUR) -> tuple[float, float, float, int]:
        """Mean absolute errors of ours and of the naive estimate, and the mean actual wait, after the warm-up."""
        callers = [c for c in self.actual if self.arrived_at[c] >= warm_up and self.ours[c] is not None]
        ours = sum(abs(self.ours[c] - self.actual[c]) for c in callers) / len(callers)  # type: ignore[operator]
        naive = sum(abs(self.naive[c] - self.actual[c]) for c in callers) / len(callers)
        mean_wait = sum(self.actual[c] for c in callers) / len(callers)
        return ours, naive, mean_wait, len(callers)


# 4 agents at 85 % load, then staffing changes that the naive average lags behind
SHIFTS = ((0.0, 4), (2 * HOUR, 3), (4 * HOUR, 5), (6 * HOUR, 3), (7 * HOUR, 4))


@pytest.mark.parametrize("seed", range(1, 9))
def test_estimate_tracks_a_simulated_queue_and_beats_the_average_of_past_waits(seed: int) -> None:
    sim = Sim(seed=seed, staffing=SHIFTS, arrivals_per_hour=0.85 * 4 * HOUR / MEAN_HANDLE)
    sim.run()
    ours, naive, mean_wait, served = sim.errors()
    assert served > 300 and mean_wait > 200  # the short-staffed hours build real queues
    # Stated bound: the mean absolute error is under 30 % of the mean wait.
    # Handle times are random, so no estimator is exact: with 15 callers
    # ahead of 3 agents the wait itself varies by about two minutes.
    assert ours < 0.30 * mean_wait, (ours, naive, mean_wait)
    # ...and at least a fifth better than the average of past waits, which
    # misreads every staffing change (seeds 1-10 measured 0.55-0.75 of it).
    assert ours < 0.8 * naive, (ours, naive, mean_wait)


def test_estimate_at_steady_staffing_beats_the_naive_one() -> None:
    sim = Sim(seed=11, staffing=((0.0, 4),), arrivals_per_hour=0.8 * 4 * HOUR / MEAN_HANDLE)
    sim.run()
    ours, naive, mean_wait, _ = sim.errors()
    assert ours < 0.6 * naive and ours < 0.4 * mean_wait, (ours, naive, mean_wait)


def test_everybody_logged_out_gives_no_estimate_in_the_simulation() -> None:
    sim = Sim(seed=7, staffing=((0.0, 2), (HOUR, 0), (1.5 * HOUR, 2)), arrivals_per_hour=20, end=2 * HOUR)
    sim.run()
    gap = [c for c, at in sim.arrived_at.items() if HOUR + 400 < at < 1.5 * HOUR]  # leavers' last calls are over
    assert gap and all(sim.ours[c] is None for c in gap)
