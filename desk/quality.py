"""Evaluation forms for QA review (质检): read from TOML, checked, scored, versioned by content.

A form is data (`[quality] form`, default `desk/evaluation_form.toml`):

    name = "热线服务质检表"
    pass_score = 80                      # a total below it fails the evaluation

    [scales.yes_no]                      # answer scales: label = points, 0 to 1
    "做到" = 1.0
    "未做到" = 0.0

    [[sections]]
    key = "closing"
    title = "结束"

    [[sections.criteria]]
    key = "thanks"
    title = "致谢道别"
    weight = 5                           # the weights of a form add up to 100
    scale = "yes_no"
    na = true                            # may be answered 不适用: its weight drops out
    auto = "longest_silence_s <= 30"     # answered from the recording's characteristics when they are known

    [[sections.criteria]]
    key = "rude_language"
    title = "使用服务禁语"
    fatal = true                         # no weight: answered 发生, it fails the whole evaluation (total 0)

Every problem is refused when the desk starts, with file, line and reason:
an unknown key, a duplicate criterion, weights that do not add up to 100,
an unknown scale, a rule that does not parse.

The version of a form is the SHA-256 of its canonical JSON (what was read,
not how it was written: comments and spacing do not make a new version). An
evaluation keeps the version it was made with, so changing the file never
rewrites a past evaluation.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_FORM = Path(__file__).parent / "evaluation_form.toml"
NA = "不适用"
FATAL_CLEAR, FATAL_VIOLATED = "未发生", "发生"
MAX_CRITERIA = 40
_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TOP_KEYS = {"name", "pass_score", "description", "scales", "sections"}
_SECTION_KEYS = {"key", "title", "criteria"}
_CRITERION_KEYS = {"key", "title", "weight", "scale", "na", "fatal", "auto", "hint"}


class FormError(ValueError):
    """A form that cannot be used: file:line: reason."""

    def __init__(self, file: Path | str, line: int | None, reason: str) -> None:
        where = f"{file}:{line}" if line else str(file)
        super().__init__(f"{where}: {reason}")
        self.file, self.line, self.reason = str(file), line, reason


class AnswerError(ValueError):
    """A filled-in form that cannot be scored; the message is for the supervisor (Chinese)."""


# --- auto rules: a tiny comparison grammar ------------------------------------------------------
#
#   rule    := clause ("or" clause)*
#   clause  := test ("and" test)*
#   test    := operand op operand | "(" rule ")"
#   operand := name | number            op := < <= > >= == !=
#
# Names are the keys of the recording's characteristics (longest_silence_s …) and a few call
# facts; a name that is not known for a call leaves the criterion to the supervisor.

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}
_TOKEN = re.compile(r"\s*(?:(?P<num>-?\d+(?:\.\d+)?)|(?P<name>[a-z_][a-z0-9_]*)|(?P<op><=|>=|==|!=|<|>)|(?P<p>[()]))")

Node = tuple[Any, ...]


class RuleError(ValueError):
    pass


def _tokens(source: str) -> list[tuple[str, str]]:
    tokens, at = [], 0
    source = source.rstrip()
    while at < len(source):
        m = _TOKEN.match(source, at)
        if m is None or m.end() == at:
            raise RuleError(f"cannot read {source[at:].strip()[:20]!r}")
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "name" and value in ("and", "or"):
            kind = value
        tokens.append((kind, value))
        at = m.end()
    return tokens


@dataclass(frozen=True, slots=True)
class Rule:
    """`auto = "…"` of a criterion: true means the criterion is met."""

    source: str
    tree: Node

    @classmethod
    def parse(cls, source: str) -> Rule:
        tokens = _tokens(source)
        if not tokens:
            raise RuleError("empty rule")
        pos = 0

        def peek() -> str:
            return tokens[pos][0] if pos < len(tokens) else ""

        def take(kind: str) -> str:
            nonlocal pos
            if peek() != kind:
                found = tokens[pos][1] if pos < len(tokens) else "the end"
                raise RuleError(f"expected {kind} but found {found!r}")
            pos += 1
            return tokens[pos - 1][1]

        def operand() -> Node:
            if peek() == "num":
                return ("num", float(take("num")))
            if peek() == "name":
                return ("name", take("name"))
            return ("name", take("name or number"))  # raises with what was found

        def test() -> Node:
            if peek() == "p" and tokens[pos][1] == "(":
                take("p")
                inner = rule()
                if take("p") != ")":
                    raise RuleError("expected ')'")
                return inner
            left = operand()
            op = take("op")
            return ("cmp", op, left, operand())

        def clause() -> Node:
            node = test()
            while peek() == "and":
                take("and")
                node = ("and", node, test())
            return node

        def rule() -> Node:
            node = clause()
            while peek() == "or":
                take("or")
                node = ("or", node, clause())
            return node

        tree = rule()
        if pos != len(tokens):
            raise RuleError(f"unexpected {tokens[pos][1]!r}")
        return cls(source, tree)

    def names(self) -> set[str]:
        found: set[str] = set()

        def walk(node: Node) -> None:
            if node[0] == "name":
                found.add(node[1])
            elif node[0] == "cmp":
                walk(node[2])
                walk(node[3])
            elif node[0] in ("and", "or"):
                walk(node[1])
                walk(node[2])

        walk(self.tree)
        return found

    def decide(self, values: Mapping[str, float]) -> bool | None:
        """True / False, or None when a name it needs is not known for this call."""
        if not self.names() <= values.keys():
            return None

        def value(node: Node) -> float:
            return float(node[1]) if node[0] == "num" else float(values[node[1]])

        def run(node: Node) -> bool:
            if node[0] == "cmp":
                return _OPS[node[1]](value(node[2]), value(node[3]))
            if node[0] == "and":
                return run(node[1]) and run(node[2])
            return run(node[1]) or run(node[2])

        return run(self.tree)


def characteristics_values(raw: str | None) -> dict[str, float]:
    """The numbers of a recording's `characteristics` JSON (anything else is left out)."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        k: float(v)
        for k, v in data.items()
        if isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


# --- the form -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    label: str
    points: float  # 0 to 1 of the criterion's weight


FATAL_OPTIONS = (Option(FATAL_CLEAR, 1.0), Option(FATAL_VIOLATED, 0.0))


@dataclass(frozen=True, slots=True)
class Criterion:
    key: str
    title: str
    weight: float  # 0 for a fatal criterion
    options: tuple[Option, ...]
    allow_na: bool = False
    fatal: bool = False
    auto: Rule | None = None
    hint: str = ""

    def answers(self) -> tuple[str, ...]:
        return tuple(o.label for o in self.options) + ((NA,) if self.allow_na else ())

    def points_of(self, answer: str) -> float | None:
        return next((o.points for o in self.options if o.label == answer), None)

    def auto_answer(self, values: Mapping[str, float]) -> str | None:
        """The answer the rule gives: the best option when met, the worst when not; None when it cannot say."""
        if self.auto is None:
            return None
        met = self.auto.decide(values)
        if met is None:
            return None
        ranked = sorted(self.options, key=lambda o: o.points)
        return ranked[-1].label if met else ranked[0].label


@dataclass(frozen=True, slots=True)
class FormSection:
    key: str
    title: str
    criteria: tuple[Criterion, ...]


@dataclass(frozen=True, slots=True)
class Form:
    name: str
    pass_score: float
    description: str
    sections: tuple[FormSection, ...]

    @property
    def criteria(self) -> tuple[Criterion, ...]:
        return tuple(c for s in self.sections for c in s.criteria)

    def criterion(self, key: str) -> Criterion | None:
        return next((c for c in self.criteria if c.key == key), None)

    def definition(self) -> str:
        """The canonical JSON: what the CRM stores and what the version is the hash of."""
        data = {
            "name": self.name,
            "pass_score": self.pass_score,
            "description": self.description,
            "sections": [
                {
                    "key": s.key,
                    "title": s.title,
                    "criteria": [
                        {
                            "key": c.key,
                            "title": c.title,
                            "weight": c.weight,
                            "options": [[o.label, o.points] for o in c.options],
                            "na": c.allow_na,
                            "fatal": c.fatal,
                            "auto": c.auto.source if c.auto else None,
                            "hint": c.hint,
                        }
                        for c in s.criteria
                    ],
                }
                for s in self.sections
            ],
        }
        return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    @property
    def version(self) -> str:
        return hashlib.sha256(self.definition().encode()).hexdigest()

    @classmethod
    def from_definition(cls, definition: str) -> Form:
        """A stored version back (checked when it was first read)."""
        data = json.loads(definition)
        return cls(
            name=data["name"],
            pass_score=float(data["pass_score"]),
            description=data.get("description", ""),
            sections=tuple(
                FormSection(
                    s["key"],
                    s["title"],
                    tuple(
                        Criterion(
                            key=c["key"],
                            title=c["title"],
                            weight=float(c["weight"]),
                            options=tuple(Option(label, float(points)) for label, points in c["options"]),
                            allow_na=bool(c["na"]),
                            fatal=bool(c["fatal"]),
                            auto=Rule.parse(c["auto"]) if c.get("auto") else None,
                            hint=c.get("hint", ""),
                        )
                        for c in s["criteria"]
                    ),
                )
                for s in data["sections"]
            ),
        )


# --- reading a form file ------------------------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")
_LINE_KEY = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_-]+))\s*=""")


class _Lines:
    """Where each table and key of the TOML text is (tomllib keeps no line numbers).

    Tables are kept in file order by header name (`sections.criteria` …): the
    n-th `[[sections.criteria]]` of the file is the n-th criterion of the form.
    """

    def __init__(self, text: str) -> None:
        self.tables: list[tuple[str, int, dict[str, int]]] = [("", 1, {})]
        for number, line in enumerate(text.splitlines(), start=1):
            if m := _HEADER.match(line):
                name = re.sub(r"\s*\.\s*", ".", m.group(2)).replace('"', "")
                self.tables.append((name, number, {}))
            elif m := _LINE_KEY.match(line):
                key = m.group(1) or m.group(2) or m.group(3)
                self.tables[-1][2].setdefault(key, number)

    def line(self, table: str, index: int = 0, key: str | None = None) -> int | None:
        found = [t for t in self.tables if t[0] == table]
        if index >= len(found):
            return None
        _, header, keys = found[index]
        return keys.get(key, header) if key is not None else header

    def top(self, key: str) -> int | None:
        """A top-level key's line, or the first header of a table under it (`[scale.x]` for `scale`)."""
        if key in self.tables[0][2]:
            return self.tables[0][2][key]
        return next((line for name, line, _ in self.tables[1:] if name == key or name.startswith(key + ".")), None)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _text(value: object, limit: int = 200) -> str | None:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        return None
    return value.strip()


def _scales(raw: object, fail: Callable[[int | None, str], FormError], lines: _Lines) -> dict[str, tuple[Option, ...]]:
    if not isinstance(raw, dict):
        raise fail(lines.top("scales"), "scales: a table of answer scales, e.g. [scales.yes_no]")
    scales: dict[str, tuple[Option, ...]] = {}
    for name, options in raw.items():
        where = lines.line(f"scales.{name}")
        if not _KEY.fullmatch(name):
            raise fail(where, f"scale {name!r}: a name of lower-case letters, digits and _")
        if not isinstance(options, dict) or len(options) < 2:
            raise fail(where, f"scale {name!r}: at least two answers, each \"label\" = points from 0 to 1")
        parsed = []
        for label, points in options.items():
            value = _number(points)
            at = lines.line(f"scales.{name}", key=label)
            if value is None or not 0 <= value <= 1:
                raise fail(at, f"scale {name!r}: {label!r} = {points!r}: points are a number from 0 to 1")
            if label in (NA, FATAL_CLEAR, FATAL_VIOLATED) or len(label) > 32:
                raise fail(at, f"scale {name!r}: {label!r} is reserved or too long (32 characters at most)")
            parsed.append(Option(label, value))
        if max(o.points for o in parsed) != 1.0:
            raise fail(where, f"scale {name!r}: one answer must give full points (1.0)")
        scales[name] = tuple(parsed)
    return scales


def read_form(path: Path) -> Form:
    """Read and check a form file; FormError names file, line and reason."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FormError(path, None, f"cannot read: {exc.strerror}") from None
    return parse_form(text, path)


def parse_form(text: str, path: Path | str = "<form>") -> Form:
    def fail(line: int | None, reason: str) -> FormError:
        return FormError(path, line, reason)

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        raise fail(int(m.group(1)) if m else None, f"not TOML: {str(exc).split(' (at line')[0]}") from None
    lines = _Lines(text)

    def unknown(keys: set[str], known: set[str], table: str, index: int = 0, what: str = "") -> None:
        for key in sorted(keys - known, key=lambda k: lines.line(table, index, k) or 0):
            where = lines.line(table, index, key) if table else lines.top(key)
            raise fail(where, f"{what}unknown key {key!r}; known keys are {', '.join(sorted(known))}")

    unknown(set(data), _TOP_KEYS, "")
    name = _text(data.get("name"), 128)
    if name is None:
        raise fail(lines.top("name"), "name: the form's name, 1-128 characters")
    pass_score = _number(data.get("pass_score", 80))
    if pass_score is None or not 0 <= pass_score <= 100:
        raise fail(lines.top("pass_score"), "pass_score: a number from 0 to 100")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail(lines.top("description"), "description: text")
    scales = _scales(data.get("scales", {}), fail, lines)
    raw_sections = data.get("sections")
    if not isinstance(raw_sections, list) or not raw_sections:
        raise fail(None, "no [[sections]]: a form has at least one section with criteria")

    sections: list[FormSection] = []
    seen: dict[str, int | None] = {}
    seen_sections: set[str] = set()
    n = 0  # the criterion's place in the file: the n-th [[sections.criteria]]
    last_weight_line: int | None = None
    for i, raw in enumerate(raw_sections):
        header = lines.line("sections", i)
        if not isinstance(raw, dict):
            raise fail(header, "a section is a [[sections]] table")
        unknown(set(raw), _SECTION_KEYS, "sections", i, "section: ")
        key, title = raw.get("key"), _text(raw.get("title"))
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise fail(lines.line("sections", i, "key"), "section key: lower-case letters, digits and _")
        if key in seen_sections:
            raise fail(lines.line("sections", i, "key"), f"section {key!r} appears twice")
        seen_sections.add(key)
        if title is None:
            raise fail(lines.line("sections", i, "title"), f"section {key!r}: a title of 1-200 characters")
        raw_criteria = raw.get("criteria")
        if not isinstance(raw_criteria, list) or not raw_criteria:
            raise fail(header, f"section {key!r} has no [[sections.criteria]]")
        criteria = []
        for c in raw_criteria:
            at = n
            n += 1

            def where(k: str | None = None, at: int = at, header: int | None = header) -> int | None:
                return lines.line("sections.criteria", at, k) or header

            if not isinstance(c, dict):
                raise fail(where(), "a criterion is a [[sections.criteria]] table")
            unknown(set(c), _CRITERION_KEYS, "sections.criteria", at, "criterion: ")
            ckey = c.get("key")
            if not isinstance(ckey, str) or not _KEY.fullmatch(ckey):
                raise fail(where("key"), "criterion key: lower-case letters, digits and _ (at most 64)")
            if ckey in seen:
                first = seen[ckey]
                raise fail(where("key"), f"criterion {ckey!r} appears twice" + (f" (first at line {first})"
                                                                                if first else ""))
            seen[ckey] = where("key")
            ctitle = _text(c.get("title"))
            if ctitle is None:
                raise fail(where("title"), f"criterion {ckey!r}: a title of 1-200 characters")
            fatal, allow_na = c.get("fatal", False), c.get("na", False)
            for flag, value in (("fatal", fatal), ("na", allow_na)):
                if not isinstance(value, bool):
                    raise fail(where(flag), f"criterion {ckey!r}: {flag} is true or false")
            hint = c.get("hint", "")
            if not isinstance(hint, str) or len(hint) > 500:
                raise fail(where("hint"), f"criterion {ckey!r}: hint is text of at most 500 characters")
            rule = None
            if "auto" in c:
                if not isinstance(c["auto"], str):
                    raise fail(where("auto"), f"criterion {ckey!r}: auto is a rule in quotes, "
                                              'e.g. "longest_silence_s <= 30"')
                try:
                    rule = Rule.parse(c["auto"])
                except RuleError as exc:
                    raise fail(where("auto"), f"criterion {ckey!r}: auto rule {c['auto']!r}: {exc}") from None
            if fatal:
                for k in ("weight", "scale"):
                    if k in c:
                        raise fail(where(k), f"criterion {ckey!r}: a fatal criterion has no {k} "
                                             f"(answered {FATAL_VIOLATED}, it fails the whole evaluation)")
                criteria.append(Criterion(ckey, ctitle, 0.0, FATAL_OPTIONS, allow_na, True, rule, hint))
                continue
            weight = _number(c.get("weight"))
            if weight is None or not 0 < weight <= 100:
                raise fail(where("weight"), f"criterion {ckey!r}: weight, a number above 0 and at most 100")
            last_weight_line = where("weight")
            scale = c.get("scale")
            if not isinstance(scale, str) or scale not in scales:
                known = ", ".join(scales) or "none defined"
                raise fail(where("scale"), f"criterion {ckey!r}: scale {scale!r} is not one of [scales] ({known})")
            criteria.append(Criterion(ckey, ctitle, weight, scales[scale], allow_na, False, rule, hint))
        sections.append(FormSection(key, title, tuple(criteria)))

    if n > MAX_CRITERIA:
        raise fail(lines.line("sections.criteria", MAX_CRITERIA), f"{n} criteria; a form has at most {MAX_CRITERIA} "
                                                                    "(one answer each in a desk post of 50 fields)")
    total = sum(c.weight for s in sections for c in s.criteria)
    if not math.isclose(total, 100, abs_tol=1e-6):
        parts = ", ".join(f"{s.key} {sum(c.weight for c in s.criteria):g}" for s in sections)
        raise fail(last_weight_line, f"the weights add up to {total:g}, not 100 ({parts})")
    return Form(name, pass_score, description, tuple(sections))


# --- scoring ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Score:
    total: float  # 0-100; 0 when a fatal criterion failed the evaluation
    passed: bool
    fatal: tuple[str, ...]  # keys of the fatal criteria answered 发生
    weighed: float  # the weight that counted (not-applicable criteria drop out)


def score(form: Form, answers: Mapping[str, str]) -> Score:
    """Score a filled-in form: every criterion answered, N/A dropped from the weighting, fatal → 0 and failed."""
    earned = weighed = 0.0
    fatal = []
    for c in form.criteria:
        answer = answers.get(c.key)
        if answer is None or answer == "":
            raise AnswerError(f"「{c.title}」未作答")
        if answer not in c.answers():
            raise AnswerError(f"「{c.title}」的答案无效,请从选项中选择")
        if answer == NA:
            continue
        if c.fatal:
            if answer == FATAL_VIOLATED:
                fatal.append(c.key)
            continue
        points = c.points_of(answer)
        assert points is not None
        earned += c.weight * points
        weighed += c.weight
    if fatal:
        return Score(0.0, False, tuple(fatal), weighed)
    if weighed == 0:
        raise AnswerError("所有评分项都是「不适用」,无法评分")
    total = round(earned / weighed * 100, 1)
    return Score(total, total >= form.pass_score, (), weighed)
