"""Password hashes for dashboard users: scrypt from the standard library, so the web
extra needs no hashing dependency. A hash is one printable token without ``:`` or ``,``
(``scrypt$N$r$p$salt$digest``, base64), so it fits in ``PGQ_WEB_USERS``; ``pgq
hash-password`` prints one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from pgq.core.errors import ConfigError

# 2**15 costs ~50 ms and 32 MiB per check: slow for a guesser, cheap for a login.
_N, _R, _P = 2**15, 8, 1
_MAXMEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    if not password:
        raise ConfigError("a password must not be empty")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def check_hash(encoded: str) -> str:
    """``encoded`` if it is a hash this module made, else ``ConfigError`` (at start-up,
    so a typo in a user's hash is not a login that silently never works)."""
    parts = encoded.split("$")
    try:
        ok = (len(parts) == 6 and parts[0] == "scrypt" and all(int(p) > 0 for p in parts[1:4])
              and len(_unb64(parts[4])) >= 8 and len(_unb64(parts[5])) >= 16)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError("a password hash must be one 'pgq hash-password' printed "
                          "(scrypt$N$r$p$salt$digest)")
    return encoded


def verify_password(password: str, encoded: str) -> bool:
    """True if ``password`` matches; constant time in the digest comparison."""
    _, n, r, p, salt, digest = check_hash(encoded).split("$")
    computed = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r),
                              p=int(p), maxmem=_MAXMEM)
    return hmac.compare_digest(computed, _unb64(digest))
