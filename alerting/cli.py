"""``eicu alarms``: what the alarms cost the people who answer them.

``eicu alarms report [--outbox PATH] [--json]`` reads the outbox's audit trail (default:
``EICU_OUTBOX_PATH``) and prints the alarm burden (see :mod:`eicu.alarms.report`).

``eicu alarms replay --database URL --from T1 --to T2 --policy FILE [--json]`` replays the
numerics stored between T1 and T2 under the policy and, for comparison, under the default policy
(see :mod:`alerting.replay`). Times are ISO 8601 (UTC unless they say otherwise) or seconds since
the epoch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eicu.config import Settings
from eicu.errors import ConfigError

if TYPE_CHECKING:
    from alerting.replay import AlarmLoad


def add_arguments(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any]:
    """The actions above; returns their sub-parsers for ``eicu alarms deliver`` (a command of
    its own, eicu.commands.alarms)."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    report = sub.add_parser(
        "report",
        help="alarms per bed per day by kind and priority, share acknowledged, time to acknowledge",
    )
    report.add_argument(
        "--outbox", type=Path, help="the alarm outbox file (default: EICU_OUTBOX_PATH)"
    )
    report.add_argument("--json", action="store_true", help="print JSON")
    replay = sub.add_parser(
        "replay",
        help="replay stored numerics under a policy and compare the alarm load with the default",
    )
    replay.add_argument(
        "--database",
        default=os.environ.get("EICU_DATABASE_URL"),
        help="database URL (default: EICU_DATABASE_URL)",
    )
    replay.add_argument("--from", dest="start", required=True, help="window start (ISO 8601)")
    replay.add_argument("--to", dest="end", required=True, help="window end (ISO 8601)")
    replay.add_argument("--policy", type=Path, required=True, help="the alarm policy file (JSON)")
    replay.add_argument("--json", action="store_true", help="print JSON")
    return sub


def parse_time_us(text: str, option: str) -> int:
    """ISO 8601 (naive times are UTC) or seconds since the epoch, as microseconds."""
    try:
        return int(float(text) * 1e6)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(option, f"expected ISO 8601 or epoch seconds, got {text!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1e6)


def _report(args: argparse.Namespace) -> int:
    from alerting.outbox import Outbox
    from eicu.alarms.report import burden, format_report

    path: Path = args.outbox or Settings.from_env().alerting.outbox_path
    if not path.is_file():
        raise ConfigError("--outbox", f"no such file: {path}")
    with Outbox(path) as outbox:
        report = burden(stored.event for stored in outbox.events())
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=True))
    else:
        print(format_report(report))
    return 0


async def _replay_both(
    url: str, policy_path: Path, start_us: int, end_us: int
) -> tuple[AlarmLoad, AlarmLoad]:
    from alerting.replay import replay_store
    from eicu.alarms.policy import load_policy
    from eicu.store import open_store

    policy, default = load_policy(policy_path), load_policy()
    store = open_store(url)
    await store.open()
    try:
        load, baseline = await replay_store(store, [policy, default], start_us, end_us)
    finally:
        await store.close()
    return load, baseline


def _replay(args: argparse.Namespace) -> int:
    from alerting.replay import format_comparison

    if not args.database:
        raise ConfigError("EICU_DATABASE_URL", "set it or pass --database")
    if not args.policy.is_file():
        raise ConfigError("--policy", f"no such file: {args.policy}")
    start_us, end_us = parse_time_us(args.start, "--from"), parse_time_us(args.end, "--to")
    if end_us <= start_us:
        raise ConfigError("--to", "must be after --from")
    load, default = asyncio.run(_replay_both(args.database, args.policy, start_us, end_us))
    if args.json:
        doc = {
            "from_us": start_us,
            "to_us": end_us,
            "policy": load.to_dict(),
            "default": default.to_dict(),
        }
        print(json.dumps(doc, sort_keys=True))
    else:
        print(format_comparison(load, default))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "report":
        return _report(args)
    if args.action == "replay":
        return _replay(args)
    raise ConfigError("eicu alarms", f"unknown action {args.action!r}")
