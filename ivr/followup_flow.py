"""A follow-up call (回访) the IVR places by itself: a sans-IO state machine, one instance per call.

Theory of operation
-------------------
Like `ivr.callflow`: events in (`ivr.events` and `FollowupStarted`), actions
out, no clock, no socket; every transition is a row of `_TRANSITIONS`, and a
handler that ends in a state its row does not list raises `FollowupFlowBug`.

    INIT --FollowupStarted--> DIALLING --CustomerAnswered--> INTRO --(intro played)--> ASKING
    ASKING --a key of the question--> REPLYING --(reply played)--> ENDED
    ASKING --no key / a wrong key--> ASKING (asked again, `retries` times) --> REPLYING (no_input)
    DIALLING --CustomerFailed--> ENDED (no_answer, busy, declined, failed)

What is said and asked is data, a `Script`: the intro (pre-rendered prompt
fragments the dialler composed: "您好,这里是客服热线,您在" "十一月" "二十五日"
"反映的问题已由" "售后服务部" "处理完毕。"), then the questions, each with the
keys it takes, the result each key means and the reply played before the
goodbye. A questionnaire engine can hand in its own `Script`. A key pressed
during the intro answers the first question (the customer knows the menu).

The flow ends with `FollowupEnded(outcome, answers)`: `outcome` is the result
of the key that ended the questions (satisfied, dissatisfied, agent,
do_not_call), `no_input` when the customer answered and pressed nothing
useful, `hung_up` when they hung up before the questions were done (the
answers so far count), or how the call failed (no_answer, busy, declined,
failed). `crm_bridge.followups.finish` applies it to the ticket.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ivr.events import (
    Aborted,
    Action,
    CancelTimer,
    CustomerAnswered,
    CustomerFailed,
    Digit,
    HangUp,
    HungUp,
    Play,
    PromptFinished,
    StartTimer,
    StopPlayback,
    TimerFired,
)

ANSWER_TIMER = "answer"
NOT_REACHED = ("no_answer", "busy", "declined", "failed")


@dataclass(frozen=True, slots=True)
class Choice:
    key: str
    result: str  # what pressing it means: satisfied, dissatisfied, agent, do_not_call …
    reply: str  # the prompt played before the call ends
    final: bool = True  # ends the questions (False: the next question follows)
    transfer: bool = False  # after the reply the customer is put through to an agent instead of BYE


@dataclass(frozen=True, slots=True)
class Question:
    name: str  # how its answer is recorded: satisfaction=1
    prompt: str
    choices: tuple[Choice, ...]
    timeout_seconds: float = 8.0
    retries: int = 1  # asked again this often after no key or a wrong key
    invalid_prompt: str | None = None  # before asking again after a wrong key
    no_input_reply: str = "followup_goodbye"

    def choice(self, key: str) -> Choice | None:
        return next((c for c in self.choices if c.key == key), None)


@dataclass(frozen=True, slots=True)
class Script:
    intro: tuple[str, ...]
    questions: tuple[Question, ...]


# --- events and actions of its own -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FollowupStarted:
    at: datetime
    followup: int
    number: str
    script: Script


@dataclass(frozen=True, slots=True)
class DialFollowup:
    """Place the call: INVITE the follow-up's number through the gateway."""

    followup: int


@dataclass(frozen=True, slots=True)
class FollowupEnded:
    """The call is over: what came of it, for `crm_bridge.followups.finish`."""

    followup: int
    outcome: str
    answers: tuple[tuple[str, str], ...]
    at: datetime


@dataclass(frozen=True, slots=True)
class TransferToAgent:
    """Hand the answered call to an agent (the ticket's, else its seat group) instead of hanging up."""

    followup: int


@dataclass(frozen=True, slots=True)
class FollowupStep:
    """A step for the log (the follow-up's call_id is the adapter's)."""

    kind: str
    detail: str


FlowEvent = FollowupStarted | CustomerAnswered | CustomerFailed | PromptFinished | Digit | TimerFired | HungUp | Aborted
FlowAction = Action | DialFollowup | FollowupEnded | FollowupStep | TransferToAgent


class State(enum.Enum):
    INIT = "init"
    DIALLING = "dialling"  # the customer's phone rings
    INTRO = "intro"  # who is calling and why
    ASKING = "asking"  # a question is played, then its keys are awaited
    REPLYING = "replying"  # the reply to the answer, then BYE
    ENDED = "ended"


class FollowupFlowError(Exception):
    def __init__(self, state: State, event: object) -> None:
        super().__init__(f"{type(event).__name__} is not allowed in state {state.value}")
        self.state = state


class FollowupFlowBug(Exception):
    def __init__(self, before: State, event: object, after: State) -> None:
        super().__init__(f"{type(event).__name__} in state {before.value} led to {after.value}, not a listed state")


class FollowupFlow:
    def __init__(self) -> None:
        self.state = State.INIT
        self.followup = 0
        self.script = Script((), ())
        self.question = 0  # index into script.questions
        self.tries = 0
        self.playlist: tuple[str, ...] = ()
        self.playing = False
        self.answers: list[tuple[str, str]] = []
        self.outcome: str | None = None
        self.answered_at: datetime | None = None
        self.transfer = False  # the reply being played leads to an agent

    @property
    def ended(self) -> bool:
        return self.state is State.ENDED

    def handle(self, event: FlowEvent) -> list[FlowAction]:
        key: tuple[Any, ...] = (self.state, type(event))
        if isinstance(event, TimerFired) and (self.state, TimerFired, event.timer) in _TRANSITIONS:
            key = (self.state, TimerFired, event.timer)
        row = _TRANSITIONS.get(key)
        if row is None:
            raise FollowupFlowError(self.state, event)
        handler, allowed = row
        before = self.state
        actions: list[FlowAction] = []
        handler(self, event, actions)
        if self.state not in allowed:
            raise FollowupFlowBug(before, event, self.state)
        return actions

    # --- helpers ---------------------------------------------------------------------------

    def _play_all(self, actions: list[FlowAction], prompts: tuple[str, ...]) -> None:
        self.playing = True
        actions.append(Play(prompts[0]))
        self.playlist = prompts[1:]

    def _end(self, actions: list[FlowAction], at: datetime, outcome: str) -> None:
        self.state = State.ENDED
        self.outcome = outcome
        actions.append(FollowupStep("followup_ended", f"outcome={outcome}"))
        actions.append(FollowupEnded(self.followup, outcome, tuple(self.answers), at))

    def _ask(self, actions: list[FlowAction], before: tuple[str, ...] = ()) -> None:
        self.state = State.ASKING
        question = self.script.questions[self.question]
        self._play_all(actions, (*before, question.prompt))
        actions.append(FollowupStep("followup_question", f"question={question.name} try={self.tries + 1}"))

    def _reply(self, actions: list[FlowAction], prompt: str, outcome: str) -> None:
        self.state = State.REPLYING
        self.outcome = outcome
        self._play_all(actions, (prompt,))

    # --- transitions -----------------------------------------------------------------------

    def _on_started(self, event: FollowupStarted, actions: list[FlowAction]) -> None:
        if not event.script.questions or not event.script.intro:
            raise ValueError("a follow-up script needs an intro and at least one question")
        self.followup, self.script = event.followup, event.script
        self.state = State.DIALLING
        actions.append(FollowupStep("followup_dialling", f"followup={event.followup}"))
        actions.append(DialFollowup(event.followup))

    def _on_answered(self, event: CustomerAnswered, actions: list[FlowAction]) -> None:
        self.answered_at = event.at
        self.state = State.INTRO
        actions.append(FollowupStep("customer_answered", ""))
        self._play_all(actions, self.script.intro)

    def _on_failed(self, event: CustomerFailed, actions: list[FlowAction]) -> None:
        outcome = event.outcome if event.outcome in NOT_REACHED else "failed"
        actions.append(FollowupStep("customer_not_reached", f"outcome={outcome} status={event.status}"))
        self._end(actions, event.at, outcome)

    def _on_prompt_finished(self, event: PromptFinished, actions: list[FlowAction]) -> None:
        if self.playlist:
            self._play_all(actions, self.playlist)
            return
        self.playing = False
        if self.state is State.INTRO:
            self._ask(actions)
        elif self.state is State.ASKING:
            actions.append(StartTimer(ANSWER_TIMER, self.script.questions[self.question].timeout_seconds))
        elif self.transfer:  # REPLYING "正在为您转接": the call goes on with an agent, not ended by us
            actions.append(TransferToAgent(self.followup))
            self._end(actions, event.at, "transferred")
        else:  # REPLYING: the goodbye has been said
            actions.append(HangUp())
            self._end(actions, event.at, self.outcome or "no_input")

    def _on_digit(self, event: Digit, actions: list[FlowAction]) -> None:
        question = self.script.questions[self.question]
        actions.append(FollowupStep("followup_digit", f"question={question.name} digit={event.digit}"))
        if self.playing:
            actions.append(StopPlayback())
            self.playing, self.playlist = False, ()
        actions.append(CancelTimer(ANSWER_TIMER))
        choice = question.choice(event.digit)
        if choice is None:
            self._retry(actions, event.at, invalid=True)
            return
        self.answers.append((question.name, event.digit))
        if not choice.final and self.question + 1 < len(self.script.questions):
            self.question, self.tries = self.question + 1, 0
            self._ask(actions, (choice.reply,))
            return
        self.transfer = choice.transfer
        self._reply(actions, choice.reply, choice.result)

    def _on_answer_timer(self, event: TimerFired, actions: list[FlowAction]) -> None:
        self._retry(actions, event.at, invalid=False)

    def _retry(self, actions: list[FlowAction], at: datetime, *, invalid: bool) -> None:
        question = self.script.questions[self.question]
        self.tries += 1
        actions.append(FollowupStep("followup_retry", f"question={question.name} reason="
                                    f"{'invalid' if invalid else 'no_input'} tries={self.tries}"))
        if self.tries > question.retries:
            self._reply(actions, question.no_input_reply, "no_input")
            return
        before = (question.invalid_prompt,) if invalid and question.invalid_prompt else ()
        self._ask(actions, before)

    def _on_hung_up(self, event: HungUp, actions: list[FlowAction]) -> None:
        actions.append(CancelTimer(ANSWER_TIMER))
        actions.append(FollowupStep("customer_bye", ""))
        # an answer given counts though the customer did not wait for the goodbye
        self._end(actions, event.at, self.outcome or "hung_up")

    def _on_aborted(self, event: Aborted, actions: list[FlowAction]) -> None:
        actions.append(CancelTimer(ANSWER_TIMER))
        actions.append(FollowupStep("aborted", event.reason))
        actions.append(HangUp())  # BYE, or CANCEL while it still rings
        self._end(actions, event.at, self.outcome or ("failed" if self.answered_at is None else "hung_up"))

    def _ignore(self, event: object, actions: list[FlowAction]) -> None:
        pass


Handler = Callable[[FollowupFlow, Any, list[FlowAction]], None]
INIT, DIALLING, INTRO, ASKING, REPLYING, ENDED = State
_TRANSITIONS: dict[tuple[Any, ...], tuple[Handler, AbstractSet[State]]] = {
    (INIT, FollowupStarted):            (FollowupFlow._on_started, {DIALLING}),
    (DIALLING, CustomerAnswered):       (FollowupFlow._on_answered, {INTRO}),
    (DIALLING, CustomerFailed):         (FollowupFlow._on_failed, {ENDED}),
    (DIALLING, Aborted):                (FollowupFlow._on_aborted, {ENDED}),
    (DIALLING, Digit):                  (FollowupFlow._ignore, {DIALLING}),  # early media keys: not an answer
    (INTRO, PromptFinished):            (FollowupFlow._on_prompt_finished, {INTRO, ASKING}),
    (INTRO, Digit):                     (FollowupFlow._on_digit, {ASKING, REPLYING}),  # answers the first question
    (INTRO, HungUp):                    (FollowupFlow._on_hung_up, {ENDED}),
    (INTRO, Aborted):                   (FollowupFlow._on_aborted, {ENDED}),
    (ASKING, PromptFinished):           (FollowupFlow._on_prompt_finished, {ASKING}),
    (ASKING, Digit):                    (FollowupFlow._on_digit, {ASKING, REPLYING}),
    (ASKING, TimerFired, ANSWER_TIMER): (FollowupFlow._on_answer_timer, {ASKING, REPLYING}),
    (ASKING, HungUp):                   (FollowupFlow._on_hung_up, {ENDED}),
    (ASKING, Aborted):                  (FollowupFlow._on_aborted, {ENDED}),
    (REPLYING, PromptFinished):         (FollowupFlow._on_prompt_finished, {ENDED}),
    (REPLYING, Digit):                  (FollowupFlow._ignore, {REPLYING}),
    (REPLYING, TimerFired):             (FollowupFlow._ignore, {REPLYING}),
    (REPLYING, HungUp):                 (FollowupFlow._on_hung_up, {ENDED}),
    (REPLYING, Aborted):                (FollowupFlow._on_aborted, {ENDED}),
    **{(ENDED, event): (FollowupFlow._ignore, {ENDED}) for event in (  # late events after the end
        CustomerAnswered, CustomerFailed, PromptFinished, Digit, TimerFired, HungUp, Aborted)},
}


# --- the scripts: what the IVR says and asks ---------------------------------------------------

MONTH_PROMPT = "followup_month_{}"  # "十一月"
DAY_PROMPT = "followup_day_{}"  # "二十五日"
DEPARTMENT_PROMPT = "followup_department_{}"  # by the department's place in [desk] departments
OTHER_DEPARTMENT_PROMPT = "followup_department_other"  # "相关部门": a department with no rendered prompt
INTRO_PROMPT = "followup_intro"  # "您好,这里是客服热线,您在"
# after the date, per kind of follow-up; a department is said between the two parts where there are two
KIND_PROMPTS: dict[str, tuple[str, ...]] = {
    "resolved": ("followup_resolved_by", "followup_resolved"),  # "反映的问题已由" … "处理完毕。"
    "daily": ("followup_progress_by", "followup_progress"),  # "反映的问题正在由" … "处理中,…"
    "wrap_up": ("followup_call",),  # "来电反映的问题,我们进行电话回访。"
    "survey": ("followup_call",),
}
SATISFACTION = Question(
    name="satisfaction",
    prompt="followup_question",  # 满意请按1,不满意请按2,转人工服务请按0,不希望再接到回访请按9
    choices=(
        Choice("1", "satisfied", "followup_thanks"),
        Choice("2", "dissatisfied", "followup_sorry"),
        Choice("0", "agent", "followup_agent"),
        Choice("9", "do_not_call", "followup_do_not_call"),
    ),
    invalid_prompt="followup_invalid",
)
PROGRESS = Question(  # the daily status call: nothing to rate yet
    name="progress",
    prompt="followup_progress_question",  # 转人工服务请按0,不希望再接到回访请按9,收听完毕请挂机
    choices=(Choice("0", "agent", "followup_agent"), Choice("9", "do_not_call", "followup_do_not_call")),
    invalid_prompt="followup_invalid",
    no_input_reply="followup_goodbye",
)


TRANSFER = Choice("0", "agent", "followup_transfer", transfer=True)  # "正在为您转接人工客服,请稍候。"


def script_for(kind: str, month: int, day: int, department: str | None, departments: tuple[str, ...],
               *, timeout_seconds: float = 8.0, transfer: bool = False) -> Script:
    """The follow-up's script, composed of pre-rendered fragments only (no TTS during a call).

    `transfer`: 0 puts the customer through to an agent; else an agent calls back (the ticket is flagged).
    """
    parts = KIND_PROMPTS.get(kind, KIND_PROMPTS["survey"])
    intro: tuple[str, ...] = (INTRO_PROMPT, MONTH_PROMPT.format(month), DAY_PROMPT.format(day), parts[0])
    if len(parts) > 1:
        place = departments.index(department) if department in departments else None
        intro += (OTHER_DEPARTMENT_PROMPT if place is None else DEPARTMENT_PROMPT.format(place + 1), parts[1])
    question = PROGRESS if kind == "daily" else SATISFACTION
    choices = tuple(TRANSFER if transfer and c.key == "0" else c for c in question.choices)
    return Script(intro, (Question(question.name, question.prompt, choices, timeout_seconds,
                                   question.retries, question.invalid_prompt, question.no_input_reply),))
