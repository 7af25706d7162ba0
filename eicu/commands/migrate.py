"""``eicu migrate``: apply pending schema migrations (``eicu serve`` also does it at start)."""

from __future__ import annotations

import argparse
import asyncio
import os

from eicu.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        default=os.environ.get("EICU_DATABASE_URL"),
        help="database URL (default: EICU_DATABASE_URL)",
    )


def run(args: argparse.Namespace) -> int:
    if not args.database:
        raise ConfigError("EICU_DATABASE_URL", "set it or pass --database")

    async def migrate() -> str:
        from eicu.config import StoreSettings
        from eicu.store import open_store

        store = open_store(args.database, StoreSettings.from_env(os.environ))
        await store.open()  # applies what is pending
        await store.close()
        return store.backend

    print(f"schema up to date ({asyncio.run(migrate())})")
    return 0
