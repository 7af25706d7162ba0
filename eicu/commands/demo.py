"""``eicu demo``: the whole engine on one machine with simulated beds and a live census.

With nothing configured it needs no server: an embedded MQTT broker on a free port (a Mosquitto
child process where the binary is installed, else amqtt in the process; see
:mod:`eicu.commands.embedded`) and an embedded SQLite store. ``EICU_MQTT_URL`` and
``EICU_DATABASE_URL`` point it at real ones.
Unless ``--no-cart``, an ``eicu cart`` process (test pattern and tone, loopback candidates on)
serves the first bed, so a video consult can be tried from the dashboard at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eicu import heap
from eicu.commands import stop_on_signals
from eicu.config import IngestSettings, MqttSettings, Settings
from eicu.errors import EicuError
from eicu.freshness import stale_after_s

if TYPE_CHECKING:
    from dashboards.users import Users
    from eicu.store import Store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beds", type=int, default=12, help="simulated beds (default: 12)")
    parser.add_argument(
        "--duration", type=float, default=0.0, help="seconds to run (default: until Ctrl-C)"
    )
    parser.add_argument("--speed", type=float, default=1.0, help="simulation speed (default: 1)")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=30.0,
        help="accelerate slow deterioration so it shows in minutes (default: 30)",
    )
    parser.add_argument(
        "--events-at",
        type=float,
        default=None,
        metavar="SECONDS",
        help="every bed's scenario event (VT, VF, AF, asystole, ectopy, pacing, lead off, "
        "probe off, gateway outage, the start of the sepsis course) happens SECONDS after "
        "the start (default: each scenario's own time, e.g. VT at 60 s); with a large "
        "--time-scale the sepsis course runs in seconds (its 6 h course takes 21600 / "
        "time-scale seconds)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder for the embedded store and spool (default: a new temporary folder)",
    )
    parser.add_argument(
        "--census",
        action="store_true",
        help="print the census in the terminal every --refresh seconds (default: the census "
        "is in the browser; the terminal gets a status line every 30 s)",
    )
    parser.add_argument(
        "--refresh", type=float, default=2.0, help="census refresh in seconds (default: 2)"
    )
    parser.add_argument(
        "--no-cart",
        action="store_true",
        help="do not start a video cart (test pattern) for the first bed",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=0,
        help="port of the dashboard on 127.0.0.1 (default: a free port)",
    )


def run(args: argparse.Namespace) -> int:
    if (
        args.beds < 1
        or args.speed <= 0
        or args.duration < 0
        or (args.events_at is not None and args.events_at < 0)
    ):
        print(
            "eicu demo: --beds >= 1, --speed > 0, --duration >= 0, --events-at >= 0",
            file=sys.stderr,
        )
        return 2
    heap.settle()
    return asyncio.run(demo(args))


async def demo(args: argparse.Namespace) -> int:
    from dashboards.app import create_app
    from dashboards.server import DashboardServer
    from dashboards.users import Role, Users
    from eicu.commands.embedded import EmbeddedBroker
    from eicu.commands.serve import engine_source, health_and_metrics
    from eicu.store import open_store
    from ingest.engine import Engine

    settings = Settings.from_env()
    # a folder of its own unless one is given: removed when the demo ends
    temporary = args.data_dir is None
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="eicu-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    broker = None
    if settings.mqtt is None:
        broker = EmbeddedBroker(folder=data_dir / "broker")
        await broker.start()
        mqtt = MqttSettings.from_url(broker.url, client_id="eicu-demo-ingest")
    else:
        mqtt = settings.mqtt
    db_url = settings.database_url or f"sqlite:///{data_dir / 'eicu.sqlite'}"
    store = open_store(db_url)
    await store.open()
    admission = replace(
        settings.ingest.admission,
        site_beds_max=max(settings.ingest.admission.site_beds_max, args.beds),
        new_beds_burst=max(settings.ingest.admission.new_beds_burst, args.beds),
    )
    if admission.beds_file is None:
        # The demo's own simulated beds are registered beds, watched from their first message
        # like the beds of a site's configuration (an auto-registered bed is "new" for a while).
        beds_file = data_dir / "beds.txt"
        beds_file.write_text(
            "".join(f"{DEMO_SITE}/bed{i + 1:03d}\n" for i in range(args.beds)), encoding="utf-8"
        )
        admission = replace(admission, beds_file=beds_file)
    engine = Engine(
        mqtt,
        IngestSettings(spool_dir=data_dir / "spool", admission=admission),
        store,
        alarms_outbox=data_dir / "alarms.db",
        alarm_store=store,  # the audit trail and receipts also in the demo's store
        alarm_policy=settings.alerting.policy,  # EICU_ALARM_POLICY_FILE, else the default
    )
    stop = stop_on_signals()
    loop = asyncio.get_running_loop()
    where = "" if settings.database_url else f" (embedded, {data_dir})"
    print(
        f"eicu demo: broker {mqtt.url}{f' (embedded, {broker.kind})' if broker else ''}, "
        f"store {store.backend}{where}",
        file=sys.stderr,
    )
    # The dashboard: local plain http, so the session cookie cannot be Secure; one demo login
    # with a fresh random password, shown once.
    http = replace(
        settings.http, host="127.0.0.1", port=args.http_port, cookie_secure=False,
        users_file=data_dir / "users.json",
    )  # fmt: skip
    users = Users(http.users_file)
    password = secrets.token_urlsafe(12)
    users.add("demo", Role.ADMIN, password, replace=True)
    # /healthz and /readyz on the dashboard (and on EICU_METRICS_PORT when it is set)
    health, metrics_server = health_and_metrics(settings, engine)
    if metrics_server is not None:
        print(
            f"eicu demo: metrics on http://127.0.0.1:{metrics_server.port}/metrics "
            "(and /healthz, /readyz)",
            file=sys.stderr,
        )
    app = create_app(engine_source(engine), http, users, settings.video.ice_servers, health)
    dashboard = DashboardServer(app, http.host, http.port)
    await dashboard.start()
    print(f"eicu demo: health {dashboard.url}/healthz and {dashboard.url}/readyz", file=sys.stderr)
    login = _login_box(dashboard.url, password, http.users_file, temporary)
    print(login, file=sys.stderr, flush=True)
    if sys.stdin is not None and sys.stdin.isatty():
        # Enter shows the login again (the terminal may have scrolled it away)
        def show_login() -> None:
            if sys.stdin.readline():
                print(login, file=sys.stderr)
            else:  # end of input (Ctrl-D): nothing more to read
                loop.remove_reader(sys.stdin)

        loop.add_reader(sys.stdin, show_login)
    await _admit_demo_patients(store, _scenarios(args.beds))
    cart = None if args.no_cart else await _start_cart(dashboard.url, users, data_dir)
    await engine.start()
    await engine.wait_connected(30.0)
    duration_s = args.duration or 365 * 86400.0
    # The simulated gateways run in a process of their own (on the other core), as gateways do.
    simulator = await _start_simulator(args, duration_s, broker.url if broker else None, data_dir)
    sim = asyncio.create_task(_simulator_summary(simulator), name="simulator")
    scenarios = _scenarios(args.beds)
    started = time.monotonic()
    delays_s: list[float] = []  # the engine's input delay at each census
    next_status_s = STATUS_EVERY_S
    try:
        while not sim.done() and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.refresh)
            delays_s.append(engine.router.input_delay_us(time.time_ns() // 1000) / 1e6)
            elapsed_s = time.monotonic() - started
            if args.census:
                _print_census(engine, scenarios, elapsed_s, delays_s[-1])
            elif elapsed_s >= next_status_s:
                next_status_s += STATUS_EVERY_S
                _print_status(engine, elapsed_s, delays_s[-1])
        if sim.done() and not stop.is_set():
            # --duration reached: the engine reads what the broker still holds for it first
            await _until_idle(engine, DRAIN_IDLE_S, DRAIN_MAX_S)
    finally:
        stop.set()
        if simulator.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                # its beds stop; it publishes what it holds and prints its summary
                simulator.send_signal(signal.SIGTERM)
        summary: dict[str, object] | None = None
        failure: DemoError | None = None
        try:
            summary = await sim
        except DemoError as exc:
            failure = exc
        if cart is not None:
            await _stop_cart(cart)
        await dashboard.stop()
        if metrics_server is not None:
            metrics_server.close()
        await engine.stop()
        stats = await store.stats()
        await store.close()
        if broker is not None:
            await broker.stop()
        if sys.stdin is not None and sys.stdin.isatty():
            loop.remove_reader(sys.stdin)
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)
            print(
                f"eicu demo: removed its folder {data_dir} (--data-dir DIR keeps the store)",
                file=sys.stderr,
            )
    if failure is not None or summary is None:
        raise failure or DemoError("no simulator summary")
    sent = summary["beds"]
    assert isinstance(sent, dict)
    sent_n = sum(b["messages"] for b in sent.values())
    stored_n = sum(b["messages"] for b in stats["beds"].values())
    print(f"\npublished {sent_n} messages; stored {stored_n}", file=sys.stderr)
    if delays_s:
        # per site the median over its beds of how much later than its fastest a bed's newest
        # message came through (ingest.state.input_delay_us)
        print(
            f"engine input delay: median {float(np.median(delays_s)):.1f} s, "
            f"at most {max(delays_s):.1f} s (over {len(delays_s)} census refreshes)",
            file=sys.stderr,
        )
    return 0 if stored_n >= sent_n else 1


DEMO_SITE = "demo"
STATUS_EVERY_S = 30.0  # the terminal's status line, without --census


def _login_box(url: str, password: str, users_file: Path, temporary: bool) -> str:
    """The dashboard's address and the one login of the demo, framed so that it stands out."""
    lines = [
        "eicu demo is running",
        f"  dashboard   {url}/",
        "  user        demo",
        f"  password    {password}   (admin)",
        f"  more users  EICU_USERS_FILE={users_file} eicu users add NAME",
        "  Enter shows this again; Ctrl-C stops the demo"
        + (" and removes its folder" if temporary else ""),
    ]
    width = max(len(line) for line in lines) + 2
    rule = "+" + "-" * width + "+"
    return "\n".join([rule, *(f"| {line:<{width - 1}}|" for line in lines), rule])


def _print_status(engine: object, elapsed_s: float, delay_s: float) -> None:
    """One line for the terminal: how many beds, what is stored, how late, how many alarms."""
    from eicu.alarm_model import AlarmState
    from ingest.engine import Engine

    assert isinstance(engine, Engine)
    service = engine.alarms
    live = (
        sum(1 for a in service.machine.alarms() if a.state != AlarmState.CLEARED)
        if service is not None
        else 0
    )
    print(
        f"eicu demo: {elapsed_s:6.0f} s  {len(engine.router.beds)} beds, "
        f"{engine.writer.stored_frames} frames stored, input delay {delay_s:.1f} s, "
        f"{live} alarms live (the census is in the browser; --census prints it here)",
        file=sys.stderr,
        flush=True,
    )


DRAIN_IDLE_S = 2.0  # at the end: the engine has read everything once this long passes quietly
DRAIN_MAX_S = 120.0


async def _until_idle(engine: object, idle_s: float, max_s: float) -> None:
    """Wait until the engine has handled no message for ``idle_s`` (at most ``max_s``)."""
    from ingest.engine import Engine

    assert isinstance(engine, Engine)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_s
    seen, quiet_since = -1, loop.time()
    while loop.time() < deadline:
        handled = sum(state.messages for state in engine.router.beds.values())
        if handled != seen:
            seen, quiet_since = handled, loop.time()
        elif loop.time() - quiet_since >= idle_s:
            return
        await asyncio.sleep(0.2)


async def _start_simulator(
    args: argparse.Namespace, duration_s: float, broker_url: str | None, data_dir: Path
) -> asyncio.subprocess.Process:
    """``eicu simulate`` for the demo's beds (a mix of every scenario); its log goes to
    ``simulator.log`` in the data folder, its summary (JSON) to our pipe. Without
    ``broker_url`` it reads the broker settings (EICU_MQTT_URL and the rest) as we did."""
    command = [
        sys.executable, "-m", "eicu.cli", "simulate", "--site", DEMO_SITE,
        "--beds", str(args.beds), "--duration", repr(duration_s), "--scenario", "mix",
        "--speed", repr(args.speed), "--time-scale", repr(args.time_scale), "--json",
    ]  # fmt: skip
    if broker_url is not None:
        command += ["--mqtt", broker_url]
    if args.events_at is not None:
        command += ["--events-at", repr(args.events_at)]
    with open(data_dir / "simulator.log", "ab") as log_file:
        return await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )  # fmt: skip


async def _simulator_summary(simulator: asyncio.subprocess.Process) -> dict[str, object]:
    """What the simulator published (acknowledged by the broker), once it has ended."""
    out, _ = await simulator.communicate()
    try:
        summary = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise DemoError(
            f"the simulator ended (exit {simulator.returncode}) without its summary; "
            "see simulator.log in the data folder"
        ) from exc
    if not isinstance(summary, dict):
        raise DemoError("the simulator's summary is not a JSON object")
    return summary


class DemoError(EicuError):
    """A part of the demo failed (the message says which and where its log is)."""


DEMO_CART_BED = "bed001"
DEMO_CART_USER = "cart-demo"


async def _start_cart(url: str, users: Users, data_dir: Path) -> asyncio.subprocess.Process:
    """``eicu cart`` for the first bed, as a user of role cart with a fresh password; its log
    goes to ``cart.log`` in the data folder."""
    from dashboards.users import Role

    password = secrets.token_urlsafe(16)
    users.add(DEMO_CART_USER, Role.CART, password, replace=True, bed=f"{DEMO_SITE}/{DEMO_CART_BED}")
    password_file = data_dir / "cart-password"
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(password + "\n")
    env = {
        **os.environ,
        "EICU_DASHBOARD_URL": url,
        "EICU_VIDEO_ALLOW_LOOPBACK": "1",  # browser and cart on this one machine
        "EICU_VIDEO_CAMERA": "none",
        "EICU_VIDEO_MICROPHONE": "none",
    }
    with open(data_dir / "cart.log", "ab") as log_file:
        cart = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "eicu.cli", "cart", "--site", DEMO_SITE,
            "--bed", DEMO_CART_BED, "--user", DEMO_CART_USER, "--password-file",
            str(password_file), stdin=asyncio.subprocess.DEVNULL, stdout=log_file,
            stderr=log_file, env=env,
        )  # fmt: skip
    print(
        f"eicu demo: a video cart (test pattern) serves {DEMO_SITE}/{DEMO_CART_BED}: its bed view "
        f"has a Video link (log: {data_dir / 'cart.log'})",
        file=sys.stderr,
    )
    return cart


async def _stop_cart(cart: asyncio.subprocess.Process) -> None:
    if cart.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            cart.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(cart.wait(), 10.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                cart.kill()
            await cart.wait()


async def _admit_demo_patients(store: Store, scenarios: dict[str, str]) -> None:
    """A synthetic patient in every simulated bed that has none (MRNs ``DEMO-``)."""
    import datetime as dt

    from eicu.models import BedKey
    from eicu.patients import PatientError
    from simulators.patients import demo_patient

    now_us = time.time_ns() // 1000
    today = dt.datetime.now(dt.UTC).date()
    for i, (bed, scenario) in enumerate(sorted(scenarios.items()), 1):
        patient, fields = demo_patient(i, scenario, today)
        try:
            await store.admit(patient, BedKey(DEMO_SITE, bed), now_us, "demo", fields)
        except PatientError:
            continue  # a demo store used again: the bed has its patient already


def _scenarios(n: int) -> dict[str, str]:
    from simulators.synth import SCENARIOS

    return {f"bed{i + 1:03d}": SCENARIOS[i % len(SCENARIOS)] for i in range(n)}


def _fmt(
    latest: dict[str, tuple[float | None, int]], key: str, now_us: int, digits: int = 0
) -> str:
    entry = latest.get(key)
    if entry is None:
        return "--"
    value, ts_us = entry
    if (now_us - ts_us) / 1e6 > stale_after_s(key):
        return "stale"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "??"  # the monitor reported no valid value
    if key == "ACVPU":
        return "ACVPU"[int(value)]
    if key == "O2":
        return "O2" if value else "air"
    return f"{value:.{digits}f}"


def _news2(scores: object, old: bool) -> str:
    """NEWS2 and its band; an incomplete score shows its proven lower bound, never a guess; a
    score from a bed that has gone quiet says so."""
    from ingest.scores import BedScores

    if not isinstance(scores, BedScores) or scores.news2 is None:
        return "invalid" if isinstance(scores, BedScores) and scores.invalid else "--"
    r = scores.news2
    text = f"{r.total} {r.band}" if r.complete else f">={r.partial_total} incomplete"
    if scores.deterioration is not None and scores.deterioration.active:
        text += " rising"
    return f"{text} (old)" if old else text


def _rhythm(derived: object) -> str:
    """The engine's own reading of the ECG: active rhythm flags, its heart rate, lead quality."""
    from ingest.signals import Derived

    if not isinstance(derived, Derived):
        return "--"
    parts = sorted(derived.rhythms)
    hr = derived.hr_bpm.get("ECG_II")
    if not parts and hr is not None:
        parts.append(f"HR {hr:.0f}")
    bad = sorted({v for k, v in derived.quality.items() if k.startswith("ECG") and v != "good"})
    return " ".join(parts + bad) or "--"


def _alarms_by_bed(engine: object) -> dict[object, str]:
    """Each bed's live alarms, most urgent first (eicu.alarms.ranking; ``!!!`` high, ``!!``
    medium, ``!`` low)."""
    from eicu.alarm_model import AlarmState
    from eicu.alarms.ranking import most_urgent_first

    service = getattr(engine, "alarms", None)
    if service is None:
        return {}
    marks = {"high": "!!!", "medium": "!!", "low": "!"}
    per_bed: dict[object, list[str]] = {}
    live = (a for a in service.machine.alarms() if a.state != AlarmState.CLEARED)
    for alarm in most_urgent_first(live, service.machine.policy_for):
        text = marks[alarm.priority.value] + alarm.kind
        if alarm.state == AlarmState.ACKNOWLEDGED:
            text += "(ack)"
        per_bed.setdefault(alarm.bed, []).append(text)
    return {bed: " ".join(items) for bed, items in per_bed.items()}


def _print_census(
    engine: object, scenarios: dict[str, str], elapsed_s: float, delay_s: float
) -> None:
    from ingest.engine import Engine

    assert isinstance(engine, Engine)
    now_us = time.time_ns() // 1000
    lines = [
        f"eicu census  {time.strftime('%H:%M:%S')}  running {elapsed_s:6.0f} s   "
        f"stored {engine.writer.stored_frames} frames, pending {engine.writer.pending_frames}, "
        f"rejected {engine.ingest.rejected}, input delay {delay_s:.1f} s",
        f"{'bed':<14}{'scenario':<11}{'status':<9}{'HR':>6}{'SpO2':>6}{'RR':>6}{'NIBP':>12}"
        f"{'Temp':>6}{'ACVPU':>6}{'O2':>6}  {'NEWS2':<26}{'rhythm (engine)':<22}{'alarms':<24}"
        f"{'seen':>6}{'gaps':>6}",
    ]
    alarms = _alarms_by_bed(engine)
    for key in sorted(engine.router.beds, key=str):
        state = engine.router.beds[key]
        latest = state.latest
        # device clocks run at the simulation speed: freshness is judged on the device clock
        device_now = state.device_now_us(now_us)
        stale = state.is_stale(now_us)
        status = "STALE" if stale and state.status == "online" else state.status
        bp = f"{_fmt(latest, 'NIBP_SYS', device_now)}/{_fmt(latest, 'NIBP_DIA', device_now)}"
        seen_s = (now_us - state.last_seen_us) / 1e6 if state.last_seen_us else float("nan")
        lines.append(
            f"{key!s:<14}{scenarios.get(key.bed, ''):<11}{status:<9}"
            f"{_fmt(latest, 'HR', device_now):>6}{_fmt(latest, 'SPO2', device_now):>6}"
            f"{_fmt(latest, 'RR', device_now):>6}{bp:>12}{_fmt(latest, 'TEMP', device_now, 1):>6}"
            f"{_fmt(latest, 'ACVPU', device_now):>6}{_fmt(latest, 'O2', device_now):>6}"
            f"  {_news2(engine.scores.beds.get(key), stale or state.status == 'offline'):<26}"
            f"{_rhythm(engine.signals.derived.get(key)):<22}{alarms.get(key, '-'):<24}"
            f"{seen_s:>5.1f}s{state.gaps:>6}"
        )
    out = "\n".join(lines)
    if sys.stdout.isatty() and not os.environ.get("EICU_NO_CLEAR"):
        out = "\x1b[2J\x1b[H" + out
    print(out, flush=True)
