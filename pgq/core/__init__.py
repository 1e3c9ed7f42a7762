"""The vocabulary: what every layer may speak and none of it does I/O on its own.

Errors, job states, settings, the clock, validation of names and payloads, retry
backoff, the outcomes a task may raise, task definitions and their registry, cron
entries, and the outage log helper. It imports nothing else of pgq.
"""
