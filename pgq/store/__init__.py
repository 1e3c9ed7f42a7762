"""The store: PostgreSQL, and the only layer that executes SQL.

``queries.sql`` holds every runtime statement by name; ``database`` runs them (and the
enqueue plans of ``plan``) on psycopg connections and pools; ``schema`` and ``migrate``
own the tables (Alembic); ``embedded`` finds a server for the demo. It imports only the
vocabulary (``pgq.core``).
"""
