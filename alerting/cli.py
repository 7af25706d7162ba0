"""``eicu alarms``: what the alarms cost the people who answer them.

``eicu alarms report [--outbox PATH] [--json]`` reads the outbox's audit trail (default:
``EICU_OUTBOX_PATH``) and prints the alarm burden (see :mod:`alerting.report`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eicu.config import Settings
from eicu.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    report = sub.add_parser(
        "report",
        help="alarms per bed per day by kind and priority, share acknowledged, time to acknowledge",
    )
    report.add_argument(
        "--outbox", type=Path, help="the alarm outbox file (default: EICU_OUTBOX_PATH)"
    )
    report.add_argument("--json", action="store_true", help="print JSON")


def _report(args: argparse.Namespace) -> int:
    from alerting.outbox import Outbox
    from alerting.report import burden, format_report

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


def run(args: argparse.Namespace) -> int:
    if args.action == "report":
        return _report(args)
    raise ConfigError("eicu alarms", f"unknown action {args.action!r}")
