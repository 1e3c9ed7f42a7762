"""``pgq api-keys create|list|revoke``: the HTTP API's keys (``app.api_keys``). A key's
secret is printed once, by ``create``, on stdout alone (so ``$(pgq api-keys create ...)``
captures just the secret); only its SHA-256 is stored."""

from __future__ import annotations

import click

from pgq.cli.options import database_option, json_option, operator_app
from pgq.cli.output import emit_json, table, when
from pgq.client.apikeys import SCOPES

EXIT_CODES = "Exit codes: 0 done, 1 error (bad name or scope, database), 2 usage."


@click.group("api-keys")
def api_keys() -> None:
    """Create, list and revoke API keys for the HTTP API (Authorization: Bearer KEY).
    Scopes: enqueue (POST /api/jobs), read (jobs, queues, stats), operate (actions).
    See docs/web.md."""


@api_keys.command(epilog=EXIT_CODES)
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True, show_envvar=True,
              type=click.Choice(SCOPES), help="What the key may do; repeat for several.")
@click.option("--actor", metavar="WHO", show_envvar=True,
              help="Who creates it, recorded with the key. [default: the OS user]")
@database_option
def create(name: str, scopes: tuple[str, ...], actor: str | None,
           database_url: str | None) -> None:
    """Create key NAME and print its secret (on stdout, this once: store it now)."""
    with operator_app(database_url) as app:
        key, secret = app.api_keys.create(name, scopes, actor=actor)
    click.echo(f"api key {key.name} ({', '.join(key.scopes)}): the secret below is shown "
               "once; only its hash is stored", err=True)
    click.echo(secret)


@api_keys.command("list", epilog=EXIT_CODES)
@json_option
@database_option
def list_keys(as_json: bool, database_url: str | None) -> None:
    """Every key, revoked ones too (never a secret or hash)."""
    with operator_app(database_url) as app:
        found = app.api_keys.list()
    if as_json:
        emit_json({"keys": found})
    elif not found:
        click.echo("no api keys: pgq api-keys create NAME --scope ...")
    else:
        table(["NAME", "SCOPES", "CREATED", "BY", "LAST USED", "REVOKED"],
              [[k.name, ",".join(k.scopes), when(k.created_at), k.created_by or "-",
                when(k.last_used_at), when(k.revoked_at) if k.revoked_at else "-"]
               for k in found])


@api_keys.command(epilog=EXIT_CODES)
@click.argument("name")
@click.option("--actor", metavar="WHO", show_envvar=True,
              help="Who revokes it. [default: the OS user]")
@database_option
def revoke(name: str, actor: str | None, database_url: str | None) -> None:
    """Revoke key NAME: refused from the next request on."""
    with operator_app(database_url) as app:
        key = app.api_keys.revoke(name, actor=actor)
    click.echo(f"revoked api key {key.name}")
