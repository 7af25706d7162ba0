"""Storage: PostgreSQL with TimescaleDB when present, SQLite for the embedded demo."""
