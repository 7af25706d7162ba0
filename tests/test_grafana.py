"""The Grafana dashboard's queries run against the real schema (numerics, waveforms, dead
letters, the 1-minute trends, alarm events), with Grafana's macros expanded as Grafana does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
import pytest

from eicu.store.pg import PgStore

pytestmark = pytest.mark.db

DASHBOARD = Path(__file__).resolve().parent.parent / "dashboards" / "grafana" / "eicu-overview.json"


def _expand(sql: str) -> str:
    sql = re.sub(
        r"\$__timeGroupAlias\((\w+(?:\.\w+)?), '(\d+)([mh])'\)",
        lambda m: (
            f"date_bin('{m[2]} {'minutes' if m[3] == 'm' else 'hours'}', {m[1]}, "
            f"TIMESTAMPTZ '2000-01-01') AS time"
        ),
        sql,
    )
    sql = re.sub(r"\$__timeFilter\((\w+(?:\.\w+)?)\)", r"\1 > now() - INTERVAL '6 hours'", sql)
    return sql.replace("$site", "'karamay'")


async def test_every_panel_query_runs_on_the_schema(db_url: str) -> None:
    store = PgStore(db_url)
    await store.open()
    await store.close()
    doc = json.loads(DASHBOARD.read_text())
    queries = [t["rawSql"] for p in doc["panels"] for t in p["targets"]]
    queries.append(doc["templating"]["list"][0]["query"])
    assert len(queries) >= 9
    with psycopg.connect(db_url) as conn:
        for sql in queries:
            assert "$" not in _expand(sql), sql
            conn.execute(_expand(sql)).fetchall()  # raises on any error in the SQL
