"""``app.queues``: pause, resume and list queues, and the worker registry (the plans and
the object; ``pgq.client.admin`` has ``app.jobs`` and the shared runner)."""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from datetime import datetime

from pgq.client.admin import _Runner, default_actor
from pgq.client.jobfilter import QueueInfo, check_actor
from pgq.client.reads import WorkerInfo, plan_workers
from pgq.core.validation import check_queue
from pgq.store.plan import Exec, Plan


def plan_queue(statement: str, name: str, actor: str, reason: str | None,
               now: datetime | None) -> Plan:
    actor, reason = check_actor(actor, reason)
    rows = yield Exec(statement, {"name": check_queue(name), "actor": actor,
                                  "reason": reason, "now": now})
    if statement == "queue_resume":
        yield Exec("queue_notify", {"queues": [name]})
    return QueueInfo(*rows[0])


def plan_queue_list() -> Plan:
    rows = yield Exec("queue_list", {})
    return [QueueInfo(*r) for r in rows]


def plan_queue_settings(names: Iterable[str]) -> Plan:
    rows = yield Exec("queue_settings", {"names": sorted({check_queue(n) for n in names})})
    return [QueueInfo(*r) for r in rows]



class Queues(_Runner):
    """``app.queues``: pause, resume and list queues."""

    def pause(self, name: str, *, actor: str | None = None, reason: str | None = None) -> QueueInfo:
        """Stop claims of the queue's jobs (within a poll interval); running ones finish."""
        result: QueueInfo = self._run(plan_queue("queue_pause", name, actor or default_actor(),
                                                 reason, self._clock.now()))
        return result

    def resume(self, name: str, *, actor: str | None = None) -> QueueInfo:
        """Claim the queue's jobs again; its workers are woken at once."""
        result: QueueInfo = self._run(plan_queue("queue_resume", name, actor or default_actor(),
                                                 None, self._clock.now()))
        return result

    def list(self) -> builtins.list[QueueInfo]:
        """Every queue that has jobs or settings, by name."""
        result: builtins.list[QueueInfo] = self._run(plan_queue_list())
        return result

    async def apause(self, name: str, *, actor: str | None = None,
                     reason: str | None = None) -> QueueInfo:
        result: QueueInfo = await self._arun(plan_queue(
            "queue_pause", name, actor or default_actor(), reason, self._clock.now()))
        return result

    async def aresume(self, name: str, *, actor: str | None = None) -> QueueInfo:
        result: QueueInfo = await self._arun(plan_queue(
            "queue_resume", name, actor or default_actor(), None, self._clock.now()))
        return result

    async def alist(self) -> builtins.list[QueueInfo]:
        result: builtins.list[QueueInfo] = await self._arun(plan_queue_list())
        return result

    def settings(self, names: Iterable[str] = ()) -> builtins.list[QueueInfo]:
        """``names`` and every queue with settings (paused or not), by name: ``list``
        without its scan of the jobs table (a dashboard passes the stats' queue names)."""
        result: builtins.list[QueueInfo] = self._run(plan_queue_settings(names))
        return result

    async def asettings(self, names: Iterable[str] = ()) -> builtins.list[QueueInfo]:
        result: builtins.list[QueueInfo] = await self._arun(plan_queue_settings(names))
        return result

    def workers(self, queue: str | None = None) -> builtins.list[WorkerInfo]:
        """The worker registry (``pgq_workers``): which processes serve which queues;
        with ``queue``, those serving it (``alive`` says which beat within a lease)."""
        result: builtins.list[WorkerInfo] = self._run(plan_workers(queue, self._clock.now()))
        return result

    async def aworkers(self, queue: str | None = None) -> builtins.list[WorkerInfo]:
        result: builtins.list[WorkerInfo] = await self._arun(plan_workers(queue, self._clock.now()))
        return result
