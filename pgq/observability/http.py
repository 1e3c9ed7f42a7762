"""The HTTP side of observability: ``/metrics``, ``/livez`` and ``/readyz`` as one WSGI
app (``make_app``), served by ``pgq worker --metrics-port`` and ``pgq metrics``, and
meant to be mounted by other servers too (the dashboard). Standard library only: the
probes answer even where the metrics extra is not installed.

A probe answers 200 with ``{"ok": true, ...}`` or 503 with the reason in the same JSON
document; ``/metrics`` answers the text exposition format.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

log = logging.getLogger("pgq.http")

Probe = Callable[[], dict[str, Any]]
Exposition = Callable[[], tuple[bytes, str]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def make_app(metrics: Exposition | None, live: Probe, ready: Probe) -> WSGIApp:
    """The WSGI app: ``metrics`` gives the exposition (None: 404), ``live`` and
    ``ready`` the probes' documents (``ok`` decides 200 or 503)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        try:
            if path == "/metrics" and metrics is not None:
                body, content_type = metrics()
                status = "200 OK"
            elif path in ("/livez", "/readyz", "/healthz"):
                doc = (live if path == "/livez" else ready)() if path != "/healthz" else \
                    _both(live(), ready())
                body = json.dumps(doc).encode() + b"\n"
                content_type = "application/json"
                status = "200 OK" if doc.get("ok") else "503 Service Unavailable"
            else:
                body, content_type, status = b"not found\n", "text/plain", "404 Not Found"
        except Exception as exc:
            log.exception("%s failed", path)
            body = json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}).encode()
            content_type, status = "application/json", "503 Service Unavailable"
        start_response(status, [("Content-Type", content_type),
                                ("Content-Length", str(len(body)))])
        return [body]

    return app


def _both(live: dict[str, Any], ready: dict[str, Any]) -> dict[str, Any]:
    return {"ok": bool(live.get("ok") and ready.get("ok")), "live": live, "ready": ready}


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scrape must not hold up a stop
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class Server:
    """``make_app``'s app on ``host:port`` in a daemon thread; ``close`` stops it."""

    def __init__(self, app: WSGIApp, host: str, port: int) -> None:
        self._httpd = make_server(host, port, app, server_class=_Server,
                                  handler_class=_QuietHandler)
        self.port = self._httpd.server_port
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="pgq-http",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
