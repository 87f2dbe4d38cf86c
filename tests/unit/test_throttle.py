"""The login throttle on its SQLite store, and the audit's bounds
(docs/security.md, "Throttling" and "Audit")."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloader.auth.audit import FIELD_MAX, capped
from edgeloader.auth.service import address_key, identity_key
from edgeloader.auth.store import DB_FILE, AuditEntry, AuthStore
from edgeloader.auth.throttle import ENTRY_BYTES, Throttle, ThrottlePolicy
from edgeloader.config import AuthLimits
from edgeloader.errors import ConfigError, TooManyAttempts


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AuthStore]:
    s = AuthStore(tmp_path)
    yield s
    s.close()


async def blocked_for(throttle: Throttle, *keys: str, outcome: str = "failed") -> int:
    """The Retry-After a reservation gets, or 0 when it is let through (and
    then settled with ``outcome``)."""
    try:
        ticket = await throttle.reserve(keys)
    except TooManyAttempts as exc:
        return exc.retry_after
    await getattr(ticket, outcome)()
    return 0


async def fail(throttle: Throttle, *keys: str, times: int = 1) -> None:
    for _ in range(times):
        await (await throttle.reserve(keys)).failed()


async def test_backs_off_exponentially_after_five_failures(store: AuthStore) -> None:
    clock = Clock()
    throttle = Throttle(store, clock=clock)
    await fail(throttle, "ip:a", times=4)
    waits = []
    for _ in range(4):
        await fail(throttle, "ip:a")
        wait = await blocked_for(throttle, "ip:a", "user:b")
        waits.append(wait)
        clock.now += wait
    assert waits == [1, 2, 4, 8]
    await (await throttle.reserve(["ip:a"])).succeeded()
    await fail(throttle, "ip:a", times=4)
    assert await blocked_for(throttle, "ip:a") == 0


async def test_caps_the_wait(store: AuthStore) -> None:
    clock = Clock()
    throttle = Throttle(store, ThrottlePolicy(max_wait=60), clock=clock)
    for _ in range(30):
        clock.now += 61
        await fail(throttle, "y")
    assert await blocked_for(throttle, "y") == 60


async def test_attempts_in_flight_count_before_their_outcome(store: AuthStore) -> None:
    """The race: of 60 concurrent wrong guesses, 5 are judged; the others
    wait for those and are then refused."""
    throttle = Throttle(store, clock=Clock())
    judged = 0

    async def guess() -> int:
        nonlocal judged
        try:
            ticket = await throttle.reserve(["ip:a", "user:v"])
        except TooManyAttempts:
            return 429
        judged += 1
        await asyncio.sleep(0)  # the upstream call
        await ticket.failed()
        return 401

    answers = await asyncio.gather(*(guess() for _ in range(60)))
    assert sorted(answers) == [401] * 5 + [429] * 55
    assert judged == 5


async def test_honest_concurrent_clients_wait_instead_of_failing(store: AuthStore) -> None:
    throttle = Throttle(store, clock=Clock())

    async def exchange() -> None:
        ticket = await throttle.reserve(["ip:box", "key:agent"])
        await asyncio.sleep(0)
        await ticket.succeeded()

    await asyncio.gather(*(exchange() for _ in range(20)))


async def test_a_released_attempt_does_not_count(store: AuthStore) -> None:
    throttle = Throttle(store, clock=Clock())
    await fail(throttle, "user:v", times=4)
    for _ in range(10):
        assert await blocked_for(throttle, "user:v", outcome="release") == 0
    await fail(throttle, "user:v")
    assert await blocked_for(throttle, "user:v") > 0


async def test_a_full_table_never_unblocks_and_refuses_new_keys(store: AuthStore) -> None:
    clock = Clock()
    throttle = Throttle(store, ThrottlePolicy(max_entries=10, forget_after=3600), clock=clock)
    await fail(throttle, "user:victim", times=5)
    refused = 0
    for n in range(50):
        refused += await blocked_for(throttle, f"ip:junk-{n}", f"user:junk-{n}") > 0
    assert refused == 50 - 4  # 1 + 4 * 2 entries, then the table is full: new keys wait
    assert await blocked_for(throttle, "user:victim") > 0  # the victim was never pushed out
    assert await blocked_for(throttle, "ip:junk-0", "user:junk-0") == 0  # known keys still count
    # Only expiry frees room: an hour after their last failure, junk goes.
    clock.now += 3601
    assert await blocked_for(throttle, "ip:new", "user:new") == 0


async def test_failures_are_forgotten_after_an_hour(store: AuthStore) -> None:
    clock = Clock()
    throttle = Throttle(store, clock=clock)
    await fail(throttle, "user:v", times=4)
    clock.now += 3601
    await fail(throttle, "user:v", times=4)  # a fresh count: no wait yet
    assert await blocked_for(throttle, "user:v") == 0
    assert store.prune(now=clock.now + 3601) >= 1


async def test_entries_are_fixed_size_and_bounded_by_bytes(tmp_path: Path) -> None:
    """However long the identity, an entry costs the same; a table at its
    limit stays under the byte limit on disk."""
    limit = 256 * 1024
    policy = ThrottlePolicy.from_limits(AuthLimits(throttle_max_bytes=limit))
    store = AuthStore(tmp_path)
    empty = (tmp_path / DB_FILE).stat().st_size
    throttle = Throttle(store, policy, clock=Clock())
    for n in range(policy.max_entries // 2):
        await fail(throttle, f"ip:{n}", "user:" + "x" * 60_000 + str(n))
    with pytest.raises(TooManyAttempts):
        await throttle.reserve(["ip:one more"])
    store.close()
    with sqlite3.connect(tmp_path / DB_FILE) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert db.execute("SELECT COUNT(*) FROM throttle").fetchone()[0] == policy.max_entries
    assert policy.max_entries == limit // ENTRY_BYTES
    assert (tmp_path / DB_FILE).stat().st_size - empty <= limit


def test_identity_keys_ignore_spelling_and_addresses_group_ipv6() -> None:
    assert identity_key(" Admin@Example.ORG ") == identity_key("admin@example.org")
    assert identity_key("ａdmin@example.org") == identity_key("admin@example.org")  # noqa: RUF001
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:1")
    assert address_key("2001:db8::1") != address_key("2001:db8:0:1::1")
    assert address_key("::ffff:127.0.0.2") == address_key("127.0.0.2") == "ip:127.0.0.2"


def entry(n: int, at: float = 1000.0, subject: str = "user:a") -> AuditEntry:
    return AuditEntry.from_row((at, subject, "Admin", "load", "POST /load/m", f"m{n}", "ok", 0, ""))


def test_audit_keeps_under_its_byte_limit_dropping_the_oldest(store: AuthStore) -> None:
    for n in range(400):
        store.add_audit(entry(n, subject="user:" + "y" * 400), max_bytes=64 * 1024)
    assert store.audit_bytes() <= 64 * 1024
    kept = store.audit(limit=1000)
    assert kept[-1].resource == "m399"
    assert kept[0].resource != "m0"
    assert len(kept) < 400


def test_audit_prune_drops_entries_past_retention(store: AuthStore) -> None:
    store.add_audit(entry(1, at=1000.0))
    store.add_audit(entry(2, at=5000.0))
    store.prune(now=6000.0, audit_retention=2000.0)
    assert [e.resource for e in store.audit()] == ["m2"]


def test_audit_fields_are_capped() -> None:
    assert capped("x" * 100) == "x" * 100
    long = capped("x" * 60_000)
    assert len(long) == FIELD_MAX
    assert long.endswith("…")


def test_limits_come_from_the_environment() -> None:
    env = {
        "EDGELOADER_THROTTLE_MAX_BYTES": str(1 << 20),
        "EDGELOADER_AUDIT_RETENTION": "86400",
        "EDGELOADER_AUDIT_MAX_BYTES": str(8 << 20),
    }
    limits = AuthLimits.from_env(env)
    assert (limits.throttle_max_bytes, limits.audit_retention, limits.audit_max_bytes) == (
        1 << 20,
        86400.0,
        8 << 20,
    )
    assert AuthLimits.from_env({}) == AuthLimits()
    with pytest.raises(ConfigError):
        AuthLimits.from_env({"EDGELOADER_AUDIT_MAX_BYTES": "10"})
