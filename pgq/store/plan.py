"""Plans: an algorithm that needs the database, written once as a generator that yields
SQL steps and receives their rows, so one body serves the sync and the async driver
(``database.run_plan`` and ``run_plan_async``) and is unit-tested without a database.
The client's enqueue algorithms are plans; the store is what runs them.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Exec:
    """Run the named statement; the driver sends back its rows (``[]`` if none)."""

    name: str
    params: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Copy:
    """COPY ``rows`` in with the named statement; the driver sends back ``None``. Each
    row is its fields already in COPY text format (``_copy_text``, ``_NULL``); the rows
    may be produced lazily, as the driver streams them."""

    name: str
    rows: Iterable[Sequence[str]]


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait ``seconds`` before the next step (the async driver without blocking its loop);
    the driver sends back ``None``. For plans run with ``atomic=False`` only, whose
    statements each commit on their own: a bulk action paces its batches with it, so no
    transaction or lock is held across the pause."""

    seconds: float


Step = Exec | Copy | Pause
Plan = Generator[Step, Any, Any]
