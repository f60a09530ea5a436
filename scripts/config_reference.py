"""Write docs/configuration.md, the reference of every sip.conf key, from the section models.

    .venv/bin/python scripts/config_reference.py           # rewrite docs/configuration.md
    .venv/bin/python scripts/config_reference.py --check   # exit 1 when the committed file differs

Each section is a pydantic model (ivr.config's `SECTIONS`, the agent peers'
`AgentConfig` and desk/config.py's `DeskConfig`); each key is one of its
fields. A key's type and default come from the field, its allowed values from
its parser (`TextParser.allowed`: a range, the choices) and its help from the
attribute docstring right under the field — read here from the source with
`ast`, because pydantic does not collect attribute docstrings of its slotted
dataclasses. Nothing about a key is written twice.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from desk.config import DeskConfig, QualityConfig
from ivr.config import SECTIONS, AgentConfig
from ivr.greeting import Daypart
from ivr.sipconf import Collects, Given, TextParser

DOC = ROOT / "docs" / "configuration.md"
NOT_SET = "—"


def field_docs(model: type) -> dict[str, str]:
    """The attribute docstrings of a model's fields: {field: the string literal on the line after it}."""
    source = Path(sys.modules[model.__module__].__file__ or "").read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == model.__name__:
            docs = {}
            for stmt, after in zip(node.body, [*node.body[1:], None], strict=True):
                if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                        and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                        and isinstance(after.value.value, str)):
                    docs[stmt.target.id] = " ".join(after.value.value.split())
            return docs
    raise LookupError(f"class {model.__name__} not found in {model.__module__}")


def fields(model: type) -> dict[str, Any]:
    return dict(model.__pydantic_fields__)  # type: ignore[attr-defined]


def is_key(info: Any) -> bool:
    """A field read from the file (not one the reader fills in, as an agent's number)."""
    return not any(isinstance(meta, Given) for meta in info.metadata)


def _meta(info: Any, kind: type) -> Any:
    return next((meta for meta in info.metadata if isinstance(meta, kind)), None)


def kind_of(annotation: Any) -> str:
    """The type of a key in words."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return kind_of(args[0])
    if annotation is bool:
        return "yes/no"
    if annotation is int:
        return "whole number"
    if annotation is float:
        return "number"
    if annotation is str:
        return "text"
    if annotation is Path:
        return "path"
    if origin is tuple and args == [str, int]:
        return "host:port"
    if origin in (frozenset, tuple):
        return "list"
    if origin is MappingProxyType:
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def show(value: Any) -> str:
    """A default as it would be written in sip.conf."""
    if value is None:
        return NOT_SET
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}" if value < 1e6 else f"{value:.0f}"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Daypart):
        return f"{value.start:%H:%M} {value.name} {value.word}"
    if isinstance(value, frozenset):
        return ", ".join(sorted(value))
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        return f"{value[0]}:{value[1]}"
    if isinstance(value, tuple):
        return ", ".join(show(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}>{v}" for k, v in value.items())
    return str(value)


def default_of(info: Any) -> str:
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default_factory is not None else info.default
    shown = show(value)
    return shown if shown else "(empty)"


def keys_of(name: str, info: Any) -> str:
    collects = _meta(info, Collects)
    if collects is None:
        return f"`{name}`"
    listed = [f"`{k}`" for k in collects.keys]
    if len(listed) > 3:
        listed = [f"{listed[0]} … {listed[-1]}"]
    if collects.shown_as:
        listed.append(collects.shown_as if collects.shown_as.startswith("a ") else f"`{collects.shown_as}`")
    return " or ".join(listed)


def cell(text: str) -> str:
    """Plain text in a table cell: `|` would end the cell and `<id>` would read as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def code(text: str) -> str:
    if text in ("", NOT_SET, "required", "(empty)", "(none)"):
        return text
    return "`" + text.replace("|", "\\|") + "`"


def table(model: type, extra: list[str] | None = None) -> list[str]:
    docs = field_docs(model)
    rows = ["| key | type | default | allowed | what it does |", "| --- | --- | --- | --- | --- |", *(extra or [])]
    for name, info in fields(model).items():
        if not is_key(info):
            continue
        parser = _meta(info, TextParser)
        collects = _meta(info, Collects)
        kind = ("one per key" if collects else kind_of(info.annotation))
        allowed = parser.allowed or parser.what if parser is not None else ""
        if collects:
            default = ", ".join(f"{k} = {v}" for k, v in default_value(info).items()) or "(none)"
        else:
            default = default_of(info)
        rows.append(f"| {keys_of(name, info)} | {kind} | {code(default)} | {cell(allowed)} "
                    f"| {cell(docs.get(name, ''))} |")
    return rows


def default_value(info: Any) -> Any:
    return info.default_factory() if info.default_factory is not None else info.default


def intro(model: type) -> list[str]:
    doc = (model.__doc__ or "").strip()
    if not doc or doc.startswith(model.__name__ + "("):  # the dataclass signature pydantic fills in
        return []
    return [" ".join(doc.split("\n\n")[0].split()), ""]


def reference() -> str:
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/config_reference.py from the section models in ivr/config/ and",
        "     desk/config.py: edit the fields' docstrings there, then run the script. -->",
        "",
        "Every key of `sip.conf` (Asterisk-style INI: `[section]`, `key = value`, `;` comments), section by",
        "section, with its type, its default (what applies when the key is left out), the values it",
        "accepts and what it does. `sip.conf.example` shows each key in context; paths are relative to the",
        "file. A wrong value stops the start with `file:line: [section] key: reason`. Operations guidance",
        "is in [operations.md](operations.md). In the default column, (empty) means the key is empty",
        f"and {NOT_SET} that it is not set (see what it does); a key of a family (`0` … `9`, `text.<prompt id>`)",
        "is one line per member.",
        "",
    ]
    for section, model in SECTIONS.items():
        out += [f"## [{section}]", "", *intro(model), *table(model), ""]
    out += [
        "## [801], [802], … (agent peers)",
        "",
        "One section per agent, named by the seat number callers hear (\"801号客服\").",
        "",
        *table(AgentConfig, ["| `type` | text | required | agent | makes the section an agent peer |"]),
        "",
        "## [desk]",
        "",
        "Read by the desk (`python -m desk --config sip.conf`), a process of its own; the IVR leaves it alone.",
        "",
        *table(DeskConfig),
        "",
        "## [quality]",
        "",
        "Read by the desk: the QA evaluation form and the review queue's sample (see [quality.md](quality.md)).",
        "",
        *table(QualityConfig),
        "",
    ]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example:\n  .venv/bin/python scripts/config_reference.py --check")
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/configuration.md differs")
    args = parser.parse_args()
    text = reference()
    if args.check:
        current = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
        if current != text:
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                                       str(DOC), "generated"))
            print(f"\n{DOC} is stale: run .venv/bin/python scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
