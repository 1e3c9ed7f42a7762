"""The Coordinator against real Redis servers of its own (stopped, paused, made read-only,
password-protected, TLS) and the real PostgreSQL: each role's two implementations, the
switch between them, and exclusivity across the switch."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

import pgq
from pgq.coordination import Coordinator
from tests.conftest import Databases, url_for
from tests.support.pgcluster import free_port
from tests.support.redisserver import RedisServer
from tests.support.waiting import wait_until

TTL = 2.0
Make = Callable[..., Coordinator]


@pytest.fixture
def server() -> Iterator[RedisServer]:
    s = RedisServer().start()
    yield s
    if s.process is not None and s.process.poll() is None:
        s.process.send_signal(signal.SIGCONT)
    s.destroy()


@pytest.fixture
def make(db_url: str) -> Iterator[Make]:
    made: list[Coordinator] = []

    def factory(redis_url: str | None, prefix: str = "pgqt:", **kwargs: float) -> Coordinator:
        c = Coordinator(pgq.Settings(database_url=db_url, redis_url=redis_url,
                                     redis_prefix=prefix), check_interval=0.05, **kwargs)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.close()


def token() -> str:
    return uuid.uuid4().hex


def dead_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


# --- modes and switching -------------------------------------------------------------------


def test_status_without_redis_is_postgres_only(make: Make) -> None:
    c = make(None)
    assert c.status() == {"wakeups": "postgres+postgres-listen+polling", "locks": "postgres",
                          "leadership": "postgres", "redis": "not configured"}
    assert c.wake_in_transaction()


def test_switches_to_postgres_when_redis_dies_and_back_when_it_returns(
        make: Make, server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "pgq.coordination")
    c = make(server.url)
    assert c.status()["locks"] == "redis"
    assert c.lock_acquire("k1", token(), "w", TTL)
    assert server.client().exists(c.prefix + "lock:k1")

    server.stop()
    assert not c.lock_acquire("k2", token(), "w", TTL), "inside the grace period: no new lock"
    assert c.status() == {"wakeups": "postgres+postgres-listen+polling", "locks": "postgres",
                          "leadership": "postgres", "redis": "down"}
    assert c.wake_in_transaction()
    assert sum("falling back to PostgreSQL" in r.message for r in caplog.records) == 1

    server.start()
    wait_until(lambda: c.status()["redis"] == "up", 5, "the switch back to Redis")
    assert not c.wake_in_transaction()
    assert sum("is back" in r.message for r in caplog.records) == 1


def test_read_only_replica_is_treated_as_down(make: Make, server: RedisServer) -> None:
    primary = RedisServer().start()
    try:
        server.client().replicaof("127.0.0.1", primary.port)
        c = make(server.url)
        assert not c.lock_acquire("k", token(), "w", TTL)  # READONLY, then the grace period
        # A replica answers PING; the health check writes, so it stays down.
        c._last_check = 0.0  # run the health check now
        assert c.status()["redis"] == "down"
        server.client().replicaof("NO", "ONE")
        wait_until(lambda: c.status()["redis"] == "up", 5, "Redis writable again")
    finally:
        primary.destroy()


def test_a_hung_redis_times_out_and_falls_back(make: Make, server: RedisServer) -> None:
    c = make(server.url)
    assert c.status()["redis"] == "up"
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    started = time.monotonic()
    assert c.lead("role", "h1", TTL) is None  # timed out, then the grace period
    assert time.monotonic() - started < 5, "a hung Redis must not hang the caller"
    assert c.status()["redis"] == "down"
    server.process.send_signal(signal.SIGCONT)
    wait_until(lambda: c.status()["redis"] == "up", 5, "Redis answering again")


# --- run-time locks ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["redis", "postgres"])
def test_lock_semantics(make: Make, server: RedisServer, backend: str) -> None:
    url = server.url if backend == "redis" else None
    a, b = make(url), make(url)
    ta, tb = token(), token()
    assert a.lock_acquire("tenant:7", ta, "wa", TTL)
    assert not b.lock_acquire("tenant:7", tb, "wb", TTL)
    assert b.lock_acquire("tenant:8", tb, "wb", TTL), "other keys are independent"
    assert a.lock_renew("tenant:7", ta, "wa", TTL)
    assert not b.lock_renew("tenant:7", tb, "wb", TTL), "renewing someone else's lock fails"
    b.lock_release("tenant:7", tb)  # compare-and-delete: not b's, nothing happens
    assert not b.lock_acquire("tenant:7", tb, "wb", TTL)
    a.lock_release("tenant:7", ta)
    assert b.lock_acquire("tenant:7", tb, "wb", TTL)
    held_in_redis = bool(server.client().exists(a.prefix + "lock:tenant:7"))
    assert held_in_redis == (backend == "redis")


@pytest.mark.parametrize("backend", ["redis", "postgres"])
def test_a_lock_whose_holder_died_expires(make: Make, server: RedisServer, backend: str) -> None:
    url = server.url if backend == "redis" else None
    a, b = make(url), make(url)
    assert a.lock_acquire("k", token(), "wa", 0.5)
    assert not b.lock_acquire("k", token(), "wb", 0.5)
    wait_until(lambda: b.lock_acquire("k", token(), "wb", 0.5), 5, "the dead holder's expiry")


def test_lock_survives_a_redis_outage_and_stays_exclusive(make: Make, server: RedisServer) -> None:
    holder, other = make(server.url), make(server.url)
    th = token()
    assert holder.lock_acquire("k", th, "wa", TTL)
    server.stop()
    # The holder moves its lock into PostgreSQL at its next renewal...
    assert holder.lock_renew("k", th, "wa", TTL)
    # ...and the other process, which cannot see Redis, does not take it, now or later.
    assert not other.lock_acquire("k", token(), "wb", TTL)
    # (the holder keeps renewing, as a worker's heartbeat does)
    wait_until(lambda: holder.lock_renew("k", th, "wa", TTL) and not other._in_grace(TTL),
               TTL + 1, "the end of the grace period")
    assert not other.lock_acquire("k", token(), "wb", TTL), "held in PostgreSQL now"
    # Redis returns: a Redis-side acquisition honours the live PostgreSQL hold.
    server.start()
    wait_until(lambda: other.status()["redis"] == "up", 5, "Redis back")
    assert not other.lock_acquire("k", token(), "wb", TTL)
    holder.lock_release("k", th)
    assert other.lock_acquire("k", token(), "wb", TTL)


def test_partial_partition_the_redis_holder_gives_way(make: Make, server: RedisServer) -> None:
    """One process sees Redis, another cannot: after the grace period the second takes
    the lock in PostgreSQL, and the first learns at its next renewal that it lost it."""
    seer, blind = make(server.url), make(dead_url())
    ts = token()
    assert seer.lock_acquire("k", ts, "wa", TTL)
    assert not blind.lock_acquire("k", token(), "wb", TTL)  # finds Redis down: grace
    tb = token()
    wait_until(lambda: blind.lock_acquire("k", tb, "wb", TTL), TTL + 2, "the fallback lock")
    assert not seer.lock_renew("k", ts, "wa", TTL)
    assert not server.client().exists(seer.prefix + "lock:k"), "the Redis hold was released"


# --- leadership ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["redis", "postgres"])
def test_leadership_terms(make: Make, server: RedisServer, backend: str) -> None:
    url = server.url if backend == "redis" else None
    a, b = make(url), make(url)
    term = a.lead("cron", "a", TTL)
    assert term is not None
    assert a.lead("cron", "a", TTL) == term, "renewal keeps the term"
    assert b.lead("cron", "b", TTL) is None
    assert b.lead("other", "b", TTL) is not None, "roles are independent"
    a.resign("cron", "a")
    term_b = b.lead("cron", "b", TTL)
    assert term_b is not None and term_b > term, "a new leadership gets a larger term"


def test_leadership_lapses_and_the_next_term_is_larger(make: Make, server: RedisServer) -> None:
    a, b = make(server.url), make(server.url)
    term = a.lead("cron", "a", 0.3)
    assert term is not None
    term_b = wait_until(lambda: b.lead("cron", "b", 0.3), 5, "a's lease to lapse")
    assert term_b > term
    assert a.lead("cron", "a", 0.3) is None, "the lapsed leader does not get it back"


def test_leadership_moves_to_postgres_and_back(make: Make, server: RedisServer) -> None:
    a, b = make(server.url), make(server.url)
    t1 = a.lead("cron", "a", TTL)
    assert t1 is not None
    server.stop()
    t2 = a.lead("cron", "a", TTL)
    assert t2 is not None and t2 > t1, "migrated into pgq_leaders with a new term"
    assert a.lead("cron", "a", TTL) == t2, "and renewed there during the grace period"
    assert b.lead("cron", "b", TTL) is None
    wait_until(lambda: a.lead("cron", "a", TTL) == t2 and not b._in_grace(TTL), TTL + 1,
               "the end of the grace period, a renewing")
    assert b.lead("cron", "b", TTL) is None, "a holds the PostgreSQL row"
    server.start()
    wait_until(lambda: a.status()["redis"] == "up" and b.status()["redis"] == "up", 5, "Redis")
    assert b.lead("cron", "b", TTL) is None, "b honours a's live PostgreSQL leadership"
    t3 = a.lead("cron", "a", TTL)
    assert t3 is not None and t3 > t2, "a moves back into Redis"
    assert server.client().get(a.prefix + "leader:cron") == "a"
    assert b.lead("cron", "b", TTL) is None


def test_two_databases_sharing_redis_and_prefix_do_not_share_locks(
        make: Make, server: RedisServer, databases: Databases, migrated_template: str) -> None:
    other_db = url_for(databases.create(template=migrated_template))
    a = make(server.url)
    b = Coordinator(pgq.Settings(database_url=other_db, redis_url=server.url,
                                 redis_prefix="pgqt:"))
    try:
        assert a.prefix != b.prefix and a.prefix.startswith("pgqt:")
        assert a.lock_acquire("same-key", token(), "wa", TTL)
        assert b.lock_acquire("same-key", token(), "wb", TTL)
        assert a.lead("cron", "a", TTL) is not None and b.lead("cron", "b", TTL) is not None
        assert make(server.url).prefix == a.prefix, "stable for one database"
    finally:
        b.close()


# --- wake-ups ------------------------------------------------------------------------------


def test_publishes_are_coalesced(make: Make, server: RedisServer) -> None:
    c = make(server.url, coalesce_seconds=0.05)
    pubsub = server.client().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(c.prefix + "wakeup:default")
    wait_until(lambda: pubsub.get_message(timeout=0.01) is None and pubsub.subscribed, 5)
    for _ in range(1000):
        c.publish(["default"])
    messages = []
    while (m := pubsub.get_message(timeout=0.5)) is not None or not messages:
        if m is not None:
            messages.append(m)
    assert 1 <= len(messages) <= 20, f"{len(messages)} publishes for a burst of 1000"
    pubsub.close()


# --- URLs: password, ACL user, database number, prefix, TLS -----------------------------


def test_acl_user_database_number_and_prefix(make: Make, server: RedisServer,
                                             caplog: pytest.LogCaptureFixture) -> None:
    admin = server.client()
    admin.acl_setuser("pgqapp", enabled=True, passwords=["+s3cret-pw"],
                      keys=["appb:*"], channels=["appb:*"], commands=["+@all"])
    admin.config_set("requirepass", "admin-pw")
    url = f"redis://pgqapp:s3cret-pw@127.0.0.1:{server.port}/3"
    c = make(url, prefix="appb:")
    assert c.lock_acquire("k", token(), "w", TTL)
    as_app = redis.Redis(port=server.port, username="pgqapp", password="s3cret-pw", db=3)
    assert c.prefix.startswith("appb:")
    assert as_app.exists(c.prefix + "lock:k")
    assert not redis.Redis(port=server.port, username="pgqapp", password="s3cret-pw",
                           db=0).exists(c.prefix + "lock:k")

    caplog.set_level(logging.WARNING, "pgq.coordination")
    wrong = make(f"redis://pgqapp:wrong-pw@127.0.0.1:{server.port}/3", prefix="appb:")
    assert wrong.status()["redis"] == "down"  # found out at first use
    assert not wrong.lock_acquire("k2", token(), "w", TTL)
    assert "falling back" in caplog.text
    assert "wrong-pw" not in caplog.text and "s3cret" not in caplog.text


def test_tls_redis(make: Make, tmp_path: Path) -> None:
    ca = _self_signed(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(tmp_path / "srv.crt"), "--tls-key-file", str(tmp_path / "srv.key"),
         "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"
        client = redis.Redis.from_url(url)
        wait_until(lambda: _pings(client), 10, "the TLS redis-server")
        c = make(url)
        assert c.lock_acquire("k", token(), "w", TTL)
        assert client.exists(c.prefix + "lock:k")
        plain = make(f"redis://127.0.0.1:{port}/0")  # a TLS port does not speak plain text
        assert not plain.lock_acquire("k2", token(), "w", TTL)
        assert plain.status()["redis"] == "down"
    finally:
        proc.kill()
        proc.wait()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _self_signed(d: Path) -> Path:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "1", "-subj", "/CN=pgq-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "srv.crt", "-days", "1", "-extfile", "ext")
    return d / "ca.crt"
