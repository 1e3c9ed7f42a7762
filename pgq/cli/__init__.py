"""The ``pgq`` command (``pgq.cli:main``, and ``python -m pgq``). Every option can also
come from its ``PGQ_*`` environment variable (``--help`` names it).

Exit codes, for every command: 0 done; 1 a failure of pgq, printed as one line
``error: …`` (a bad value, an unreachable database, an app that cannot be imported);
2 a usage error (click's: an unknown option, a missing argument); 3 the job named does
not exist (``jobs show``, an action none of whose ids exist); 4 an action, or its
``--dry-run``, found no job it could change; 130 interrupted, or not confirmed.
docs/operations.md, "CLI", is the guide.
"""

from pgq.cli.commands import cli, load_app, main

__all__ = ["cli", "load_app", "main"]
