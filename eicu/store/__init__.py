"""Storage: PostgreSQL with TimescaleDB when present, plain PostgreSQL otherwise, and SQLite for
the embedded demo, all behind one interface (:class:`eicu.store.base.Store`), which also holds
the alarm tables (:class:`eicu.store.base.AlarmRepository`): one pool and one migration runner
per database."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eicu.errors import ConfigError
from eicu.store.base import AlarmRepository, LatestValue, Store, TrendPoint, WaveformWindow

if TYPE_CHECKING:
    from eicu.config import StoreSettings
    from eicu.metrics import StoreMetrics

__all__ = ["AlarmRepository", "LatestValue", "Store", "TrendPoint", "WaveformWindow", "open_store"]


def open_store(
    url: str, settings: StoreSettings | None = None, metrics: StoreMetrics | None = None
) -> Store:
    """A store for a database URL: ``postgresql://...`` or ``sqlite:///path``. Call ``open()``.
    ``settings`` (TimescaleDB use, retention, ...) and ``metrics`` apply to PostgreSQL."""
    if url.startswith(("postgresql://", "postgres://")):
        from eicu.store.pg import PgStore

        return PgStore(url, settings=settings, metrics=metrics)
    if url.startswith("sqlite:///"):
        from eicu.store.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    raise ConfigError("EICU_DATABASE_URL", "expected postgresql://... or sqlite:///path")
