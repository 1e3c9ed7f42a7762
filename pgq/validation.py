"""Checks every enqueue input passes before any SQL is sent.

Identifiers are restricted so they are safe everywhere pgq puts them: SQL literals in
audit queries, CLI syntax (``--queues critical=6,default:5``), log lines and Redis keys.
Payloads must survive a JSON round trip *unchanged*: a tuple silently becoming a list or
an integer key becoming a string is a bug the task would only discover at run time.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pgq.errors import (
    InvalidArgsError,
    InvalidIdentifierError,
    InvalidOptionError,
    PayloadTooLargeError,
)

QUEUE_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,62}")
"""Queue names: 1-63 ASCII letters, digits, ``_ . -``; no ``, = :`` (CLI syntax) or spaces."""

TASK_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]{0,127}")
"""Task names: 1-128 ASCII chars, starting with a letter or ``_``; ``.`` and ``:`` allowed
so module paths (``shop.emails.send``) and namespaces (``email:receipt``) both fit."""

MAX_UNIQUE_KEY_BYTES = 512
MAX_TAG_BYTES = 64
MAX_TAGS = 32
PRIORITY_MIN, PRIORITY_MAX = -100, 100
MAX_ATTEMPTS_LIMIT = 1000


def check_queue(name: object) -> str:
    return _check_identifier(name, QUEUE_PATTERN, "queue name", 63)


def check_task_name(name: object) -> str:
    if type(name) is str and name in _VALID_TASK_NAMES:
        return name
    checked = _check_identifier(name, TASK_PATTERN, "task name", 128)
    if len(_VALID_TASK_NAMES) < 4096 and type(name) is str:
        _VALID_TASK_NAMES.add(checked)
    return checked


_VALID_TASK_NAMES: set[str] = set()
"""Names already checked: a bulk enqueue repeats a few names many times. Bounded, so
an application enqueueing ever-new names cannot grow it without limit."""


def _check_identifier(value: object, pattern: re.Pattern[str], what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidIdentifierError(f"{what} must be a string, got {type(value).__name__}")
    if not pattern.fullmatch(value):
        shown = value if len(value) <= 80 else value[:77] + "..."
        allowed, first = (("_ . -", "a letter, digit or _") if what == "queue name"
                          else ("_ . : -", "a letter or _"))
        raise InvalidIdentifierError(
            f"invalid {what} {shown!r}: use 1-{limit} ASCII letters, digits and {allowed}, "
            f"starting with {first}"
        )
    return value


def check_free_text(value: object, what: str, max_bytes: int) -> str:
    """Unique keys and tags: any printable text without NUL, bounded in bytes."""
    if not isinstance(value, str):
        raise InvalidIdentifierError(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidIdentifierError(f"{what} must not be empty")
    if "\x00" in value:
        raise InvalidIdentifierError(f"{what} must not contain NUL characters")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidIdentifierError(f"{what} is not valid Unicode (lone surrogate)") from None
    if size > max_bytes:
        raise InvalidIdentifierError(f"{what} is {size} bytes; the limit is {max_bytes}")
    return value


def check_tags(tags: Iterable[str]) -> list[str]:
    if isinstance(tags, str | bytes) or not isinstance(tags, Iterable):
        raise InvalidIdentifierError(f"tags must be a list of strings, got {tags!r:.80}")
    out = [check_free_text(t, "tag", MAX_TAG_BYTES) for t in tags]
    if len(out) > MAX_TAGS:
        raise InvalidIdentifierError(f"a job may carry at most {MAX_TAGS} tags, got {len(out)}")
    return out


def check_priority(priority: object) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidOptionError(f"priority must be an int, got {type(priority).__name__}")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidOptionError(
            f"priority must be between {PRIORITY_MIN} (runs first) and {PRIORITY_MAX}, "
            f"got {priority}"
        )
    return priority


def check_max_attempts(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOptionError(f"max_attempts must be an int, got {type(value).__name__}")
    if not 1 <= value <= MAX_ATTEMPTS_LIMIT:
        raise InvalidOptionError(
            f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {value}"
        )
    return value


def check_timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidOptionError(f"timeout must be seconds (int or float), got {value!r}")
    try:
        seconds = float(value)
    except OverflowError:
        raise InvalidOptionError(f"timeout is out of range: {value:.3g}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidOptionError(f"timeout must be a positive number of seconds, got {value}")
    return seconds


# Built once: json.dumps with non-default options constructs a new encoder per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_DECODER = json.JSONDecoder()


def _encoder() -> Callable[[object], str]:
    """``_ENCODER.encode``, or the C encoder it builds on every call, built once (2.5x
    faster on small objects: it is most of an enqueue's validation). Same output: no
    circular-reference markers, so a cycle ends as RecursionError, which callers catch."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _ENCODER.encode
    chunks = make(None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",",
                  False, False, False)

    def encode(value: object) -> str:
        return "".join(chunks(value, 0))

    return encode


_encode = _encoder()


def encode_json_object(value: object, what: str) -> str:
    """Encode a mapping of JSON-native values, or raise ``InvalidArgsError`` naming the
    offending path. The fast path is one C-level dump/load/compare round trip; the slow
    walk runs only to explain a rejection."""
    if not isinstance(value, Mapping):
        raise InvalidArgsError(f"{what} must be a dict (a JSON object), got {type(value).__name__}")
    if not isinstance(value, dict):
        value = dict(value)
    try:
        text = _encode(value)
        text.encode("utf-8")
        faithful = _flat(value) or _DECODER.decode(text) == value
    except RecursionError:
        raise InvalidArgsError(f"{what} nests too deeply to encode as JSON") from None
    except (TypeError, ValueError):
        faithful = False
    # PostgreSQL's jsonb cannot store NUL; the encoder writes it as \u0000 (an odd number
    # of backslashes: an even number is an escaped backslash followed by "u0000").
    if not faithful or ("\\u0000" in text and _JSON_NUL.search(text)):
        raise InvalidArgsError(_find_unfaithful(value, what))
    return text


_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _flat(value: dict[Any, Any]) -> bool:
    """String keys and scalar values of exactly the JSON types (most job args): the
    encoding is faithful by construction, and the decode-and-compare can be skipped."""
    return (all(type(k) is str for k in value)
            and all(type(v) in _SCALARS for v in value.values()))


def encode_result(value: object) -> str | None:
    """A task's return value as JSON that jsonb accepts, ``None`` for ``None``; raises
    ``InvalidArgsError`` for what cannot be stored (not JSON, NaN, NUL, lone surrogates)."""
    if value is None:
        return None
    try:
        text = _encode(value)
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidArgsError(f"result is not storable JSON ({exc})") from None
    if _JSON_NUL.search(text):
        raise InvalidArgsError("result contains a NUL character, which jsonb rejects")
    return text


def _find_unfaithful(value: Any, path: str) -> str:
    """Describe the first value under ``path`` that JSON cannot carry unchanged."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if item is None or isinstance(item, bool | int):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return f"{where} is {item}, which JSON cannot represent"
            continue
        if isinstance(item, str):
            if problem := _text_problem(item):
                return f"{where} {problem}"
            continue
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return (f"{where} has a {type(key).__name__} key {key!r}; JSON object keys "
                            "must be strings")
                if problem := _text_problem(key):
                    return f"{where} has a key {key!r} that {problem}"
                stack.append((f"{where}[{key!r}]", child))
            continue
        if isinstance(item, list):
            stack.extend((f"{where}[{i}]", child) for i, child in enumerate(item))
            continue
        if isinstance(item, tuple):
            return f"{where} is a tuple; it would come back as a list (pass a list)"
        return (
            f"{where} is a {type(item).__name__}; job args are JSON only "
            "(dict, list, str, int, float, bool, None)"
        )
    return f"{path} does not survive a JSON round trip unchanged"


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character, which PostgreSQL jsonb rejects"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (lone surrogate)"
    return None


def check_payload_size(args_json: str, meta_json: str, limit: int) -> None:
    if 4 * (len(args_json) + len(meta_json)) <= limit:
        return  # UTF-8 takes at most 4 bytes a character: no need to encode to count
    size = len(args_json.encode("utf-8")) + len(meta_json.encode("utf-8"))
    if size > limit:
        raise PayloadTooLargeError(
            f"job payload (args + meta) is {size} bytes; the limit is {limit} "
            "(Settings.max_payload_bytes / PGQ_MAX_PAYLOAD_BYTES). "
            "Store large data elsewhere and enqueue its key."
        )
