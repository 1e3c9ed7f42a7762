"""`pgq web` as operators start it: it refuses to start without credentials, and with a
token it serves the dashboard and the API until SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import httpx2

from tests.acceptance.test_cli import ROOT, pgq_cmd


def test_it_refuses_to_start_without_credentials(db_url: str) -> None:
    out = pgq_cmd("web", "--port", "1", env={"PGQ_DATABASE_URL": db_url})
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "error: pgq web refuses to start without credentials: set PGQ_WEB_TOKEN (--token), "
        "PGQ_WEB_USERS (--user) or PGQ_WEB_PROXY_HEADER (--proxy-header); see docs/web.md"]


def test_a_bad_user_spec_is_one_line(db_url: str) -> None:
    out = pgq_cmd("web", "--user", "alice:admin:x", env={"PGQ_DATABASE_URL": db_url})
    assert out.returncode == 1
    assert out.stderr.strip() == ("error: web user 'alice': role must be read or operator, "
                                  "got 'admin'")


def test_it_serves_until_sigterm(db_url: str) -> None:
    with socket.socket() as probe:  # a free port (uvicorn binds it itself)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGQ_")}
    env.update(PGQ_DATABASE_URL=db_url, PGQ_WEB_TOKEN="a-token-of-sixteen-chars-or-more")
    server = subprocess.Popen([sys.executable, "-m", "pgq", "web", "--port", str(port)],
                              env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        for line in server.stderr:  # wait for uvicorn's own "running" line
            if "Uvicorn running on" in line or "Application startup complete" in line:
                break
        else:
            raise AssertionError(f"pgq web exited: {server.wait()}")
        base = f"http://127.0.0.1:{port}"
        assert httpx2.get(f"{base}/api/health", timeout=10).json() == {"status": "ok"}
        stats = httpx2.get(f"{base}/api/stats", timeout=10, headers={
            "Authorization": "Bearer a-token-of-sixteen-chars-or-more"})
        assert stats.json()["source"] in ("redis", "postgres", "direct")
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
