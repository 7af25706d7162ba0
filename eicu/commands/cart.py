"""``eicu cart``: the bedside cart of a video consult, registered with the engine."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

from eicu.commands import stop_on_signals
from eicu.config import Secret, VideoSettings, read_env_file, secret_token
from eicu.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_SERVER = "http://127.0.0.1:8080"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="the site the bed belongs to")
    parser.add_argument("--bed", required=True, help="the bed this cart serves")
    parser.add_argument(
        "--server",
        default=None,
        help=f"the engine's dashboard URL (default: EICU_DASHBOARD_URL or {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--user", default=None, help="the cart's dashboard user (default: cart-SITE-BED)"
    )
    parser.add_argument(
        "--password-file",
        type=Path,
        default=None,
        help="a file holding the password (default: EICU_CART_PASSWORD)",
    )
    parser.add_argument(
        "--record",
        type=Path,
        default=None,
        help="record what the command center sends to FILE (.mp4); {call_id} and {time} in the "
        "name are filled in, and an existing file is never overwritten",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port"
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="address of /metrics (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--config", type=Path, help="an env-style file of EICU_* settings (the environment wins)"
    )


def _environment(config: Path | None) -> dict[str, str]:
    env: dict[str, str] = {}
    if config is not None:
        if not config.is_file():
            raise ConfigError("--config", f"no such file: {config}")
        env.update(read_env_file(config))
    env.update({k: v for k, v in os.environ.items() if k.startswith("EICU_")})
    return env


def _password(password_file: Path | None, env: dict[str, str]) -> Secret:
    if password_file is not None:
        try:
            text = password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("--password-file", f"cannot read {password_file}: {exc}") from exc
        password = text.strip("\r\n")
        if not password:
            raise ConfigError("--password-file", f"{password_file} is empty")
        return Secret(password)
    password = env.get("EICU_CART_PASSWORD") or ""
    if not password:
        raise ConfigError("EICU_CART_PASSWORD", "set it or pass --password-file")
    return Secret(password)


def run(args: argparse.Namespace) -> int:
    from eicu.video.cart import CartAgent, check_server_url
    from eicu.video.stats import CartMetrics

    env = _environment(args.config)
    settings = VideoSettings.from_env(env)
    server_key = "--server" if args.server else "EICU_DASHBOARD_URL"
    server = check_server_url(
        args.server or env.get("EICU_DASHBOARD_URL") or DEFAULT_SERVER, server_key
    )
    password = _password(args.password_file, env)
    metrics_token = secret_token(env, "EICU_METRICS_TOKEN")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise ConfigError("--metrics-port", f"must be between 0 and 65535, got {args.metrics_port}")
    user = args.user or f"cart-{args.site}-{args.bed}"
    if not log.isEnabledFor(logging.DEBUG):
        # aioice logs every ICE check at INFO; keep its warnings only.
        logging.getLogger("aioice").setLevel(logging.WARNING)
    metrics = CartMetrics()
    if settings.allow_loopback:
        log.warning("EICU_VIDEO_ALLOW_LOOPBACK is on: for tests and demos on one machine only")

    async def main() -> None:
        agent = CartAgent(
            args.site,
            args.bed,
            server=server,
            user=user,
            password=password,
            settings=settings,
            record=args.record,
            metrics=metrics,
        )
        if args.metrics_port is not None:
            from eicu.exposition import MetricsServer
            from eicu.health import Health

            # /healthz and /readyz beside /metrics: ready while registered with the dashboard
            health = Health()
            health.bind(asyncio.get_running_loop())

            def dashboard() -> tuple[bool, str]:
                if agent.registered.is_set():
                    return True, f"registered with {server}"
                return False, f"not registered with {server}"

            health.add_check("dashboard", dashboard)
            try:
                # the cart's own site and bed label its figures: nothing to strip
                MetricsServer(
                    args.metrics_port,
                    args.metrics_host,
                    metrics.registry,
                    token=metrics_token,
                    bed_labels=True,
                    health=health,
                )
            except OSError as exc:
                raise ConfigError("--metrics-port", f"cannot listen: {exc}") from exc
            log.info("metrics on http://%s:%d/metrics", args.metrics_host, args.metrics_port)
        stop = stop_on_signals()
        log.info("cart %s/%s for %s as %r", args.site, args.bed, server, user)
        await agent.run(stop)

    asyncio.run(main())
    return 0
