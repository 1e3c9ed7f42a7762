"""Checks every enqueue input passes before any SQL is sent.

Identifiers are restricted so they are safe everywhere pgq puts them: SQL literals in
audit queries, CLI syntax (``--queues critical=6,default:5``), log lines and Redis keys.
Payloads must survive a JSON round trip *unchanged*: a tuple silently becoming a list or
an integer key becoming a string is a bug the task would only discover at run time.
The round trip that counts goes through PostgreSQL's jsonb, which has no negative zero
(``-0.0`` is refused) and prints numbers without exponents (so a float like ``1e+16`` is
written ``10000000000000000.0``, or it would come back as an int).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from itertools import accumulate
from typing import Any

from pgq.core.errors import (
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
MAX_JSON_DEPTH = 256
"""Deepest nesting of objects and arrays in args, meta, progress and results. Python's
JSON decoder recurses once per level under the interpreter's recursion limit (1000), and
a worker decodes a claimed job's args dozens of frames deeper than the enqueue encoded
them: args nested ~990 levels encoded fine and then crashed every worker that claimed
them. 256 is far deeper than real payloads and leaves the decoder ample headroom."""


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
    if type(value) is not dict:  # the usual case skips the two instance checks
        if not isinstance(value, Mapping):
            raise InvalidArgsError(
                f"{what} must be a dict (a JSON object), got {type(value).__name__}")
        if not isinstance(value, dict):
            value = dict(value)
    try:
        text = _encode(value)
        if not text.isascii():
            text.encode("utf-8")  # a lone surrogate cannot be stored: UnicodeEncodeError
        flat = _flat(value)
        faithful = flat or _DECODER.decode(text) == value
    except RecursionError:
        raise InvalidArgsError(f"{what} nests too deeply to encode as JSON") from None
    except (TypeError, ValueError):
        faithful = False
    # PostgreSQL's jsonb cannot store NUL; the encoder writes it as \u0000 (an odd number
    # of backslashes: an even number is an escaped backslash followed by "u0000").
    # Nor a negative zero: -0.0 == 0.0, so only the walk can tell it from "-0.0" in a string.
    problem = None
    if not faithful or ("\\u0000" in text and _JSON_NUL.search(text)):
        problem = (_find_unfaithful(value, what)
                   or f"{what} does not survive a JSON round trip unchanged")
    elif "-0.0" in text:
        problem = _find_unfaithful(value, what)
    if problem:
        raise InvalidArgsError(problem)
    return _for_jsonb(text, what, nested=not flat)


def _for_jsonb(text: str, what: str, *, nested: bool = True) -> str:
    """``text`` as jsonb will give it back: nesting bounded, exponents written out.
    Each check starts with a C-level scan, so ordinary payloads pay almost nothing."""
    if (nested and text.count("[") + text.count("{") > MAX_JSON_DEPTH
            and _depth(text) > MAX_JSON_DEPTH):
        raise InvalidArgsError(
            f"{what} nests deeper than {MAX_JSON_DEPTH} levels of objects and arrays")
    if "e+" in text:
        text = _JSON_STRING_OR_EXPONENT.sub(_expand_exponent, text)
    return text


# A JSON string (skipped whole, whatever it contains), or one of its structural brackets.
_JSON_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _depth(text: str) -> int:
    """How deeply the JSON ``text`` nests objects and arrays."""
    brackets = (m[0] for m in _JSON_STRING_OR_BRACKET.finditer(text) if m[0] in _DEPTH_STEP)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


# A JSON string, or a number with a positive exponent (how Python writes floats from 1e16
# up). jsonb stores numbers as numeric and prints them without exponent: 1e+16 comes back
# as 10000000000000000, which Python decodes as an int. With a ".0" it stays a float.
_JSON_STRING_OR_EXPONENT = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|-?\d+(?:\.\d+)?e\+\d+')


def _expand_exponent(match: re.Match[str]) -> str:
    token = match[0]
    if token[0] == '"':
        return token
    # Exact: the same decimal value, so it parses back to the same float.
    return f"{Decimal(token):f}.0"


_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_SCALARS = frozenset({str, int, float, bool, type(None)})
_STR = frozenset({str})


def _flat(value: dict[Any, Any]) -> bool:
    """String keys and scalar values of exactly the JSON types (most job args): the
    encoding is faithful by construction, and the decode-and-compare can be skipped."""
    # map(type, ...) into a set's issuperset runs in C: no generator frame per item.
    return _STR.issuperset(map(type, value)) and _SCALARS.issuperset(map(type, value.values()))


def parse_json(text: str, what: str) -> Any:
    """Decode JSON ``text`` from outside Python (the CLI's ``--args``) for
    ``encode_json_object``, or raise ``InvalidArgsError`` saying in one line what is wrong.
    Stricter than ``json.loads``, which would silently keep the last of two equal keys,
    read ``NaN`` and ``Infinity``, and read a number too large for a float as infinity."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                           parse_int=_bounded_int, object_pairs_hook=_distinct_keys)
    except json.JSONDecodeError as exc:
        raise InvalidArgsError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgsError(f"{what} nests too deeply to decode as JSON") from None
    except _Refused as exc:
        raise InvalidArgsError(f"{what} {exc}") from None
    except ValueError as exc:  # none known; one line all the same
        raise InvalidArgsError(f"{what} is not usable JSON: {exc}") from None
    return value


class _Refused(ValueError):
    """A value ``parse_json`` refuses (a ValueError, as the decoder's hooks raise)."""


def _shown(token: str) -> str:
    return token if len(token) <= 40 else f"{token[:20]}…{token[-10:]} ({len(token)} characters)"


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"has {name}, which is not JSON (a job's JSON has no NaN or infinities)")


def _finite_float(token: str) -> float:
    number = float(token)
    if not math.isfinite(number):
        raise _Refused(f"has the number {_shown(token)}, too large for a float (it would be {number})")
    return number


def _bounded_int(token: str) -> int:
    limit = sys.get_int_max_str_digits()
    if limit and len(token.lstrip("-")) > limit:
        raise _Refused(f"has an integer of {len(token.lstrip('-'))} digits; at most {limit} "
                       "can be converted from text")
    return int(token)


def _distinct_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"has the key {key!r} twice in one object "
                               "(a JSON decoder would keep only the last)")
            seen.add(key)
    return value


def encode_result(value: object) -> str | None:
    """A task's return value as JSON that jsonb accepts, ``None`` for ``None``; raises
    ``InvalidArgsError`` for what cannot be stored (not JSON, NaN, NUL, lone surrogates)."""
    if value is None:
        return None
    try:
        text = _encode(value)
        if not text.isascii():
            text.encode("utf-8")  # a lone surrogate cannot be stored: UnicodeEncodeError
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidArgsError(f"result is not storable JSON ({exc})") from None
    if _JSON_NUL.search(text):
        raise InvalidArgsError("result contains a NUL character, which jsonb rejects")
    # A result is not held to the round trip as args are (a tuple is stored as a list),
    # and refusing one would store null after the task's work is done: a -0.0 in it is
    # stored as 0.0, which jsonb makes of it.
    return _for_jsonb(text, "result")


def _find_unfaithful(value: Any, path: str) -> str | None:
    """Describe the first value under ``path`` that JSON and jsonb cannot carry
    unchanged, or ``None`` if there is none."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if item.bit_length() > 14_000 and _too_long_for_text(item):
                return (f"{where} is an integer of more than {sys.get_int_max_str_digits()} "
                        "digits, more than Python converts to and from text")
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return f"{where} is {item}, which JSON cannot represent"
            if item == 0.0 and math.copysign(1.0, item) < 0:
                return (f"{where} is -0.0; PostgreSQL jsonb has no negative zero and would "
                        "give back 0.0 (pass 0.0)")
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
    return None


def _too_long_for_text(number: int) -> bool:
    try:
        str(number)
    except ValueError:  # sys.get_int_max_str_digits(): 4300 by default
        return True
    return False


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
