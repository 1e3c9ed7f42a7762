"""Settings: URL normalization, environment parsing, limits, and that no message or repr
ever shows a password. No I/O: URLs are parsed, never connected to."""

from __future__ import annotations

import dataclasses
import math

import psycopg.conninfo
import pytest

from pgq.core.errors import ConfigError
from pgq.core.settings import (
    DEFAULT_DATABASE_URL,
    Settings,
    normalize_database_url,
    normalize_redis_url,
    redact_url,
    sqlalchemy_url,
)

SECRET = "s3cr3t-Pw"
REDIS_SECRET = "r3d1s-Pw"


# --- database URLs --------------------------------------------------------------------

@pytest.mark.parametrize(("url", "expected"), [
    (f"postgresql://app:{SECRET}@db.internal:5433/shop",
     f"postgresql://app:{SECRET}@db.internal:5433/shop"),
    (f"postgres://app:{SECRET}@db.internal:5433/shop",
     f"postgresql://app:{SECRET}@db.internal:5433/shop"),
    (f"postgresql+psycopg://app:{SECRET}@db.internal:5433/shop",
     f"postgresql://app:{SECRET}@db.internal:5433/shop"),
    ("POSTGRES://db.internal/shop", "postgresql://db.internal/shop"),
    ("  postgres://db.internal/shop?sslmode=require\n", "postgresql://db.internal/shop?sslmode=require"),
    ("postgresql://app@[::1]:5433/shop", "postgresql://app@[::1]:5433/shop"),
    ("postgresql://postgres@/db?host=/tmp", "postgresql://postgres@/db?host=/tmp"),
    ("postgres://postgres@/db?host=/var/run/postgresql&port=5433",
     "postgresql://postgres@/db?host=/var/run/postgresql&port=5433"),
    ("postgresql+psycopg://postgres@/db?host=%2Ftmp", "postgresql://postgres@/db?host=%2Ftmp"),
])
def test_database_url_normalization(url: str, expected: str) -> None:
    assert normalize_database_url(url) == expected


def test_normalized_url_means_the_same_to_libpq() -> None:
    url = normalize_database_url(f"postgres://app:{SECRET}@db.internal:5433/shop?sslmode=require")
    assert psycopg.conninfo.conninfo_to_dict(url) == {
        "user": "app", "password": SECRET, "host": "db.internal", "port": "5433", "dbname": "shop",
        "sslmode": "require",
    }


def test_unix_socket_url_keeps_its_socket_directory() -> None:
    url = normalize_database_url("postgresql+psycopg://postgres@/db?host=/run/postgresql")
    assert psycopg.conninfo.conninfo_to_dict(url) == {
        "user": "postgres", "dbname": "db", "host": "/run/postgresql"}


def test_url_with_empty_authority_is_accepted() -> None:
    assert normalize_database_url("postgresql:///db?host=/tmp") == "postgresql:///db?host=/tmp"


@pytest.mark.parametrize(("url", "problem"), [
    (f"mysql://app:{SECRET}@db.internal/shop", "must start with postgresql://"),
    (f"http://app:{SECRET}@db.internal/shop", "got 'http://app:***@db.internal/shop'"),
    (f"postgresql+asyncpg://app:{SECRET}@db.internal/shop", "got 'postgresql+asyncpg://app:***@db.internal/shop'"),
    ("db.internal:5432/shop", "must start with postgresql://"),
    ("", "got ''"),
    (f"postgresql://app:{SECRET}@db.internal:notaport/shop", "port must be 1-65535"),
    (f"postgresql://app:{SECRET}@db.internal:70000/shop", "port must be 1-65535"),
    (f"postgresql://app:{SECRET}@db.internal/shop?nosuchoption=1", "invalid URI query parameter"),
])
def test_bad_database_url(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        normalize_database_url(url)
    message = str(exc.value)
    assert problem in message
    assert SECRET not in message
    if SECRET in url:
        assert "app:***@db.internal" in message  # the URL is shown, redacted


def test_bad_database_url_in_settings_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as exc:
        Settings(database_url=f"mysql://app:{SECRET}@db.internal/shop")
    assert SECRET not in str(exc.value)


@pytest.mark.parametrize("url", [
    f"postgresql://app:{SECRET}#x@db.internal/shop",
    f"postgresql://app:{SECRET}/x@db.internal/shop",
    f"postgresql://app:{SECRET}?x@db.internal/shop",
    f"app:{SECRET}@db.internal/shop",
    f"postgresql://app:{SECRET}%zz@db.internal/shop",
    f"postgresql://app:p@ss{SECRET}@db.internal/shop",
])
def test_password_of_a_malformed_url_never_appears_in_the_error(url: str) -> None:
    with pytest.raises(ConfigError) as exc:
        normalize_database_url(url)
    assert SECRET not in str(exc.value)


# --- redact_url / sqlalchemy_url ------------------------------------------------------

@pytest.mark.parametrize(("url", "expected"), [
    (f"postgresql://app:{SECRET}@db.internal:5432/shop", "postgresql://app:***@db.internal:5432/shop"),
    (f"postgresql://app:p@ss{SECRET}@db.internal/shop", "postgresql://app:***@db.internal/shop"),
    (f"redis://:{SECRET}@cache:6379/0", "redis://:***@cache:6379/0"),
    (f"rediss://user:{SECRET}@cache:6380/1?ssl_cert_reqs=none", "rediss://user:***@cache:6380/1?ssl_cert_reqs=none"),
    ("postgresql://app@db.internal/shop", "postgresql://app@db.internal/shop"),
    ("postgresql://postgres@/db?host=/tmp", "postgresql://postgres@/db?host=/tmp"),
    ("http://[::1", "http://[::1"),
])
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_sqlalchemy_url() -> None:
    assert sqlalchemy_url("postgresql://app:pw@db.internal/shop") == "postgresql+psycopg://app:pw@db.internal/shop"
    settings = Settings(database_url="postgres://app:pw@db.internal:5433/shop")
    assert settings.sqlalchemy_url == "postgresql+psycopg://app:pw@db.internal:5433/shop"
    assert normalize_database_url(settings.sqlalchemy_url) == settings.database_url


# --- Settings.from_env ----------------------------------------------------------------

def test_from_env_with_an_empty_environ_gives_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGQ_DATABASE_URL", "postgresql://from-os-environ/db")
    monkeypatch.setenv("PGQ_MAX_PAYLOAD_BYTES", "not a number")
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert (settings.redis_url, settings.max_payload_bytes, settings.pool_max_size,
            settings.connect_timeout) == (None, 1024 * 1024, 4, 5.0)


def test_from_env_reads_os_environ_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGQ_DATABASE_URL", "postgres://from-os-environ/db")
    monkeypatch.setenv("PGQ_MAX_PAYLOAD_BYTES", "4096")
    monkeypatch.delenv("PGQ_REDIS_URL", raising=False)
    settings = Settings.from_env()
    assert (settings.database_url, settings.max_payload_bytes) == ("postgresql://from-os-environ/db", 4096)


ENV = {
    "PGQ_DATABASE_URL": f"postgres://app:{SECRET}@db.internal/shop",
    "PGQ_REDIS_URL": f"rediss://:{REDIS_SECRET}@cache:6380/2",
    "PGQ_MAX_PAYLOAD_BYTES": "2048",
    "PGQ_POOL_MAX_SIZE": "8",
    "PGQ_CONNECT_TIMEOUT": "2.5",
    "PGQ_DEAD_PEER_TIMEOUT": "7.5",
    "UNRELATED": "ignored",
}


def test_from_env_reads_every_variable() -> None:
    settings = Settings.from_env(ENV)
    assert settings.database_url == f"postgresql://app:{SECRET}@db.internal/shop"
    assert settings.redis_url == f"rediss://:{REDIS_SECRET}@cache:6380/2"
    assert (settings.max_payload_bytes, settings.pool_max_size, settings.connect_timeout) == (2048, 8, 2.5)
    assert settings.dead_peer_timeout == 7.5
    assert isinstance(settings.max_payload_bytes, int) and isinstance(settings.pool_max_size, int)


def test_empty_variables_count_as_unset() -> None:
    settings = Settings.from_env(dict.fromkeys(ENV, ""))
    assert settings == Settings()


@pytest.mark.parametrize(("var", "raw"), [
    ("PGQ_MAX_PAYLOAD_BYTES", "1MB"), ("PGQ_MAX_PAYLOAD_BYTES", "2048.0"), ("PGQ_POOL_MAX_SIZE", "eight"),
    ("PGQ_CONNECT_TIMEOUT", "soon"), ("PGQ_DEAD_PEER_TIMEOUT", "5s"),
])
def test_non_numeric_variable(var: str, raw: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({**ENV, var: raw})
    assert str(exc.value) == f"{var} must be a number, got {raw!r}"


def test_out_of_range_variable() -> None:
    with pytest.raises(ConfigError, match="max_payload_bytes must be between 1024 and 268435456, got 100"):
        Settings.from_env({"PGQ_MAX_PAYLOAD_BYTES": "100"})


def test_bad_url_variable_does_not_show_the_password() -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"PGQ_DATABASE_URL": f"mysql://app:{SECRET}@db.internal/shop"})
    assert SECRET not in str(exc.value)


def test_overrides_win_over_the_environment() -> None:
    settings = Settings.from_env(ENV, database_url="postgresql://other/db", redis_url="redis://other:6379/0",
                                 max_payload_bytes=4096, pool_max_size=2, connect_timeout=1.0)
    assert settings.database_url == "postgresql://other/db"
    assert settings.redis_url == "redis://other:6379/0"
    assert (settings.max_payload_bytes, settings.pool_max_size, settings.connect_timeout) == (4096, 2, 1.0)


def test_none_overrides_are_ignored() -> None:
    settings = Settings.from_env(ENV, database_url=None, redis_url=None, max_payload_bytes=None,
                                 pool_max_size=None, connect_timeout=None)
    assert settings == Settings.from_env(ENV)
    assert settings.redis_url is not None and settings.max_payload_bytes == 2048


def test_overrides_are_normalized_and_validated_too() -> None:
    assert Settings.from_env({}, database_url="postgres://h/db").database_url == "postgresql://h/db"
    with pytest.raises(ConfigError):
        Settings.from_env({}, pool_max_size=0)


# --- Redis URLs -----------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "redis://localhost:6379/0", f"redis://:{REDIS_SECRET}@cache:6379/0", "rediss://cache:6380/1",
    "unix:///var/run/redis/redis.sock?db=2",
])
def test_redis_url_schemes_accepted(url: str) -> None:
    assert normalize_redis_url(url) == url
    assert Settings(redis_url=f" {url} ").redis_url == url


@pytest.mark.parametrize(("url", "problem"), [
    (f"http://:{REDIS_SECRET}@cache:6379/0",
     "Redis URL must start with redis://, rediss:// or unix://, got 'http://:***@cache:6379/0'"),
    (f"valkey://:{REDIS_SECRET}@cache:6379/0", "got 'valkey://:***@cache:6379/0'"),
    ("cache:6379", "Redis URL must start with"),
    (f"redis://:{REDIS_SECRET}@cache:port/0", "port must be 1-65535"),
])
def test_redis_url_rejected(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings(redis_url=url)
    assert problem in str(exc.value)
    assert REDIS_SECRET not in str(exc.value)


# --- repr and limits ------------------------------------------------------------------

def test_repr_never_shows_a_password() -> None:
    settings = Settings(database_url=f"postgresql://app:{SECRET}@db.internal/shop",
                        redis_url=f"redis://default:{REDIS_SECRET}@cache:6379/0")
    for text in (repr(settings), str(settings), f"{settings}", repr([settings])):
        assert SECRET not in text
        assert REDIS_SECRET not in text
    assert repr(settings) == (
        "Settings(database_url='postgresql://app:***@db.internal/shop', "
        "redis_url='redis://default:***@cache:6379/0', max_payload_bytes=1048576, pool_max_size=4, "
        "connect_timeout=5.0)"
    )


def test_repr_hides_a_password_given_as_a_query_parameter() -> None:
    settings = Settings(database_url=f"postgresql://app@db.internal/shop?password={SECRET}",
                        redis_url=f"unix:///run/redis.sock?password={REDIS_SECRET}")
    assert SECRET not in repr(settings)
    assert REDIS_SECRET not in repr(settings)


def test_repr_without_redis() -> None:
    assert "redis_url=None" in repr(Settings())


@pytest.mark.parametrize(("field", "value"), [
    ("max_payload_bytes", 1023), ("max_payload_bytes", 256 * 1024 * 1024 + 1), ("max_payload_bytes", 0),
    ("pool_max_size", 0), ("pool_max_size", 1001), ("pool_max_size", -1),
    ("connect_timeout", 0), ("connect_timeout", -1.0), ("connect_timeout", 600.5),
    ("connect_timeout", math.nan), ("connect_timeout", math.inf),
    ("dead_peer_timeout", 0), ("dead_peer_timeout", 0.05), ("dead_peer_timeout", 600.5),
    ("dead_peer_timeout", math.nan), ("dead_peer_timeout", math.inf),
    ("dead_peer_timeout", True), ("dead_peer_timeout", "5"),
])
def test_out_of_range_limits_rejected(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"^{field} must be "):
        Settings(**{field: value})


@pytest.mark.parametrize(("field", "value"), [
    ("max_payload_bytes", 1024), ("max_payload_bytes", 256 * 1024 * 1024),
    ("pool_max_size", 1), ("pool_max_size", 1000),
    ("connect_timeout", 0.001), ("connect_timeout", 600),
    ("dead_peer_timeout", 0.1), ("dead_peer_timeout", 600),
])
def test_limits_are_inclusive(field: str, value: float) -> None:
    assert getattr(Settings(**{field: value}), field) == value


@pytest.mark.parametrize(("dead_peer", "lease", "expected"), [
    (5.0, 12.0, 3.0),  # the default lease: a quarter of it
    (5.0, 30.0, 5.0),  # never later than the setting
    (2.0, 12.0, 2.0),
    (5.0, 2.0, 1.0),  # at least 1 s, however short the lease
    (0.5, 2.0, 0.5),  # unless the setting asks for less
])
def test_for_lease_declares_a_dead_peer_within_a_quarter_of_the_lease(
        dead_peer: float, lease: float, expected: float) -> None:
    settings = Settings(dead_peer_timeout=dead_peer, connect_timeout=2.0)
    derived = settings.for_lease(lease)
    assert derived.dead_peer_timeout == expected
    assert derived == settings.with_changes(dead_peer_timeout=expected)  # nothing else changes


def test_with_changes_validates_again() -> None:
    settings = Settings()
    changed = settings.with_changes(database_url="postgres://h/db", max_payload_bytes=2048)
    assert (changed.database_url, changed.max_payload_bytes) == ("postgresql://h/db", 2048)
    assert settings.max_payload_bytes == 1024 * 1024  # the original is untouched
    with pytest.raises(ConfigError):
        settings.with_changes(max_payload_bytes=1)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.pool_max_size = 8  # type: ignore[misc]
