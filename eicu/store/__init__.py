"""Storage: PostgreSQL with TimescaleDB when present, plain PostgreSQL otherwise, and SQLite for
the embedded demo, all behind one interface (:class:`eicu.store.base.Store`)."""

from __future__ import annotations

from eicu.errors import ConfigError
from eicu.store.base import LatestValue, Store, TrendPoint, WaveformWindow

__all__ = ["LatestValue", "Store", "TrendPoint", "WaveformWindow", "open_store"]


def open_store(url: str) -> Store:
    """A store for a database URL: ``postgresql://...`` or ``sqlite:///path``. Call ``open()``."""
    if url.startswith(("postgresql://", "postgres://")):
        from eicu.store.pg import PgStore

        return PgStore(url)
    if url.startswith("sqlite:///"):
        from eicu.store.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    raise ConfigError("EICU_DATABASE_URL", "expected postgresql://... or sqlite:///path")
