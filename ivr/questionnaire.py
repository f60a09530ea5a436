"""Post-call questionnaires as data: a TOML file of questions, read once at start-up.

After the agent hangs up the caller stays on the line for a questionnaire
([000]/[003]; the service scripts ask for one "涵盖产品质量、服务态度、物流配送等方面").
Which questionnaire follows a call is chosen by the call's service or seat
group (`[[route]]`, first match), else `default`. The call flow
(`ivr.callflow`) walks a questionnaire question by question; it knows nothing
of any particular question.

The file (`[survey] questionnaires`, default `prompts/questionnaires.toml`,
which asks today's single satisfaction question) is checked whole at start:
anything wrong stops the IVR with file, line and reason, as sip.conf errors
do (`ConfigError`). The shape and types are pydantic models (unknown keys
refused); what spans several entries (duplicate ids, a skip rule to a missing
question) is checked after them. tomllib keeps no line numbers, so
`_TomlLines` finds the line of each table and key for the messages.

Each questionnaire carries a version, a hash of its content: every stored
answer names the version it answered, so editing the file never changes what
past answers meant.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from ivr.service import SEAT_GROUPS, SERVICES
from ivr.sipconf import ConfigError

DEFAULT_FILE = Path(__file__).resolve().parent.parent / "prompts" / "questionnaires.toml"
END = "end"  # an answer's `next`: no more questions
KEYS = "0123456789*#"
MAX_TRIES = 2  # a question is asked at most twice: once, and one reprompt on no key or a wrong key

# --- what the rest of the IVR sees ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Choice:
    """One key of a question and what it means."""

    key: str
    value: str  # stored with the answer: what the key means, stable across wording changes
    label: str  # for people: reports and the desk
    score: int | None = None  # 1 satisfied, 2 average, 3 dissatisfied: becomes calls.survey_score
    followup: bool = False  # the customer asks to be called back about this call
    next: str | None = None  # the question asked after this answer (a later one), END, or None: the following one


@dataclass(frozen=True, slots=True)
class Question:
    id: str
    prompt_id: str  # the prompt played: rendered from `text`, or prompts/recorded/<prompt_id>.wav
    text: str
    answers: MappingProxyType[str, Choice]  # by key
    timeout_seconds: float | None = None  # None: [survey] timeout_seconds

    @property
    def scored(self) -> bool:
        return any(a.score is not None for a in self.answers.values())


@dataclass(frozen=True, slots=True)
class Questionnaire:
    id: str
    version: str  # hash of the content: stored with every answer
    questions: tuple[Question, ...]

    def question(self, question_id: str) -> Question:
        return next(q for q in self.questions if q.id == question_id)

    def after(self, question: Question, answer: Choice | None) -> Question | None:
        """The question asked after `question` was answered with `answer` (None: not answered); None at the end."""
        target = answer.next if answer is not None else None
        if target == END:
            return None
        if target is not None:
            return self.question(target)
        index = self.questions.index(question) + 1
        return self.questions[index] if index < len(self.questions) else None


@dataclass(frozen=True, slots=True)
class Route:
    questionnaire: str
    service: str | None = None
    seat_group: str | None = None

    def takes(self, service: str | None, seat_group: str | None) -> bool:
        return ((self.service is None or self.service == service)
                and (self.seat_group is None or self.seat_group == seat_group))


@dataclass(frozen=True, slots=True)
class QuestionnaireSet:
    """Every questionnaire of the file, and which one follows a call."""

    path: Path
    questionnaires: MappingProxyType[str, Questionnaire]
    default: str
    routes: tuple[Route, ...] = ()

    def for_call(self, service: str | None, seat_group: str | None) -> Questionnaire:
        chosen = next((r.questionnaire for r in self.routes if r.takes(service, seat_group)), self.default)
        return self.questionnaires[chosen]

    def prompts(self) -> dict[str, str]:
        """prompt id -> text of every question, for the prompt catalogue (rendered at start like every prompt)."""
        return {q.prompt_id: q.text for qn in self.questionnaires.values() for q in qn.questions}

    def relabelled(self, values: Mapping[str, str]) -> QuestionnaireSet:
        """The default questionnaire with an old sip.conf's `[survey] <digit> = value` applied to its scored question.

        As before questionnaires, a digit sets the value stored for that key, and a digit the question
        lacks becomes a key of its own whose score is the digit.
        """
        default = self.questionnaires[self.default]

        def relabel(q: Question) -> Question:
            answers = {k: Choice(a.key, values.get(k, a.value), a.label, a.score, a.followup, a.next)
                       for k, a in q.answers.items()}
            answers.update({k: Choice(k, v, v, int(k)) for k, v in values.items() if k not in answers})
            return Question(q.id, q.prompt_id, q.text, MappingProxyType(dict(sorted(answers.items()))),
                            q.timeout_seconds)

        questions = tuple(relabel(q) if q.scored else q for q in default.questions)
        changed = Questionnaire(default.id, _version(questions), questions)
        return QuestionnaireSet(self.path, MappingProxyType({**self.questionnaires, default.id: changed}),
                                self.default, self.routes)


# --- the file's models (shape and types) --------------------------------------------------------

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)
Ident = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
Key = Annotated[str, Field(pattern=r"^[0-9*#]$")]
Text = Annotated[str, Field(min_length=1, max_length=64)]


class _AnswerModel(BaseModel):
    model_config = _STRICT
    key: Key
    value: Text
    label: Annotated[str, Field(max_length=64)] = ""
    score: Annotated[int, Field(ge=1, le=3)] | None = None
    followup: bool = False
    next: Ident | None = None


class _QuestionModel(BaseModel):
    model_config = _STRICT
    id: Ident
    prompt: Annotated[str, Field(min_length=1, max_length=500)]
    # survey…: never the id of another prompt of the catalogue (a question's text would replace it)
    prompt_id: Annotated[str, Field(pattern=r"^survey(_[A-Za-z0-9_]{1,57})?$")] | None = None
    timeout_seconds: Annotated[float, Field(ge=2, le=60, strict=False)] | None = None
    answers: Annotated[list[_AnswerModel], Field(min_length=1)]


class _QuestionnaireModel(BaseModel):
    model_config = _STRICT
    id: Ident
    question: Annotated[list[_QuestionModel], Field(min_length=1)]


class _RouteModel(BaseModel):
    model_config = _STRICT
    questionnaire: Ident
    service: str | None = None
    seat_group: str | None = None


class _FileModel(BaseModel):
    model_config = _STRICT
    default: Ident
    route: list[_RouteModel] = []
    questionnaire: Annotated[list[_QuestionnaireModel], Field(min_length=1)]


# --- reading -----------------------------------------------------------------------------------


class _Problem(Exception):
    def __init__(self, loc: Sequence[str | int], reason: str) -> None:
        super().__init__(reason)
        self.loc, self.reason = tuple(loc), reason


def load_questionnaires(path: Path) -> QuestionnaireSet:
    """Read and check a questionnaire file; ConfigError (file, line, key, reason) on the first problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, None, "file", f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise ConfigError(path, int(found.group(1)) if found else None, "syntax", f"not TOML: {reason}") from None
    lines = _TomlLines(text)
    try:
        model = _FileModel.model_validate(data)
        return _build(path, model)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc, reason = _explain(error)
        raise ConfigError(path, lines.line(loc), _name(loc), reason) from None
    except _Problem as problem:
        raise ConfigError(path, lines.line(problem.loc), _name(problem.loc), problem.reason) from None


@functools.cache
def default_questionnaires() -> QuestionnaireSet:
    """The shipped file: today's single satisfaction question ("满意请按1,一般请按2,不满意请按3")."""
    return load_questionnaires(DEFAULT_FILE)


def _explain(error: ErrorDetails) -> tuple[tuple[str | int, ...], str]:
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return loc, "unknown key"
    if kind == "missing":
        return loc, "missing"
    if kind == "string_pattern_mismatch":
        field = loc[-1] if loc else ""
        if field == "key":
            return loc, f"{error['input']!r} is not a key: one of 0-9, * or #"
        if field == "prompt_id":
            return loc, f"{error['input']!r} is not a question's prompt id: survey, or survey_ then letters, digits, _"
        return loc, f"{error['input']!r} is not an id: lower-case letters, digits and _, starting with a letter"
    return loc, f"{error['input']!r}: {error['msg']}" if kind != "too_short" else error["msg"]


def _name(loc: Sequence[str | int]) -> str:
    """`questionnaire[2].question[1].answers[3].key` as people count (from 1)."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1] += f"[{item + 1}]"
        else:
            parts.append(item)
    return ".".join(parts) or "file"


def _build(path: Path, model: _FileModel) -> QuestionnaireSet:
    questionnaires: dict[str, Questionnaire] = {}
    prompt_ids: dict[str, tuple[str | int, ...]] = {}
    for qi, qn in enumerate(model.questionnaire):
        where: tuple[str | int, ...] = ("questionnaire", qi)
        if qn.id in questionnaires:
            raise _Problem((*where, "id"), f"questionnaire {qn.id!r} is defined twice")
        questionnaires[qn.id] = _questionnaire(qn, where, prompt_ids)
    if model.default not in questionnaires:
        raise _Problem(("default",), f"no questionnaire {model.default!r}; defined: {', '.join(questionnaires)}")
    routes = []
    for ri, route in enumerate(model.route):
        where = ("route", ri)
        if route.service is not None and route.service not in SERVICES:
            raise _Problem((*where, "service"), f"{route.service!r} is not a service; choose {', '.join(SERVICES)}")
        if route.seat_group is not None and route.seat_group not in SEAT_GROUPS:
            raise _Problem((*where, "seat_group"),
                           f"{route.seat_group!r} is not a seat group; choose {', '.join(SEAT_GROUPS)}")
        if route.service is None and route.seat_group is None:
            raise _Problem(where, "a route names a service, a seat_group or both")
        if route.questionnaire not in questionnaires:
            raise _Problem((*where, "questionnaire"), f"no questionnaire {route.questionnaire!r}")
        routes.append(Route(route.questionnaire, route.service, route.seat_group))
    return QuestionnaireSet(path, MappingProxyType(questionnaires), model.default, tuple(routes))


def _questionnaire(qn: _QuestionnaireModel, where: tuple[str | int, ...],
                   prompt_ids: dict[str, tuple[str | int, ...]]) -> Questionnaire:
    order = {q.id: n for n, q in enumerate(qn.question)}
    seen: set[str] = set()
    scored: str | None = None
    questions = []
    for n, q in enumerate(qn.question):
        here = (*where, "question", n)
        if q.id in seen:
            raise _Problem((*here, "id"), f"question {q.id!r} appears twice in questionnaire {qn.id!r}")
        seen.add(q.id)
        prompt_id = q.prompt_id or f"survey_{qn.id}_{q.id}"
        if prompt_id in prompt_ids:
            raise _Problem((*here, "prompt_id"), f"prompt {prompt_id!r} is used by two questions")
        prompt_ids[prompt_id] = here
        answers: dict[str, Choice] = {}
        for k, a in enumerate(q.answers):
            at = (*here, "answers", k)
            if a.key in answers:
                raise _Problem((*at, "key"), f"key {a.key!r} is used twice in question {q.id!r}")
            if a.next is not None and a.next != END:
                if a.next not in order:
                    raise _Problem((*at, "next"), f"skip rule to a missing question {a.next!r} "
                                                  f"(questions: {', '.join(order)}, or end)")
                if order[a.next] <= n:
                    raise _Problem((*at, "next"), f"skip rule to {a.next!r}, which is not after {q.id!r}: "
                                                  "a questionnaire only moves forward")
            answers[a.key] = Choice(a.key, a.value, a.label or a.value, a.score, a.followup, a.next)
        if any(a.score is not None for a in answers.values()):
            if scored is not None:
                raise _Problem((*here, "answers"), f"scores are given in questions {scored!r} and {q.id!r}; "
                                                   "calls.survey_score takes one question's score")
            scored = q.id
        questions.append(Question(q.id, prompt_id, q.prompt, MappingProxyType(answers), q.timeout_seconds))
    return Questionnaire(qn.id, _version(tuple(questions)), tuple(questions))


def _version(questions: tuple[Question, ...]) -> str:
    """12 hex digits of SHA-256 over the questions as they are asked and stored (order, texts, keys, values)."""
    content = [
        [q.id, q.prompt_id, q.text, q.timeout_seconds,
         [[a.key, a.value, a.label, a.score, a.followup, a.next] for a in q.answers.values()]]
        for q in questions
    ]
    return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode()).hexdigest()[:12]


# --- lines of a TOML file -----------------------------------------------------------------------

_ARRAY_TABLE = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.]+)\s*\]\]")
_TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.]+)\s*\]")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")
_INLINE_KEY = re.compile(r"([A-Za-z0-9_-]+)\s*=")


class _TomlLines:
    """The line of each table and key of the file, by the path pydantic reports (questionnaire, 0, question, 1, …).

    Enough of TOML for the files this module reads: `[[a.b]]` array tables,
    `key = value` lines, and arrays of inline tables one per line
    (`answers = [ {key = "1", …}, … ]`).
    """

    def __init__(self, text: str) -> None:
        self.index: dict[tuple[Any, ...], int] = {}
        counts: dict[tuple[Any, ...], int] = {}
        table: tuple[Any, ...] = ()
        array: tuple[Any, ...] | None = None  # inside a multi-line array: its key's path
        items = 0
        for number, raw in enumerate(text.splitlines(), start=1):
            line = _strip_comment(raw)
            if array is not None:
                for _ in range(line.count("{")):
                    self.index.setdefault((*array, items), number)
                    for key in _INLINE_KEY.findall(line):
                        self.index.setdefault((*array, items, key), number)
                    items += 1
                if line.strip().rstrip(",").endswith("]"):
                    array = None
                continue
            if m := _ARRAY_TABLE.match(line):
                names = m.group(1).split(".")
                parent = self._parent(table, names[:-1])
                slot = (*parent, names[-1])
                counts[slot] = counts.get(slot, -1) + 1
                table = (*slot, counts[slot])
                self.index.setdefault(table, number)
            elif m := _TABLE.match(line):
                table = tuple(m.group(1).split("."))
                self.index.setdefault(table, number)
            elif m := _KEY.match(line):
                key = (*table, m.group(1))
                self.index.setdefault(key, number)
                value = line.split("=", 1)[1].strip()
                if value.startswith("[") and value.count("[") > value.count("]"):
                    array, items = key, 0
                    for _ in range(value.count("{")):
                        self.index.setdefault((*key, items), number)
                        items += 1

    @staticmethod
    def _parent(table: tuple[Any, ...], names: list[str]) -> tuple[Any, ...]:
        """The current element of the array table `names` (questionnaire -> (questionnaire, n))."""
        path: tuple[Any, ...] = ()
        for name in names:
            path = (*path, name)
            if len(table) > len(path) and table[: len(path)] == path and isinstance(table[len(path)], int):
                path = (*path, table[len(path)])
        return path

    def line(self, loc: Sequence[str | int]) -> int | None:
        path = tuple(loc)
        while path:
            if path in self.index:
                return self.index[path]
            path = path[:-1]
        return None


def _strip_comment(line: str) -> str:
    """The line without a trailing # comment (a # inside a quoted string is kept)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return line[:i]
    return line
