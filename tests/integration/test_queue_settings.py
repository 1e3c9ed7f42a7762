"""app.queues.settings: the named queues and those with settings, without reading
pgq_jobs (what the dashboard's queues page refreshes with)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import pgq


def test_named_queues_and_configured_ones_only(make_app: Callable[..., pgq.App]) -> None:
    app = make_app(strict=False)
    app.enqueue("t", queue="busy")  # has jobs, but is not named: not listed
    app.queues.pause("held", actor="ops", reason="deploy")
    listed = {q.name: q for q in app.queues.settings(["mail", "held"])}
    assert sorted(listed) == ["held", "mail"]
    assert listed["held"].paused and listed["held"].paused_by == "ops"
    assert not listed["mail"].paused and listed["mail"].paused_at is None
    assert [q.name for q in app.queues.settings()] == ["held"]
    assert {q.name for q in app.queues.list()} == {"busy", "held"}


def test_a_bad_queue_name_is_refused_before_sql(make_app: Callable[..., pgq.App]) -> None:
    app = make_app(strict=False)
    with pytest.raises(pgq.InvalidJobError, match="queue"):
        app.queues.settings(["no spaces allowed"])
