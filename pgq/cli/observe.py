"""``pgq metrics`` (the standalone exporter), ``pgq health`` (probes for scripts and
Docker healthchecks) and the worker's ``--metrics-port`` options (docs/observability.md).

``pgq health`` exits 0 when every check passed, 1 otherwise: readiness from its own
side (the database answers, the schema is at this pgq's revision) and, given
``--worker-url`` or ``--metrics-port``, the worker's ``/livez``.
"""

from __future__ import annotations

import json
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

import click

from pgq.cli.options import database_option, json_option, operator_app
from pgq.core.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def worker_metrics_options(fn: F) -> F:
    for option in reversed([
        click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="PORT",
                     show_envvar=True, help="Serve /metrics (all processes summed), /livez "
                     "and /readyz on this port (needs the metrics extra for /metrics)."),
        click.option("--metrics-host", default="0.0.0.0", show_envvar=True,  # noqa: S104
                     metavar="ADDRESS", help="Address the metrics port listens on."),
        click.option("--liveness-threshold", type=click.FloatRange(1), default=30.0,
                     show_envvar=True, metavar="SECONDS",
                     help="/livez fails once a process's event loop has been blocked "
                     "this long."),
    ]):
        fn = option(fn)
    return fn


@click.command("metrics")
@click.option("--port", type=click.IntRange(0, 65535), default=9464, show_envvar=True,
              help="Port to serve /metrics, /livez and /readyz on.")
@click.option("--host", default="0.0.0.0", show_envvar=True,  # noqa: S104
              help="Address to listen on.")
@database_option
def metrics_command(port: int, host: str, database_url: str | None) -> None:
    """Export the queue gauges (pgq_queue_*) from the stats cache, and the readiness
    probe, for Prometheus: one exporter for the whole system, whatever runs the jobs."""
    from pgq.observability import metrics
    from pgq.observability.http import Server
    from pgq.worker.telemetry import exporter_app

    if not metrics.available():
        raise click.ClickException(metrics.NEEDS_EXTRA)
    app = operator_app(database_url)
    server = Server(exporter_app(app), host, port)
    click.echo(f"pgq metrics: serving http://{host}:{server.port}/metrics (/livez /readyz)",
               err=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.close()
    app.close()


@click.command()
@click.option("--worker-url", metavar="URL", show_envvar=True,
              help="A worker's metrics port (e.g. http://127.0.0.1:9464): check its /livez.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
              envvar="PGQ_WORKER_METRICS_PORT", show_envvar=True,
              help="The same as a worker URL of http://127.0.0.1:PORT (the worker's own "
              "variable: a healthcheck in the worker's container finds its port).")
@click.option("--timeout", type=click.FloatRange(0.1), default=5.0, show_envvar=True,
              metavar="SECONDS", help="How long the worker may take to answer.")
@json_option
@database_option
def health(worker_url: str | None, metrics_port: int | None, timeout: float, as_json: bool,
           database_url: str | None) -> None:
    """Check readiness (database reachable, schema at this pgq's revision) and, given a
    worker's metrics port, its liveness. Exit 0 if all pass, 1 otherwise."""
    from pgq.worker.health import readiness

    settings = Settings.from_env(database_url=database_url)
    report: dict[str, Any] = {"ready": readiness(settings.for_lease(4 * timeout))}
    if metrics_port is not None and worker_url is None:
        worker_url = f"http://127.0.0.1:{metrics_port}"
    if worker_url is not None:
        report["live"] = _get_probe(worker_url.rstrip("/") + "/livez", timeout)
    report["ok"] = all(part["ok"] for part in report.values())
    if as_json:
        click.echo(json.dumps(report))
    else:
        ready = report["ready"]
        click.echo(f"ready: {'ok' if ready['ok'] else 'FAIL'} (database: {ready['database']}; "
                   f"schema {ready['schema'] or 'none'}, expected {ready['expected']})")
        if "live" in report:
            live = report["live"]
            click.echo(f"live: {'ok' if live['ok'] else 'FAIL'} ({worker_url}: "
                       f"{live.get('error') or _processes(live)})")
    raise SystemExit(0 if report["ok"] else 1)


def _get_probe(url: str, timeout: float) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            doc: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 503: the document says why
        try:
            doc = json.loads(exc.read())
        except ValueError:
            doc = {"ok": False, "error": f"HTTP {exc.code}"}
    except (OSError, ValueError) as exc:
        return {"ok": False, "error": f"no answer: {exc}"}
    doc["ok"] = bool(doc.get("ok"))
    return doc


def _processes(live: dict[str, Any]) -> str:
    procs = live.get("processes") or []
    return ", ".join(f"pid {p['pid']} loop {p['loop_age_seconds']:.1f}s heartbeat "
                     f"{p['heartbeat_age_seconds']:.1f}s{'' if p['ok'] else ' STUCK'}"
                     for p in procs) or "no worker process"
