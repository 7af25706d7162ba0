"""Which engine worker reads which partition of the hub's bus: each partition owned by exactly one
worker at a time, and moved within seconds when its worker stops or dies.

A worker asks a :class:`PartitionOwnership` to ``run(on_gain, on_lose)``: ``on_gain(k)`` is
awaited once partition ``k`` is the worker's (it starts reading the partition), ``on_lose(k)`` once
it is not, or is about to stop being so (the worker stops judging and acknowledging). Two
implementations:

- :class:`LocalOwnership`: a fixed set of partitions, owned at once and for ever (``eicu serve``,
  a site node: one process reads everything).
- :class:`NatsOwnership`: the workers of the hub share the partitions through two JetStream
  key-value buckets of the NATS cluster. No consensus of our own: every decision is one
  compare-and-set write that the stream's leader accepts or refuses.

The buckets (created when missing; every key expires ``ttl_s`` after its last write)::

    eicu-owners     p.<k>         -> worker id   one key per partition: who reads it
    eicu-workers    <worker id>   -> worker id   the live workers

A worker claims a free partition with a write that expects the key's last revision to be "none"
or a deletion (``create``; it fails when another worker holds the key), renews each key it holds
every ``ttl_s / 3`` with ``update(key, value, last=revision)``, which fails when anyone else wrote
the key meanwhile, and deletes it when it lets go. It announces itself in ``eicu-workers``
(renewed the same way) and aims at ``ceil(partitions / live workers)`` partitions: it claims free
ones up to that share and releases what it holds beyond it, highest numbers first. So a new
worker gets its share within a round (the others release theirs, it claims them), and a dead
worker's partitions go to the others once its keys expire. Watches on both buckets (with the
server's deletion markers for expired keys) start a round as soon as a key is deleted or expires,
or a worker comes or goes; a round also runs every ``ttl_s / 3``.

A voluntary release awaits ``on_lose(k)`` while the key is still held and renewed (the worker
stops reading and acknowledges what is durable), and only then deletes the key. A stop
(cancelling :meth:`PartitionOwnership.run`) releases every partition that way, so the others take
them at once rather than after ``ttl_s``. A renewal that is refused (the key was taken, deleted or
expired) loses the partition: ``on_lose(k)`` is awaited at once, after the fact.

The split-brain window, and the safety margin
---------------------------------------------

A key expires on the server ``ttl_s`` after the write that last renewed it was stored, and another
worker may claim it from then on. The server stores a write after this worker sent it, so the key
lives at least until ``sent + ttl_s``. A worker that holds a key therefore keeps a deadline of its
own, measured on its monotonic clock from the moment it *sent* its last successful write:

    deadline = sent + ttl_s - margin_s        (margin_s: ttl_s / 5 unless given)

When a renewal has not succeeded by the deadline (NATS unreachable, a slow election, a cut
network), the partition is lost: ``on_lose`` is awaited at the deadline, while the key, on the
server, still has at least ``margin_s`` to live. The margin must cover what can make this worker
late or the server early: the time ``on_lose`` needs to stop judging and acknowledging, the event
loop's lag on a busy machine, and the difference between the clocks of the NATS nodes (a key's
age is measured on the clock of the node that expires it; NTP keeps this to milliseconds). With
the defaults (10 s TTL, renewals every 3.3 s, 2 s margin) two renewals can fail before a worker
gives up, and the worker stops 2 s before any other can start. A second, independent guard sits
in the bus: the MQTT session belongs to the partition, so the next owner's connection takes the
session over and the old owner's acknowledgements go nowhere (docs/bus.md).

A partition given up at the deadline may still be this worker's on the server (NATS was slow,
not gone: a leader election takes seconds). Once NATS answers again, the worker writes the key on
the revision it wrote last: the write succeeds only if nobody wrote the key since and it has not
expired, so the partition comes back (``on_gain`` again) without waiting for the expiry, and
without any chance of a second owner. A renewal whose answer is lost may still have been stored:
the key then stays this worker's, unused, until it expires. That costs time, never a second owner.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import re
import ssl
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from eicu.backoff import Backoff
from eicu.clock import SYSTEM_CLOCK, Clock
from eicu.errors import ConfigError

__all__ = [
    "LocalOwnership",
    "NatsOwnership",
    "OnChange",
    "OwnershipStats",
    "PartitionOwnership",
    "ThreadedOwnership",
]

log = logging.getLogger(__name__)

OnChange = Callable[[int], Awaitable[None]]
T = TypeVar("T")

# A worker id is one token of a NATS subject (a key of the workers bucket).
_WORKER_ID: Final = re.compile(r"^[-_=a-zA-Z0-9]+$")
_KV_OPERATION: Final = "KV-Operation"  # DEL or PURGE on a deletion written by a client
_MARKER_REASON: Final = "Nats-Marker-Reason"  # on a deletion placed by the server (expiry)
_DELETED: Final = ("DEL", "PURGE")
# NATS's error code for "replicas > 1 not supported in non-clustered mode".
_NOT_CLUSTERED: Final = 10074
# What a call to NATS may raise when the server cannot be reached or does not answer in time.
_UNREACHABLE: Final = (nats.errors.Error, TimeoutError, OSError)


async def _request(aw: Awaitable[T], timeout_s: float) -> T:
    """One call to NATS, at most ``timeout_s``, in a task of its own. nats-py turns a
    cancellation that reaches some of its waits into an error of its own, or drops it; the
    caller's cancellation must never go through it, or a stop could be lost."""

    async def bounded() -> T:
        async with asyncio.timeout(max(timeout_s, 0.0)):
            return await aw

    task = asyncio.ensure_future(bounded())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_forget)  # it ends by its timeout; its outcome is not wanted
        raise


def _forget(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _finished(task: asyncio.Future[Any]) -> None:
    """Waits until ``task`` is done, whatever its outcome; a cancellation of the caller still
    comes through (``await task`` under ``suppress(CancelledError)`` would swallow it)."""
    await asyncio.wait([task])
    _forget(task)


@dataclass(slots=True)
class OwnershipStats:
    """Counts since the ownership was made, for metrics and logs."""

    claims: int = 0  # partitions taken (on_gain)
    releases: int = 0  # partitions let go on purpose (on_lose, then the key deleted)
    losses: int = 0  # partitions lost: renewal refused or not done by the deadline
    renewals: int = 0  # successful renewals of partition keys
    renewal_errors: int = 0  # renewals that got no answer (retried until the deadline)


class PartitionOwnership(abc.ABC):
    """Which partitions this worker reads. ``partitions`` is how many there are (N), ``owned``
    those this worker holds now, ``settled`` is set once the first round of claims is done."""

    partitions: int
    settled: asyncio.Event
    stats: OwnershipStats

    @property
    @abc.abstractmethod
    def owned(self) -> frozenset[int]:
        """The partitions held now (a partition is in it from its claim until its loss or
        release)."""

    @abc.abstractmethod
    async def run(self, on_gain: OnChange, on_lose: OnChange) -> None:
        """Claims, holds and releases partitions until cancelled. ``on_gain(k)`` is awaited
        after ``k`` is claimed; ``on_lose(k)`` before ``k`` is released on purpose (the key is
        deleted only after it returns), or right after ``k`` was lost. For one partition the
        two alternate, starting with ``on_gain``. Cancelling releases every partition held
        (``on_lose`` for each; :class:`NatsOwnership` awaits them together) and returns by
        raising ``CancelledError``. An exception raised by a callback ends ``run`` (after
        releasing what it holds) with that exception.

        ``on_gain`` should start the partition's work and return: claims wait for it. After a
        loss, ``on_lose`` must stop judging and acknowledging at once (another worker may take
        the partition ``margin_s`` later)."""


class ThreadedOwnership(PartitionOwnership):
    """Runs another ownership's claims and renewals on an event loop of its own, in a thread, so
    that a busy engine loop (a worker near its capacity) never makes a renewal late and loses
    partitions it can still serve. ``on_gain`` and ``on_lose`` still run on the caller's loop,
    and the ownership waits for them as it would on one loop. ``owned`` and ``stats`` are the
    inner ownership's; ``settled`` is set on the caller's loop."""

    def __init__(self, inner: PartitionOwnership) -> None:
        self._inner = inner
        self.partitions = inner.partitions
        self.settled = asyncio.Event()
        self.stats = inner.stats

    @property
    def owned(self) -> frozenset[int]:
        return self._inner.owned

    async def run(self, on_gain: OnChange, on_lose: OnChange) -> None:
        import threading

        caller = asyncio.get_running_loop()
        finished: asyncio.Future[None] = caller.create_future()
        own_loop = asyncio.new_event_loop()
        inner_task: asyncio.Task[None] | None = None

        stopping = threading.Event()

        def on_caller(callback: OnChange) -> OnChange:
            async def call(k: int) -> None:
                async def there() -> None:
                    await callback(k)

                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(there(), caller))

            return call

        def cancel_inner() -> None:
            if inner_task is not None:
                inner_task.cancel()

        def settle() -> None:
            self.settled.set()

        async def main() -> None:
            nonlocal inner_task
            inner_task = asyncio.ensure_future(
                self._inner.run(on_caller(on_gain), on_caller(on_lose))
            )
            if stopping.is_set():  # stopped before this loop began
                inner_task.cancel()
            settled = asyncio.ensure_future(self._inner.settled.wait())
            settled.add_done_callback(lambda _: caller.call_soon_threadsafe(settle))
            try:
                await inner_task
            finally:
                settled.cancel()

        def report(outcome: BaseException | None) -> None:
            if finished.done():
                return
            if outcome is None or isinstance(outcome, asyncio.CancelledError):
                finished.set_result(None)  # stopped (the caller's cancellation goes on)
            else:
                finished.set_exception(outcome)

        def thread_main() -> None:
            outcome: BaseException | None = None
            try:
                own_loop.run_until_complete(main())
            except BaseException as exc:  # handed to the caller's loop, which raises it
                outcome = exc
            finally:
                own_loop.close()
                with contextlib.suppress(RuntimeError):  # the caller's loop is closed
                    caller.call_soon_threadsafe(report, outcome)

        thread = threading.Thread(target=thread_main, name="eicu-ownership", daemon=True)
        thread.start()
        try:
            await asyncio.shield(finished)
        except asyncio.CancelledError:
            # A stop: the inner ownership releases what it holds (on_lose runs here, on this
            # loop, which stays free for it), then the cancellation goes on.
            stopping.set()
            with contextlib.suppress(RuntimeError):  # its loop already ended
                own_loop.call_soon_threadsafe(cancel_inner)
            with contextlib.suppress(asyncio.CancelledError):
                await finished
            raise


class LocalOwnership(PartitionOwnership):
    """A fixed set of partitions, owned from the start until the stop: ``eicu serve`` and site
    nodes. ``partitions=None`` owns the single pseudo-partition 0 ("everything"). ``total`` is
    N when the given partitions are a part of a larger set (default: the highest given + 1)."""

    def __init__(self, partitions: Iterable[int] | None = None, *, total: int | None = None):
        if partitions is None:
            chosen = [0]
        else:
            chosen = sorted(set(partitions))
            if not chosen:
                raise ValueError("LocalOwnership: no partitions given (None owns everything)")
            bad = [k for k in chosen if not isinstance(k, int) or k < 0]
            if bad:
                raise ValueError(f"LocalOwnership: partitions are integers >= 0, got {bad}")
        n = total if total is not None else chosen[-1] + 1
        if chosen[-1] >= n:
            raise ValueError(f"LocalOwnership: partition {chosen[-1]} is not below total={n}")
        self.partitions = n
        self._chosen = tuple(chosen)
        self._owned: set[int] = set()
        self.settled = asyncio.Event()
        self.stats = OwnershipStats()

    @property
    def owned(self) -> frozenset[int]:
        return frozenset(self._owned)

    async def run(self, on_gain: OnChange, on_lose: OnChange) -> None:
        try:
            for k in self._chosen:
                self._owned.add(k)
                self.stats.claims += 1
                await on_gain(k)
            self.settled.set()
            await asyncio.Event().wait()  # until cancelled
        finally:
            for k in sorted(self._owned, reverse=True):
                self._owned.discard(k)
                await on_lose(k)
                self.stats.releases += 1


@dataclass(slots=True)
class _Seen:
    """A key as the bucket's watch last showed it."""

    value: str | None  # None: deleted or expired
    revision: int
    at: float  # this worker's monotonic time when it was seen


@dataclass(slots=True, eq=False)
class _Held:
    """A key this worker wrote last: its revision, and when the write that made it was sent."""

    revision: int
    sent: float
    next_renewal: float
    releasing: bool = False
    renewing: asyncio.Task[None] | None = None


class NatsOwnership(PartitionOwnership):
    """Partitions shared by the hub's workers through NATS key-value buckets (module docstring).

    ``servers``: NATS URLs (every node of the cluster, so that the client can move on when one
    dies); ``worker_id``: this worker's name, unique among the workers (letters, digits, ``-``,
    ``_``, ``=``); ``partitions``: N; ``ttl_s``: how long a key outlives its last renewal;
    ``margin_s``: how long before the key's earliest expiry this worker gives a partition up
    when it cannot renew it (default ``ttl_s / 5``); ``replicas``: of the buckets, when this
    worker creates them (1 on a single server; a cluster with fewer nodes up refuses, and the
    worker tries again); ``user``/``password``, ``token``,
    ``credentials_file`` (a NATS ``.creds`` file) and ``tls``: how to connect.
    ``request_timeout_s``: how long one request to NATS may take (default ``ttl_s / 3``)."""

    def __init__(
        self,
        servers: list[str],
        worker_id: str,
        partitions: int,
        *,
        ttl_s: float = 10.0,
        margin_s: float | None = None,
        bucket: str = "eicu-owners",
        workers_bucket: str = "eicu-workers",
        replicas: int = 3,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        credentials_file: str | Path | None = None,
        tls: ssl.SSLContext | None = None,
        request_timeout_s: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not servers:
            raise ValueError("NatsOwnership: no NATS servers given")
        if not _WORKER_ID.match(worker_id):
            raise ValueError(
                f"NatsOwnership: worker id {worker_id!r} must be letters, digits, '-', '_' or '='"
            )
        if not isinstance(partitions, int) or partitions < 1:
            raise ValueError(f"NatsOwnership: partitions must be an integer >= 1, got {partitions}")
        if not ttl_s > 0:
            raise ValueError(f"NatsOwnership: ttl_s must be > 0, got {ttl_s}")
        interval = ttl_s / 3
        margin = ttl_s / 5 if margin_s is None else margin_s
        if not 0 < margin < ttl_s - interval:
            raise ValueError(
                f"NatsOwnership: margin_s must be > 0 and below ttl_s * 2/3 "
                f"({ttl_s - interval:.3f} s) so that a renewal fits before the deadline, "
                f"got {margin}"
            )
        if replicas < 1:
            raise ValueError(f"NatsOwnership: replicas must be >= 1, got {replicas}")
        if bucket == workers_bucket:
            raise ValueError(f"NatsOwnership: the two buckets need two names, got {bucket!r}")
        self.partitions = partitions
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self.margin_s = margin
        self.interval_s = interval
        self.settled = asyncio.Event()
        self.stats = OwnershipStats()
        self._servers = list(servers)
        self._bucket_names = (bucket, workers_bucket)
        self._replicas = replicas
        self._connect_options: dict[str, Any] = {
            "user": user,
            "password": password,
            "token": token,
            "tls": tls,
        }
        if credentials_file is not None:
            self._connect_options["user_credentials"] = str(credentials_file)
        self._request_timeout_s = request_timeout_s if request_timeout_s else interval
        self._clock = clock
        self._value = worker_id.encode()
        # Where claims start: spread over the partitions, so that workers starting together do
        # not all try the same keys first.
        self._offset = zlib.crc32(self._value) % partitions

        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._owners: KeyValue | None = None
        self._workers: KeyValue | None = None
        self._owner_view: dict[str, _Seen] = {}
        self._worker_view: dict[str, _Seen] = {}
        self._watchers: list[tuple[KeyValue.KeyWatcher, asyncio.Task[None]]] = []
        self._restart_watchers = False
        self._announcement: _Held | None = None
        self._held: dict[int, _Held] = {}
        self._gained: set[int] = set()
        self._abandoned: dict[int, int] = {}  # partition -> the revision this worker wrote last
        self._locks = [asyncio.Lock() for _ in range(partitions)]
        self._wake = asyncio.Event()  # a round of claims and releases is due
        self._changed = asyncio.Event()  # the renewer has something new to look at
        self._aftermath: set[asyncio.Task[None]] = set()  # on_lose after a loss
        self._failure: BaseException | None = None
        self._on_gain: OnChange | None = None
        self._on_lose: OnChange | None = None
        self._running = False

    # --- reading ----------------------------------------------------------------------------

    @property
    def owned(self) -> frozenset[int]:
        return frozenset(self._held)

    def live_workers(self) -> frozenset[str]:
        """The workers whose announcement this worker saw renewed within the TTL, itself
        included."""
        now = self._clock.monotonic_s()
        live = {
            key
            for key, seen in self._worker_view.items()
            if seen.value is not None and now - seen.at < self.ttl_s
        }
        return frozenset(live | {self.worker_id})

    def share(self) -> int:
        """How many partitions this worker aims at: ``ceil(N / live workers)``."""
        return math.ceil(self.partitions / len(self.live_workers()))

    # --- the run ----------------------------------------------------------------------------

    async def run(self, on_gain: OnChange, on_lose: OnChange) -> None:
        if self._running:
            raise RuntimeError("NatsOwnership.run is already running")
        self._running = True
        self._on_gain, self._on_lose = on_gain, on_lose
        renewer: asyncio.Task[None] | None = None
        try:
            await self._start()
            renewer = asyncio.create_task(self._renew_loop(), name=f"owner-renew-{self.worker_id}")
            # Workers started together see each other before they claim anything.
            await self._clock.sleep(self.interval_s)
            while True:
                self._wake.clear()
                if self._failure is not None:
                    raise self._failure
                if self._restart_watchers or self._watch_is_stale():
                    await self._start_watchers()
                await self._round()
                self.settled.set()
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    # A callback caught the cancellation of the stop: the stop still wins.
                    raise asyncio.CancelledError
                await self._clock.wait(self._wake, self.interval_s)
        finally:
            await self._stop(renewer)
            self._running = False

    async def _start(self) -> None:
        backoff = Backoff(min_s=min(0.2, self.interval_s), max_s=max(self.ttl_s, 1.0))
        while True:
            try:
                if self._nc is None:
                    self._nc = await self._connect()
                    self._js = self._nc.jetstream(timeout=self._request_timeout_s)
                self._owners = await self._bucket(self._bucket_names[0])
                self._workers = await self._bucket(self._bucket_names[1])
                await self._announce()
                await self._start_watchers()
                return
            except ConfigError:
                raise
            except _UNREACHABLE as exc:
                delay = backoff.next_s()
                log.warning("ownership: NATS not ready (%r); again in %.1f s", exc, delay)
                await self._clock.sleep(delay)

    async def _connect(self) -> NatsClient:
        async def disconnected() -> None:
            log.warning("ownership %s: disconnected from NATS", self.worker_id)

        async def reconnected() -> None:
            log.info("ownership %s: reconnected to NATS", self.worker_id)
            self._restart_watchers = True
            self._wake.set()

        async def error(exc: Exception) -> None:
            log.debug("ownership %s: NATS client: %r", self.worker_id, exc)

        options: dict[str, Any] = {
            "servers": self._servers,
            "name": f"eicu-owner-{self.worker_id}",
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": min(2.0, self.interval_s / 2),
            "connect_timeout": max(self._request_timeout_s, 1.0),
            # A dead connection is found within about one TTL even when no packet says so.
            "ping_interval": max(self.interval_s, 0.5),
            "max_outstanding_pings": 2,
            "disconnected_cb": disconnected,
            "reconnected_cb": reconnected,
            "error_cb": error,
        }
        options.update((k, v) for k, v in self._connect_options.items() if v is not None)
        return await nats.connect(**options)

    async def _bucket(self, name: str) -> KeyValue:
        """The bucket ``name``, created when missing; refused when its TTL is not ours (every
        deadline of this module depends on it)."""
        assert self._js is not None and self._nc is not None
        try:
            kv = await _request(self._js.key_value(name), self._request_timeout_s)
        except nats.js.errors.BucketNotFoundError:
            kv = await self._create_bucket(name)
        ttl = (await _request(kv.status(), self._request_timeout_s)).ttl
        if ttl is None or abs(ttl - self.ttl_s) > 1e-3:
            raise ConfigError(
                "ttl_s",
                f"the bucket {name!r} keeps keys for {ttl} s, this worker expects {self.ttl_s} s: "
                "every worker needs the same TTL (or delete the bucket to change it)",
            )
        return kv

    async def _create_bucket(self, name: str) -> KeyValue:
        assert self._js is not None and self._nc is not None
        options: dict[str, Any] = {
            "bucket": name,
            "history": 1,
            "ttl": self.ttl_s,
            "replicas": self._replicas,
            # The server writes a deletion marker when a key expires, so the watches see it.
            "limit_marker_ttl": max(1.0, self.ttl_s),
        }
        while True:
            try:
                kv = await _request(self._js.create_key_value(**options), self._request_timeout_s)
            except nats.js.errors.KeyValueLimitMarkerTTLNotSupportedError:
                log.warning("ownership: NATS writes no expiry markers; expiries found by polling")
                options.pop("limit_marker_ttl")
                continue
            except nats.js.errors.APIError as exc:
                if exc.err_code == _NOT_CLUSTERED and options["replicas"] > 1:
                    options["replicas"] = 1  # a single server
                    continue
                # A cluster with fewer nodes up than replicas refuses too: retried, never made
                # with fewer replicas (a node down at the wrong moment would leave the bucket
                # without a majority once another one dies).
                raise
            log.info("ownership: created the bucket %s (R%d)", name, options["replicas"])
            return kv

    # --- watching -------------------------------------------------------------------------------

    async def _start_watchers(self) -> None:
        assert self._owners is not None and self._workers is not None
        self._restart_watchers = False
        await self._stop_watchers()
        loaded: list[asyncio.Event] = []
        try:
            for kv, view in ((self._owners, self._owner_view), (self._workers, self._worker_view)):
                watcher = await _request(kv.watchall(), self._request_timeout_s)
                ready = asyncio.Event()
                task = asyncio.create_task(self._watch(watcher, view, ready))
                self._watchers.append((watcher, task))
                loaded.append(ready)
            for ready in loaded:
                await self._clock.wait(ready, self._request_timeout_s)
        except _UNREACHABLE as exc:
            log.warning("ownership %s: cannot watch the buckets (%r)", self.worker_id, exc)
            self._restart_watchers = True

    async def _stop_watchers(self) -> None:
        watchers, self._watchers = self._watchers, []
        for watcher, task in watchers:
            task.cancel()
            with contextlib.suppress(*_UNREACHABLE, AttributeError):
                await _request(watcher.stop(), self._request_timeout_s)
            await _finished(task)

    async def _watch(
        self, watcher: KeyValue.KeyWatcher, view: dict[str, _Seen], ready: asyncio.Event
    ) -> None:
        async for entry in watcher:
            if entry is None:  # everything that was in the bucket has been seen
                ready.set()
                continue
            deleted = entry.operation in _DELETED
            value = None if deleted or entry.value is None else entry.value.decode()
            revision = entry.revision or 0
            before = view.get(entry.key)
            # A restarted watch shows every key again: one seen already keeps the time it was
            # first seen, from which it may expire.
            if before is None or before.revision < revision:
                view[entry.key] = _Seen(value, revision, self._clock.monotonic_s())
                if before is None or before.value != value or deleted:
                    self._wake.set()
                if view is self._owner_view and entry.key.startswith("p."):
                    self._check_taken(entry.key, value, revision, entry.operation)
            if entry.delta == 0:
                ready.set()

    def _check_taken(
        self, key: str, value: str | None, revision: int, operation: str | None = None
    ) -> None:
        """A key this worker holds was deleted, expired or written by another worker: lost.
        The log names the entry that took it (a client's deletion is a DEL, the server's
        marker of an expired key is a PURGE), with its revision and the one held."""
        try:
            k = int(key[2:])
        except ValueError:
            return
        held = self._held.get(k)
        if held is not None and revision > held.revision and value != self.worker_id:
            what = "deleted or expired" if value is None else f"taken by {value}"
            self._lose(
                k, f"{what} ({operation or 'a write'} at revision {revision}, held {held.revision})"
            )

    def _watch_is_stale(self) -> bool:
        """This worker's own renewals no longer reach its watch: the watch is broken."""
        mine = self._worker_view.get(self.worker_id)
        announced = self._announcement
        if announced is None:
            return False
        now = self._clock.monotonic_s()
        last_seen = mine.at if mine is not None else -math.inf
        return now - announced.sent < self.ttl_s and now - last_seen > self.ttl_s

    # --- claims and releases ----------------------------------------------------------------

    async def _round(self) -> None:
        """Release what is beyond this worker's share, claim free partitions up to it."""
        now = self._clock.monotonic_s()
        for key, entry in list(self._worker_view.items()):  # workers gone for good
            if now - entry.at > 2 * self.ttl_s:
                del self._worker_view[key]
        target = self.share()
        mine = sorted(k for k, held in self._held.items() if not held.releasing)
        for k in reversed(mine[target:]):
            await self._release(k)
        count = sum(1 for held in self._held.values() if not held.releasing)
        now = self._clock.monotonic_s()
        for i in range(self.partitions):
            if count >= target:
                break
            k = (self._offset + i) % self.partitions
            if k in self._held or self._locks[k].locked():
                continue
            seen = self._owner_view.get(f"p.{k}")
            live = seen is not None and seen.value is not None and now - seen.at < self.ttl_s
            if live and k not in self._abandoned:
                continue  # another worker's (or an old write of this one, until it expires)
            try:
                if await self._claim(k):
                    count += 1
            except _UNREACHABLE as exc:
                log.warning("ownership %s: cannot claim p.%d (%r)", self.worker_id, k, exc)
                return

    async def _write(self, key: str, last: int) -> int:
        assert self._owners is not None
        return await _request(
            self._owners.update(key, self._value, last=last), self._request_timeout_s
        )

    async def _latest(self, key: str) -> tuple[int, str | None] | None:
        """The key's last revision and value (None for a deletion) as the stream's leader has
        them, or None when the stream holds nothing of it."""
        assert self._js is not None and self._owners is not None
        stream = f"KV_{self._bucket_names[0]}"
        try:
            msg = await _request(
                # Not a direct get: the leader's answer, not a replica's that may lag.
                self._js.get_msg(
                    stream, subject=f"$KV.{self._bucket_names[0]}.{key}", direct=False
                ),
                self._request_timeout_s,
            )
        except nats.js.errors.NotFoundError:
            return None
        headers = msg.headers or {}
        deleted = headers.get(_KV_OPERATION) in _DELETED or _MARKER_REASON in headers
        value = None if deleted or msg.data is None else msg.data.decode()
        return msg.seq or 0, value

    async def _claim(self, k: int) -> bool:
        """Takes partition ``k`` if no one holds it; True when taken (``on_gain`` awaited)."""
        key = f"p.{k}"
        sent = self._clock.monotonic_s()  # before the write: the deadline counts from here
        revision = await self._take_back(k)
        if revision is None:
            seen = self._owner_view.get(key)
            last = seen.revision if seen is not None and seen.value is None else 0
            sent = self._clock.monotonic_s()
            try:
                revision = await self._write(key, last)
            except nats.js.errors.KeyWrongLastSequenceError:
                latest = await self._latest(key)
                if latest is not None and latest[1] is not None:
                    revision_now, owner = latest
                    self._owner_view[key] = _Seen(owner, revision_now, self._clock.monotonic_s())
                    return False
                sent = self._clock.monotonic_s()
                try:
                    revision = await self._write(key, latest[0] if latest is not None else 0)
                except nats.js.errors.KeyWrongLastSequenceError:
                    return False
        held = _Held(revision, sent, sent + self.interval_s)
        self._held[k] = held
        self.stats.claims += 1
        self._changed.set()
        log.info("ownership %s: claimed partition %d", self.worker_id, k)
        assert self._on_gain is not None
        async with self._locks[k]:
            if self._held.get(k) is held:
                self._gained.add(k)
                await self._on_gain(k)
        return True

    async def _take_back(self, k: int) -> int | None:
        """A partition given up at the deadline (its key's fate unknown, NATS out of reach)
        whose key still has the revision this worker wrote last: nobody wrote it since and it
        has not expired, so writing it again on that revision takes it back at once instead of
        after its expiry. The new revision, or None."""
        last = self._abandoned.pop(k, None)
        if last is None:
            return None
        try:
            return await self._write(f"p.{k}", last)
        except nats.js.errors.KeyWrongLastSequenceError:
            return None  # written by another, deleted or expired: an ordinary claim
        except _UNREACHABLE:
            self._abandoned[k] = last
            raise

    async def _release(self, k: int) -> None:
        """Lets partition ``k`` go: ``on_lose`` while the key is still held and renewed, then
        the key deleted so that another worker takes it at once."""
        held = self._held.get(k)
        if held is None:
            return
        held.releasing = True
        assert self._on_lose is not None
        async with self._locks[k]:
            if k in self._gained:
                self._gained.discard(k)
                await self._on_lose(k)
        if self._held.get(k) is not held:
            return  # lost while stopping: counted as a loss, the key is not ours to delete
        del self._held[k]
        if held.renewing is not None:  # a renewal on its way would change the revision
            await _finished(held.renewing)
        self.stats.releases += 1
        log.info("ownership %s: released partition %d", self.worker_id, k)
        assert self._owners is not None
        try:
            await _request(
                self._owners.delete(f"p.{k}", last=held.revision), self._request_timeout_s
            )
        except (*_UNREACHABLE, nats.js.errors.KeyWrongLastSequenceError) as exc:
            log.warning("ownership %s: p.%d not deleted (%r); it expires", self.worker_id, k, exc)

    def _lose(self, k: int, why: str, *, abandoned: bool = False) -> None:
        """Partition ``k`` is no longer this worker's: out of ``owned`` now, ``on_lose`` as soon
        as an ``on_gain`` in progress has returned. ``abandoned``: given up at the deadline, the
        key perhaps still this worker's (:meth:`_take_back`)."""
        held = self._held.pop(k, None)
        if held is None:
            return
        if abandoned:
            self._abandoned[k] = held.revision
        self.stats.losses += 1
        log.warning("ownership %s: lost partition %d: %s", self.worker_id, k, why)
        task = asyncio.create_task(self._after_loss(k), name=f"owner-lost-{k}")
        self._aftermath.add(task)
        task.add_done_callback(self._aftermath.discard)
        self._changed.set()
        self._wake.set()

    async def _after_loss(self, k: int) -> None:
        assert self._on_lose is not None
        try:
            async with self._locks[k]:
                if k in self._gained:
                    self._gained.discard(k)
                    await self._on_lose(k)
        except Exception as exc:
            self._failure = self._failure or exc
        finally:
            self._wake.set()  # a round may take it back now

    # --- renewals -------------------------------------------------------------------------------

    async def _announce(self) -> None:
        assert self._workers is not None
        sent = self._clock.monotonic_s()
        revision = await _request(
            self._workers.put(self.worker_id, self._value), self._request_timeout_s
        )
        self._announcement = _Held(revision, sent, sent + self.interval_s)

    def _deadline(self, held: _Held) -> float:
        return held.sent + self.ttl_s - self.margin_s

    async def _renew_loop(self) -> None:
        while True:
            self._changed.clear()
            now = self._clock.monotonic_s()
            for k, held in list(self._held.items()):
                if now >= self._deadline(held):
                    self._lose(k, f"not renewed for {now - held.sent:.2f} s", abandoned=True)
            wakes = [now + self.interval_s]
            for k, held in self._held.items():
                wakes.append(self._deadline(held))
                if held.renewing is None:
                    if now >= held.next_renewal:
                        held.renewing = asyncio.create_task(self._renew(k, held))
                    else:
                        wakes.append(held.next_renewal)
            announced = self._announcement
            if announced is not None and announced.renewing is None:
                if now >= announced.next_renewal:
                    announced.renewing = asyncio.create_task(self._renew_announcement(announced))
                else:
                    wakes.append(announced.next_renewal)
            await self._clock.wait(self._changed, max(0.0, min(wakes) - now))

    async def _renew(self, k: int, held: _Held) -> None:
        assert self._owners is not None
        sent = self._clock.monotonic_s()
        try:
            async with asyncio.timeout(max(0.0, self._deadline(held) - sent)):
                revision = await self._owners.update(f"p.{k}", self._value, last=held.revision)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError) as exc:
            if self._held.get(k) is held:
                self._lose(k, f"renewal refused, the key was taken, deleted or expired ({exc})")
        except _UNREACHABLE as exc:
            self.stats.renewal_errors += 1
            log.debug("ownership %s: renewal of p.%d failed (%r)", self.worker_id, k, exc)
            held.next_renewal = self._clock.monotonic_s() + self.interval_s / 4
        else:
            if self._held.get(k) is not held and self._abandoned.get(k) == held.revision:
                self._abandoned[k] = revision  # landed after the deadline: still this worker's
            held.revision, held.sent = revision, sent
            held.next_renewal = sent + self.interval_s
            self.stats.renewals += 1
        finally:
            held.renewing = None
            self._changed.set()

    async def _renew_announcement(self, announced: _Held) -> None:
        assert self._workers is not None
        sent = self._clock.monotonic_s()
        try:
            async with asyncio.timeout(self._request_timeout_s):
                try:
                    revision = await self._workers.update(
                        self.worker_id, self._value, last=announced.revision
                    )
                except nats.js.errors.KeyWrongLastSequenceError:
                    # Expired while NATS was away, or deleted: announce again.
                    revision = await self._workers.put(self.worker_id, self._value)
        except _UNREACHABLE as exc:
            log.debug("ownership %s: announcement not renewed (%r)", self.worker_id, exc)
            announced.next_renewal = self._clock.monotonic_s() + self.interval_s / 4
        else:
            announced.revision, announced.sent = revision, sent
            announced.next_renewal = sent + self.interval_s
        finally:
            announced.renewing = None
            self._changed.set()

    # --- the stop -------------------------------------------------------------------------------

    async def _stop(self, renewer: asyncio.Task[None] | None) -> None:
        """Releases every partition (the renewer keeps their keys alive meanwhile), withdraws
        the announcement and closes the connection."""
        try:
            # Withdrawn first: the others' share grows before the partitions come free, so they
            # take each one as soon as it is deleted.
            if self._workers is not None and self._announcement is not None:
                announced, self._announcement = self._announcement, None
                if announced.renewing is not None:  # let it land before the deletion
                    await _finished(announced.renewing)
                try:
                    await _request(self._workers.delete(self.worker_id), self._request_timeout_s)
                except _UNREACHABLE as exc:
                    log.warning(
                        "ownership %s: announcement not withdrawn (%r)", self.worker_id, exc
                    )
            # Together: the stop takes as long as the slowest on_lose, not their sum.
            leaving = sorted(self._held, reverse=True)
            results = await asyncio.gather(
                *(self._release(k) for k in leaving), return_exceptions=True
            )
            for k, result in zip(leaving, results, strict=True):
                if isinstance(result, Exception):
                    log.error(
                        "ownership %s: on_lose(%d) failed at the stop",
                        self.worker_id,
                        k,
                        exc_info=result,
                    )
            if self._aftermath:
                await asyncio.gather(*self._aftermath, return_exceptions=True)
            # Keys given up at the deadline that may still be this worker's: freed now if so.
            abandoned, self._abandoned = self._abandoned, {}
            if self._owners is not None and abandoned:
                await asyncio.gather(
                    *(
                        _request(self._owners.delete(f"p.{k}", last=rev), self._request_timeout_s)
                        for k, rev in abandoned.items()
                    ),
                    return_exceptions=True,
                )
            if renewer is not None:
                renewer.cancel()
                await _finished(renewer)
            for held in self._held.values():  # renewals on their way end by their deadline
                if held.renewing is not None:
                    await _finished(held.renewing)
            await self._stop_watchers()
        finally:
            nc, self._nc = self._nc, None
            if nc is not None:
                with contextlib.suppress(*_UNREACHABLE):
                    await _request(nc.close(), self._request_timeout_s)
