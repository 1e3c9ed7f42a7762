"""``App``: the object an application creates once. It holds the settings, the task
registry and pgq's own connection pools, and is where jobs are enqueued.

Enqueue into your own transaction by passing ``conn=`` (psycopg 3 ``Connection`` /
``AsyncConnection``, SQLAlchemy ``Session`` / ``Connection`` / ``AsyncSession`` /
``AsyncConnection``): the job becomes visible when you commit and vanishes if you roll
back. Without ``conn=``, pgq uses a pooled connection and commits at once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from contextlib import AbstractContextManager
from datetime import timedelta
from functools import cached_property, partial
from typing import Any, Unpack

from psycopg.pq import TransactionStatus

from pgq.client.admin import Jobs
from pgq.client.apikeys import ApiKeyAccess
from pgq.client.declare import TaskDeclarations
from pgq.client.enqueue import (
    Enqueued,
    EnqueueOptions,
    JobRow,
    JobSpec,
    prepare,
    prepare_defaults,
)
from pgq.client.hooks import DeadLetterHook
from pgq.client.plans import plan_enqueue_one, plan_for_many
from pgq.client.queueops import Queues
from pgq.client.stats import StatsReads
from pgq.client.tracing import Publishing, publish
from pgq.coordination import Coordinator
from pgq.core.clock import Clock, DatabaseClock
from pgq.core.cron import DEFAULT_BACKFILL_WINDOW, DEFAULT_CATCH_UP, CatchUp, CronEntry, ScheduleError
from pgq.core.errors import PgqError
from pgq.core.redaction import Redactor
from pgq.core.settings import Settings
from pgq.core.tasks import Task, TaskRegistry
from pgq.observability import metrics
from pgq.store.database import Pools, async_connection, run_plan, run_plan_async, sync_connection
from pgq.store.plan import Plan
from pgq.store.sessions import after_session_commit

Middleware = Callable[[Any], AbstractContextManager[Any]]
"""``middleware(ctx) -> context manager`` wrapped around each task execution."""


class App(StatsReads, TaskDeclarations, ApiKeyAccess):  # app.stats(); app.task(); app.api_keys
    """A pgq application.

    ``strict`` (default ``True``): enqueueing a task name that is not registered raises
    ``UnknownTaskError``, catching typos before they become jobs no worker can run. A
    service that only *produces* jobs for tasks defined elsewhere sets ``strict=False``.

    ``clock``: where statements get "now" (default: the database's ``now()``). Tests
    pass a ``pgq.ManualClock`` to move time without sleeping.

    ``redact``: the ``pgq.Redactor`` of tasks without their own (docs/redaction.md).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        database_url: str | None = None,
        redis_url: str | None = None,
        strict: bool = True,
        clock: Clock | None = None,
        redact: Redactor | None = None,
    ) -> None:
        overrides = {k: v for k, v in (("database_url", database_url), ("redis_url", redis_url))
                     if v is not None}
        if settings is None:
            settings = Settings.from_env(None, **overrides)
        elif overrides:
            settings = settings.with_changes(**overrides)
        self.settings = settings
        self.strict = strict
        self.clock: Clock = clock or DatabaseClock()
        self.registry = TaskRegistry(redact)
        self.middleware: list[Middleware] = []
        self.schedules: dict[str, CronEntry] = {}
        self.dead_letter_hooks: list[DeadLetterHook] = []
        self._pools = Pools(settings)
        self._coordinator: Coordinator | None = None

    @classmethod
    def from_env(cls, **kwargs: Any) -> App:
        """An App configured from ``PGQ_*`` environment variables."""
        return cls(Settings.from_env(), **kwargs)

    def __repr__(self) -> str:
        return f"App({self.settings!r}, tasks={len(self.registry)}, strict={self.strict})"

    # --- tasks (``app.task``: pgq.client.declare) -------------------------------------

    def cron(
        self,
        schedule: str,
        task: str | Task,
        args: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        timezone: str = "UTC",
        catch_up: CatchUp | str = DEFAULT_CATCH_UP,
        backfill_window: timedelta = DEFAULT_BACKFILL_WINDOW,
        **options: Unpack[EnqueueOptions],
    ) -> CronEntry:
        """Declare a periodic job: ``app.cron("30 2 * * *", "reports.nightly",
        timezone="Europe/Paris")``. The entry is
        validated now (expression, zone, args, options), so a bad schedule fails at
        import, naming the entry and the field. ``name`` defaults to the task name.
        ``catch_up`` decides what happens to ticks missed while no scheduler ran."""
        task_name = task.name if isinstance(task, Task) else task
        entry_name = task_name if name is None else name
        for banned in ("run_at", "delay", "unique_key", "unique_for"):
            if banned in options:
                raise ScheduleError(f"cron entry {entry_name!r}: {banned} is not a cron option "
                                    "(the schedule decides when; each tick fires once)")
        if entry_name in self.schedules:
            raise ScheduleError(f"cron entry {entry_name!r} is declared twice; give one a name=")
        try:
            self._prepare(JobSpec(task_name, dict(args or {}), **options))
        except TypeError as exc:  # an option JobSpec does not have
            raise ScheduleError(f"cron entry {entry_name!r}: {exc}") from None
        except PgqError as exc:
            raise ScheduleError(f"cron entry {entry_name!r}: {exc}") from None
        entry = CronEntry(entry_name, schedule, task_name, dict(args or {}), timezone,
                          catch_up,  # type: ignore[arg-type]  # validated by CronEntry
                          backfill_window, dict(options))
        self.schedules[entry_name] = entry
        return entry

    def add_middleware(self, middleware: Middleware) -> Middleware:
        """Wrap every task execution: ``middleware(ctx)`` returns a context manager
        entered before the task runs and exited after (with the exception, if any).
        For logging, metrics and tracing. Usable as a decorator."""
        self.middleware.append(middleware)
        return middleware

    def on_dead_letter(self, hook: DeadLetterHook) -> DeadLetterHook:
        """Call ``hook(pgq.DeadLetter)`` after each job a worker (or the reclaim of a lost
        worker's jobs) stores as ``failed``: off the job path, never retried
        (docs/operations.md#dead-letters)."""
        self.dead_letter_hooks.append(hook)
        return hook

    # --- enqueue ---------------------------------------------------------------------

    @property
    def coordinator(self) -> Coordinator:
        """This process's Redis-or-PostgreSQL coordination (wake-ups, locks, leadership)."""
        if self._coordinator is None:
            self._coordinator = Coordinator(self.settings)
        return self._coordinator

    def enqueue(
        self,
        task: str | Task,
        args: Mapping[str, Any] | None = None,
        *,
        conn: object = None,
        **options: Unpack[EnqueueOptions],
    ) -> Enqueued:
        """Enqueue one job; the options are ``JobSpec``'s. Invalid input raises an
        ``InvalidJobError`` before any SQL runs."""
        row = self._prepare_one(task, args, options)
        # One job's statements are each a consistent unit (the insert, or a release of
        # a lapsed unique hold before inserting again): no transaction around them.
        with publish(self, row.queue, row.task) as span:  # a no-op unless OpenTelemetry records
            return _counted(row, span.sent(self._run(
                conn, partial(plan_enqueue_one, span.inject(row), self.clock.now()), [row.queue],
                atomic=False)))

    def enqueue_many(self, specs: Iterable[JobSpec], *, conn: object = None) -> list[Enqueued]:
        """Enqueue many jobs in a few statements (COPY for jobs without unique keys).
        One bad spec rejects the whole call and writes nothing. Results are in input
        order."""
        specs = list(specs)
        with publish(self) as span:  # one span per call (pgq.client.tracing)
            plan, queues, rows = self._plan_many(specs, conn, span)
            return _counted_many(specs, rows, span.sent_many(
                self._run(conn, plan, queues) if queues is not None else [], queues))

    async def enqueue_async(
        self,
        task: str | Task,
        args: Mapping[str, Any] | None = None,
        *,
        conn: object = None,
        **options: Unpack[EnqueueOptions],
    ) -> Enqueued:
        """``enqueue`` for asyncio code and async connections."""
        row = self._prepare_one(task, args, options)
        with publish(self, row.queue, row.task) as span:
            return _counted(row, span.sent(await self._run_async(conn, partial(
                plan_enqueue_one, span.inject(row), self.clock.now()), [row.queue], atomic=False)))

    async def enqueue_many_async(
        self, specs: Iterable[JobSpec], *, conn: object = None
    ) -> list[Enqueued]:
        """``enqueue_many`` for asyncio code and async connections."""
        specs = list(specs)
        with publish(self) as span:
            plan, queues, rows = self._plan_many(specs, conn, span)
            if queues is None:
                return []
            return _counted_many(specs, rows, span.sent_many(
                await self._run_async(conn, plan, queues), queues))

    def _plan_many(self, specs: list[JobSpec], conn: object, span: Publishing
                   ) -> tuple[Callable[..., Plan], Collection[str] | None,
                              dict[int, JobRow] | None]:
        """``plan_for_many``, and where metrics are on, each spec's row by ``id(spec)``
        as it is validated (before or while the plan runs), for ``_counted_many``."""
        prepare = span.prepare(self._prepare)
        rows: dict[int, JobRow] | None = None
        if metrics.recorder.on:
            rows, validate = {}, prepare

            def prepare(spec: JobSpec) -> JobRow:
                row = rows[id(spec)] = validate(spec)
                return row
        return (*plan_for_many(specs, prepare, self.clock.now(), own=conn is None), rows)

    def _prepare(self, spec: JobSpec) -> JobRow:
        return prepare(spec, self.registry, strict=self.strict,
                       max_payload_bytes=self.settings.max_payload_bytes)

    def _prepare_one(self, task: str | Task, args: Mapping[str, Any] | None,
                     options: EnqueueOptions) -> JobRow:
        if options:
            return self._prepare(JobSpec(task, {} if args is None else args, **options))
        # The same checks and the same row, without building a JobSpec (issue 12).
        return prepare_defaults(task, {} if args is None else args, self.registry,
                                strict=self.strict,
                                max_payload_bytes=self.settings.max_payload_bytes)

    # Wake-ups. After a commit pgq sees (its own connection, an autocommit connection, a
    # SQLAlchemy Session's after_commit), it publishes through Redis. Where it cannot see
    # the commit (a psycopg or SQLAlchemy Connection inside the caller's transaction), or
    # Redis is down, the enqueue sends a NOTIFY inside the transaction instead: delivered
    # only if the transaction commits. Workers listen to both, and poll as a floor.

    def _run(self, conn: object, plan: Callable[..., Plan], queues: Collection[str], *,
             atomic: bool = True) -> Any:
        """Drive ``plan(notify=...)``: with ``notify`` it sends the PostgreSQL wake-up
        inside the transaction itself. ``atomic=False``: on pgq's own (autocommit)
        connection, each statement of the plan may commit on its own."""
        coordinator = self.coordinator
        if conn is None:
            notify = coordinator.wake_in_transaction()
            with self._pools.connection() as own:
                result = run_plan(own, plan(notify=notify), atomic=atomic)
            if not notify:
                coordinator.publish(queues)
            return result
        pg = sync_connection(conn)
        after_commit = self._after_commit(conn, pg)
        notify = after_commit is None or coordinator.wake_in_transaction()
        result = run_plan(pg, plan(notify=notify))
        if not notify and after_commit is not None:
            after_commit(list(queues))
        return result

    async def _run_async(self, conn: object, plan: Callable[..., Plan], queues: Collection[str], *,
                         atomic: bool = True) -> Any:
        coordinator = self.coordinator
        if conn is None:
            notify = coordinator.wake_in_transaction()
            async with self._pools.async_connection() as own:
                result = await run_plan_async(own, plan(notify=notify), atomic=atomic)
            if not notify:
                coordinator.publish(queues)
            return result
        pg = await async_connection(conn)
        after_commit = self._after_commit(conn, pg)
        notify = after_commit is None or coordinator.wake_in_transaction()
        result = await run_plan_async(pg, plan(notify=notify))
        if not notify and after_commit is not None:
            after_commit(list(queues))
        return result

    def _after_commit(self, conn: object, pg: Any) -> Callable[[list[str]], None] | None:
        """How to publish once the caller's commit happens, or None if pgq cannot see it."""
        if pg.autocommit and pg.info.transaction_status == TransactionStatus.IDLE:
            # Each statement commits at once (not inside ``with conn.transaction():``,
            # where an autocommit connection has an open transaction pgq cannot see end).
            return self.coordinator.publish
        if conn is pg:
            # A psycopg connection in a transaction of the caller's: no session to ask
            # (settled here, before after_session_commit's look at the type's classes).
            return None
        return after_session_commit(conn, self.coordinator.publish)

    @cached_property
    def jobs(self) -> Jobs:
        """Operations on jobs: get, list, retry, cancel, ... (docs/operations.md)."""
        return Jobs(self._pools, self.clock, lambda: self.coordinator, self.settings)

    @cached_property
    def queues(self) -> Queues:  # pause, resume and list queues (docs/operations.md)
        return Queues(self._pools, self.clock)

    # --- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        self._pools.close()
        if self._coordinator is not None:
            self._coordinator.close()
            self._coordinator = None

    async def aclose(self) -> None:
        await self._pools.aclose()
        self.close()

    async def arelease(self) -> None:
        """Close the async pool (it belongs to the running event loop, which is ending);
        the next async call opens another on its own loop. For servers that stop."""
        await self._pools.aclose_async()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _counted_many(specs: list[JobSpec], rows: dict[int, JobRow] | None,
                  results: list[Enqueued]) -> list[Enqueued]:
    """``_counted`` for each job of an ``enqueue_many`` that committed (``rows`` is None
    where metrics are off)."""
    if rows is not None:
        tally: dict[tuple[str, str], int] = {}
        for spec, result in zip(specs, results, strict=True):
            if not result.duplicate:
                row = rows[id(spec)]
                key = (row.queue, row.task)
                tally[key] = tally.get(key, 0) + 1
        for (queue, task), n in tally.items():
            metrics.recorder.enqueued(queue, task, n)
    return results


def _counted(row: JobRow, result: Enqueued) -> Enqueued:
    """``pgq_jobs_enqueued_total`` for one job, unless it was a duplicate (where metrics
    are on in this process; counted when the statement returned, before a caller's own
    commit: best effort, as the metric says)."""
    if not result.duplicate:
        metrics.recorder.enqueued(row.queue, row.task)
    return result
