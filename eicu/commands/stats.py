"""``eicu stats``: what the store holds per bed, in the simulator's summary shape."""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from eicu.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        default=os.environ.get("EICU_DATABASE_URL"),
        help="database URL (default: EICU_DATABASE_URL)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


async def _stats(url: str) -> tuple[dict[str, dict[str, dict[str, int]]], dict[str, int], str]:
    from eicu.config import StoreSettings
    from eicu.store import open_store

    store = open_store(url, StoreSettings.from_env(os.environ))
    await store.open()
    try:
        return await store.stats(), await store.dead_letter_counts(), store.backend
    finally:
        await store.close()


def run(args: argparse.Namespace) -> int:
    if not args.database:
        raise ConfigError("EICU_DATABASE_URL", "set it or pass --database")
    stats, rejects, backend = asyncio.run(_stats(args.database))
    if args.json:
        print(json.dumps(stats, sort_keys=True))
        return 0
    beds = stats["beds"]
    print(f"{backend}: {len(beds)} beds")
    for name, c in beds.items():
        print(f"  {name:<24} {c['messages']:>10} messages {c['samples']:>14} samples")
    for reason, n in sorted(rejects.items()):
        print(f"  rejected ({reason}): {n}")
    return 0
