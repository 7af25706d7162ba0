"""``eicu broker-auth``: Mosquitto password and ACL files, one account per gateway and engine,
and the Mosquitto configuration that goes with them (docs/deployment.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eicu.brokerauth import BrokerAuth, ListenerTls, broker_config, listener_config
from eicu.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, required=True, help="folder of the account files")
    sub = parser.add_subparsers(dest="action", required=True)
    gw = sub.add_parser("add-gateway", help="a gateway that may publish only to its own site")
    gw.add_argument("site")
    gw.add_argument("name")
    eng = sub.add_parser(
        "add-engine",
        help="an engine that reads every site and writes alarms and the beds' state (broker "
        "users NAME, NAME-alarms and NAME-state, one password)",
    )
    eng.add_argument("name")
    dash = sub.add_parser(
        "add-dashboard",
        help="an eicu dashboard process: reads the beds' state and waveforms, sends alarm commands",
    )
    dash.add_argument("name")
    cfg = sub.add_parser(
        "config",
        help="print a Mosquitto configuration for these files: accounts, QoS 1 session limits, "
        "and a listener where every client's id is its user name",
    )
    cfg.add_argument(
        "--port", type=int, default=None, help="listener port (default: 8883 with TLS, else 1883)"
    )
    cfg.add_argument("--bind", default=None, help="listener address (default: every interface)")
    cfg.add_argument("--cafile", type=Path, help="TLS: the CA that signed the certificates")
    cfg.add_argument("--certfile", type=Path, help="TLS: the broker's certificate")
    cfg.add_argument("--keyfile", type=Path, help="TLS: the broker's private key")
    cfg.add_argument(
        "--require-certificate",
        action="store_true",
        help="TLS: every client shows a certificate signed by --cafile, besides its password",
    )
    cfg.add_argument(
        "--identity-as-username",
        action="store_true",
        help="with --require-certificate: the certificate's common name is the user name and no "
        "password is asked (one certificate per connection: for gateways)",
    )


def _listener(args: argparse.Namespace) -> list[str]:
    files = {"--cafile": args.cafile, "--certfile": args.certfile, "--keyfile": args.keyfile}
    given = [flag for flag, path in files.items() if path is not None]
    if given and len(given) < len(files):
        missing = next(flag for flag in files if flag not in given)
        raise ConfigError(missing, "TLS needs --cafile, --certfile and --keyfile")
    if args.require_certificate and not given:
        raise ConfigError("--require-certificate", "needs TLS (--cafile, --certfile, --keyfile)")
    if args.identity_as_username and not args.require_certificate:
        raise ConfigError("--identity-as-username", "needs --require-certificate")
    tls = None
    if given:
        tls = ListenerTls(
            args.cafile.resolve(),
            args.certfile.resolve(),
            args.keyfile.resolve(),
            args.require_certificate,
            args.identity_as_username,
        )
    port = args.port if args.port is not None else (8883 if tls else 1883)
    if not 1 <= port <= 65535:
        raise ConfigError("--port", f"must be between 1 and 65535, got {port}")
    return listener_config(port, args.bind, tls)


def run(args: argparse.Namespace) -> int:
    auth = BrokerAuth(args.dir.resolve())
    if args.action == "config":
        sys.stdout.write(broker_config(auth, [_listener(args)]))
        return 0
    if args.action == "add-gateway":
        password = auth.add(args.name, "gateway", args.site)
    elif args.action == "add-dashboard":
        password = auth.add(args.name, "dashboard")
    else:
        password = auth.add(args.name, "engine")
    print(f"{args.name}: password {password} (shown only now)", file=sys.stderr)
    print(
        f"wrote {auth.passwd} and {auth.acl}; reload Mosquitto (SIGHUP) to apply", file=sys.stderr
    )
    return 0
