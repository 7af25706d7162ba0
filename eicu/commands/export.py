"""``eicu export``: write what the store holds before a date to CSV files, for an archive made
before retention drops it (numerics, waveform segments, status events; one file per table)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
from pathlib import Path

from eicu.errors import ConfigError


def _date_us(text: str, option: str) -> int:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(option, f"expected an ISO date or date-time, got {text!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1_000_000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        default=os.environ.get("EICU_DATABASE_URL"),
        help="database URL (default: EICU_DATABASE_URL; PostgreSQL only)",
    )
    parser.add_argument(
        "--before", required=True, help="export data with time before this (ISO, UTC if no offset)"
    )
    parser.add_argument("--after", help="and at or after this (default: everything before)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSV files")


def run(args: argparse.Namespace) -> int:
    if not args.database:
        raise ConfigError("EICU_DATABASE_URL", "set it or pass --database")
    if not args.database.startswith(("postgresql://", "postgres://")):
        raise ConfigError("--database", "export reads a PostgreSQL store (postgresql://...)")
    before_us = _date_us(args.before, "--before")
    after_us = _date_us(args.after, "--after") if args.after else None
    if after_us is not None and after_us >= before_us:
        raise ConfigError("--after", "must be earlier than --before")

    async def export() -> dict[str, int]:
        from eicu.config import StoreSettings
        from eicu.store.pg import PgStore

        store = PgStore(args.database, settings=StoreSettings.from_env(os.environ))
        await store.open()
        try:
            return await store.export_csv(args.out, before_us, after_us)
        finally:
            await store.close()

    for name, rows in asyncio.run(export()).items():
        print(f"{args.out / name}: {rows} rows")
    return 0
