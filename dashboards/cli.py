"""``eicu users``: manage the dashboard's users (``EICU_USERS_FILE``).

``eicu users add NAME --role ROLE`` reads the password from the terminal (asked twice) or, when
stdin is not a terminal, from its first line; ``--generate`` makes a random one and prints it once.
``--sites A,B`` limits the user to the beds of those sites (left out: every site).
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys

from dashboards.users import Role, UserError, Users, parse_sites
from eicu.config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add a user (or replace one with --replace)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.add_argument("--generate", action="store_true", help="generate and print a password")
    add.add_argument("--replace", action="store_true", help="replace an existing user")
    add.add_argument(
        "--sites", default=None, metavar="A,B", help="only the beds of these sites (default: all)"
    )
    sub.add_parser("list", help="list users, their roles and sites")


def run(args: argparse.Namespace) -> int:
    users = Users(Settings.from_env().http.users_file)
    if args.action == "list":
        for user in users.list():
            shown = ",".join(sorted(user.sites)) if user.sites is not None else "*"
            print(f"{user.name}\t{user.role.value}\t{shown}")
        return 0
    try:
        sites = parse_sites(args.sites)
    except UserError as exc:
        print(f"eicu users: error: {exc}", file=sys.stderr)
        return 2
    if args.generate:
        password = secrets.token_urlsafe(12)
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("eicu users: the passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        user = users.add(args.name, args.role, password, replace=args.replace, sites=sites)
    except UserError as exc:
        print(f"eicu users: error: {exc}", file=sys.stderr)
        return 2
    where = f", sites {','.join(sorted(user.sites))}" if user.sites is not None else ""
    print(f"added {user.name} ({user.role.value}{where}) to {users.path}", file=sys.stderr)
    if args.generate:
        print(password)
    return 0
