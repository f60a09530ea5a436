"""How long a queued caller will wait: "预计等待时间约两分钟", "不到一分钟", or no estimate.

[004] "现在为您查询,请稍等…不好意思让您久等了", [002] "时间一过,就不是服务了":
a waiting caller is told how long it will be, and the estimate must hold up
when staffing changes.

Why not Asterisk's announce-holdtime: app_queue announces a running average
of the hold times of callers answered before (recalc_holdtime weighs each
new wait by 1/4). That is a measure of the past queue, not of this caller's
situation. When two of four agents log out, the average still describes the
well-staffed hour and promises a short wait; when agents come back it keeps
promising a long one; and with every agent logged out it still quotes a
number although nobody will answer.

What this module does instead, per seat group, at the moment of asking:

- Mean handle time H: talk + wrap-up of the group's recent calls, an
  exponentially weighted mean over about the last `calls` calls (weight
  2/(calls+1) on the newest), starting from a configured prior before any
  call has ended. Handle times change slowly; staffing does not, so staffing
  is never averaged but read live.
- c agents logged in and not paused. c = 0: `None` — there is no estimate,
  the caller is offered a callback instead of a number nobody can keep.
- Each busy agent (talking or in wrap-up, elapsed e) is expected to be free
  in r = max(H - e, R·H): what is left of an average call, but never less
  than a fraction R (MIN_RESIDUAL) of it, because a call already longer
  than average does not end at once. Idle agents are free now (r = 0).
- The k callers ahead are served first. Lay them onto the agents in order,
  each taking the agent that frees up soonest and keeping it for H; this
  caller's wait is the time the soonest agent is free after that.

  For a long queue this is the M/M/c fluid value W ≈ (k+1)·H/c − (what the
  busy agents have already done); for a short one it is exactly "the next
  agent to finish". Staffing enters through c and the busy agents, at once.

Nothing here reads a clock or the ACD: the caller passes the numbers in.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

MIN_RESIDUAL = 0.25  # R: an overlong call still has a quarter of an average call to go
MAX_WAIT_MINUTES = 30  # the longest wait said in minutes; beyond it "超过三十分钟"
# Minutes an estimate is spoken in: to the minute up to ten, then in fives
# ("约十五分钟"): a long estimate is not that precise, and fewer prompts render.
WAIT_MINUTES = (*range(1, 11), 15, 20, 25, 30)
UNDER_A_MINUTE_PROMPT = "wait_under_minute"
LONG_WAIT_PROMPT = "wait_minutes_many"


class HandleTimes:
    """Mean handle time (talk + wrap-up) of one seat group's recent calls."""

    def __init__(self, prior_seconds: float = 180.0, calls: int = 20) -> None:
        if prior_seconds <= 0 or calls < 1:
            raise ValueError("prior_seconds must be positive and calls at least 1")
        self.mean = float(prior_seconds)
        self.count = 0
        self._weight = 2.0 / (calls + 1)

    def record(self, talk_seconds: float, wrap_up_seconds: float = 0.0) -> None:
        """A call of this group has ended (after its wrap-up)."""
        handle = max(0.0, talk_seconds) + max(0.0, wrap_up_seconds)
        self.mean += self._weight * (handle - self.mean)
        self.count += 1


@dataclass(frozen=True, slots=True)
class SeatGroupLoad:
    """What the seat group looks like now."""

    agents_logged_in: int  # registered and not paused, busy or not
    busy_elapsed: tuple[float, ...] = ()  # seconds since each busy agent's call was answered (talk or wrap-up)

    def __post_init__(self) -> None:
        if len(self.busy_elapsed) > self.agents_logged_in:
            raise ValueError("more busy agents than agents logged in")


def expected_wait(callers_ahead: int, load: SeatGroupLoad, mean_handle_seconds: float) -> float | None:
    """Seconds until an agent takes this caller; None when no agent is logged in (offer a callback)."""
    if load.agents_logged_in <= 0:
        return None
    h = mean_handle_seconds
    free_at = [max(h - e, MIN_RESIDUAL * h) for e in load.busy_elapsed]
    free_at += [0.0] * (load.agents_logged_in - len(load.busy_elapsed))
    heapq.heapify(free_at)
    for _ in range(max(0, callers_ahead)):
        heapq.heapreplace(free_at, free_at[0] + h)  # the caller ahead takes the soonest agent for H
    return free_at[0]


class WaitEstimator:
    """Handle times per seat group, and the expected wait for a caller's place in its queue."""

    def __init__(self, prior_seconds: float = 180.0, calls: int = 20) -> None:
        self.prior_seconds, self.calls = prior_seconds, calls
        self.handle_times: dict[str, HandleTimes] = {}

    def _times(self, seat_group: str) -> HandleTimes:
        if seat_group not in self.handle_times:
            self.handle_times[seat_group] = HandleTimes(self.prior_seconds, self.calls)
        return self.handle_times[seat_group]

    def record(self, seat_group: str, talk_seconds: float, wrap_up_seconds: float = 0.0) -> None:
        """An agent of `seat_group` finished a call and its wrap-up."""
        self._times(seat_group).record(talk_seconds, wrap_up_seconds)

    def expected_wait(self, seat_group: str, position: int, load: SeatGroupLoad) -> float | None:
        """Seconds for the caller at `position` (1 = next, as the ACD counts) of the group's queue."""
        return expected_wait(max(0, position - 1), load, self._times(seat_group).mean)


def spoken_minutes(wait_seconds: float) -> int:
    """Minutes to announce ("约X分钟"): the nearest minute up to ten, then the nearest five; 0 means under a minute."""
    if wait_seconds < 60:
        return 0
    minutes = max(1, math.floor(wait_seconds / 60 + 0.5))
    if 10 < minutes <= MAX_WAIT_MINUTES:
        minutes = max(15, 5 * math.floor(wait_seconds / 300 + 0.5))
    return minutes


def wait_prompt(wait_seconds: float | None) -> str | None:
    """Prompt id for an estimate: wait_under_minute, wait_minutes_<n>, wait_minutes_many; None: no estimate."""
    if wait_seconds is None:
        return None
    minutes = spoken_minutes(wait_seconds)
    if minutes == 0:
        return UNDER_A_MINUTE_PROMPT
    if minutes > MAX_WAIT_MINUTES:
        return LONG_WAIT_PROMPT
    return f"wait_minutes_{minutes}"


# --- prompt ids for the waiting caller (texts in prompts/catalogue.py) -----------------

NO_AGENT_PROMPT = "no_agent"  # nobody logged in: "现在暂时没有客服代表在线,…"
CALLBACK_OFFER_PROMPT = "callback_offer"  # "如需稍后给您回电,请按井号键。"
CALLBACK_CONFIRMED_PROMPT = "callback_confirmed"  # "好的,稍后给您回过去,感谢您的来电!"
TRANSFER_PROMPT = "transfer"  # "正在为您转接,请稍候。"


WHISPER_CALLBACK_PROMPT = "whisper_callback"  # "回拨。"


def whisper_prompts(tier: str, service: str, callback: bool = False) -> tuple[str, ...]:
    """What the agent hears before the caller is put through, played in order: "高端客户," "业务咨询。" ("回拨。")."""
    prompts = (f"whisper_{tier}", f"whisper_{service}")
    return (*prompts, WHISPER_CALLBACK_PROMPT) if callback else prompts


def queue_announcement(
    position_prompt: str, wait_seconds: float | None, *, announce_wait: bool, max_wait_seconds: float,
    callback_possible: bool,
) -> tuple[str, ...]:
    """The prompts a waiting caller hears at each announcement, in order (music resumes after them).

    `position_prompt` is the flow's prompt for the caller's place; `callback_possible` says whether this
    caller may be called back (callbacks on, a diallable number). Nobody logged in: say so and offer the
    callback; a wait of `max_wait_seconds` or more: position, wait, then the callback offer.
    """
    if wait_seconds is None:
        return (NO_AGENT_PROMPT, CALLBACK_OFFER_PROMPT) if callback_possible else (NO_AGENT_PROMPT,)
    prompts = [position_prompt]
    if announce_wait:
        prompts.append(wait_prompt(wait_seconds) or UNDER_A_MINUTE_PROMPT)
    if callback_possible and wait_seconds >= max_wait_seconds:
        prompts.append(CALLBACK_OFFER_PROMPT)
    return tuple(prompts)
