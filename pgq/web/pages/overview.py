"""The overview: totals, per-queue counts by state, lag, dead letters, live workers,
paused and unserved queues, and the last hour's throughput, all from one read of the
stats cache (``app.astats()``; never a count over the jobs table)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from pgq.client.app import App
from pgq.client.stats import ALWAYS_ESTIMATED, EVERY, WAITING, Stats
from pgq.core.states import JobState
from pgq.web.chart import throughput_chart
from pgq.web.render import render

router = APIRouter(include_in_schema=False)

STALE_REFRESHES = 2
"""A document older than this many of its leader's refresh intervals is called stale:
one refresh can be late, two missed mean the leader is gone or stuck. Readers still
serve a document up to ``stale_after(every)`` (3 intervals, at least every + 10 s)
before computing their own, so this is the window in which the page warns."""


@dataclass(frozen=True)
class Totals:
    waiting: int
    running: int
    failed: int
    live_workers: int
    paused: int
    unserved: int


def totals(stats: Stats) -> Totals:
    queues = stats.queues.values()
    return Totals(
        waiting=sum(q.counts.get(s, 0) for q in queues for s in WAITING),
        running=sum(q.counts.get("running", 0) for q in queues),
        failed=sum(q.dead_letters for q in queues),
        # A worker serving several queues is listed under each: count it once.
        live_workers=len({w for q in queues for w in q.workers}),
        paused=sum(1 for q in queues if q.paused),
        unserved=len(stats.unserved))


def is_stale(stats: Stats) -> bool:
    every = float(stats.document.get("every", EVERY))
    return stats.age_seconds > STALE_REFRESHES * every


@router.get("/", name="overview")
async def overview(request: Request) -> HTMLResponse:
    reads: App = request.app.state.reads
    stats = await reads.astats()
    return render(request, "overview.html", active="overview", refresh=3, stats=stats,
                  states=[s.value for s in JobState], totals=totals(stats),
                  stale=is_stale(stats), chart=throughput_chart(stats.throughput()),
                  always_estimated=ALWAYS_ESTIMATED)
