"""The two-lane timeline of a recorded call: when the caller and the agent spoke, over-talk and long silences.

Drawn server-side as SVG (desk/templates/_timeline.html) from the
characteristics stored with the recording (`crm_bridge.characteristics`): no
script, nothing for the content security policy to refuse (presentation
attributes, no inline style).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, Engine, select
from sqlalchemy.orm import Session

from crm_bridge.characteristics import Characteristics, CharacteristicsError, Span
from crm_bridge.models import Recording

WIDTH = 900  # viewBox units; the SVG scales to the page
LABEL_W = 44  # the lane names at the left
RIGHT_PAD = 16  # room for the last tick's label
LANE_H = 18
CALLER_Y, AGENT_Y = 8, 42
AXIS_Y = 72
HEIGHT = 92
SPEAKER_LABELS = {"caller": "客户", "agent": "坐席"}
TICK_STEPS = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800)


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    title: str  # the tooltip: from–to and length


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True, slots=True)
class Timeline:
    recording_id: int
    figures: Characteristics
    caller: tuple[Bar, ...]
    agent: tuple[Bar, ...]
    overtalk: tuple[Bar, ...]
    silences: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    width: int = WIDTH
    height: int = HEIGHT
    label_w: int = LABEL_W
    lane_h: int = LANE_H
    caller_y: int = CALLER_Y
    agent_y: int = AGENT_Y
    axis_y: int = AXIS_Y


def _clock(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{whole // 60}:{whole % 60:02d}"


def timeline(figures: Characteristics, recording_id: int = 0) -> Timeline:
    """Where each bar goes: seconds mapped onto the lanes' width."""
    duration = max(figures.duration_s, 1.0)
    scale = (WIDTH - LABEL_W - RIGHT_PAD) / duration

    def bars(spans: tuple[Span, ...], what: str) -> tuple[Bar, ...]:
        return tuple(
            Bar(round(LABEL_W + a * scale, 2), round(max((b - a) * scale, 1.0), 2),
                f"{what} {_clock(a)}–{_clock(b)}({b - a:.1f}秒)")
            for a, b in spans
        )

    silences = tuple((s.start_s, s.start_s + s.duration_s) for s in figures.silences)
    silence_bars = tuple(
        Bar(bar.x, bar.width, f"{bar.title},之前说话的是{SPEAKER_LABELS.get(s.last_speaker or '', '无人')}")
        for bar, s in zip(bars(silences, "静默"), figures.silences, strict=True)
    )
    step = next((t for t in TICK_STEPS if duration / t <= 10), TICK_STEPS[-1])
    ticks = tuple(Tick(round(LABEL_W + t * scale, 2), _clock(t)) for t in range(0, int(duration) + 1, step))
    return Timeline(recording_id, figures, bars(figures.caller_segments, "客户"), bars(figures.agent_segments, "坐席"),
                    bars(figures.overtalk, "抢话"), silence_bars, ticks)


def timeline_for_call(engine: Engine, sip_call_id: str) -> Timeline | None:
    """The timeline of the call's latest recording that has characteristics, if any (blocking)."""
    return _timeline_of(engine, Recording.sip_call_id == sip_call_id)


def timeline_for_recording(engine: Engine, recording_id: int) -> Timeline | None:
    """The timeline of one recording, if it is complete and has characteristics (blocking)."""
    return _timeline_of(engine, Recording.id == recording_id)


def _timeline_of(engine: Engine, which: ColumnElement[bool]) -> Timeline | None:
    with Session(engine) as s:
        row = s.execute(
            select(Recording.id, Recording.characteristics)
            .where(which, Recording.characteristics.is_not(None), Recording.state == "complete")
            .order_by(Recording.started_at.desc(), Recording.id.desc()).limit(1)
        ).first()
    if row is None or row.characteristics is None:
        return None
    try:
        return timeline(Characteristics.from_json(row.characteristics), row.id)
    except CharacteristicsError:
        return None  # a row another version wrote badly: no timeline rather than a broken page
