"""Admission and rate limiting for client connections (WIRE §1.3). Pure: no I/O, no clock.

``check_access`` runs before the WebSocket upgrade, on the request's headers and
query. ``AccessDecision.reason`` is for the server's logs only: a refused client gets
the bare status code and an empty body, and learns nothing else (not whether its key
was wrong or missing, nor which origins are allowed).

``RateLimiter`` is one token bucket per connection, fed the caller's monotonic clock.
"""

from __future__ import annotations

import enum
import hmac
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AccessDecision:
    """Admit or refuse. ``status`` is 200, 401 or 403; ``reason`` is for logs only and
    must never be sent to the client."""

    allowed: bool
    status: int
    reason: str


_ALLOWED = AccessDecision(True, 200, "ok")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that also works on a plain ``dict``."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return None


def _bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    parts = authorization.split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1].strip() or None


def key_matches(presented: str, api_keys: Collection[str]) -> bool:
    """Whether ``presented`` is one of ``api_keys``, in constant time per key.

    Every configured key is compared (no early exit), so the timing reveals neither
    which key matched nor how much of a key was right. Empty keys never match.
    """
    if not presented:
        return False
    candidate = presented.encode("utf-8")
    matched = False
    for key in api_keys:
        if key and hmac.compare_digest(candidate, key.encode("utf-8")):
            matched = True
    return matched


def normalize_origin(origin: str) -> str:
    """Origins compare case-insensitively and without a trailing slash."""
    return origin.strip().rstrip("/").lower()


def check_access(
    headers: Mapping[str, str],
    query: Mapping[str, str],
    *,
    api_keys: Collection[str],
    allowed_origins: Collection[str],
) -> AccessDecision:
    """Decide whether a connection may be upgraded.

    - Authentication, when ``api_keys`` is non-empty: ``Authorization: Bearer <key>``
      (header name and scheme case-insensitive) or ``?api_key=<key>`` (for browsers,
      which cannot set headers on a WebSocket). Either one matching suffices;
      missing or wrong gives 401.
    - Origin, when ``allowed_origins`` is non-empty: a request that carries an
      ``Origin`` header must match an entry exactly after ``normalize_origin``, or
      the list must contain ``"*"``; otherwise 403. A request without ``Origin`` (a
      non-browser client) passes this check.

    Authentication is checked first. The returned ``reason`` is for logs only: the
    HTTP response to a refused client must carry the status code and nothing else.
    """
    if api_keys:
        presented = [
            token
            for token in (
                _bearer_token(_header(headers, "Authorization")),
                query.get("api_key"),
            )
            if token
        ]
        if not presented:
            return AccessDecision(False, 401, "no API key")
        # Evaluate every presented key so timing does not depend on which one matched.
        results = [key_matches(token, api_keys) for token in presented]
        if not any(results):
            return AccessDecision(False, 401, "wrong API key")

    if allowed_origins:
        origin = _header(headers, "Origin")
        if origin is not None:
            allowed = {normalize_origin(o) for o in allowed_origins}
            if "*" not in allowed and normalize_origin(origin) not in allowed:
                return AccessDecision(False, 403, f"origin not allowed: {origin!r}")

    return _ALLOWED


class RateDecision(enum.Enum):
    """What to do with one incoming message."""

    OK = "ok"
    """Process it."""
    LIMITED = "limited"
    """Drop it and send the client a rate-limit ``error``."""
    CLOSE = "close"
    """Close the connection (the client kept sending while limited)."""


class RateLimiter:
    """Token bucket per connection, with a strike rule for persistent abuse.

    Policy:

    - The bucket holds at most ``burst`` tokens and starts full; it refills at
      ``rate_per_s`` tokens per second. Each message costs one token.
    - A message that finds a token is ``OK``.
    - A message that finds none is a strike. It is ``LIMITED`` unless it is the
      ``strikes_to_close``-th strike within the last ``strike_window_s`` seconds
      (inclusive), which makes it ``CLOSE``. Strikes older than the window are
      forgotten, so a client that backs off recovers fully.
    - ``CLOSE`` is final: every later call answers ``CLOSE``.

    ``now`` is any monotonic clock in seconds; a clock that goes backwards is
    treated as standing still.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        strikes_to_close: int = 3,
        strike_window_s: float = 5.0,
    ) -> None:
        if not rate_per_s > 0:
            raise ValueError("rate_per_s must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        if strikes_to_close < 1:
            raise ValueError("strikes_to_close must be at least 1")
        if not strike_window_s > 0:
            raise ValueError("strike_window_s must be positive")
        self.rate_per_s = float(rate_per_s)
        self.burst = burst
        self.strikes_to_close = strikes_to_close
        self.strike_window_s = float(strike_window_s)
        self._tokens = float(burst)
        self._last: float | None = None
        self._strikes: deque[float] = deque()
        self._closed = False

    @property
    def tokens(self) -> float:
        """Tokens left as of the last ``allow`` call."""
        return self._tokens

    def allow(self, now: float) -> RateDecision:
        """Account for one message arriving at ``now``."""
        if self._closed:
            return RateDecision.CLOSE
        if self._last is not None and now > self._last:
            self._tokens = min(
                float(self.burst), self._tokens + (now - self._last) * self.rate_per_s
            )
        if self._last is None or now > self._last:
            self._last = now

        if self._tokens >= 1.0 - 1e-9:  # tolerate float drift from refills
            self._tokens = max(0.0, self._tokens - 1.0)
            return RateDecision.OK

        horizon = self._last - self.strike_window_s
        while self._strikes and self._strikes[0] < horizon:
            self._strikes.popleft()
        self._strikes.append(self._last)
        if len(self._strikes) >= self.strikes_to_close:
            self._closed = True
            return RateDecision.CLOSE
        return RateDecision.LIMITED
