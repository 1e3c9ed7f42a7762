"""A job as operator tools show it (the CLI, the dashboard, the HTTP API): the same
record with its args, result and error texts through the redactor (docs/redaction.md).
``app.jobs.get`` returns them as stored, since a task needs its real args; anything an
operator reads goes through ``redacted`` first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from pgq.client.jobfilter import Attempt, JobRecord
from pgq.core.redaction import redact_args, redact_text


def redacted(owner: object, job: JobRecord) -> JobRecord:
    """``job`` with args (and a mapping result) redacted by its task's redactor, and
    every error entry's message and traceback. Error entries are redacted when stored;
    this also covers entries stored before a redaction rule was added."""
    args = redact_args(owner, job.args, job.task) if isinstance(job.args, Mapping) else job.args
    result = (redact_args(owner, job.result, job.task) if isinstance(job.result, Mapping)
              else job.result)
    errors = tuple({**e, **{k: redact_text(owner, e[k], job.task) for k in ("message", "traceback")
                            if isinstance(e.get(k), str)}} if isinstance(e, Mapping) else e
                   for e in job.errors)
    return replace(job, args=args, result=result, errors=errors,
                   attempts=tuple(Attempt.decode(e) for e in errors if isinstance(e, Mapping)))
