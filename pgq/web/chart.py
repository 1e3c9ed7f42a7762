"""The overview's throughput chart, drawn on the server: the stats document's per-minute
history (``Stats.throughput()``) becomes polyline coordinates the template puts in an
inline ``<svg>``. No script draws it (the CSP allows none inline, and a chart library
would be the dashboard's biggest dependency); its colours come from pgq.css classes.

The x axis is the hour before the latest point, so a gap in the history (minutes without
a stats leader) shows as a straight segment over the missing minutes rather than being
squeezed out. The viewBox is stretched to the element's width (``preserveAspectRatio
none``), so labels live outside the SVG, in HTML, where text is not distorted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pgq.client.stats import ThroughputPoint

WIDTH = 600.0
HEIGHT = 160.0
PAD = 8.0
"""Keeps the line's stroke inside the box at the top and bottom."""
SPAN = timedelta(hours=1)


@dataclass(frozen=True)
class Series:
    name: str
    """``completed`` or ``failed``: also the CSS class of its line."""
    points: str
    """``x,y x,y ...`` for the polyline's ``points`` attribute."""
    dots: tuple[tuple[float, float], ...]
    """Markers, only when one point alone would draw no line."""
    total: int


@dataclass(frozen=True)
class Chart:
    width: float
    height: float
    start: datetime
    end: datetime
    peak: int
    """The y axis's top: the busiest minute (at least 1)."""
    series: tuple[Series, ...]
    per_queue: dict[str, dict[str, int]]
    """Completed and failed per queue over the hour, for the table under the chart."""
    gridlines: tuple[float, ...]
    """y of the half and top lines."""


def _x(at: datetime, start: datetime) -> float:
    share = (at - start) / SPAN
    # Inset like y: the latest point sits at the right edge, and its marker (a lone
    # point's dot) would otherwise be cut in half there.
    return round(PAD + min(1.0, max(0.0, share)) * (WIDTH - 2 * PAD), 1)


def _y(value: int, peak: int) -> float:
    return round(HEIGHT - PAD - (value / peak) * (HEIGHT - 2 * PAD), 1)


def throughput_chart(points: Sequence[ThroughputPoint]) -> Chart | None:
    """The chart of ``points`` (oldest first), or None when there is no history yet."""
    if not points:
        return None
    ordered = sorted(points, key=lambda p: p.at)
    end = ordered[-1].at
    start = end - SPAN
    ordered = [p for p in ordered if p.at >= start]
    peak = max(1, *(max(p.completed, p.failed) for p in ordered))
    series = []
    for name in ("completed", "failed"):
        coords = [(_x(p.at, start), _y(getattr(p, name), peak)) for p in ordered]
        series.append(Series(name, " ".join(f"{x},{y}" for x, y in coords),
                             tuple(coords) if len(coords) == 1 else (),
                             sum(getattr(p, name) for p in ordered)))
    per_queue: dict[str, dict[str, int]] = {}
    for p in ordered:
        for queue, figures in p.per_queue.items():
            sums = per_queue.setdefault(queue, {"completed": 0, "failed": 0})
            for key in ("completed", "failed"):
                sums[key] += int(figures.get(key, 0))
    return Chart(WIDTH, HEIGHT, start, end, peak, tuple(series), per_queue,
                 (_y(1, 1), _y(1, 2)))
