"""``eicu broker-auth``: Mosquitto password and ACL files, one account per gateway and engine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eicu.brokerauth import BrokerAuth


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, required=True, help="folder of the account files")
    sub = parser.add_subparsers(dest="action", required=True)
    gw = sub.add_parser("add-gateway", help="a gateway that may publish only to its own site")
    gw.add_argument("site")
    gw.add_argument("name")
    eng = sub.add_parser("add-engine", help="an engine that reads every site and writes alarms")
    eng.add_argument("name")
    sub.add_parser("config", help="print the Mosquitto configuration lines for these files")


def run(args: argparse.Namespace) -> int:
    auth = BrokerAuth(args.dir)
    if args.action == "config":
        print("\n".join(auth.mosquitto_config()))
        return 0
    if args.action == "add-gateway":
        password = auth.add(args.name, "gateway", args.site)
    else:
        password = auth.add(args.name, "engine")
    print(f"{args.name}: password {password} (shown only now)", file=sys.stderr)
    print(
        f"wrote {auth.passwd} and {auth.acl}; reload Mosquitto (SIGHUP) to apply", file=sys.stderr
    )
    return 0
