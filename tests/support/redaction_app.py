"""A pgq app for redaction and log-format tests (``tests.support.redaction_app:app``):
a payment task that fails with a token and a card number in its message, one that
succeeds, and one whose own redactor's hooks raise."""

from __future__ import annotations

from typing import Any

import pgq

CARD = "4111 1111 1111 1111"
"""A Luhn-valid test card number."""
TOKEN = "tok_live_9f8e7d6c5b4a"

app = pgq.App.from_env(strict=False, redact=pgq.Redactor(extra_keys=["ssn"]))


@app.task(name="pay.charge", max_attempts=1)
def charge(card_number: str, token: str, amount: int, ssn: str = "") -> None:
    raise RuntimeError(f"gateway refused card {card_number} (token={token}) for {amount}")


@app.task(name="pay.ok")
def ok(amount: int) -> int:
    return amount


def _broken(_: Any) -> Any:
    raise ValueError("the hook is broken")


@app.task(name="pay.broken_hook", max_attempts=1,
          redact=pgq.Redactor(args=_broken, text=_broken))
def broken_hook(token: str) -> None:
    raise RuntimeError(f"refused token={token}")
