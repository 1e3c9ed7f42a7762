"""Redaction (issue 15 item 6) without a database: the default masking of args and of
error text, a redactor's options and hooks, which redactor applies to a task, and the
fallback when a hook raises (the default masking, logged once, never an exception)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

import pgq
from pgq.core.redaction import DEFAULT, MASK, luhn_valid, redact_args, redact_text, redactor_of
from pgq.worker.failure import error_entry

CARD = "4111 1111 1111 1111"


def test_secret_looking_keys_are_masked_at_any_depth_and_the_input_is_kept() -> None:
    args: dict[str, Any] = {"user": "bob", "Password": "hunter2", "amount": 12,
            "headers": {"Authorization": "Bearer abc", "X-Api-Key": "k1", "Accept": "json"},
            "items": [{"access_token": "t1", "sku": "A"}, {"creditCardNumber": "4242"}],
            "session_cookie": {"nested": "dict"}, "db_passwd": None, "client_secret": "s",
            "apikey": 1, "card_number": "x", "credit-card": "y"}
    shown = redact_args(None, args)
    assert shown == {
        "user": "bob", "Password": MASK, "amount": 12,
        "headers": {"Authorization": MASK, "X-Api-Key": MASK, "Accept": "json"},
        "items": [{"access_token": MASK, "sku": "A"}, {"creditCardNumber": MASK}],
        "session_cookie": MASK, "db_passwd": MASK, "client_secret": MASK,
        "apikey": MASK, "card_number": MASK, "credit-card": MASK}
    assert args["Password"] == "hunter2" and args["headers"]["X-Api-Key"] == "k1", "not mutated"


@pytest.mark.parametrize(("text", "shown"), [
    ("login failed: password=hunter2 user=bob", f"login failed: password={MASK} user=bob"),
    ("GET /cb?access_token=abc123&page=2", f"GET /cb?access_token={MASK}&page=2"),
    ('body {"token": "s3cr3t", "n": 1}', f'body {{"token": "{MASK}", "n": 1}}'),
    ("kwargs {'api_key': 'k-1', 'x': 2}", f"kwargs {{'api_key': '{MASK}', 'x': 2}}"),
    ("Authorization: Bearer eyJhbGciOi.xyz", f"Authorization: Bearer {MASK}"),
    ("sent bearer abcdefghijklmnop", f"sent bearer {MASK}"),
    ("X-API-KEY: abc, next", f"X-API-KEY: {MASK}, next"),
    (f"card {CARD} declined", f"card {MASK} declined"),
    ("card 4242-4242-4242-4242 and 4242424242424242", f"card {MASK} and {MASK}"),
    ("order 4111111111111112 (not Luhn-valid)", "order 4111111111111112 (not Luhn-valid)"),
    ("id 123456789012 (12 digits) and 12345678901234567890123",
     "id 123456789012 (12 digits) and 12345678901234567890123"),
    ("at 2026-12-03 16:59:17, nothing secret", "at 2026-12-03 16:59:17, nothing secret"),
    ("the token expired", "the token expired"),
])
def test_error_text_masks_pairs_credentials_and_card_numbers(text: str, shown: str) -> None:
    assert redact_text(None, text) == shown


def test_luhn() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112")


def test_options_extra_keys_no_keys_no_cards() -> None:
    extra = pgq.Redactor(extra_keys=["ssn"])
    assert extra.redact_args({"ssn": "1", "token": "t", "n": 1}) == {"ssn": MASK, "token": MASK,
                                                                     "n": 1}
    assert extra.redact_text("ssn=123-45-6789") == f"ssn={MASK}"
    none = pgq.Redactor(keys=(), cards=False)
    assert none.redact_args({"token": "t"}) == {"token": "t"}
    assert none.redact_text(f"token=t card {CARD}") == f"token=t card {CARD}"
    with pytest.raises(TypeError):
        pgq.Redactor(extra_keys="ssn")


def test_hooks_run_after_the_masking() -> None:
    seen: list[object] = []

    def args_hook(args: dict[str, object]) -> dict[str, object]:
        seen.append(dict(args))
        return {**args, "body": MASK}

    redactor = pgq.Redactor(args=args_hook, text=lambda t: t.replace("ACME", "[client]"))
    assert redactor.redact_args({"token": "t", "body": "b", "n": 1}) == {
        "token": MASK, "body": MASK, "n": 1}
    assert seen == [{"token": MASK, "body": "b", "n": 1}], "the hook sees masked args"
    assert redactor.redact_text("ACME token=t") == f"[client] token={MASK}"


def test_which_redactor_applies() -> None:
    own = pgq.Redactor(keys=("body",))
    wide = pgq.Redactor(extra_keys=["ssn"])
    app = pgq.App(pgq.Settings(database_url="postgresql://nobody@127.0.0.1:1/none"),
                  strict=False, redact=wide)

    @app.task(name="t.own", redact=own)
    def with_own(body: str) -> None: ...

    @app.task(name="t.wide")
    def with_wide(body: str) -> None: ...

    assert app.registry.redact is wide
    assert redactor_of(with_own) is own and redactor_of(with_wide) is wide
    assert redactor_of(app, "t.own") is own and redactor_of(app, "t.wide") is wide
    assert redactor_of(app, "not.registered") is wide and redactor_of(app) is wide
    assert redactor_of(None) is DEFAULT and redactor_of(own) is own
    assert redact_args(app, {"body": "b", "ssn": "s"}, "t.own") == {"body": MASK, "ssn": "s"}
    assert redact_args(with_wide, {"body": "b", "ssn": "s"}) == {"body": "b", "ssn": MASK}
    assert redactor_of(pgq.App(pgq.Settings(database_url="postgresql://x@127.0.0.1:1/n"),
                               strict=False)) is DEFAULT
    with pytest.raises(TypeError):
        pgq.App(pgq.Settings(database_url="postgresql://x@127.0.0.1:1/n"),
                redact=lambda a: a)  # type: ignore[arg-type]
    with pytest.raises(pgq.TaskDefinitionError, match=r"redact must be a pgq\.Redactor"):
        app.task(name="t.bad", redact="x")(lambda: None)  # type: ignore[call-overload]
    app.close()


def test_a_raising_hook_falls_back_to_the_default_and_is_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    def broken(_: object) -> object:
        raise ValueError("hook bug")

    redactor = pgq.Redactor(keys=(), args=broken, text=broken)  # type: ignore[arg-type]
    caplog.set_level(logging.ERROR, logger="pgq.redaction")
    for _ in range(3):
        assert redact_args(redactor, {"token": "t", "n": 1}) == {"token": MASK, "n": 1}
        assert redact_text(redactor, "token=t") == f"token={MASK}"
    (record,) = [r for r in caplog.records if r.name == "pgq.redaction"]
    assert "ValueError: hook bug" in record.getMessage()
    wrong = pgq.Redactor(args=lambda a: "not a dict")  # type: ignore[arg-type,return-value]
    assert redact_args(wrong, {"password": "p"}) == {"password": MASK}


def test_an_errors_entry_is_stored_redacted_even_when_the_hook_raises() -> None:
    def broken(_: str) -> str:
        raise RuntimeError("hook bug")

    try:
        raise ConnectionError(f"refused token=tok_123 for card {CARD}")
    except ConnectionError as exc:
        plain = json.loads(error_entry(2, "w1", exc))
        fallback = json.loads(error_entry(2, "w1", exc, redact=pgq.Redactor(text=broken)))
        custom = json.loads(error_entry(2, "w1", exc, redact=pgq.Redactor(
            text=lambda t: t.replace("refused", "[verb]"))))
    for entry in (plain, fallback):
        assert entry["message"] == f"refused token={MASK} for card {MASK}"
        assert "tok_123" not in entry["traceback"] and "1111" not in entry["traceback"]
        assert entry["traceback"].endswith(f"ConnectionError: refused token={MASK} for card {MASK}\n")
    assert custom["message"] == f"[verb] token={MASK} for card {MASK}"


def test_the_cut_cannot_separate_a_secret_from_its_key() -> None:
    try:
        raise ValueError("x" * 900 + " token=" + "s" * 2500 + " " + "y" * 500)
    except ValueError as exc:
        entry = json.loads(error_entry(1, "w1", exc))
    # The entry keeps head and tail of the message: the tail is all secret, but masked.
    assert entry["message"].startswith("x" * 900 + f" token={MASK} " + "y")
    assert "s" * 10 not in entry["message"]
