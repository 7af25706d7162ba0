"""One retry policy for every reconnect and retry: jittered exponential backoff.

Delays grow from ``min_s`` by ``factor`` up to ``max_s``; each is drawn from
[delay x (1 - ``jitter``), delay] so that many processes that lost the same server do not retry
in step. Used by the ingest's broker connection and store writer, the alarm channels, the
escalation's delivery retries, the alarm copier and the video cart.

A :class:`Backoff` keeps its own count (:meth:`next_s`, :meth:`reset`) for a loop that retries
one thing; :meth:`delay_s` gives the delay of a numbered attempt for a caller that keeps the
count elsewhere (the outbox, for a notification). :attr:`stats` counts what it handed out, for
metrics and logs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class BackoffStats:
    """What a backoff handed out since it was made."""

    retries: int = 0  # delays handed out
    resets: int = 0  # successes that reset the count after at least one retry
    waited_s: float = 0.0  # the sum of the delays handed out
    longest_s: float = 0.0  # the longest delay handed out


@dataclass(slots=True)
class Backoff:
    """Jittered exponential backoff: ``min_s``, ``min_s`` x ``factor``, ... up to ``max_s``."""

    min_s: float = 0.5
    max_s: float = 10.0
    factor: float = 2.0
    jitter: float = 0.5  # each delay is shortened by up to this share, at random
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempts: int = field(default=0, init=False)  # retries since the last reset
    stats: BackoffStats = field(default_factory=BackoffStats, init=False)

    def __post_init__(self) -> None:
        if not (0 < self.min_s <= self.max_s):
            raise ValueError(f"need 0 < min_s <= max_s, got {self.min_s}, {self.max_s}")
        if self.factor < 1 or not (0 <= self.jitter < 1):
            raise ValueError(f"need factor >= 1 and 0 <= jitter < 1, got {self}")

    def nominal_s(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (from 1), before jitter."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt}")
        # min_s x factor ** (attempt - 1), without overflowing for a large attempt count.
        delay = self.min_s
        for _ in range(attempt - 1):
            if delay >= self.max_s:
                break
            delay *= self.factor
        return min(delay, self.max_s)

    def delay_s(self, attempt: int) -> float:
        """The jittered delay before retry number ``attempt`` (from 1); counted in ``stats``."""
        delay = self.nominal_s(attempt) * self.rng.uniform(1.0 - self.jitter, 1.0)
        s = self.stats
        s.retries += 1
        s.waited_s += delay
        s.longest_s = max(s.longest_s, delay)
        return delay

    def next_s(self) -> float:
        """The delay before the next retry of this backoff's own count."""
        self.attempts += 1
        return self.delay_s(self.attempts)

    def reset(self) -> None:
        """The thing retried worked: the next failure starts again from ``min_s``."""
        if self.attempts:
            self.stats.resets += 1
        self.attempts = 0
