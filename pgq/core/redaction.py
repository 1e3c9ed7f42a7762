"""Redaction: what pgq masks in job args and error text before anyone outside the task
sees them (log lines, traces, operator displays, the stored ``errors`` entries).

The stored args are never redacted: the task needs them. Everything pgq *shows* passes
through a ``Redactor``: the app's (``pgq.App(redact=...)``) unless the task has its own
(``@app.task(redact=...)``); without either, ``DEFAULT``. By default a ``Redactor``
masks the value of every key that looks like a secret (``password``, ``token``, ...;
``SECRET_KEYS``), anywhere in nested dicts and lists, and in text masks ``key=value``,
``key: value`` and ``"key": "value"`` pairs for those keys, ``Bearer`` credentials and
digit runs that are valid card numbers (13 to 19 digits, Luhn). Its hooks (``args=``,
``text=``) run after that masking and may mask more.

A hook that raises must not cost the outcome it was masking: the callers use
``redact_args`` and ``redact_text``, which fall back to ``DEFAULT``'s masking and log
the failure once per redactor. See docs/redaction.md.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger("pgq.redaction")

MASK = "[redacted]"

SECRET_KEYS = ("password", "passwd", "token", "secret", "authorization", "api_key", "apikey",
               "cookie", "credit_card", "card_number", "private_key")
"""Key fragments that mark a secret, matched case-insensitively anywhere in a key once
``_``, ``-``, ``.`` and spaces are ignored: ``access_token``, ``X-Api-Key``,
``dbPassword``, ``Set-Cookie`` and ``creditCardNumber`` all match. A key that merely
contains one (``tokens_used``) is masked too: a masked harmless value costs less than a
shown secret."""

ArgsHook = Callable[[dict[str, Any]], dict[str, Any]]
TextHook = Callable[[str], str]


def _squash(key: str) -> str:
    return re.sub(r"[\s_.-]", "", key).lower()


def _key_pattern(keys: Iterable[str]) -> re.Pattern[str] | None:
    """A regex for a key in text: each fragment's words with an optional separator
    between them (``api_key`` matches ``api-key``, ``apiKey``, ``API_KEY``)."""
    parts = {r"[\s_.-]?".join(re.escape(w) for w in re.split(r"[\s_.-]+", k) if w)
             for k in keys}
    parts.discard("")
    ordered = sorted(parts, key=len, reverse=True)
    return re.compile("|".join(ordered), re.IGNORECASE) if ordered else None


_QUOTED = r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\''
_SCHEME = r"(?:bearer|basic|token|digest)\s+[^\s,;&'\"]+"
_BARE = r"[^\s,;&'\"()\[\]{}<>]+"
_BEARER = re.compile(r"\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
_SHORTEST = 7
"""The shortest text the masking can change: ``token=x``."""
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class Redactor:
    """Masks args and error text. ``keys``: the key fragments that mark a secret
    (``SECRET_KEYS`` unless given; ``()`` masks no key); ``extra_keys``: more fragments
    on top of those; ``cards``: mask card numbers in text; ``args``/``text``: hooks
    called with the masked value, returning what to show (they may mask more).

    ``pgq.App(redact=pgq.Redactor(extra_keys=["ssn"]))`` for the whole app,
    ``@app.task(redact=pgq.Redactor(args=lambda a: {**a, "body": "[redacted]"}))`` for
    one task (a task's redactor replaces the app's, it does not add to it)."""

    def __init__(self, *, keys: Iterable[str] = SECRET_KEYS, extra_keys: Iterable[str] = (),
                 cards: bool = True, args: ArgsHook | None = None,
                 text: TextHook | None = None) -> None:
        fragments = [*keys, *extra_keys]
        if isinstance(keys, str) or isinstance(extra_keys, str):
            raise TypeError("keys and extra_keys are iterables of key fragments, not a string")
        self.keys = tuple(dict.fromkeys(_squash(k) for k in fragments if _squash(k)))
        self.cards = cards
        self.args_hook = args
        self.text_hook = text
        self.failed_once = False
        self._verdicts: dict[str, bool] = {}
        """A hook raised and was logged; later failures fall back silently."""
        key = _key_pattern(fragments)
        self._probes = tuple({w.lower() for k in fragments
                              for w in re.split(r"[\s_.-]+", k)[:1] if w})
        """Each fragment's first word: most text has none, and substring searches find
        that far faster than a pattern tried at every word."""
        self._key_in_text = None if key is None else re.compile(
            # the key (maybe quoted, with a prefix or suffix: access_token, "apiKey"),
            # a separator, then a quoted value, a scheme and its credential, or a bare word
            rf"""(?<![\w.-])(?P<key>["']?[\w.-]{{0,40}}?(?:{key.pattern})[\w.-]{{0,40}}["']?)(?P<sep>\s*[:=]\s*)"""
            rf"(?P<value>{_QUOTED}|{_SCHEME}|{_BARE})", re.IGNORECASE)

    def __repr__(self) -> str:
        return (f"Redactor(keys={self.keys!r}, cards={self.cards}, args={self.args_hook!r}, "
                f"text={self.text_hook!r})")

    def is_secret(self, key: object) -> bool:
        text = str(key)
        verdict = self._verdicts.get(text)
        if verdict is None:
            squashed = _squash(text)
            verdict = any(k in squashed for k in self.keys)
            if len(self._verdicts) < 4096:  # args' keys repeat; odd ones must not grow it
                self._verdicts[text] = verdict
        return verdict

    # --- args --------------------------------------------------------------------------

    def mask_args(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """The built-in masking of args, without the hook."""
        masked = self._value(args)
        return masked if isinstance(masked, dict) else {"args": masked}

    def redact_args(self, args: Mapping[str, Any]) -> dict[str, Any]:
        masked = self.mask_args(args)
        return self.args_hook(masked) if self.args_hook is not None else masked

    def _value(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: MASK if self.keys and self.is_secret(k) else self._value(v)
                    for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._value(v) for v in value]
        if isinstance(value, str):
            # shorter than any pair, credential or card the text masking finds
            return self.mask_text(value) if len(value) >= _SHORTEST else value
        return value

    # --- text --------------------------------------------------------------------------

    def mask_text(self, text: str) -> str:
        """The built-in masking of text, without the hook."""
        if self._key_in_text is not None:
            lowered = text.lower()
            if any(probe in lowered for probe in self._probes):
                text = self._key_in_text.sub(_masked_pair, text)
            if "bearer" in lowered:
                text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
        if self.cards:
            text = _CARD.sub(_masked_card, text)
        return text

    def redact_text(self, text: str) -> str:
        masked = self.mask_text(text)
        return self.text_hook(masked) if self.text_hook is not None else masked


def _masked_pair(m: re.Match[str]) -> str:
    value = m.group("value")
    if value[:1] in "\"'":
        shown = f"{value[0]}{MASK}{value[0]}"
    elif " " in value:  # a scheme and its credential: say which scheme
        shown = f"{value.split()[0]} {MASK}"
    else:
        shown = MASK
    return f"{m.group('key')}{m.group('sep')}{shown}"


def _masked_card(m: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", m.group(0))
    return MASK if 13 <= len(digits) <= 19 and luhn_valid(digits) else m.group(0)


DEFAULT = Redactor()
"""What pgq masks when neither the app nor the task says otherwise."""


def redactor_of(owner: object, task: str | None = None) -> Redactor:
    """The redactor that applies: ``owner`` is a ``Redactor``, a ``Task`` (its own, or
    the app's it was registered with), an ``App`` (the redactor of its task named
    ``task`` if registered, else the app's), or None (``DEFAULT``)."""
    if isinstance(owner, Redactor):
        return owner
    registry = getattr(owner, "registry", None)
    if registry is not None:  # an App
        found = registry.get(task) if task is not None else None
        owner = found if found is not None else registry
    redactor = getattr(owner, "redact", None)  # Task.redact, TaskRegistry.redact
    return redactor if isinstance(redactor, Redactor) else DEFAULT


def redact_args(owner: object, args: Mapping[str, Any], task: str | None = None) -> dict[str, Any]:
    """``args`` as they may be shown (logged, exported to a trace, displayed): never
    raises; a failing hook falls back to ``DEFAULT``'s masking."""
    redactor = redactor_of(owner, task)
    try:
        shown = redactor.redact_args(args)
        if isinstance(shown, dict):
            return shown
        raise TypeError(f"the args hook returned {type(shown).__name__}, not a dict")
    except Exception as exc:
        _failed(redactor, "args", exc)
    try:
        return DEFAULT.mask_args(args)
    except Exception:  # not a mapping pgq can walk: show nothing of it
        return {"args": MASK}


def redact_text(owner: object, text: str, task: str | None = None) -> str:
    """``text`` (an error message, a traceback) as it may be shown or stored: never
    raises; a failing hook falls back to ``DEFAULT``'s masking."""
    redactor = redactor_of(owner, task)
    try:
        shown = redactor.redact_text(text)
        if isinstance(shown, str):
            return shown
        raise TypeError(f"the text hook returned {type(shown).__name__}, not a str")
    except Exception as exc:
        _failed(redactor, "text", exc)
    try:
        return DEFAULT.mask_text(text)
    except Exception:
        return MASK


def _failed(redactor: Redactor, what: str, exc: Exception) -> None:
    if redactor.failed_once:
        return
    redactor.failed_once = True  # once: a broken hook on every failed job would flood the log
    log.error("redaction of %s failed (%s: %s); pgq's default masking is used instead, now "
              "and without further notice for this redactor: %r", what, type(exc).__name__,
              exc, redactor)
