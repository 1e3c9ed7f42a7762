"""The application's side: ``App`` (task registry, enqueue on any kind of connection,
cron entries) and the enqueue algorithms (``enqueue``: validation into rows, and the
plans the store runs). It may use coordination, the store and the vocabulary.
"""
