"""``pgq web`` (the dashboard and HTTP API under uvicorn) and ``pgq hash-password``
(a password hash for ``--user``). The web extra is imported only when ``pgq web`` runs,
so the CLI works without it (docs/web.md)."""

from __future__ import annotations

import dataclasses

import click

from pgq.cli.options import app_option, database_option, operator_app
from pgq.core.errors import ConfigError

NEEDS_EXTRA = "pgq web needs the web extra: pip install 'pgq-jobs[web]'"


@click.command("web")
@app_option
@click.option("--host", default="127.0.0.1", show_envvar=True, metavar="ADDRESS",
              help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_envvar=True,
              help="Port to listen on.")
@click.option("--token", envvar="PGQ_WEB_TOKEN", show_envvar=True, metavar="TOKEN",
              help="An operator token (>= 16 characters): Authorization: Bearer TOKEN, or "
              "the sign-in form's password. Prefer the variable: a flag shows in ps.")
@click.option("--user", "users", envvar="PGQ_WEB_USERS", show_envvar=True, multiple=True,
              metavar="NAME:ROLE:HASH", help="A user of the sign-in form; ROLE is read or "
              "operator, HASH is what pgq hash-password prints. Repeat for more.")
@click.option("--proxy-header", envvar="PGQ_WEB_PROXY_HEADER", show_envvar=True, metavar="HEADER",
              help="Trust this header (set by your authenticating reverse proxy) to name "
              "the user. Only when every request passes through that proxy.")
@click.option("--proxy-operators", envvar="PGQ_WEB_PROXY_OPERATORS", show_envvar=True,
              metavar="NAMES", help="Comma-separated proxy users with the operator role "
              "(the others are read-only).")
@click.option("--secret", envvar="PGQ_WEB_SECRET", show_envvar=True, metavar="SECRET",
              help="Signs session cookies; set it when several processes serve the "
              "dashboard (default: random, sessions end on restart). Prefer the variable.")
@click.option("--secure-cookies", is_flag=True, envvar="PGQ_WEB_SECURE_COOKIES", show_envvar=True,
              help="Served over HTTPS: the session cookie goes over HTTPS only, and "
              "answers carry Strict-Transport-Security.")
@click.option("--read-timeout", type=click.FloatRange(0.1, 600), default=5.0, show_envvar=True,
              envvar="PGQ_WEB_READ_TIMEOUT", metavar="SECONDS",
              help="A page's or the API's read is cancelled past this.")
@click.option("--replica-url", envvar="PGQ_WEB_REPLICA_URL", show_envvar=True, metavar="URL",
              help="Read job lists and details from this PostgreSQL replica.")
@click.option("--root-path", envvar="PGQ_WEB_ROOT_PATH", show_envvar=True, default="",
              metavar="PATH", help="The prefix a reverse proxy serves the app under, e.g. /pgq.")
@database_option
def web(app_path: str | None, host: str, port: int, token: str | None, users: tuple[str, ...],
        proxy_header: str | None, proxy_operators: str | None, secret: str | None,
        secure_cookies: bool, read_timeout: float, replica_url: str | None, root_path: str,
        database_url: str | None) -> None:
    """Serve the dashboard and the HTTP API (/api, OpenAPI at /api/openapi.json).
    Refuses to start without credentials (a token, users or a proxy header)."""
    try:
        from pgq.web import WebConfig
        from pgq.web.config import parse_user
        from pgq.web.server import serve
    except ImportError:
        raise click.ClickException(NEEDS_EXTRA) from None
    config = WebConfig(
        token=token or None, users={u.name: u for u in map(parse_user, users)},
        proxy_header=proxy_header or None,
        proxy_operators=frozenset(n.strip() for n in (proxy_operators or "").split(",")
                                  if n.strip()),
        secure_cookies=secure_cookies, replica_url=replica_url or None,
        read_timeout=read_timeout)
    if secret:
        config = dataclasses.replace(config, secret=secret)
    config.check()
    from pgq.cli.commands import load_app  # commands imports this module

    app = load_app(app_path, database_url) if app_path else operator_app(database_url)
    click.echo(f"pgq web: serving http://{host}:{port}{root_path}/", err=True)
    serve(app, config, host=host, port=port, root_path=root_path)


@click.command("hash-password")
def hash_password_command() -> None:
    """Print a password hash for pgq web --user NAME:ROLE:HASH (reads the password from
    the terminal, or from standard input when piped)."""
    try:
        from pgq.web.passwords import hash_password
    except ImportError:
        raise click.ClickException(NEEDS_EXTRA) from None
    password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    if not password:
        raise ConfigError("a password must not be empty")
    click.echo(hash_password(password))
