"""Shared fixtures. Service fixtures (Mosquitto, PostgreSQL) live in tests/services.py."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from eicu.datasets import data_dir, missing_reason
from eicu.devservices import Mosquitto, Postgres, ServiceError
from eicu.store import Store, open_store


@pytest.fixture(scope="session")
def physionet() -> Path:
    """The PhysioNet data folder; skips the test when it is absent."""
    reason = missing_reason(".")
    if reason:
        pytest.skip(reason)
    return data_dir()


def require_data(*relative: str) -> Path:
    """Skip the calling test unless every path exists under the data folder."""
    reason = missing_reason(*relative)
    if reason:
        pytest.skip(reason)
    return data_dir()


# --- real services --------------------------------------------------------------------------------

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Postgres]:
    """A PostgreSQL server of the test session's own, on a free port."""
    try:
        server = Postgres().start()
    except ServiceError as exc:
        pytest.fail(f"cannot start PostgreSQL for the tests: {exc}")
    yield server
    server.cleanup()


@pytest.fixture
def db_url(pg_server: Postgres) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.create_database(f"t{next(_db_counter)}")


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """The store on a fresh database, opened (schema applied); closed after the test."""
    s = open_store(db_url)
    await s.open()
    yield s
    await s.close()


@pytest.fixture(params=["postgresql", "sqlite"])
async def store_of_each_kind(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Store]:
    """The store on a fresh PostgreSQL database, then on a fresh SQLite file: a test that uses
    it runs once for each."""
    if request.param == "postgresql":
        url = request.getfixturevalue("db_url")
    else:
        url = f"sqlite:///{tmp_path / 'eicu.sqlite'}"
    s = open_store(url)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    """A Mosquitto broker of this test's own, on a free port."""
    try:
        server = Mosquitto().start()
    except ServiceError as exc:
        pytest.fail(f"cannot start Mosquitto for the tests: {exc}")
    yield server
    server.cleanup()
