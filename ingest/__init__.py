"""MQTT ingest: decode, per-bed state, hand-off to the pipeline and the store."""
