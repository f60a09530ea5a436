"""Set keys of a sip.conf in place, keeping its comments and layout.

    python3 scripts/conf_set.py /etc/hotline/ivr-2.conf general.port=5062 metrics.port=9103

Each `section.key=value` replaces the key's line in that section; a commented
default (`;key = ...`) is replaced the same way, so the line stays where the
example file documents it. A key the section lacks is added right after the
section's header; a section the file lacks is added at the end. Uses only the
standard library: the installer runs it before any virtualenv exists.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SECTION = re.compile(r"^\s*\[([^\]]+)\]")


def set_key(lines: list[str], section: str, key: str, value: str) -> list[str]:
    """`lines` with `key = value` in `[section]`: the first line setting it (or its commented default) replaced."""
    entry = re.compile(rf"^\s*;?\s*{re.escape(key)}\s*=")
    current, header, found = None, None, None
    for i, line in enumerate(lines):
        m = SECTION.match(line)
        if m:
            current = m.group(1).strip()
            if current == section and header is None:
                header = i
            continue
        if current == section and entry.match(line):
            # an uncommented setting wins over a commented default met earlier
            if found is None or (lines[found].lstrip().startswith(";") and not line.lstrip().startswith(";")):
                found = i
    new = f"{key} = {value}\n"
    if found is not None:
        return [*lines[:found], new, *lines[found + 1:]]
    if header is not None:
        return [*lines[:header + 1], new, *lines[header + 1:]]
    tail = [] if not lines or lines[-1].endswith("\n") else ["\n"]
    return [*lines, *tail, f"\n[{section}]\n", new]


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    path = Path(argv[0])
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for item in argv[1:]:
        name, sep, value = item.partition("=")
        section, dot, key = name.partition(".")
        if not sep or not dot or not section or not key:
            print(f"error: {item!r}: expected section.key=value", file=sys.stderr)
            return 2
        lines = set_key(lines, section.strip(), key.strip(), value.strip())
    path.write_text("".join(lines), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
