"""Prometheus metrics of the engine, in a registry of the engine's own (one per engine, so tests
and embedded runs never collide), plus an exact latency recorder for the benchmarks."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)


class LatencyRecorder:
    """The last ``capacity`` latencies, for exact percentiles (vectorised, no per-value loop)."""

    def __init__(self, capacity: int = 1 << 20) -> None:
        self._buf = np.zeros(capacity, dtype=np.float64)
        self._n = 0

    def add(self, values_s: np.ndarray) -> None:
        values_s = np.asarray(values_s, dtype=np.float64)[-self._buf.shape[0] :]
        k = values_s.shape[0]
        start = self._n % self._buf.shape[0]
        first = min(k, self._buf.shape[0] - start)
        self._buf[start : start + first] = values_s[:first]
        self._buf[: k - first] = values_s[first:]
        self._n += k

    def percentiles(self, qs: tuple[float, ...] = (50, 99)) -> dict[float, float]:
        n = min(self._n, self._buf.shape[0])
        if n == 0:
            return {q: float("nan") for q in qs}
        values = np.percentile(self._buf[:n], qs)
        return {q: float(v) for q, v in zip(qs, values, strict=True)}

    @property
    def count(self) -> int:
        return self._n


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "eicu_ingest_messages", "Messages accepted, by kind", ["kind"], registry=r
        )
        self.samples = Counter(
            "eicu_ingest_samples", "Waveform samples and numeric values accepted", registry=r
        )
        self.rejected = Counter(
            "eicu_ingest_rejected", "Messages rejected, by reason", ["reason"], registry=r
        )
        self.internal_errors = Counter(
            "eicu_ingest_internal_errors",
            "Messages that tripped a fault in the engine (kept as dead letters)",
            registry=r,
        )
        self.duplicates = Counter(
            "eicu_ingest_duplicates", "Messages seen twice (dropped)", ["kind"], registry=r
        )
        self.redelivered_held = Counter(
            "eicu_ingest_redelivered_held",
            "Messages the broker sent again while this engine still held them unacknowledged "
            "(its ack_wait passed: the engine is further behind than its window allows); "
            "passed over",
            registry=r,
        )
        self.gaps = Counter(
            "eicu_ingest_gap_messages", "Messages missing in sequence gaps", ["kind"], registry=r
        )
        self.reordered = Counter(
            "eicu_ingest_reordered", "Messages that arrived out of order", ["kind"], registry=r
        )
        self.seq_resets = Counter(
            "eicu_ingest_sequence_resets", "Gateways that restarted their sequence", registry=r
        )
        self.clock_skew = Histogram(
            "eicu_ingest_clock_skew_seconds",
            "Device time minus receive time (absolute value)",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
            registry=r,
        )
        self.input_delay = Gauge(
            "eicu_ingest_input_delay_seconds",
            "How far behind its input the engine reads: the smallest of the sites' median delays "
            "of their beds' latest messages beyond their fastest",
            registry=r,
        )
        self.queue_frames = Gauge(
            "eicu_ingest_queue_frames", "Frames waiting for the store, in memory", registry=r
        )
        self.spool_frames = Gauge(
            "eicu_ingest_spool_frames", "Frames waiting for the store, spilled to disk", registry=r
        )
        self.store_lag = Gauge(
            "eicu_store_lag_seconds", "Age of the oldest frame not yet stored", registry=r
        )
        self.store_latency = Histogram(
            "eicu_store_latency_seconds",
            "Receive-to-stored latency per frame, by kind",
            ["kind"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.store_writes = Counter("eicu_store_writes", "Batches written", registry=r)
        self.store_failures = Counter(
            "eicu_store_write_failures", "Batch writes that failed (retried)", ["error"], registry=r
        )
        self.mqtt_connected = Gauge("eicu_mqtt_connected", "1 while connected", registry=r)
        self.mqtt_reconnects = Counter(
            "eicu_mqtt_reconnects", "Broker connections lost", registry=r
        )
        self.beds = Gauge("eicu_beds", "Beds known, by state", ["state"], registry=r)
        # Admission control (ingest/admission.py) and byte bounds.
        self.refused = Counter(
            "eicu_ingest_refused",
            "Messages refused before decoding, by reason (unknown_site, unknown_bed, "
            "new_bed_rate, site_bed_cap, rate_limited, engine_overloaded)",
            ["reason"],
            registry=r,
        )
        self.refused_bytes = Counter(
            "eicu_ingest_refused_bytes", "Bytes of the messages refused before decoding", registry=r
        )
        self.beds_registered = Gauge(
            "eicu_beds_registered", "Beds registered in the beds file", registry=r
        )
        self.beds_admitted = Counter(
            "eicu_beds_auto_registered", "Beds admitted by auto-registration", registry=r
        )
        self.queue_bytes = Gauge(
            "eicu_ingest_queue_bytes",
            "Bytes of frames waiting for the store, in memory",
            registry=r,
        )
        self.mqtt_queue_bytes = Gauge(
            "eicu_ingest_mqtt_queue_bytes",
            "Bytes of messages received from the broker, not yet handled",
            registry=r,
        )
        self.device_time_faults = Counter(
            "eicu_ingest_device_time_faults",
            "Messages whose device time was outside the engine's window on arrival, by kind and "
            "direction (ahead, behind)",
            ["kind", "direction"],
            registry=r,
        )
        self.clock_steps = Counter(
            "eicu_ingest_device_clock_steps",
            "Messages whose device time jumped from their bed's clock (held at their receipt "
            "time), and steps of a bed's clock adopted after confirmation, by outcome",
            ["outcome"],
            registry=r,
        )
        self.standby_expired = Counter(
            "eicu_ingest_standby_expired",
            "Standby states ignored because they were older than their lifetime on arrival",
            registry=r,
        )
        self.latency = LatencyRecorder()  # numerics, receive to stored
        self.waveform_latency = LatencyRecorder()  # waveforms, receive to stored
        # numerics, from the device's measurement time to stored: includes the gateway, the
        # broker and any queue in front of the engine (meaningful when clocks agree)
        self.device_latency = LatencyRecorder()


class StoreMetrics:
    """The store's housekeeping: TimescaleDB background jobs, values stored at their receipt
    time because the device clock was not sane, late data refreshed into the trends."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        job = ["job", "proc", "table"]
        self.job_last_run = Gauge(
            "eicu_store_job_last_run_timestamp_seconds",
            "Start of the last run of a TimescaleDB background job (Unix time)",
            job,
            registry=r,
        )
        self.job_last_success = Gauge(
            "eicu_store_job_last_success_timestamp_seconds",
            "End of the last successful run of a TimescaleDB background job (Unix time)",
            job,
            registry=r,
        )
        self.job_failures = Gauge(
            "eicu_store_job_failures",
            "Failed runs of a TimescaleDB background job since the job was created",
            job,
            registry=r,
        )
        self.job_failing = Gauge(
            "eicu_store_job_failing",
            "1 while the last run of a TimescaleDB background job failed",
            job,
            registry=r,
        )
        self.device_time_replaced = Counter(
            "eicu_store_device_time_replaced",
            "Rows stored at their receipt time because the device time was far from it",
            ["kind"],
            registry=r,
        )
        self.trend_refreshes = Counter(
            "eicu_store_trend_refreshes",
            "Refreshes of the trend aggregate over backfilled (late) numerics",
            registry=r,
        )
        self.pruned = Counter(
            "eicu_store_pruned_rows",
            "Status events and dead letters removed after their retention",
            ["table"],
            registry=r,
        )
