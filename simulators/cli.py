"""``eicu simulate``: publish simulated or replayed bedside streams over MQTT."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from eicu.config import MqttSettings
from eicu.errors import ConfigError
from simulators.run import SimulationPlan, simulate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mqtt",
        default=os.environ.get("EICU_MQTT_URL", "mqtt://127.0.0.1:1883"),
        help="broker URL, mqtt:// or mqtts:// (TLS: EICU_MQTT_CA_FILE, EICU_MQTT_CERT_FILE and "
        "EICU_MQTT_KEY_FILE name the files) (default: EICU_MQTT_URL or mqtt://127.0.0.1:1883)",
    )
    parser.add_argument("--site", default="sim", help="site id (default: sim)")
    parser.add_argument("--beds", type=int, default=1, help="number of beds (default: 1)")
    parser.add_argument(
        "--first-bed", type=int, default=1, help="number of the first bed (default: 1)"
    )
    parser.add_argument(
        "--duration", type=float, default=60.0, help="simulated seconds (default: 60)"
    )
    parser.add_argument(
        "--scenario",
        default="stable",
        help="stable, sepsis, af, vt, asystole, artefact, spo2_off, disconnect, or mix "
        "(default: stable)",
    )
    parser.add_argument("--speed", type=float, default=1.0, help="X times real time (default: 1)")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="accelerate slow trends such as sepsis (default: 1)",
    )
    parser.add_argument(
        "--events-at",
        type=float,
        default=None,
        metavar="SECONDS",
        help="every bed's scenario event (e.g. the VT of 'vt', the asystole of 'asystole') "
        "happens SECONDS after the start (default: each scenario's own time, e.g. VT at 60 s)",
    )
    parser.add_argument(
        "--frame", type=float, default=0.25, help="seconds of waveform per message (default: 0.25)"
    )
    parser.add_argument(
        "--replay", type=Path, help="replay a WFDB record (path without extension) instead"
    )
    parser.add_argument(
        "--coded",
        action="store_true",
        help="compress the waveform samples losslessly with the project's codec (about a "
        "third of the bytes; for a site whose link to the hub costs bytes)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON at the end")


def run(args: argparse.Namespace) -> int:
    from simulators.synth import SCENARIOS

    if (
        args.beds < 1
        or args.duration <= 0
        or args.speed <= 0
        or not 0.02 <= args.frame <= 5
        or (args.events_at is not None and not args.events_at >= 0)
    ):
        print(
            "eicu simulate: --beds >= 1, --duration > 0, --speed > 0, 0.02 <= --frame <= 5, "
            "--events-at >= 0",
            file=sys.stderr,
        )
        return 2
    if args.scenario != "mix" and args.scenario not in SCENARIOS:
        print(
            f"eicu simulate: unknown scenario {args.scenario!r}; "
            f"choose from {', '.join(SCENARIOS)} or mix",
            file=sys.stderr,
        )
        return 2
    try:
        # TLS files for an mqtts:// broker: EICU_MQTT_CA_FILE, EICU_MQTT_CERT_FILE, ...
        mqtt = MqttSettings.from_url(args.mqtt, key="--mqtt", env=os.environ)
    except ConfigError as exc:
        print(f"eicu simulate: {exc}", file=sys.stderr)
        return 2
    plan = SimulationPlan(
        site=args.site,
        beds=args.beds,
        duration_s=args.duration,
        scenario=args.scenario,
        speed=args.speed,
        frame_s=args.frame,
        replay=args.replay,
        seed=args.seed,
        time_scale=args.time_scale,
        first_bed=args.first_bed,
        events_at_s=args.events_at,
        coded=args.coded,
    )
    if not args.json:
        print(
            f"simulating {args.beds} beds at {mqtt.url} for {args.duration:g} s ...",
            file=sys.stderr,
        )
    summary = asyncio.run(_until_done_or_signalled(mqtt, plan))
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        beds = summary["beds"]
        assert isinstance(beds, dict)
        total_m = sum(b["messages"] for b in beds.values())
        total_s = sum(b["samples"] for b in beds.values())
        print(
            f"published {total_m} messages, {total_s} samples for {len(beds)} beds", file=sys.stderr
        )
    return 0


async def _until_done_or_signalled(mqtt: MqttSettings, plan: SimulationPlan) -> dict[str, object]:
    """The simulation, ended early by SIGTERM or SIGINT: the beds stop, what is queued is
    published, and the summary still says what the broker acknowledged."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await simulate(mqtt, plan, stop)
