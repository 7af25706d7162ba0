"""Everything TimescaleDB-specific, kept small: the statements run only when the extension is
present and preloaded. The tables and queries are the same with and without it; these
statements turn the tables into hypertables and add compression, retention and the 1-minute
continuous aggregate.

Policies follow their settings: every start compares each background job's configuration
with :class:`RetentionPolicy` and replaces the job when they differ, and sets the chunk
intervals (which apply to chunks created from then on).

References: TimescaleDB 2.x API, ``create_hypertable``, ``set_chunk_time_interval``,
``ALTER TABLE ... SET (timescaledb.compress ...)``, ``add_compression_policy``,
``add_retention_policy``, ``add_continuous_aggregate_policy``, ``refresh_continuous_aggregate``
and the ``timescaledb_information`` views (``jobs``, ``job_stats``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from eicu.config import StoreSettings

DAY_S = 86_400
HOUR_S = 3_600

# What a bed sends, for sizing chunks: about 8 numeric values a second, and about 1.2 bytes on
# disk per waveform sample at about 1000 samples a second (README, benchmarks/storage.py).
NUMERIC_VALUES_PER_BED_S = 8
WAVEFORM_BYTES_PER_BED_S = 1_200
# A chunk of numerics holds about this many rows (a few GB with its index, before compression);
# a chunk of waveform segments about this many bytes.
NUMERICS_ROWS_PER_CHUNK = 25_000_000
WAVEFORM_BYTES_PER_CHUNK = 2_000_000_000

# A support state of the server: decides between the hypertables and the plain fallback.
Plan = Literal["timescale", "plain"]


def _chunk_s(per_chunk: float, per_bed_s: float, beds: int) -> int:
    """Whole hours, between 1 hour and 7 days."""
    seconds = per_chunk / (per_bed_s * max(beds, 1))
    return int(min(max(seconds // HOUR_S, 1), 7 * 24)) * HOUR_S


def numerics_chunk_s(beds: int) -> int:
    """The chunk interval of ``numerics`` for a unit of ``beds`` beds."""
    return _chunk_s(NUMERICS_ROWS_PER_CHUNK, NUMERIC_VALUES_PER_BED_S, beds)


def waveforms_chunk_s(beds: int) -> int:
    """The chunk interval of ``waveforms`` for a unit of ``beds`` beds."""
    return _chunk_s(WAVEFORM_BYTES_PER_CHUNK, WAVEFORM_BYTES_PER_BED_S, beds)


@dataclass(frozen=True)
class RetentionPolicy:
    """How long data is kept and when it is compressed (operational, not clinical). Seconds."""

    beds: int = 20  # the unit's size: chunk intervals scale with it
    numerics_compress_after_s: int = 2 * DAY_S
    numerics_keep_s: int = 400 * DAY_S
    waveforms_keep_s: int = 35 * DAY_S
    trends_keep_s: int = 5 * 365 * DAY_S
    trends_compress_after_s: int = 7 * DAY_S
    # status_events and dead_letters (pruned by the store itself on every backend)
    events_keep_s: int = 90 * DAY_S
    # The continuous aggregate's refresh window; data older than the window when it is written
    # is refreshed by the store itself (see PgStore.refresh_trends).
    trends_refresh_window_s: int = 3 * HOUR_S

    @property
    def numerics_chunk_s(self) -> int:
        return numerics_chunk_s(self.beds)

    @property
    def waveforms_chunk_s(self) -> int:
        return waveforms_chunk_s(self.beds)

    @property
    def late_after_s(self) -> int:
        """Numerics older than this when written are refreshed into the aggregate at once: the
        refresh policy's window less a margin for its schedule."""
        return max(self.trends_refresh_window_s - 15 * 60, 60)


def plan(mode: str, available: bool, preloaded: bool, installed: bool) -> tuple[Plan, str]:
    """What to do with the server as found: ``("timescale", "")`` or ``("plain", why)``.

    Raises :class:`~eicu.errors.SchemaError` where falling back would be wrong: the operator
    required TimescaleDB, or the database already holds hypertables the server cannot use.
    """
    from eicu.errors import SchemaError

    preload_hint = (
        "add timescaledb to shared_preload_libraries in postgresql.conf "
        "(shared_preload_libraries = 'timescaledb') and restart PostgreSQL"
    )
    if mode == "off":
        if installed and preloaded:
            raise SchemaError(
                "EICU_TIMESCALE=off but this database already uses TimescaleDB; "
                "set EICU_TIMESCALE=auto or require"
            )
        return "plain", "EICU_TIMESCALE=off"
    if available and preloaded:
        return "timescale", ""
    if available and not preloaded:
        if mode == "require" or installed:
            what = "required" if mode == "require" else "used by this database"
            raise SchemaError(
                f"TimescaleDB is {what} and installed on the server but not preloaded: "
                f"{preload_hint}"
            )
        return "plain", f"TimescaleDB is installed but not preloaded ({preload_hint})"
    if mode == "require":
        raise SchemaError(
            "TimescaleDB is required but unavailable: the server has no timescaledb extension"
        )
    return "plain", "the server has no timescaledb extension"


SERVER_STATE = """SELECT
    EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),
    'timescaledb' = ANY (string_to_array(
        replace(current_setting('shared_preload_libraries'), ' ', ''), ',')),
    EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"""

IS_CAGG = """SELECT EXISTS (SELECT 1 FROM timescaledb_information.continuous_aggregates
             WHERE view_name = 'numerics_1m')"""

COMPRESSION_ENABLED = (
    "SELECT compression_enabled FROM timescaledb_information.hypertables WHERE hypertable_name = %s"
)

HYPERTABLES = (
    "SELECT create_hypertable('numerics', 'time', chunk_time_interval => %s * INTERVAL "
    "'1 second', if_not_exists => TRUE, migrate_data => TRUE)",
    "SELECT create_hypertable('waveforms', 'time', chunk_time_interval => %s * INTERVAL "
    "'1 second', if_not_exists => TRUE, migrate_data => TRUE)",
)

# Compression settings cannot be changed once chunks are compressed, so they are applied only
# while compression is off. Waveform segments are compressed by the project's codec already
# (TimescaleDB's compression gains a few per cent on them), so they are left uncompressed.
NUMERICS_COMPRESSION = (
    "ALTER TABLE numerics SET (timescaledb.compress, "
    "timescaledb.compress_segmentby = 'bed_id, code', "
    "timescaledb.compress_orderby = 'time, seq')"
)

CAGG = """CREATE MATERIALIZED VIEW IF NOT EXISTS numerics_1m
    WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
    SELECT time_bucket('1 minute', time) AS bucket, bed_id, code,
           avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value,
           count(value) AS n_values
    FROM numerics GROUP BY 1, 2, 3 WITH NO DATA"""

CAGG_INDEX = "CREATE INDEX IF NOT EXISTS numerics_1m_bed_code ON numerics_1m (bed_id, code, bucket)"
CAGG_COMPRESSION = "ALTER MATERIALIZED VIEW numerics_1m SET (timescaledb.compress = true)"
CAGG_COMPRESSED = """SELECT compression_enabled FROM timescaledb_information.continuous_aggregates
    WHERE view_name = 'numerics_1m'"""

# Backfilled numerics waiting to be refreshed into the aggregate (written in the same
# transaction as the data, so a crash between the two loses nothing).
PENDING_TABLE = """CREATE TABLE IF NOT EXISTS trends_pending (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lo timestamptz NOT NULL, hi timestamptz NOT NULL)"""


@dataclass(frozen=True)
class Job:
    """One background job as it should be: ``proc`` on ``table`` with ``config`` (seconds),
    or absent when ``config`` is None."""

    proc: str  # policy_compression, policy_retention, policy_refresh_continuous_aggregate
    table: str
    config: dict[str, int] | None
    schedule_s: int | None = None


def jobs(policy: RetentionPolicy) -> tuple[Job, ...]:
    p = policy
    return (
        Job("policy_compression", "numerics", {"compress_after": p.numerics_compress_after_s}),
        Job("policy_compression", "waveforms", None),
        Job("policy_retention", "numerics", {"drop_after": p.numerics_keep_s}),
        Job("policy_retention", "waveforms", {"drop_after": p.waveforms_keep_s}),
        Job(
            "policy_refresh_continuous_aggregate",
            "numerics_1m",
            {"start_offset": p.trends_refresh_window_s, "end_offset": 60},
            schedule_s=60,
        ),
        Job("policy_compression", "numerics_1m", {"compress_after": p.trends_compress_after_s}),
        Job("policy_retention", "numerics_1m", {"drop_after": p.trends_keep_s}),
    )


# A job's current configuration: intervals as seconds (NULL when the job is absent).
JOB_CONFIG = """SELECT j.job_id, j.config, extract(epoch FROM j.schedule_interval)::bigint
    FROM timescaledb_information.jobs j
    LEFT JOIN timescaledb_information.continuous_aggregates c
      ON c.materialization_hypertable_schema = j.hypertable_schema
     AND c.materialization_hypertable_name = j.hypertable_name
    WHERE j.proc_name = %s AND coalesce(c.view_name, j.hypertable_name) = %s"""

INTERVAL_S = "SELECT extract(epoch FROM %s::interval)::bigint"

REMOVE = {
    "policy_compression": "SELECT remove_compression_policy(%s, if_exists => TRUE)",
    "policy_retention": "SELECT remove_retention_policy(%s, if_exists => TRUE)",
    "policy_refresh_continuous_aggregate": (
        "SELECT remove_continuous_aggregate_policy(%s, if_exists => TRUE)"
    ),
}


def add_job_sql(job: Job) -> tuple[str, tuple[object, ...]]:
    """The statement that creates ``job`` (its config present) and its parameters."""
    cfg = job.config or {}
    sec = "%s * INTERVAL '1 second'"
    if job.proc == "policy_compression":
        return (
            f"SELECT add_compression_policy(%s, compress_after => {sec})",
            (job.table, cfg["compress_after"]),
        )
    if job.proc == "policy_retention":
        return (
            f"SELECT add_retention_policy(%s, drop_after => {sec})",
            (job.table, cfg["drop_after"]),
        )
    return (
        f"SELECT add_continuous_aggregate_policy(%s, start_offset => {sec}, "
        f"end_offset => {sec}, schedule_interval => {sec})",
        (job.table, cfg["start_offset"], cfg["end_offset"], job.schedule_s or 60),
    )


# Job health, per job (for the Prometheus gauges and the log).
JOB_STATS = """SELECT j.job_id, j.proc_name, coalesce(c.view_name, j.hypertable_name),
       extract(epoch FROM s.last_run_started_at), extract(epoch FROM s.last_successful_finish),
       s.last_run_status, s.total_runs, s.total_failures
    FROM timescaledb_information.jobs j
    JOIN timescaledb_information.job_stats s USING (job_id)
    LEFT JOIN timescaledb_information.continuous_aggregates c
      ON c.materialization_hypertable_schema = j.hypertable_schema
     AND c.materialization_hypertable_name = j.hypertable_name
    WHERE j.job_id >= 1000"""  # the database's own jobs, not TimescaleDB's internal ones


def policy_from(settings: StoreSettings) -> RetentionPolicy:
    """The policy of the store's settings (days and hours to seconds)."""
    s = settings
    return RetentionPolicy(
        beds=s.beds,
        numerics_compress_after_s=round(s.numerics_compress_after_h * HOUR_S),
        numerics_keep_s=round(s.numerics_keep_days * DAY_S),
        waveforms_keep_s=round(s.waveforms_keep_days * DAY_S),
        trends_keep_s=round(s.trends_keep_days * DAY_S),
        trends_compress_after_s=round(s.trends_compress_after_days * DAY_S),
        events_keep_s=round(s.events_keep_days * DAY_S),
        trends_refresh_window_s=round(s.trends_refresh_window_h * HOUR_S),
    )


LAST_ERROR = """SELECT err_message FROM timescaledb_information.job_history
    WHERE job_id = %s AND NOT succeeded ORDER BY id DESC LIMIT 1"""
