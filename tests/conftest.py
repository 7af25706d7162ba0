"""Shared fixtures. Service fixtures (Mosquitto, PostgreSQL) live in tests/services.py."""

from __future__ import annotations

import faulthandler
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from eicu.datasets import data_dir, missing_reason
from eicu.devservices import Mosquitto, Postgres, ServiceError
from eicu.store import Store, open_store
from tests.alarm_servers import HookServer


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


# --- a test that hangs where no signal reaches it ------------------------------------------------
# pytest-timeout (300 s, pyproject.toml) raises in the main thread, which a call stuck in compiled
# code never sees. faulthandler's watchdog is a C thread: past WATCHDOG_S it writes every thread's
# stack to a file and ends the process. Under xdist the worker's loss fails that test, a new worker
# takes the rest, and the run's summary prints the stacks.

WATCHDOG_S = float(os.environ.get("EICU_TEST_WATCHDOG_S", "420"))
_HANG_DIR = "EICU_TEST_HANG_DIR"
_hang_file = None
_hang_dir_own = False


def pytest_configure(config: pytest.Config) -> None:
    global _hang_file, _hang_dir_own
    if _HANG_DIR not in os.environ:  # the controller (or a run without xdist) makes the folder
        os.environ[_HANG_DIR] = tempfile.mkdtemp(prefix="eicu-test-hangs-")
        _hang_dir_own = True
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    path = Path(os.environ[_HANG_DIR]) / f"{worker}-{os.getpid()}.txt"
    _hang_file = path.open("w")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _hang_file is not None:
        _hang_file.close()
    if _hang_dir_own:
        shutil.rmtree(os.environ.pop(_HANG_DIR), ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    if _hang_file is not None and not _hang_file.closed:
        _hang_file.seek(0)
        _hang_file.truncate()
        _hang_file.write(f"{item.nodeid} ran past {WATCHDOG_S:.0f} s:\n")
        _hang_file.flush()
        faulthandler.dump_traceback_later(WATCHDOG_S, exit=True, file=_hang_file)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _hangs() -> dict[str, str]:
    """The tests a watchdog ended, by node id, with the stacks it wrote."""
    found = {}
    for path in sorted(Path(os.environ[_HANG_DIR]).glob("*.txt")):
        text = path.read_text(errors="replace")
        if "Thread 0x" in text or "Current thread" in text:
            found[text.split(" ran past ", 1)[0]] = text
    return found


# The files whose tests take the most real time (a link cut for two minutes, workers killed and
# started while gateways publish): collected first, longest first, so that under
# `-n 2 --dist loadfile` one process starts on them while the other takes the rest, instead of
# one of them being left for the end. (scripts/test, run whole, gives the two-minute cut a
# pytest process of its own beside the others.)
LONG_FILES: tuple[str, ...] = ("test_site_wan_cut.py", "test_site_wan.py", "test_worker.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)

    items.sort(key=rank)  # stable: every other test keeps its place


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # xdist gives a lost worker's test file to a new worker, the hung test included: it fails
    # at once there instead of hanging again.
    if item.nodeid in _hangs():
        pytest.fail(f"hung past {WATCHDOG_S:.0f} s in an earlier worker (stacks in the summary)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if "PYTEST_XDIST_WORKER" in os.environ:
        return
    for nodeid, text in _hangs().items():
        terminalreporter.section(f"hung: {nodeid}", sep="=", red=True)
        terminalreporter.write(text + "\n")


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


@pytest.fixture
async def hook() -> AsyncIterator[HookServer]:
    """A webhook receiver (a pager of the rota's contacts), started for the test."""
    server = await HookServer().start()
    yield server
    await server.stop()
