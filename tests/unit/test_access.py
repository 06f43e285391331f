"""Admission checks and the per-connection rate limiter: pure, with a fake clock."""

from __future__ import annotations

import hmac

import pytest

from duplexvoice.orchestrator.access import (
    AccessDecision,
    RateDecision,
    RateLimiter,
    check_access,
    key_matches,
    normalize_origin,
)

pytestmark = pytest.mark.unit

KEYS = ("k-alpha", "k-beta")
ORIGINS = ("https://app.example.com", "http://localhost:8080/")


def decide(
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    *,
    api_keys: tuple[str, ...] = KEYS,
    allowed_origins: tuple[str, ...] = ORIGINS,
) -> AccessDecision:
    return check_access(
        headers or {}, query or {}, api_keys=api_keys, allowed_origins=allowed_origins
    )


# --- authentication ---------------------------------------------------------


def test_open_server_admits_everyone() -> None:
    d = decide({"Origin": "https://evil.example"}, api_keys=(), allowed_origins=())
    assert d == AccessDecision(True, 200, "ok")


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer k-alpha"},
        {"authorization": "bearer k-beta"},
        {"AUTHORIZATION": "BEARER   k-alpha  "},
    ],
)
def test_bearer_header_admits(headers: dict[str, str]) -> None:
    assert decide(headers).allowed


def test_query_key_admits() -> None:
    assert decide(query={"api_key": "k-beta"}).allowed


def test_either_credential_may_be_the_right_one() -> None:
    assert decide({"Authorization": "Bearer nope"}, {"api_key": "k-alpha"}).allowed
    assert decide({"Authorization": "Bearer k-alpha"}, {"api_key": "nope"}).allowed


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({}, {}),
        ({"Authorization": "Bearer "}, {}),
        ({"Authorization": "Basic k-alpha"}, {}),
        ({"Authorization": "k-alpha"}, {}),
        ({}, {"api_key": ""}),
        ({}, {"key": "k-alpha"}),
    ],
)
def test_missing_key_is_401(headers: dict[str, str], query: dict[str, str]) -> None:
    d = decide(headers, query)
    assert (d.allowed, d.status) == (False, 401)


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"Authorization": "Bearer k-alph"}, {}),
        ({"Authorization": "Bearer K-ALPHA"}, {}),
        ({"Authorization": "Bearer k-alpha-extra"}, {}),
        ({}, {"api_key": "k-gamma"}),
        ({"Authorization": "Bearer x"}, {"api_key": "y"}),
    ],
)
def test_wrong_key_is_401(headers: dict[str, str], query: dict[str, str]) -> None:
    d = decide(headers, query)
    assert (d.allowed, d.status) == (False, 401)


def test_empty_configured_key_never_matches() -> None:
    assert not key_matches("", ("",))
    assert not key_matches("", ("a",))
    assert key_matches("é-key", ("é-key",))  # non-ASCII keys do not crash


def test_keys_are_compared_with_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert key_matches("k-alpha", KEYS)
    # No early exit: every configured key was compared.
    assert len(calls) == len(KEYS)


def test_auth_is_checked_before_origin() -> None:
    d = decide({"Origin": "https://evil.example"})
    assert d.status == 401


# --- origin -------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example.com",
        "HTTPS://App.Example.com",
        "https://app.example.com/",
        "http://localhost:8080",
    ],
)
def test_allowed_origin(origin: str) -> None:
    assert decide({"Origin": origin}, {"api_key": "k-alpha"}).allowed


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://app.example.com",  # scheme differs
        "https://app.example.com:8443",  # port differs
        "https://sub.app.example.com",
        "null",
        "",
    ],
)
def test_foreign_origin_is_403(origin: str) -> None:
    d = decide({"Origin": origin}, {"api_key": "k-alpha"})
    assert (d.allowed, d.status) == (False, 403)


def test_no_origin_header_is_allowed() -> None:
    assert decide({"Authorization": "Bearer k-alpha"}).allowed


def test_origin_header_name_is_case_insensitive() -> None:
    d = decide({"origin": "https://evil.example"}, api_keys=())
    assert d.status == 403


def test_wildcard_allows_any_origin() -> None:
    d = decide({"Origin": "https://anything.example"}, api_keys=(), allowed_origins=("*",))
    assert d.allowed


def test_normalize_origin() -> None:
    assert normalize_origin(" HTTP://Host:1/ ") == "http://host:1"


# --- rate limiter ---------------------------------------------------------------


def run(limiter: RateLimiter, times: list[float]) -> list[RateDecision]:
    return [limiter.allow(t) for t in times]


OK, LIMITED, CLOSE = RateDecision.OK, RateDecision.LIMITED, RateDecision.CLOSE


def test_burst_then_limited_then_refill() -> None:
    rl = RateLimiter(rate_per_s=10, burst=5, strikes_to_close=10)
    assert run(rl, [0.0] * 5) == [OK] * 5
    assert rl.allow(0.0) is LIMITED
    # 0.1 s buys exactly one token at 10/s.
    assert run(rl, [0.1, 0.1]) == [OK, LIMITED]
    # A long pause refills to burst, never beyond.
    assert run(rl, [100.0] * 6) == [OK] * 5 + [LIMITED]


def test_steady_rate_at_the_limit_is_never_limited() -> None:
    rl = RateLimiter(rate_per_s=50, burst=1, strikes_to_close=1)
    assert all(rl.allow(i * 0.02) is OK for i in range(1000))


def test_sustained_abuse_leads_to_close_and_close_is_final() -> None:
    rl = RateLimiter(rate_per_s=1, burst=2, strikes_to_close=3, strike_window_s=5)
    # A flood at 100 msg/s.
    decisions = run(rl, [i * 0.01 for i in range(10)])
    assert decisions == [OK, OK, LIMITED, LIMITED, CLOSE] + [CLOSE] * 5
    # Even after a long quiet time, a closed limiter stays closed.
    assert rl.allow(1000.0) is CLOSE


def test_strikes_spread_wider_than_the_window_do_not_close() -> None:
    rl = RateLimiter(rate_per_s=0.1, burst=1, strikes_to_close=3, strike_window_s=5)
    assert rl.allow(0.0) is OK
    # One over-limit message every 3 s: at most two strikes in any 5 s window.
    assert run(rl, [3.0, 6.0, 9.0]) == [LIMITED, LIMITED, LIMITED]
    assert rl.allow(10.0) is OK  # tokens refilled (0.1/s x 10 s)


def test_third_strike_at_the_window_edge_closes() -> None:
    rl = RateLimiter(rate_per_s=0.01, burst=1, strikes_to_close=3, strike_window_s=5)
    assert rl.allow(0.0) is OK
    assert run(rl, [0.0, 2.5, 5.0]) == [LIMITED, LIMITED, CLOSE]


def test_client_that_backs_off_recovers() -> None:
    rl = RateLimiter(rate_per_s=5, burst=5, strikes_to_close=3, strike_window_s=5)
    assert run(rl, [0.0] * 7) == [OK] * 5 + [LIMITED, LIMITED]  # two strikes
    # It backs off for longer than the window: strikes forgotten, bucket full.
    assert run(rl, [6.0] * 5) == [OK] * 5
    # Two more strikes do not close: the old ones no longer count.
    assert run(rl, [6.0, 6.0]) == [LIMITED, LIMITED]
    # Then it keeps to the rate and is never limited again.
    assert all(rl.allow(20.0 + i * 0.2) is OK for i in range(100))


def test_clock_going_backwards_does_not_mint_tokens() -> None:
    rl = RateLimiter(rate_per_s=1, burst=1, strikes_to_close=99)
    assert rl.allow(10.0) is OK
    assert rl.allow(5.0) is LIMITED
    assert rl.allow(10.5) is LIMITED
    assert rl.allow(11.0) is OK


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate_per_s": 0, "burst": 1},
        {"rate_per_s": -1, "burst": 1},
        {"rate_per_s": float("nan"), "burst": 1},
        {"rate_per_s": 1, "burst": 0},
        {"rate_per_s": 1, "burst": 1, "strikes_to_close": 0},
        {"rate_per_s": 1, "burst": 1, "strike_window_s": 0},
    ],
)
def test_limiter_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RateLimiter(**kwargs)  # type: ignore[arg-type]
