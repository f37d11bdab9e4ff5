"""The connection, rate and failed-login limits, sans-IO with a hand-moved clock."""

from __future__ import annotations

import pytest

from ringex.limits import ConnectionLimit, FailedLoginLimit, KeyedRateLimit, RateLimit, address_key


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        (("192.0.2.7", 5000), "192.0.2.7"),
        (("2001:db8:1:2:3:4:5:6", 5000, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:ffff::1", 6000, 0, 0), "2001:db8:1:2::/64"),
        (("::ffff:192.0.2.7", 1, 0, 0), "192.0.2.7"),
        (("fe80::1%eth0", 1, 0, 2), "fe80::/64"),
        ("", "local"),
        (None, "local"),
        (("not an address", 1), "local"),
    ],
)
def test_addresses_are_keyed_by_ipv4_address_or_ipv6_slash_64(peer, key):
    assert address_key(peer) == key


def test_connections_are_refused_past_the_total_and_the_per_address_limits_and_released():
    limit = ConnectionLimit(max_total=3, max_per_address=2)
    assert limit.admit("a") is None and limit.admit("a") is None
    assert "from your address" in limit.admit("a")
    assert limit.admit("b") is None
    assert "server's limit is 3" in limit.admit("c")
    limit.release("a")
    assert limit.admit("c") is None
    assert (limit.total, limit.held_by("a"), limit.refused) == (3, 1, 2)
    for key in ("a", "b", "c"):
        limit.release(key)
    assert limit.total == 0 and limit.held_by("a") == 0
    with pytest.raises(RuntimeError, match="never admitted"):
        limit.release("a")


def test_a_rate_allows_its_burst_then_one_event_per_interval():
    rate = RateLimit(rate_per_s=10, burst=5)
    assert [rate.try_take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert not rate.try_take(0.05)
    assert rate.try_take(0.1) and not rate.try_take(0.1)
    assert [rate.try_take(10.0) for _ in range(6)] == [True] * 5 + [False]  # idle: full again


def test_failed_logins_are_limited_per_address_per_account_and_in_total():
    limit = FailedLoginLimit(per_account=3, per_address=2, total=5, window_s=60)
    now = 100.0
    assert limit.try_attempt(1, "a", now) is None and limit.try_attempt(2, "a", now) is None
    refused = limit.try_attempt(3, "a", now)
    assert "from your address" in refused and "at most 2 per 60 s" in refused and "try again in 30 s" in refused
    assert limit.try_attempt(1, "b", now) is None and limit.try_attempt(1, "c", now) is None
    assert "for this account" in limit.try_attempt(1, "d", now)
    assert limit.try_attempt(4, "d", now) is None
    assert "on this server" in limit.try_attempt(5, "e", now)
    # the window refills one attempt per window / limit
    assert "on this server" in limit.try_attempt(5, "e", now + 11)
    assert limit.try_attempt(5, "e", now + 12) is None


def test_a_successful_check_is_refunded_so_only_failures_use_the_budget():
    limit = FailedLoginLimit(per_account=1, per_address=1, total=1, window_s=60)
    for _ in range(100):
        assert limit.try_attempt(7, "a", 0.0) is None
        limit.attempt_succeeded(7, "a")
    assert limit.try_attempt(7, "a", 0.0) is None  # one failure: the budget is used up
    assert limit.try_attempt(7, "a", 1.0) is not None


def test_the_tables_stay_bounded_whatever_an_attacker_cycles_through():
    limit = FailedLoginLimit(per_account=10, per_address=10, total=10**9, window_s=60, max_keys=1000)
    for i in range(20_000):
        assert limit.try_attempt(i, f"10.0.{i // 256 % 256}.{i % 256}", 0.0) is None
    accounts, addresses = limit.tracked()
    assert accounts <= 1000 and addresses <= 1000
    # the most recent entries are the ones kept
    assert "for this account" in "".join(limit.try_attempt(19_999, "x", 0.0) or "" for _ in range(10))


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "3"])
def test_limits_refuse_nonsense_bounds(bad):
    with pytest.raises(ValueError):
        RateLimit(bad, 1)
    with pytest.raises(ValueError):
        FailedLoginLimit(bad, 1, 1, 60)


def test_a_keyed_rate_counts_each_key_apart():
    rate = KeyedRateLimit.per_second(rate_per_s=2, burst=3)
    assert [rate.try_take("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert rate.try_take("b", 0.0)
    assert not rate.try_take("a", 0.4) and rate.try_take("a", 0.5)
