"""``/healthz`` and ``/readyz``: the core object alone (checks, an event loop that answers or
not), then ``eicu serve`` over real HTTP, on the dashboard and on the metrics server, while its
real Mosquitto is missing, comes, goes and comes back."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eicu.config import Settings
from eicu.devservices import Mosquitto, free_port
from eicu.exposition import MetricsServer
from eicu.health import Health
from eicu.metrics import IngestMetrics
from eicu.models import Batch

# --- the core object ----------------------------------------------------------------------------


def test_ready_when_every_check_passes_and_each_says_why() -> None:
    health = Health()
    state = {"broker": False}
    health.add_check(
        "broker", lambda: (state["broker"], "subscribed" if state["broker"] else "down")
    )
    health.add_check("kernels", lambda: True)
    assert health.live() == (True, "the event loop answers")
    assert health.ready() == (False, {"broker": "down", "kernels": "ok"})
    code, body = health.answer("/readyz")
    assert code == 503
    assert json.loads(body) == {
        "status": "not ready",
        "checks": {
            "broker": {"ok": False, "detail": "down"},
            "kernels": {"ok": True, "detail": "ok"},
        },
    }
    state["broker"] = True
    assert health.ready() == (True, {"broker": "subscribed", "kernels": "ok"})
    assert health.answer("/readyz")[0] == 200
    assert health.answer("/healthz")[0] == 200


def test_a_check_that_raises_fails_and_names_are_given_once() -> None:
    health = Health()

    def broken() -> bool:
        raise RuntimeError("no such attribute")

    health.add_check("store", broken)
    ok, details = health.ready()
    assert not ok
    assert details == {"store": "check failed: RuntimeError: no such attribute"}
    with pytest.raises(ValueError, match="'store'"):
        health.add_check("store", lambda: True)
    with pytest.raises(ValueError, match="health path"):
        health.answer("/metrics")


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_from_another_thread_the_checks_run_on_the_loop_and_a_stuck_loop_is_not_alive(
    loop_thread: asyncio.AbstractEventLoop,
) -> None:
    health = Health(answer_timeout_s=0.3)
    bound = threading.Event()

    def bind() -> None:
        health.bind(loop_thread)
        bound.set()

    loop_thread.call_soon_threadsafe(bind)
    assert bound.wait(5)
    ran_on: list[threading.Thread] = []
    health.add_check("engine", lambda: ran_on.append(threading.current_thread()) is None)
    assert health.live() == (True, "the event loop answers")
    assert health.ready() == (True, {"engine": "ok"})
    assert ran_on and ran_on[0] is not threading.current_thread()
    # the loop stuck in a long call: neither alive nor ready, answered within the timeout
    release = threading.Event()
    loop_thread.call_soon_threadsafe(release.wait, 30)
    try:
        ok, detail = health.live()
        assert not ok and "did not answer within 0.3 s" in detail
        assert health.answer("/healthz")[0] == 503
        code, body = health.answer("/readyz")
        assert code == 503
        assert json.loads(body)["checks"]["event_loop"]["ok"] is False
    finally:
        release.set()
    assert health.live()[0]
    # a loop that stopped is not alive
    loop_thread.call_soon_threadsafe(loop_thread.stop)
    deadline = threading.Event()
    while loop_thread.is_running() and not deadline.wait(0.01):
        pass
    assert health.live() == (False, "the event loop is not running")


def test_the_metrics_server_answers_them_without_its_token() -> None:
    health = Health()
    health.add_check("kernels", lambda: (False, "warming up"))
    server = MetricsServer(
        0, "127.0.0.1", IngestMetrics().registry, token="a-token-of-16-chars-or-more", health=health
    )
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert _get(base + "/healthz")[0] == 200
        code, body = _get(base + "/readyz")
        assert (code, body["checks"]["kernels"]["detail"]) == (503, "warming up")
        assert _get(base + "/metrics")[0] == 401  # the metrics themselves still need it
    finally:
        server.close()


# --- eicu serve, over HTTP ----------------------------------------------------------------------


def _get(url: str) -> tuple[int, dict[str, object]]:
    """The status and the JSON body (``{"text": ...}`` for another kind of body); status 0
    when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status, kind, data = response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        status, kind, data = exc.code, exc.headers["Content-Type"], exc.read()
    except urllib.error.URLError as exc:
        return 0, {"error": str(exc.reason)}
    if kind == "application/json":
        return status, json.loads(data)
    return status, {"text": data.decode()}


async def _probe(url: str) -> tuple[int, dict[str, object]]:
    return await asyncio.to_thread(_get, url)


def _checks(body: dict[str, object]) -> dict[str, dict[str, object]]:
    checks = body["checks"]
    assert isinstance(checks, dict)
    return checks


async def _until(
    what: str,
    urls: list[str],
    check: Callable[[int, dict[str, object]], bool],
    timeout_s: float = 60.0,
) -> list[tuple[int, dict[str, object]]]:
    """Poll every URL until ``check`` holds for each answer; the answers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        answers = [await _probe(url) for url in urls]
        if all(check(*answer) for answer in answers):
            return answers
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {answers}")
        await asyncio.sleep(0.1)


@pytest.mark.broker
async def test_serve_is_ready_only_while_subscribed_and_alive_throughout(
    broker: Mosquitto, tmp_path: Path
) -> None:
    from eicu.commands.serve import serve

    broker.stop()  # not there yet when the engine starts
    http_port, metrics_port = free_port(), free_port()
    settings = Settings.from_env(
        {
            "EICU_MQTT_URL": broker.url,
            "EICU_MQTT_CLIENT_ID": "eicu-health-test",
            "EICU_DATABASE_URL": f"sqlite:///{tmp_path / 'eicu.sqlite'}",
            "EICU_SPOOL_DIR": str(tmp_path / "spool"),
            "EICU_OUTBOX_PATH": str(tmp_path / "alarms.db"),
            "EICU_USERS_FILE": str(tmp_path / "users.json"),
            "EICU_HTTP_PORT": str(http_port),
            "EICU_METRICS_PORT": str(metrics_port),
            "EICU_METRICS_TOKEN": "metrics-token-of-the-health-test",
            "EICU_ANALYSE_SIGNALS": "0",
        }
    )
    assert settings.mqtt is not None
    mqtt = dataclasses.replace(settings.mqtt, reconnect_min_s=0.1, reconnect_max_s=0.5)
    bases = [f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}"]
    ready = [b + "/readyz" for b in bases]
    alive = [b + "/healthz" for b in bases]
    stop = asyncio.Event()
    engine = asyncio.create_task(serve(settings, mqtt, stop))
    lively: list[int] = []
    watching = True

    async def watch_liveness() -> None:
        while watching:
            for url in alive:
                lively.append((await _probe(url))[0])
            await asyncio.sleep(0.05)

    try:
        await _until("the servers", alive, lambda code, _: code == 200)
        watcher = asyncio.create_task(watch_liveness())

        def all_but_the_broker(code: int, body: dict[str, object]) -> bool:
            checks = _checks(body)
            return all(c["ok"] for name, c in checks.items() if name != "broker")

        answers = await _until("the engine started", ready, all_but_the_broker)
        for code, body in answers:  # no subscription yet: not ready
            assert code == 503 and body["status"] == "not ready"
            checks = _checks(body)
            assert set(checks) == {"broker", "kernels", "store", "alarms"}
            assert checks["broker"]["ok"] is False
            assert "not connected to mqtt://127.0.0.1:" in str(checks["broker"]["detail"])
            assert checks["store"]["detail"] == "store open"
        broker.start()
        answers = await _until("ready", ready, lambda code, _: code == 200)
        for _, body in answers:
            assert body["status"] == "ready"
            assert "subscribed on" in str(_checks(body)["broker"]["detail"])
        broker.stop()
        answers = await _until("not ready without the broker", ready, lambda code, _: code == 503)
        for _, body in answers:
            failing = {n for n, c in _checks(body).items() if not c["ok"]}
            assert failing == {"broker"}
        broker.start()
        await _until("ready again", ready, lambda code, _: code == 200)
        watching = False
        await watcher
        assert lively and set(lively) == {200}  # alive throughout
        assert not engine.done()
    finally:
        watching = False
        stop.set()
        await asyncio.wait_for(engine, 60)


def test_the_store_check_passes_while_the_spool_accepts_what_the_store_cannot_take(
    tmp_path: Path,
) -> None:
    from eicu.config import IngestSettings
    from eicu.store.sqlite import SqliteStore
    from ingest.writer import StoreWriter

    settings = IngestSettings(spool_dir=tmp_path / "spool")
    store = SqliteStore(tmp_path / "x.sqlite")
    assert StoreWriter(store, settings, IngestMetrics()).health() == (True, "store open")
    writer = StoreWriter(store, settings, IngestMetrics(), store_open=False)
    ok, detail = writer.health()
    assert ok and detail.startswith("store not open yet; spooling (0 frames in ")
    writer.store_open, writer.available = True, False
    assert writer.health()[1].startswith("store unavailable; spooling")
    # a batch the spool cannot write (its folder gone, as a failing disk would refuse it)
    shutil.rmtree(tmp_path / "spool")
    with pytest.raises(FileNotFoundError):
        writer._spool.push(Batch())
    ok, detail = writer.health()
    assert not ok
    assert detail.startswith("store unavailable; spool not accepting: the last batch could not")
    assert "No such file or directory" in detail
    (tmp_path / "spool").mkdir()
    writer._spool.push(Batch())
    assert writer.health()[0]
