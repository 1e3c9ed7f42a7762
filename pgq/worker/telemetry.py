"""What ``pgq worker --metrics-port`` serves, from the supervisor: the metrics of all its
processes summed, the stats gauges, and the health probes (docs/observability.md).

Every process of the run records into the files of one directory, made here before the
first child starts and removed when the supervisor stops (prometheus-client's
multiprocess mode; a directory per run, so a restarted worker never adds a previous
run's counts to its own). A child that exits is marked dead, so its "live" gauges
(``pgq_worker_up``, coordination modes, outages) stop counting while its counters stay
in the sums. The ``pgq_queue_*`` gauges are read from the stats cache at each scrape,
here only: one reader, however many processes.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from pgq.client.app import App
from pgq.core.errors import ConfigError
from pgq.core.settings import Settings
from pgq.observability import metrics
from pgq.observability.http import Server, WSGIApp, make_app
from pgq.worker.health import readiness

log = logging.getLogger("pgq.supervisor")


class Telemetry:
    def __init__(self, app: App, settings: Settings, host: str, port: int,
                 live: Callable[[], dict[str, Any]]) -> None:
        if not metrics.available():
            raise ConfigError(f"--metrics-port: {metrics.NEEDS_EXTRA}")
        self.directory = tempfile.mkdtemp(prefix="pgq-metrics-")
        self._previous = os.environ.get(metrics.MULTIPROC_ENV)
        # Before anything imports prometheus-client: it reads the variable at import,
        # and the children inherit it.
        os.environ[metrics.MULTIPROC_ENV] = self.directory
        metrics.enable()
        registry = metrics.multiprocess_registry(
            [metrics.StatsCollector(app.cached_stats)])
        wsgi = make_app(lambda: metrics.exposition(registry), live,
                        lambda: readiness(settings))
        try:
            self.server = Server(wsgi, host, port)
        except OSError as exc:
            self._remove()
            raise ConfigError(f"--metrics-port {port}: cannot listen on {host}: {exc}") from None
        log.info("supervisor: metrics and probes on http://%s:%d (/metrics /livez /readyz)",
                 host, self.server.port)

    def child_exited(self, pid: int | None) -> None:
        if pid is not None:
            metrics.mark_dead(pid)

    def close(self) -> None:
        self.server.close()
        self._remove()

    def _remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        if self._previous is None:
            os.environ.pop(metrics.MULTIPROC_ENV, None)
        else:
            os.environ[metrics.MULTIPROC_ENV] = self._previous


def exporter_app(app: App) -> WSGIApp:
    """The standalone exporter's WSGI app (``pgq metrics``; the dashboard mounts it):
    the stats gauges, readiness from this process's side, and a liveness that is this
    process answering. Without the metrics extra, ``/metrics`` is 404 and the probes
    still answer."""
    exposition = None
    if metrics.available():
        registry = metrics.registry_of([metrics.StatsCollector(app.cached_stats)])

        def exposition() -> tuple[bytes, str]:
            return metrics.exposition(registry)

    settings = app.settings
    return make_app(exposition, lambda: {"ok": True}, lambda: readiness(settings))
