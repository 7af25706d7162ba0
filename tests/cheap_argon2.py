"""An argon2id hasher with the smallest parameters, for tests' users files (a real one takes
tens of milliseconds and 64 MiB per hash)."""

from __future__ import annotations

from argon2 import PasswordHasher


def cheap_hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
