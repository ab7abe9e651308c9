"""Rate limiting shared by the services: a token bucket."""

from __future__ import annotations


class TokenBucket:
    """A token bucket; `rate` tokens per second up to `burst`. rate <= 0 means unlimited."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.stamp = now

    def take(self, now: float, amount: float = 1.0) -> float:
        """Take `amount`; return 0 on success or the seconds until it would succeed."""
        if self.rate <= 0:
            return 0.0
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= amount:
            self.tokens -= amount
            return 0.0
        return (amount - self.tokens) / self.rate
