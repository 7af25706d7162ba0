"""The ``eicu`` command: the composition root.

This is the one module in :mod:`eicu` that may import the service packages (ingest,
simulators, alerting, dashboards). Each subcommand lives in a module that provides
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when their
subcommand runs, so ``eicu --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from eicu import __version__
from eicu.errors import EicuError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("eicu.commands.demo", "run everything on this machine with simulated beds"),
    "serve": ("eicu.commands.serve", "run the production engine against a broker and a database"),
    "worker": (
        "eicu.commands.worker",
        "run one engine of a hub: share the bus's partitions with the other workers",
    ),
    "dashboard": (
        "eicu.commands.dashboard",
        "run the dashboard on its own: the workers' bed state from the bus, history from the store",
    ),
    "site": (
        "eicu.commands.site",
        "run a remote ICU's node: alarms judged and paged locally, everything forwarded to the hub",
    ),
    "site-feed": (
        "eicu.commands.site_feed",
        "store what remote sites forward to the hub (their sourced streams), exactly once",
    ),
    "bus-config": (
        "eicu.commands.bus_config",
        "print the configuration of one node of the hub's NATS cluster",
    ),
    "simulate": ("simulators.cli", "publish simulated or replayed bedside streams over MQTT"),
    "hl7": ("eicu.commands.hl7", "listen for HL7 v2 (IHE PCD-01) observations over MLLP"),
    "users": ("dashboards.cli", "add or list the dashboard's users"),
    "alarms": (
        "eicu.commands.alarms",
        "alarm delivery as its own process; alarm burden; replay stored data under a policy",
    ),
    "cart": (
        "eicu.commands.cart",
        "run a bedside video cart: answer the command center's calls for one bed",
    ),
    "stats": ("eicu.commands.stats", "print what the store holds per bed"),
    "migrate": ("eicu.commands.migrate", "apply pending schema migrations to the database"),
    "export": ("eicu.commands.export", "write stored data before a date to CSV files (archive)"),
    "broker-auth": (
        "eicu.commands.broker_auth",
        "write Mosquitto password and ACL files: each gateway publishes to its own site only",
    ),
    "score": ("eicu.scores.cli", "compute NEWS2, MEWS or qSOFA from JSON lines"),
    "analyze": ("eicu.signal.cli_analyze", "detect beats and rhythms in a WFDB record"),
    "verify-alarm": (
        "eicu.signal.cli_verify",
        "decide whether a recorded arrhythmia alarm is true",
    ),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eicu", description="eicu: real-time tele-ICU monitoring and alerting engine"
    )
    parser.add_argument("--version", action="version", version=f"eicu {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if only is None or only == name:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in args_list if a in COMMANDS), None)
    parser = build_parser(only=chosen or "")
    args = parser.parse_args(args_list)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except EicuError as exc:
        print(f"eicu {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
