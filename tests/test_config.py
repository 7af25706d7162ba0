"""Settings from URLs and the environment: errors name the key, secrets never print."""

from __future__ import annotations

import pytest

from eicu.config import MqttSettings, Settings, SmtpSettings
from eicu.errors import ConfigError


def test_broker_and_smtp_urls() -> None:
    m = MqttSettings.from_url("mqtt://gw:p%40ss@broker.example:1884")
    assert (m.host, m.port, m.username, m.password) == ("broker.example", 1884, "gw", "p@ss")
    assert "p@ss" not in repr(m)
    s = SmtpSettings.from_url("smtp+starttls://mail.example")
    assert (s.host, s.port, s.starttls) == ("mail.example", 25, True)


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"EICU_MQTT_URL": "http://broker"}, "EICU_MQTT_URL"),
        ({"EICU_MQTT_URL": "mqtt://broker:99999"}, "EICU_MQTT_URL"),
        ({"EICU_MQTT_URL": "mqtt://"}, "EICU_MQTT_URL"),
        ({"EICU_DATABASE_URL": "mysql://db"}, "EICU_DATABASE_URL"),
        ({"EICU_FLUSH_INTERVAL_S": "fast"}, "EICU_FLUSH_INTERVAL_S"),
        ({"EICU_ANALYSE_SIGNALS": "maybe"}, "EICU_ANALYSE_SIGNALS"),
        ({"EICU_SMTP_URL": "ftp://mail"}, "EICU_SMTP_URL"),
        ({"EICU_STATE_PERIOD_S": "-1"}, "EICU_STATE_PERIOD_S"),
        ({"EICU_STATE_PERIOD_S": "often"}, "EICU_STATE_PERIOD_S"),
    ],
)
def test_bad_settings_name_their_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.key == key


def test_database_url_is_masked() -> None:
    settings = Settings.from_env({"EICU_DATABASE_URL": "postgresql://u:secret@db/eicu"})
    assert "secret" not in repr(settings.database_url)
    assert "secret" not in str(settings.describe())


def test_store_settings_from_the_environment() -> None:
    from eicu.config import StoreSettings

    s = Settings.from_env(
        {"EICU_TIMESCALE": "Require", "EICU_EXPECTED_BEDS": "200", "EICU_WAVEFORMS_KEEP_DAYS": "10"}
    ).store
    assert (s.timescale, s.beds, s.waveforms_keep_days) == ("require", 200, 10.0)
    assert Settings.from_env({}).store == StoreSettings()
    with pytest.raises(ConfigError, match="EICU_TIMESCALE"):
        Settings.from_env({"EICU_TIMESCALE": "maybe"})
    with pytest.raises(ConfigError, match=r"EICU_DEVICE_TIME_MAX_LAG_H.*retention"):
        Settings.from_env({"EICU_WAVEFORMS_KEEP_DAYS": "5", "EICU_DEVICE_TIME_MAX_LAG_H": "200"})
    with pytest.raises(ConfigError, match="EICU_TRENDS_COMPRESS_AFTER_DAYS"):
        Settings.from_env(
            {"EICU_TRENDS_COMPRESS_AFTER_DAYS": "1", "EICU_TRENDS_REFRESH_WINDOW_H": "48"}
        )


def test_the_beds_state_is_published_as_set_or_as_the_command_decides() -> None:
    assert Settings.from_env({}).ingest.state_period_s is None  # the command's default
    assert Settings.from_env({"EICU_STATE_PERIOD_S": "0.5"}).ingest.state_period_s == 0.5
    assert Settings.from_env({"EICU_STATE_PERIOD_S": "0"}).ingest.state_period_s == 0.0  # never
    m = MqttSettings.from_url("mqtt://hub:pw@broker", client_id="hub")
    assert (m.for_state().client_id, m.for_state().username) == ("hub-state", "hub-state")
