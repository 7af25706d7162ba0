"""The schema, as numbered migrations. Plain PostgreSQL SQL only: what TimescaleDB adds on top
lives in :mod:`eicu.store.timescale`, so both run the same tables through one code path.

Times are ``timestamptz`` (the patient tables' are integer microseconds, see
:mod:`eicu.store.patients`). Numerics are narrow rows (one value each); waveforms are one row per
received frame holding every signal of the frame in the container of :mod:`eicu.store.segments`.
The unique keys make every write idempotent: a batch written twice (after a lost commit
acknowledgement, or a redelivered message) stores each sample once.
"""

from __future__ import annotations

from dataclasses import dataclass

from eicu.store.patients import tables as patient_tables
from eicu.store.sessions import TABLES as session_tables


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "beds, numerics, waveforms, status, dead letters",
        (
            """CREATE TABLE IF NOT EXISTS beds (
                bed_id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                site text NOT NULL,
                bed text NOT NULL,
                first_seen timestamptz NOT NULL DEFAULT now(),
                UNIQUE (site, bed))""",
            """CREATE TABLE IF NOT EXISTS numerics (
                time timestamptz NOT NULL,
                bed_id integer NOT NULL,
                code smallint NOT NULL,
                value double precision,
                seq bigint NOT NULL,
                received timestamptz NOT NULL)""",
            "CREATE UNIQUE INDEX IF NOT EXISTS numerics_key ON numerics (bed_id, code, time, seq)",
            """CREATE TABLE IF NOT EXISTS waveforms (
                time timestamptz NOT NULL,
                bed_id integer NOT NULL,
                seq bigint NOT NULL,
                n_frames integer NOT NULL,
                duration_us integer NOT NULL,
                n_samples integer NOT NULL,
                data bytea NOT NULL,
                received timestamptz NOT NULL)""",
            "CREATE UNIQUE INDEX IF NOT EXISTS waveforms_key ON waveforms (bed_id, time, seq)",
            """CREATE TABLE IF NOT EXISTS status_events (
                time timestamptz NOT NULL,
                site text NOT NULL,
                bed text NOT NULL DEFAULT '',
                gateway text NOT NULL DEFAULT '',
                state text NOT NULL,
                beds text[] NOT NULL DEFAULT '{}',
                device_time timestamptz)""",
            """CREATE UNIQUE INDEX IF NOT EXISTS status_events_key
                ON status_events (site, bed, gateway, time, state)""",
            """CREATE TABLE IF NOT EXISTS dead_letters (
                received timestamptz NOT NULL,
                topic text NOT NULL,
                reason text NOT NULL,
                detail text NOT NULL,
                payload bytea NOT NULL)""",
            """CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_key
                ON dead_letters (received, topic, reason)""",
        ),
    ),
    Migration(
        2,
        "consult calls: the audit of video consults",
        (
            # outcome: completed, unanswered, busy, failed, refused; NULL while the call is open
            """CREATE TABLE IF NOT EXISTS consult_calls (
                call_id text PRIMARY KEY,
                site text NOT NULL,
                bed text NOT NULL,
                caller text NOT NULL,
                cart text NOT NULL DEFAULT '',
                alarm_id text NOT NULL DEFAULT '',
                started timestamptz NOT NULL,
                answered timestamptz,
                ended timestamptz,
                outcome text,
                end_reason text NOT NULL DEFAULT '',
                ended_by text NOT NULL DEFAULT '')""",
            """CREATE INDEX IF NOT EXISTS consult_calls_bed
                ON consult_calls (site, bed, started)""",
        ),
    ),
    Migration(
        3,
        "per-bed counters, latest values, device times kept beside receipt times",
        (
            # Set only where the device time was not trusted and the row was stored at its
            # receipt time instead (see PgStore): the device's own time, kept for review.
            "ALTER TABLE numerics ADD COLUMN IF NOT EXISTS device_time timestamptz",
            "ALTER TABLE waveforms ADD COLUMN IF NOT EXISTS device_time timestamptz",
            # What each bed has stored (messages and samples), kept at write time so `eicu
            # stats` reads one row per bed; retention does not subtract from it.
            """CREATE TABLE IF NOT EXISTS bed_counters (
                bed_id integer PRIMARY KEY,
                messages bigint NOT NULL DEFAULT 0,
                samples bigint NOT NULL DEFAULT 0)""",
            """INSERT INTO bed_counters (bed_id, messages, samples)
               SELECT bed_id, sum(m), sum(s) FROM (
                   SELECT bed_id, count(*) AS m, sum(k) AS s
                   FROM (SELECT bed_id, count(*) AS k FROM numerics
                         GROUP BY bed_id, time, seq) f GROUP BY bed_id
                   UNION ALL
                   SELECT bed_id, sum(n_frames), sum(n_samples) FROM waveforms GROUP BY bed_id
               ) u GROUP BY bed_id
               ON CONFLICT (bed_id) DO NOTHING""",
            # The newest value of each parameter of each bed, kept at write time.
            """CREATE TABLE IF NOT EXISTS latest_values (
                bed_id integer NOT NULL,
                code smallint NOT NULL,
                time timestamptz NOT NULL,
                seq bigint NOT NULL,
                value double precision,
                PRIMARY KEY (bed_id, code))""",
            """INSERT INTO latest_values (bed_id, code, time, seq, value)
               SELECT DISTINCT ON (bed_id, code) bed_id, code, time, seq, value FROM numerics
               ORDER BY bed_id, code, time DESC, seq DESC
               ON CONFLICT (bed_id, code) DO NOTHING""",
            "CREATE INDEX IF NOT EXISTS status_events_time ON status_events (time)",
        ),
    ),
    Migration(
        4,
        "alarm events and delivery receipts",
        (
            # The audit trail, copied from the alarm outboxes. event_id is the digest of the
            # change (alarm id, state, time, actor, reason, audio pause): every process that
            # copies the same change inserts the same key, and the first insert stands.
            # Before this migration these two tables had a migration runner of their own
            # (alarm_schema_migrations, whose version 1 created them as below): a database
            # that has them keeps them and their rows, and that runner's record goes.
            """CREATE TABLE IF NOT EXISTS alarm_events (
                event_id text PRIMARY KEY,
                alarm_id text NOT NULL,
                site text NOT NULL,
                bed text NOT NULL,
                kind text NOT NULL,
                priority text NOT NULL,
                category text NOT NULL,
                state text NOT NULL,
                time timestamptz NOT NULL,
                actor text NOT NULL,
                reason text NOT NULL,
                audio_paused_until timestamptz,
                recorded timestamptz NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS alarm_events_alarm ON alarm_events (alarm_id, time)",
            "CREATE INDEX IF NOT EXISTS alarm_events_time ON alarm_events (time)",
            # One row per notification, keyed by its idempotency key; copies merge (a time once
            # set stays, the attempts only grow).
            """CREATE TABLE IF NOT EXISTS alarm_deliveries (
                key text PRIMARY KEY,
                alarm_id text NOT NULL,
                recipient text NOT NULL,
                channel text NOT NULL,
                address text NOT NULL,
                enqueued timestamptz NOT NULL,
                sent timestamptz,
                delivered timestamptz,
                acknowledged timestamptz,
                acknowledged_by text,
                attempts integer NOT NULL,
                last_error text NOT NULL,
                failed timestamptz,
                cancelled timestamptz)""",
            "CREATE INDEX IF NOT EXISTS alarm_deliveries_alarm ON alarm_deliveries (alarm_id)",
            "DROP TABLE IF EXISTS alarm_schema_migrations",
        ),
    ),
    Migration(
        5,
        "patients, their stays, notes and the log of their changes",
        # times as integer microseconds, as in SQLite: one logic for both (eicu.store.patients)
        patient_tables("bigserial PRIMARY KEY"),
    ),
    Migration(6, "dashboard sessions shared by the dashboard processes", session_tables),
    Migration(
        7,
        "the monitors that bed statuses name (times as integer microseconds)",
        (
            """CREATE TABLE IF NOT EXISTS bed_devices (
                site text NOT NULL,
                bed text NOT NULL,
                device_id text NOT NULL,
                id_type text NOT NULL,
                first_seen bigint NOT NULL,
                last_seen bigint NOT NULL,
                PRIMARY KEY (site, bed, device_id, id_type))""",
        ),
    ),
)

# The 1-minute trend relation, for plain PostgreSQL. With TimescaleDB the same name is a
# continuous aggregate with the same columns (see eicu.store.timescale).
PLAIN_TRENDS_VIEW = """CREATE OR REPLACE VIEW numerics_1m AS
    SELECT date_bin('1 minute', time, TIMESTAMPTZ '2000-01-01') AS bucket,
           bed_id, code,
           avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value,
           count(value) AS n_values
    FROM numerics GROUP BY 1, 2, 3"""

LATEST_VERSION = MIGRATIONS[-1].version
