"""``eicu users``: manage the dashboard's users (``EICU_USERS_FILE``).

``eicu users add NAME --role ROLE`` reads the password from the terminal (asked twice) or, when
stdin is not a terminal, from its first line; ``--generate`` makes a random one and prints it once.
``--sites A,B`` limits the user to the beds of those sites (left out: every site); a cart names
its bed with ``--bed SITE/BED``. ``eicu users set NAME`` changes a user's role, sites, bed or
password, ``eicu users remove NAME`` removes one; a running dashboard applies either to the
user's open sessions and WebSockets at once.

A ``system`` (another system reading through the FHIR API: an EHR, a research pipeline) has no
password: ``eicu users add NAME --role system`` makes its API token and prints it once, and
``eicu users set NAME --generate`` replaces it (the old one stops working at once).
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys

from dashboards.users import UNSET, Role, User, UserError, Users, new_token, parse_sites
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
    add.add_argument("--bed", default=None, metavar="SITE/BED", help="a cart's bed (required)")
    change = sub.add_parser("set", help="change a user's role, sites, bed or password")
    change.add_argument("name")
    change.add_argument("--role", choices=[r.value for r in Role])
    where = change.add_mutually_exclusive_group()
    where.add_argument("--sites", metavar="A,B", help="limit the user to these sites")
    where.add_argument("--all-sites", action="store_true", help="lift the limit to some sites")
    change.add_argument("--bed", metavar="SITE/BED", help="a cart's bed")
    change.add_argument(
        "--password", action="store_true", help="set a new password (asked, or read from stdin)"
    )
    change.add_argument(
        "--generate", action="store_true", help="generate and print a password (a system's token)"
    )
    remove = sub.add_parser("remove", help="remove a user (its sessions end at once)")
    remove.add_argument("name")
    sub.add_parser("list", help="list users, their roles and sites")


def _shown(user: User) -> str:
    where = f", sites {','.join(sorted(user.sites))}" if user.sites is not None else ""
    bed = f", bed {user.bed}" if user.bed is not None else ""
    return f"{user.name} ({user.role.value}{where}{bed})"


def _password(name: str) -> str | None:
    """A password from the terminal (asked twice) or stdin's first line; None if they differ."""
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            print("eicu users: the passwords differ", file=sys.stderr)
            return None
        return password
    return sys.stdin.readline().rstrip("\r\n")


def run(args: argparse.Namespace) -> int:
    users = Users(Settings.from_env().http.users_file)
    if args.action == "list":
        for user in users.list():
            shown = ",".join(sorted(user.sites)) if user.sites is not None else "*"
            bed = f"\t{user.bed}" if user.bed is not None else ""
            print(f"{user.name}\t{user.role.value}\t{shown}{bed}")
        return 0
    try:
        if args.action == "remove":
            removed = users.remove(args.name)
            print(f"removed {_shown(removed)} from {users.path}", file=sys.stderr)
            return 0
        sites = parse_sites(args.sites)
    except UserError as exc:
        print(f"eicu users: error: {exc}", file=sys.stderr)
        return 2
    password: str | None = None
    existing = users.get(args.name)
    role = args.role or (existing.role.value if existing is not None else None)
    system = role == Role.SYSTEM.value
    if system and args.action == "add":
        args.generate = True  # a system's token is always made here, never chosen
    if system and args.action == "set" and args.password:
        print("eicu users: error: a system has a token, not a password: use --generate",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.generate:
        password = new_token() if system else secrets.token_urlsafe(12)
    elif args.action == "add" or args.password:
        password = _password(args.name)
        if password is None:
            return 2
    try:
        if args.action == "add":
            if password is None:
                return 2
            user = users.add(
                args.name, args.role, password, replace=args.replace, sites=sites, bed=args.bed
            )
            verb = "added"
        else:
            user = users.update(
                args.name,
                role=args.role if args.role is not None else UNSET,
                sites=None if args.all_sites else sites if args.sites is not None else UNSET,
                bed=args.bed if args.bed is not None else UNSET,
                password=password,
            )
            verb = "changed"
    except UserError as exc:
        print(f"eicu users: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{verb} {_shown(user)} {'to' if verb == 'added' else 'in'} {users.path}", file=sys.stderr
    )
    if args.generate:
        print(password)
    return 0
