"""Serving the web app with uvicorn (what ``pgq web`` runs)."""

from __future__ import annotations

import signal
from types import FrameType

import uvicorn

from pgq.client.app import App
from pgq.web.config import WebConfig
from pgq.web.factory import create_app


def serve(app: App, config: WebConfig, *, host: str, port: int, root_path: str = "") -> None:
    """Serve until SIGINT or SIGTERM (uvicorn's graceful shutdown), then close ``app``."""
    web = create_app(app, config)
    server = uvicorn.Server(uvicorn.Config(
        web, host=host, port=port, root_path=root_path, log_level="info",
        server_header=False,  # no version banner for scanners
        proxy_headers=True, forwarded_allow_ips="127.0.0.1"))
    # uvicorn drains on SIGINT/SIGTERM, then raises the signal again for the handler it
    # found: with these no-op handlers the process goes on to close the App and exits 0,
    # like pgq worker after a graceful stop, instead of dying by the signal.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        app.close()  # the reads App is closed by the web app's lifespan


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Stands in for the default handlers while uvicorn serves (see ``serve``)."""
