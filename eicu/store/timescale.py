"""Everything TimescaleDB-specific, kept small: the statements run only when the extension is
present (``CREATE EXTENSION timescaledb`` succeeded). The tables and queries are the same with
and without it; these statements turn the tables into hypertables and add compression,
retention and the 1-minute continuous aggregate.

References: TimescaleDB 2.x API, ``create_hypertable``, ``ALTER TABLE ... SET
(timescaledb.compress ...)``, ``add_compression_policy``, ``add_retention_policy``, continuous
aggregates with ``add_continuous_aggregate_policy``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetentionPolicy:
    """How long data is kept and when chunks are compressed (operational, not clinical)."""

    numerics_chunk: str = "1 day"
    waveforms_chunk: str = "1 hour"
    numerics_compress_after: str = "2 days"
    waveforms_compress_after: str = "6 hours"
    numerics_keep: str = "400 days"
    waveforms_keep: str = "35 days"
    trends_keep: str = "5 years"


# Compression settings cannot be changed once chunks are compressed, so they are applied only
# while compression is off for the table.
COMPRESSION_ENABLED = (
    "SELECT compression_enabled FROM timescaledb_information.hypertables WHERE hypertable_name = %s"
)


def statements(policy: RetentionPolicy) -> tuple[str, ...]:
    """Idempotent statements, each run in its own transaction (autocommit). An ``ALTER TABLE``
    that turns compression on runs only when :data:`COMPRESSION_ENABLED` says it is off."""
    p = policy
    return (
        "SELECT create_hypertable('numerics', 'time', "
        f"chunk_time_interval => INTERVAL '{p.numerics_chunk}', if_not_exists => TRUE, "
        "migrate_data => TRUE)",
        "SELECT create_hypertable('waveforms', 'time', "
        f"chunk_time_interval => INTERVAL '{p.waveforms_chunk}', if_not_exists => TRUE, "
        "migrate_data => TRUE)",
        "ALTER TABLE numerics SET (timescaledb.compress, "
        "timescaledb.compress_segmentby = 'bed_id, code', "
        "timescaledb.compress_orderby = 'time, seq')",
        "ALTER TABLE waveforms SET (timescaledb.compress, "
        "timescaledb.compress_segmentby = 'bed_id', timescaledb.compress_orderby = 'time, seq')",
        "SELECT add_compression_policy('numerics', "
        f"compress_after => INTERVAL '{p.numerics_compress_after}', if_not_exists => TRUE)",
        "SELECT add_compression_policy('waveforms', "
        f"compress_after => INTERVAL '{p.waveforms_compress_after}', if_not_exists => TRUE)",
        "SELECT add_retention_policy('numerics', "
        f"drop_after => INTERVAL '{p.numerics_keep}', if_not_exists => TRUE)",
        "SELECT add_retention_policy('waveforms', "
        f"drop_after => INTERVAL '{p.waveforms_keep}', if_not_exists => TRUE)",
        """CREATE MATERIALIZED VIEW IF NOT EXISTS numerics_1m
            WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
            SELECT time_bucket('1 minute', time) AS bucket, bed_id, code,
                   avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value,
                   count(value) AS n_values
            FROM numerics GROUP BY 1, 2, 3 WITH NO DATA""",
        "SELECT add_continuous_aggregate_policy('numerics_1m', "
        "start_offset => INTERVAL '3 hours', end_offset => INTERVAL '1 minute', "
        "schedule_interval => INTERVAL '1 minute', if_not_exists => TRUE)",
        "SELECT add_retention_policy('numerics_1m', "
        f"drop_after => INTERVAL '{p.trends_keep}', if_not_exists => TRUE)",
    )
