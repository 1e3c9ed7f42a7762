"""pgq_jobs_enqueued_total counts bulk enqueues too: per queue and task, once the call
returned, duplicates not counted, nothing for a call that wrote nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import pgq
from pgq.observability import metrics


class Tally(metrics.Recorder):
    on = True

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def enqueued(self, queue: str, task: str, n: int = 1) -> None:
        self.counts[queue, task] = self.counts.get((queue, task), 0) + n


@pytest.fixture
def tally(monkeypatch: pytest.MonkeyPatch) -> Tally:
    recorder = Tally()
    monkeypatch.setattr(metrics, "recorder", recorder)
    return recorder


@pytest.fixture
def app(settings: pgq.Settings) -> Iterator[pgq.App]:
    with pgq.App(settings) as a:

        @a.task(name="m.mail", queue="mail")
        def mail(to: str) -> None:
            """Registered: its default queue is mail."""

        yield a


@pytest.mark.parametrize("how", ["own", "caller", "async"])
def test_enqueue_many_is_counted_per_queue_and_task(app: pgq.App, tally: Tally, db_url: str,
                                                    how: str) -> None:
    import psycopg

    specs = ([pgq.JobSpec("m.mail", {"to": f"u{i}"}) for i in range(5)]
             + [pgq.JobSpec("m.mail", {"to": "x"}, queue="bulk")] * 2)
    if how == "own":  # validated while COPY streams
        app.enqueue_many(specs)
    elif how == "caller":  # validated first
        with psycopg.connect(db_url) as c:
            app.enqueue_many(specs, conn=c)
    else:
        asyncio.run(app.enqueue_many_async(specs))
    assert tally.counts == {("mail", "m.mail"): 5, ("bulk", "m.mail"): 2}


def test_duplicates_and_rejected_calls_are_not_counted(app: pgq.App, tally: Tally) -> None:
    keyed = [pgq.JobSpec("m.mail", {"to": "a"}, unique_key="k")] * 3
    app.enqueue_many(keyed)
    assert tally.counts == {("mail", "m.mail"): 1}
    with pytest.raises(pgq.InvalidArgsError):
        app.enqueue_many([pgq.JobSpec("m.mail", {"to": "ok"})] * 3000
                         + [pgq.JobSpec("m.mail", {"to": {1}})])
    assert tally.counts == {("mail", "m.mail"): 1}
