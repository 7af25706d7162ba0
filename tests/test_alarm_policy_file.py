"""A site's own alarm policy (``EICU_ALARM_POLICY_FILE``): read and checked when the settings are
read, so a bad file stops ``eicu serve`` before anything starts; in force in the running engine,
where its condition delay decides when an alarm starts (and over a state saved under another
policy)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiomqtt
import pytest

from alerting.service import AlarmService
from eicu import cli, wire
from eicu.alarms.policy import DEFAULT_PATH, AlarmPolicy, load_policy
from eicu.config import IngestSettings, MqttSettings, Settings
from eicu.devservices import Mosquitto
from eicu.errors import ConfigError
from eicu.models import BedKey, NumericsFrame
from eicu.store.sqlite import SqliteStore
from ingest.engine import Engine

KEY = "EICU_ALARM_POLICY_FILE"
BED = BedKey("icu", "bed-07")


def site_policy(path: Path, *, version: int = 7, **changes: dict[str, object]) -> Path:
    """The default policy, renamed as a site's, with ``changes`` to some of its conditions."""
    raw = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    raw["name"] = "site-icu"
    raw["version"] = version
    for kind, fields in changes.items():
        raw["conditions"][kind].update(fields)
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def test_the_policy_file_is_read_with_the_settings(tmp_path: Path) -> None:
    path = site_policy(tmp_path / "site.json", HR_HIGH={"delay_s": 2})
    settings = Settings.from_env({KEY: str(path)})
    assert settings.alerting.policy_file == path
    policy = settings.alerting.policy
    assert policy is not None and (policy.name, policy.version) == ("site-icu", 7)
    assert policy.condition("HR_HIGH").delay_s == 2
    unset = Settings.from_env({})
    assert unset.alerting.policy_file is None and unset.alerting.policy is None
    assert "conditions" not in repr(settings.alerting)  # the settings' description stays short


def test_a_bad_policy_file_is_refused_naming_the_key_and_what_is_wrong(tmp_path: Path) -> None:
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('{"name": "site", ', encoding="utf-8")
    bad_entry = site_policy(tmp_path / "bad-limit.json", HR_HIGH={"limit": "high"})
    bad_delay = site_policy(tmp_path / "bad-delay.json", SPO2_LOW={"delay_s": -5})
    cases = [
        (tmp_path / "missing.json", "no such file"),
        (tmp_path, "no such file"),  # a folder
        (bad_json, "not valid JSON"),
        (bad_entry, r"bad-limit.json:conditions.HR_HIGH.limit"),
        (bad_delay, r"bad-delay.json:conditions.SPO2_LOW.delay_s"),
    ]
    for path, what in cases:
        with pytest.raises(ConfigError, match=what) as caught:
            Settings.from_env({KEY: str(path)})
        assert caught.value.key == KEY
        assert str(caught.value).startswith(f"{KEY}: ")


def test_eicu_serve_with_a_bad_policy_file_stops_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = site_policy(tmp_path / "site.json", NEWS2_HIGH={"band": "extreme"})
    database = tmp_path / "eicu.sqlite"
    monkeypatch.setenv(KEY, str(bad))
    monkeypatch.setenv("EICU_DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.setenv("EICU_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("EICU_OUTBOX_PATH", str(tmp_path / "alarms.db"))
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert f"error: {KEY}: not a valid alarm policy" in err
    assert "conditions.NEWS2_HIGH.band" in err
    # refused at start: no store, spool or outbox was made
    assert not database.exists()
    assert not (tmp_path / "spool").exists()
    assert not (tmp_path / "alarms.db").exists()


def test_the_configured_policy_is_in_force_over_a_saved_state(tmp_path: Path) -> None:
    site = load_policy(site_policy(tmp_path / "site.json", HR_HIGH={"delay_s": 2}))

    def alarms(policy: AlarmPolicy | None) -> AlarmService:
        engine = Engine(
            MqttSettings(client_id="unused"),
            IngestSettings(spool_dir=tmp_path / "spool"),
            SqliteStore(tmp_path / "x.sqlite"),
            alarms_outbox=tmp_path / "alarms.db",
            alarm_policy=policy,
        )
        assert engine.alarms is not None
        return engine.alarms

    def restart(policy: AlarmPolicy | None) -> AlarmService:
        service = alarms(policy)
        service._save()  # the state, saved as at every alarm change
        service.outbox.close()
        return service

    default_s = load_policy().condition("HR_HIGH").delay_s
    assert default_s != 2
    assert restart(None).machine.policy_for(BED).condition("HR_HIGH").delay_s == default_s
    with_file = restart(site)
    assert with_file.machine.policy_for(BED).condition("HR_HIGH").delay_s == 2
    assert with_file.policy is site
    # the file taken away: the default policy again, not the one the state was saved with
    without = restart(None)
    assert without.machine.policy_for(BED).condition("HR_HIGH").delay_s == default_s
    assert without.policy.name == "default"


def _numerics(seq: int, hr: float) -> bytes:
    return wire.encode_numerics(NumericsFrame(BED, seq, time.time_ns() // 1000, {"HR": hr}))


@pytest.mark.broker
@pytest.mark.parametrize("delay_s", [1.0, 3.0])
async def test_the_site_policy_delay_decides_when_the_alarm_starts_in_eicu_serve(
    broker: Mosquitto, tmp_path: Path, delay_s: float
) -> None:
    """HR_HIGH waits 10 s in the default policy; the site's file makes it ``delay_s``. The alarm
    starts that long after the condition's onset (on the bed's clock), published on the bed's
    alarms topic by ``eicu serve``."""
    from eicu.commands.serve import serve

    path = site_policy(tmp_path / "site.json", HR_HIGH={"delay_s": delay_s})
    settings = Settings.from_env(
        {
            "EICU_MQTT_URL": broker.url,
            "EICU_MQTT_CLIENT_ID": "eicu-policy-test",
            "EICU_DATABASE_URL": f"sqlite:///{tmp_path / 'eicu.sqlite'}",
            "EICU_SPOOL_DIR": str(tmp_path / "spool"),
            "EICU_OUTBOX_PATH": str(tmp_path / "alarms.db"),
            "EICU_USERS_FILE": str(tmp_path / "users.json"),
            "EICU_HTTP_PORT": "0",
            "EICU_ANALYSE_SIGNALS": "0",
            "EICU_FLUSH_INTERVAL_S": "0.1",
            KEY: str(path),
        }
    )
    assert settings.mqtt is not None
    default_delay_s = load_policy().condition("HR_HIGH").delay_s
    assert default_delay_s >= 3 * delay_s
    stop = asyncio.Event()
    started = asyncio.Event()
    alarms: list[dict[str, object]] = []
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="site-icu") as site:
        await site.subscribe(wire.alarms_topic(BED), qos=1)

        async def listen() -> None:
            async for message in site.messages:
                doc = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                alarms.append(doc)
                if doc.get("kind") == "HR_HIGH" and doc.get("state") == "active":
                    started.set()

        listener = asyncio.create_task(listen())
        engine = asyncio.create_task(serve(settings, settings.mqtt, stop))
        seq = 0
        try:
            # A heart rate beyond the limit every 0.2 s until the alarm starts; what comes
            # before the engine subscribes is not seen, so the onset is the first value it saw.
            deadline = time.monotonic() + 60
            while not started.is_set() and time.monotonic() < deadline:
                seq += 1
                await site.publish(wire.numerics_topic(BED), _numerics(seq, 140.0), qos=1)
                await asyncio.sleep(0.2)
            assert started.is_set(), f"no HR_HIGH alarm; got {alarms}"
        finally:
            stop.set()
            await asyncio.wait_for(engine, 60)
            listener.cancel()
            with pytest.raises(asyncio.CancelledError):
                await listener
    active = next(a for a in alarms if a["kind"] == "HR_HIGH" and a["state"] == "active")
    onset_us = int(str(active["alarm_id"]).rsplit("/", 1)[1])
    waited_s = (int(str(active["time_us"])) - onset_us) / 1e6
    assert delay_s <= waited_s < delay_s + 1.5, waited_s
