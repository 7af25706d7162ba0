"""The commands as a user runs them: real processes, real broker and database."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from eicu import hl7
from eicu.devservices import Mosquitto, free_port
from simulators.run import SimulationPlan

ROOT = Path(__file__).resolve().parent.parent


def _eicu(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eicu.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_help_lists_every_command() -> None:
    out = _eicu("--help")
    assert out.returncode == 0
    for name in ("demo", "serve", "simulate", "stats", "migrate", "score", "users"):
        assert name in out.stdout
    sub = _eicu("simulate", "--help")
    assert sub.returncode == 0 and "--replay" in sub.stdout


def test_bad_arguments_are_clear_errors() -> None:
    out = _eicu("simulate", "--scenario", "nonsense", "--mqtt", "mqtt://127.0.0.1:1")
    assert out.returncode == 2 and "unknown scenario 'nonsense'" in out.stderr
    out = _eicu("simulate", "--events-at", "-1", "--mqtt", "mqtt://127.0.0.1:1")
    assert out.returncode == 2 and "--events-at >= 0" in out.stderr
    out = _eicu("serve", env={"EICU_DATABASE_URL": "", "EICU_MQTT_URL": ""})
    assert out.returncode == 2 and "EICU_DATABASE_URL" in out.stderr
    out = _eicu("serve", env={"EICU_DATABASE_URL": "postgresql://x", "EICU_HTTP_PORT": "x"})
    assert out.returncode == 2 and "EICU_HTTP_PORT" in out.stderr
    out = _eicu("stats", env={"EICU_DATABASE_URL": "mysql://x"})
    assert out.returncode == 2 and "EICU_DATABASE_URL" in out.stderr


def test_simulate_events_at_reaches_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """``eicu simulate --events-at`` puts every bed's scenario event at that second."""
    import simulators.cli

    plans: list[SimulationPlan] = []

    async def fake_simulate(
        mqtt: object, plan: SimulationPlan, stop: object = None
    ) -> dict[str, object]:
        plans.append(plan)
        return {"beds": {}, "start_us": 0}

    monkeypatch.setattr(simulators.cli, "simulate", fake_simulate)
    parser = argparse.ArgumentParser()
    simulators.cli.add_arguments(parser)
    args = parser.parse_args(["--scenario", "vt", "--events-at", "7.5", "--json"])
    assert simulators.cli.run(args) == 0
    assert plans[0].events_at_s == 7.5 and plans[0].scenario == "vt"
    assert simulators.cli.run(parser.parse_args(["--json"])) == 0
    assert plans[1].events_at_s is None


def _wait_for_metric(url: str, text: str, timeout_s: float = 120.0) -> str:
    deadline = time.monotonic() + timeout_s
    metrics = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                metrics = response.read().decode()
        except OSError:
            metrics = ""  # not listening yet
        if text in metrics:
            return metrics
        time.sleep(0.3)
    raise AssertionError(f"{text!r} not in {url} after {timeout_s} s")


@pytest.mark.broker
@pytest.mark.db
def test_serve_simulate_stats_and_sigterm(broker: Mosquitto, db_url: str, tmp_path: Path) -> None:
    env = {
        "EICU_MQTT_URL": broker.url,
        "EICU_DATABASE_URL": db_url,
        "EICU_SPOOL_DIR": str(tmp_path / "spool"),
        "EICU_OUTBOX_PATH": str(tmp_path / "alarms.db"),
        "EICU_MQTT_CLIENT_ID": "eicu-cli-test",
        "EICU_METRICS_PORT": str(free_port()),
        "EICU_HTTP_PORT": str(free_port()),
        "EICU_USERS_FILE": str(tmp_path / "users.json"),
        # HL7 v2 in beside the engine (the listener of docs/interoperability.md)
        "EICU_HL7_SITE": "ward3",
        "EICU_HL7_PORT": str(free_port()),
    }
    serve = subprocess.Popen(
        [sys.executable, "-m", "eicu.cli", "serve"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{env['EICU_METRICS_PORT']}/metrics"
        _wait_for_metric(url, "eicu_mqtt_connected 1.0")  # migrated, warmed up, subscribed
        sim = _eicu(
            "simulate", "--mqtt", broker.url, "--site", "cli", "--beds", "3", "--duration", "6",
            "--speed", "3", "--scenario", "mix", "--json",
        )  # fmt: skip
        assert sim.returncode == 0, sim.stderr
        summary = json.loads(sim.stdout)
        metrics = _wait_for_metric(url, "eicu_store_latency_seconds_bucket")
        # the dashboard is served by the same process: the login page, its own /metrics, and
        # nothing for an anonymous request
        dashboard = f"http://127.0.0.1:{env['EICU_HTTP_PORT']}"
        with urllib.request.urlopen(dashboard + "/login", timeout=5) as response:
            assert b"eicu command center" in response.read()
        assert "eicu_ingest_messages_total" in _wait_for_metric(
            dashboard + "/metrics", "eicu_ingest_messages_total"
        )
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(dashboard + "/api/census", timeout=5)
        anonymous.value.close()
        assert anonymous.value.code == 401
        # a PCD-01 message to the same process's HL7 listener: accepted once at the broker
        example = (ROOT / "tests" / "data" / "hl7" / "pcd01-oru-r01.hl7").read_bytes()
        with socket.create_connection(("127.0.0.1", int(env["EICU_HL7_PORT"])), 10) as mllp:
            mllp.sendall(hl7.frame(example.decode()))
            answer = b""
            while not answer.endswith(hl7.END_BLOCK):
                answer += mllp.recv(4096)
        assert b"MSA|AA|PCD0001" in answer
        # accepted at the broker; the engine reads it from there (on a busy machine, a while
        # later): stored before the stop, so the comparison below is of everything
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _eicu("stats", "--json", env=env)
            if "ward3/bed07" in json.loads(now.stdout or "{}").get("beds", {}):
                break
            time.sleep(0.5)
    finally:
        serve.send_signal(signal.SIGTERM)  # written out (held segments included) before exit
        _, err = serve.communicate(timeout=60)
    assert serve.returncode == 0, err
    assert "engine stopped" in err
    assert 'eicu_ingest_messages_total{kind="waveform"}' in metrics
    assert "eicu_store_latency_seconds_bucket" in metrics
    stats = _eicu("stats", "--json", env=env)
    assert stats.returncode == 0, stats.stderr
    stored = json.loads(stats.stdout)["beds"]
    assert stored.pop("ward3/bed07")["messages"] == 2  # the HL7 message's two observation times
    assert stored == summary["beds"]
    assert set(summary["beds"]) == {"cli/bed001", "cli/bed002", "cli/bed003"}


@pytest.mark.slow
def test_demo_runs_with_no_server_configured(tmp_path: Path) -> None:
    env = {"EICU_MQTT_URL": "", "EICU_DATABASE_URL": "", "EICU_NO_CLEAR": "1"}
    out = _eicu(
        "demo", "--beds", "8", "--duration", "4", "--refresh", "1", "--census",
        "--data-dir", str(tmp_path),
        env=env, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    # a Mosquitto child process where the binary is installed (as here), amqtt otherwise
    assert re.search(r"broker mqtt://127\.0\.0\.1:\d+ \(embedded, mosquitto\)", out.stderr)
    assert "store sqlite (embedded" in out.stderr
    # the login, framed: address, user and password
    assert re.search(r"\| +dashboard +http://127\.0\.0\.1:\d+/ ", out.stderr)
    assert re.search(r"\| +user +demo ", out.stderr)
    assert re.search(r"\| +password +\S{12,} +\(admin\)", out.stderr)
    assert "eicu census" in out.stdout and "demo/bed008" in out.stdout
    found = re.search(r"published (\d+) messages; stored (\d+)", out.stderr)
    assert found, out.stderr[-1000:]
    published, stored = int(found[1]), int(found[2])
    assert published == stored > 0
    assert (tmp_path / "eicu.sqlite").exists()
    # the demo's beds are registered, watched from their first message (none "new")
    assert "auto-registered" not in out.stderr
    assert (tmp_path / "beds.txt").read_text().split() == [f"demo/bed{i:03d}" for i in range(1, 9)]


def test_demo_stopped_by_ctrl_c_stores_what_was_published_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    # no --data-dir: the demo makes a temporary folder (under TMPDIR) and removes it at the end
    env = {**os.environ, "EICU_MQTT_URL": "", "EICU_DATABASE_URL": "", "EICU_NO_CLEAR": "1",
           "TMPDIR": str(tmp_path)}  # fmt: skip
    command = [sys.executable, "-m", "eicu.cli", "demo", "--beds", "4", "--refresh", "0.5",
               "--census", "--no-cart"]  # fmt: skip
    # its own session, like a terminal's foreground job: Ctrl-C goes to the whole group
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    ) as demo:  # fmt: skip
        try:
            assert demo.stdout is not None
            for line in demo.stdout:  # the census is printed once the beds stream
                if "demo/bed004" in line:
                    break
            os.killpg(demo.pid, signal.SIGINT)
            _out, err = demo.communicate(timeout=90)
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
    assert demo.returncode == 0, err[-2000:]
    found = re.search(r"published (\d+) messages; stored (\d+)", err)
    assert found, err[-1000:]
    assert int(found[1]) == int(found[2]) > 0
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state, _ppid, _pgrp, session = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue
        # the simulator (same session) and the embedded broker (its folder under tmp_path)
        if state != "Z" and (int(session) == demo.pid or str(tmp_path) in cmdline):
            left.append(cmdline)
    assert left == []
    assert list(tmp_path.glob("eicu-demo-*")) == [] and "removed its folder" in err


@pytest.mark.db
def test_serve_says_when_the_dashboard_port_is_taken(db_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _eicu(
            "serve",
            env={
                "EICU_DATABASE_URL": db_url,
                "EICU_MQTT_URL": "mqtt://127.0.0.1:1",
                "EICU_HTTP_PORT": str(port),
                "EICU_SPOOL_DIR": str(tmp_path / "spool"),
                "EICU_USERS_FILE": str(tmp_path / "users.json"),
                "EICU_OUTBOX_PATH": str(tmp_path / "eicu-alarms.db"),
            },
        )
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"EICU_HTTP_PORT: cannot listen on 127.0.0.1:{port}" in out.stderr


async def test_simulate_with_no_broker_ends_soon_after_its_duration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import simulators.run
    from eicu.config import MqttSettings
    from simulators.run import simulate

    monkeypatch.setattr(simulators.run, "NO_BROKER_GRACE_S", 0.5)
    mqtt = MqttSettings.from_url(
        f"mqtt://127.0.0.1:{free_port()}", reconnect_min_s=0.05, reconnect_max_s=0.1
    )
    started = time.monotonic()
    summary = await simulate(mqtt, SimulationPlan(beds=2, duration_s=1.0))
    took_s = time.monotonic() - started
    assert 1.0 <= took_s < 5.0  # not the 60 s drain timeout
    assert summary["unsent"] > 0  # type: ignore[operator]
    beds = summary["beds"]
    assert isinstance(beds, dict) and all(b["messages"] == 0 for b in beds.values())
