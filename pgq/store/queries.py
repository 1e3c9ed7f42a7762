"""Loads ``queries.sql`` once into named statements.

Runtime SQL is a first-class artifact: it lives in one file, each statement with a
comment saying why it is shaped the way it is. This module only parses that file;
``pgq.store.database`` is the one module that executes the statements.
"""

from __future__ import annotations

import re
from importlib import resources
from types import MappingProxyType
from typing import Final

_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse(source: str) -> dict[str, str]:
    """Split ``source`` into ``{name: sql}`` at ``-- name:`` markers. The text between
    markers, comments included, is the statement (the server ignores the comments, and
    they make ``pg_stat_statements`` readable)."""
    parts = _NAME.split(source)
    statements: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in statements:
            raise ValueError(f"queries.sql defines {name!r} twice")
        statements[name] = body.strip().rstrip(";")
    return statements


QUERIES: Final = MappingProxyType(
    parse(resources.files("pgq.store").joinpath("queries.sql").read_text(encoding="utf-8"))
)
