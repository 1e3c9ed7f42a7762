"""Turning an exception into an ``errors`` entry that can always be stored.

Recording a failure must never fail: a message with NUL bytes (jsonb rejects them),
lone surrogates (not UTF-8), or ten megabytes of text would otherwise make the failure
write itself fail and leave the job stuck in ``running``. Everything is sanitised and
truncated here, before it reaches SQL, and redacted (``pgq.core.redaction``) with the
task's redactor: the entry is what logs and operator tools show, and it is kept.
"""

from __future__ import annotations

import json
import traceback as tb

from pgq.core.redaction import Redactor, redact_text

MAX_MESSAGE_CHARS = 2_000
MAX_TRACEBACK_CHARS = 8_000
LOST_TYPE = "pgq.WorkerLost"
"""``errors[].type`` of an attempt whose worker died or lost its lease mid-run."""


def clean_text(text: str, limit: int) -> str:
    """NUL-free, valid UTF-8, at most ``limit`` characters (keeping head and tail)."""
    text = text.replace("\x00", "\\x00")  # before cutting, so escapes cannot exceed the limit
    if len(text) > limit:
        cut = len(text) - limit
        half = limit // 2
        text = f"{text[:half]}\n… [{cut} characters cut] …\n{text[-(limit - half):]}"
    return text.encode("utf-8", "replace").decode("utf-8")


def _redacted(redact: Redactor | None, text: str, limit: int) -> str:
    # Redacted before the final cut, so the cut cannot split a secret from its key; but
    # after a first, looser one: ten megabytes of message must not cost seconds of regex.
    return clean_text(redact_text(redact, clean_text(text, 4 * limit)), limit)


_MOVED = (("pgq.core.outcomes.", "pgq.outcomes."), ("pgq.core.errors.", "pgq.errors."))
"""pgq's own exceptions are recorded under the names they had before issue 13 moved the
vocabulary into pgq.core: errors entries are an audit trail, and queries match them."""


def _stable(name: str) -> str:
    name = name.removeprefix("builtins.")
    for moved, recorded in _MOVED:
        if name.startswith(moved):
            return recorded + name[len(moved):]
    return name


def error_entry(attempt: int, worker: str, exc: BaseException | None = None, *,
                type_name: str | None = None, message: str | None = None,
                charged: bool = True, redact: Redactor | None = None) -> str:
    """The JSON of one ``errors`` entry; the database adds ``at`` from its clock.
    ``charged=False`` marks a lost worker the job is not blamed for (``pgq.worker.reclaim``);
    ``redact``: the task's redactor, for message and traceback (None: pgq's default)."""
    if exc is not None:
        type_name = type_name or _stable(f"{type(exc).__module__}.{type(exc).__qualname__}")
        try:
            message = message if message is not None else str(exc)
        except Exception:  # a broken __str__ must not break failure recording
            message = f"<unprintable {type(exc).__name__}>"
        try:
            trace = "".join(tb.format_exception(exc))
        except Exception:
            trace = ""
    else:
        trace = ""
    entry = {
        "attempt": attempt,
        "type": clean_text(type_name or "Error", 200),
        "message": _redacted(redact, message or "", MAX_MESSAGE_CHARS),
        "traceback": _redacted(redact, trace, MAX_TRACEBACK_CHARS),
        "worker": worker,
    }
    if not charged:
        entry["charged"] = False
    return json.dumps(entry, ensure_ascii=False)
