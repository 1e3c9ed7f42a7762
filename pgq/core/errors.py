"""Everything pgq raises, in two families.

``PgqError`` is a failure *of pgq*: bad configuration, bad input to enqueue, an
unreachable database. Job outcomes a task raises on purpose (retry later, snooze,
cancel) are a separate family that arrives with the worker; they are not errors.

    PgqError
    ├── ConfigError                  settings, URLs, an --app that cannot be imported
    ├── DatabaseError                a database call failed (the driver error is __cause__)
    │   └── DatabaseUnavailable      cannot connect at all
    ├── MigrationError               the schema is missing, old, or a migration failed
    ├── LeaseLost                    this worker no longer owns the job's attempt
    ├── JobFailed                    app.jobs.result: the job failed (its last error)
    ├── JobCancelled                 app.jobs.result: the job was cancelled
    ├── JobNotFound                  app.jobs.result: no such job (also a LookupError)
    ├── ResultTimeout                app.jobs.result: not final in time (also a TimeoutError)
    ├── UnsupportedConnectionError   conn= is not a psycopg 3 / SQLAlchemy-on-psycopg object
    ├── TaskDefinitionError          a @task declaration is invalid
    └── InvalidJobError              enqueue input rejected before any SQL ran
        ├── UnknownTaskError         task name not registered (strict registry)
        ├── InvalidIdentifierError   queue, task, tag or unique key with bad characters/length
        ├── InvalidArgsError         args or meta that JSON cannot carry faithfully
        │   └── PayloadTooLargeError args + meta over the configured byte cap
        └── InvalidOptionError       priority out of range, naive datetime, bad delay, ...
            └── IdempotencyConflict  an idempotency key reused for a different request

Every ``InvalidJobError`` is raised before pgq sends anything to the database, so a
rejected enqueue writes nothing. Driver exceptions are wrapped once, at the boundary
(``pgq.store.database``), with the original attached as ``__cause__``.
"""

from __future__ import annotations


class PgqError(Exception):
    """Base class of every error pgq raises."""


class ConfigError(PgqError):
    """Settings are invalid: a malformed URL, an out-of-range limit, an unimportable app."""


class DatabaseError(PgqError):
    """A database operation failed; the psycopg exception is ``__cause__``."""


class DatabaseUnavailable(DatabaseError):
    """pgq could not connect to PostgreSQL (refused, timed out, authentication failed)."""


class MigrationError(PgqError):
    """The pgq schema is missing or not at the expected revision, or migrating failed."""


class LeaseLost(PgqError):
    """This worker no longer owns the job's attempt (its lease expired and the job was
    reclaimed, or it was cancelled). Nothing it writes for the job will be stored."""


class UnsupportedConnectionError(PgqError):
    """``conn=`` was given an object pgq cannot enqueue through."""


class TaskDefinitionError(PgqError):
    """A task declaration is invalid (bad name, defaults out of range, duplicate name)."""


class InvalidJobError(PgqError):
    """Enqueue input was rejected before any SQL was sent; nothing was written."""


class UnknownTaskError(InvalidJobError):
    """The task name is not registered and the registry is strict."""


class InvalidIdentifierError(InvalidJobError):
    """A queue name, task name, tag or unique key has characters or a length pgq refuses."""


class InvalidArgsError(InvalidJobError):
    """Args or meta cannot be stored as JSON without changing their meaning."""


class PayloadTooLargeError(InvalidArgsError):
    """The encoded args and meta exceed ``Settings.max_payload_bytes``."""


class InvalidOptionError(InvalidJobError):
    """An enqueue option is out of range or of the wrong kind."""


class IdempotencyConflict(InvalidOptionError):
    """An idempotency key seen within its 24 hours came with a different request (its
    fingerprint differs from the first one's): nothing was enqueued."""


class JobFailed(PgqError):
    """``app.jobs.result``: the job ended ``failed``. ``error`` is its last ``errors``
    entry (type, message, traceback, attempt, worker, at)."""

    def __init__(self, job_id: int, error: dict[str, object] | None) -> None:
        self.job_id, self.error = job_id, error or {}
        super().__init__(f"job {job_id} failed: {self.error.get('type', 'error')}: "
                         f"{self.error.get('message', '')}")


class JobCancelled(PgqError):
    """``app.jobs.result``: the job ended ``cancelled``. ``error`` is its last ``errors``
    entry (an operator's cancel names the actor; a task's ``Cancel`` its message)."""

    def __init__(self, job_id: int, error: dict[str, object] | None) -> None:
        self.job_id, self.error = job_id, error or {}
        super().__init__(f"job {job_id} was cancelled: {self.error.get('message', '')}")


class JobNotFound(PgqError, LookupError):
    """``app.jobs.result``: there is no job with this id (never was, or deleted)."""


class ResultTimeout(PgqError, TimeoutError):
    """``app.jobs.result``: the job did not reach a final state within the timeout."""
