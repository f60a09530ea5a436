"""Draw the call flow's states from its transition table (Mermaid stateDiagram-v2).

    .venv/bin/python scripts/state_diagram.py            # print the diagram
    .venv/bin/python scripts/state_diagram.py --write    # rewrite it in docs/architecture.md, between its markers

Each arrow is one change of state a row of `ivr.callflow._TRANSITIONS` allows,
labelled with the events (and timers) that take it. Rows that leave the state
as it is are not drawn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ivr.callflow import _TRANSITIONS, FINAL_STATE, State

DOC = ROOT / "docs" / "architecture.md"
BEGIN = "<!-- state-diagram:begin -->"
END = "<!-- state-diagram:end -->"


def mermaid() -> str:
    """The diagram: one arrow per (state, next state) in the order of `State`, its events in table order."""
    edges: dict[tuple[State, State], list[str]] = {}
    for key, transition in _TRANSITIONS.items():
        state, event_type, *detail = key
        label = f"{event_type.__name__}({detail[0]})" if detail else event_type.__name__
        for after in transition.next_states:
            if after is not state:
                labels = edges.setdefault((state, after), [])
                if label not in labels:
                    labels.append(label)
    order = list(State).index
    lines = ["stateDiagram-v2", f"    [*] --> {State.INIT.name}"]
    for source, target in sorted(edges, key=lambda edge: (order(edge[0]), order(edge[1]))):
        lines.append(f"    {source.name} --> {target.name} : {', '.join(edges[source, target])}")
    lines.append(f"    {FINAL_STATE.name} --> [*]")
    return "\n".join(lines) + "\n"


def doc_block() -> str:
    """What stands between the markers in docs/architecture.md."""
    return f"{BEGIN}\n```mermaid\n{mermaid()}```\n{END}"


def replace_block(text: str) -> str:
    begin, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:begin] + doc_block() + text[end:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help="rewrite the diagram in docs/architecture.md between its markers")
    args = parser.parse_args()
    if args.write:
        DOC.write_text(replace_block(DOC.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        sys.stdout.write(mermaid())


if __name__ == "__main__":
    main()
