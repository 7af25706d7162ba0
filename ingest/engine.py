"""The engine: ingest, per-bed state and the store writer under one task group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eicu import wire
from eicu.clock import SYSTEM_CLOCK, Clock
from eicu.config import AlertingSettings, IngestSettings, MqttSettings, mllp_client_context
from eicu.errors import StorageUnavailable
from eicu.health import Health
from eicu.metrics import IngestMetrics
from eicu.models import BedKey
from eicu.store import AlarmRepository, Store
from ingest.admission import Admission
from ingest.scores import ScoreStage
from ingest.service import Ingest
from ingest.signals import SignalStage
from ingest.state import BedRouter
from ingest.writer import StoreWriter

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from alerting.channels import DeliveryChannel
    from alerting.escalation import Dispatcher
    from alerting.outbox import Outbox
    from alerting.service import AlarmService
    from eicu.alarm_model import AlarmEvent
    from eicu.alarms.policy import AlarmPolicy
    from eicu.bus.ownership import PartitionOwnership
    from eicu.models import AlarmCommand
    from ingest.live import StatePublisher

log = logging.getLogger(__name__)

SEQUENCE_LOOKBACK_US = 86_400 * 1_000_000  # sequence tracking resumes from the last day stored
# A bed taken over: which of its messages of the last 10 minutes are stored (what a broker sends
# again after a takeover is recent).
STORED_LOOKBACK_US = 600 * 1_000_000
# A bed taken over adopts the alarms of its audit trail of the last day that are not over.
ALARM_TAKEOVER_LOOKBACK_US = 86_400 * 1_000_000
ALARM_STORE_WAIT_S = 5.0
# How much of a taken-over bed's stored numerics its limit conditions are judged on again: the
# longest condition delay of the default policy (20 s) with room to spare.
LIMIT_REPLAY_US = 120 * 1_000_000  # how long a partition's hand-over waits for the alarm tables
# A bed taken over is rebuilt from the last REPLAY_S of its stored signals (the signal
# pipeline's longest window, rhythm and quality, is 12 s) and its newest values of the last
# LATEST_LOOKBACK_S (a NEWS2 input is measured as seldom as hourly), within REPLAY_WAIT_S.
REPLAY_S = 15.0
LATEST_LOOKBACK_S = 3600.0
REPLAY_WAIT_S = 10.0
# A bed whose newest value is older than the replay window by this much has no signal to replay.
RECENT_MARGIN_US = 60 * 1_000_000


def warm_up(signals: bool) -> None:
    """Run each kernel once on a few seconds of synthetic data."""
    import numpy as np

    from eicu import wire
    from eicu.kernels import codec
    from eicu.models import BedKey, SignalBlock, WaveformFrame
    from eicu.scores import news2

    rng = np.random.default_rng(0)
    codec.decode_int16(codec.encode_int16(rng.integers(-500, 500, 300).astype(np.int16)))
    # samples as the wire decodes them (read-only views of the payload) to physical units
    raw = rng.integers(-500, 500, 125).astype(np.int16)
    frame = WaveformFrame(
        BedKey("warmup", "bed"),
        0,
        1_700_000_000_000_000,
        (SignalBlock("PLETH", 125.0, 200.0, 0, raw),),
    )
    for block in wire.decode_waveform(frame.bed, wire.encode_waveform(frame)).blocks:
        block.physical()
    news2(rr=16, spo2=97, on_oxygen=False, sbp=120, hr=70, acvpu="A", temp_c=37.0)
    if signals:
        from eicu.signal.pipeline import BedSignalPipeline

        rates = {"ECG_II": 250.0, "ECG_V": 250.0, "PLETH": 125.0, "ABP": 125.0}
        pipeline = BedSignalPipeline(rates)
        t = np.arange(0, 12.0, 1 / 250.0)
        ecg = np.where((t % 0.8) < 0.02, 1.0, 0.0) + 0.01 * rng.standard_normal(t.size)
        pulse = np.sin(2 * np.pi * 1.25 * np.arange(0, 12.0, 1 / 125.0)) * 20 + 90
        for i in range(0, 12):
            pipeline.push("ECG_II", ecg[i * 250 : (i + 1) * 250], i * 250)
            pipeline.push("ECG_V", ecg[i * 250 : (i + 1) * 250], i * 250)
            pipeline.push("ABP", pulse[i * 125 : (i + 1) * 125], i * 125)
            pipeline.push("PLETH", pulse[i * 125 : (i + 1) * 125] / 100, i * 125)


class Engine:
    def __init__(
        self,
        mqtt: MqttSettings,
        ingest: IngestSettings,
        store: Store,
        metrics: IngestMetrics | None = None,
        alarms_outbox: Path | None = None,
        alerting: AlertingSettings | None = None,
        alarm_store: AlarmRepository | None = None,
        *,
        store_open: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        alarm_policy: AlarmPolicy | None = None,
        ownership: PartitionOwnership | None = None,
        state_period_s: float | None = None,
        sources: Mapping[str, Callable[[], Any]] | None = None,
    ) -> None:
        """``store_open``: False when the store could not be opened (the database down); the
        writer opens it when the database is back, keeping everything until then.
        ``alarm_store``: where the alarm outbox's audit trail and receipts are copied (the
        engine's own store in ``eicu serve``). ``clock``: the alarm stage's time (evaluation,
        escalation, delivery receipts, the copier's waits). ``alarm_policy``: the alarm stage's
        policy (default: ``alerting.policy``, the site's ``EICU_ALARM_POLICY_FILE``, else the
        default policy). ``ownership``: the hub's partitions shared with other engines
        (``eicu worker``): this engine reads, holds and judges only the beds of the partitions
        it owns at the moment; without it, every bed its broker sends. ``state_period_s``:
        publish the beds' state on the bus this often (ingest.live.StatePublisher), for
        dashboards of their own processes, and answer their alarm commands; None: never.
        ``sources``: read these instead of the MQTT broker (consumer factories by name, see
        ``Ingest.run_sources``), e.g. the hub's streams of remote sites (eicu site-feed)."""
        if sources is not None and ownership is not None:
            raise ValueError("an engine reads either owned partitions or its own sources")
        self._sources = sources
        self._clock = clock
        self.ownership = ownership
        self.metrics = metrics or IngestMetrics()
        self.store = store
        self.router = BedRouter(self.metrics, ingest)
        self.scores = ScoreStage()
        self.signals = SignalStage(chunk_s=ingest.analysis_chunk_s)
        self.router.subscribe(self.scores)
        self._analyse = ingest.analyse_signals
        if ingest.analyse_signals:
            self.router.subscribe(self.signals)
        self.writer = StoreWriter(store, ingest, self.metrics, store_open=store_open)
        # Auto-registered beds are remembered beside the spool, so a restart keeps them.
        self.admission = Admission(
            ingest.admission, self.metrics, admitted_path=ingest.spool_dir / "admitted-beds.txt"
        )
        self.ingest = Ingest(
            mqtt,
            self.router,
            self.writer,
            self.metrics,
            admission=self.admission,
            mqtt_queue_max_bytes=ingest.mqtt_queue_max_bytes,
        )
        # The alarm stage: each bed's rules as its data arrives (and every bed each second),
        # audited in a durable local outbox.
        # With an on-call rota, every alarm event also goes to the escalation dispatcher.
        self.alarms: AlarmService | None = None
        self._on_alarm_events: Callable[[list[AlarmEvent]], None] | None = None
        self.state: StatePublisher | None = None
        self.dispatcher: Dispatcher | None = None
        self._alarm_events: asyncio.Queue[AlarmEvent] = asyncio.Queue()
        self._channels: dict[str, DeliveryChannel] = {}
        # (connection, delivery partitions) when the alarm events are published for delivery
        self._publish_events: tuple[MqttSettings, int] | None = None
        if alerting is not None and alarms_outbox is None:
            alarms_outbox = alerting.outbox_path
        if alarms_outbox is not None:
            from alerting.outbox import Outbox
            from alerting.service import AlarmService

            outbox = Outbox(alarms_outbox, clock=clock)
            on_events = None
            if alerting is not None and alerting.delivery == "bus":
                # Delivery processes page (eicu alarms deliver): the events go to the bus.
                self._publish_events = (mqtt.for_alarms(), alerting.partitions)
            elif alerting is not None:
                # Without a rota nobody is paged, but every change of an alarm is still
                # published to its bed's alarms topic.
                self.dispatcher = self._dispatcher(mqtt, alerting, alerting.rota_path, outbox)
                on_events = self._to_dispatcher
            from eicu.alarms.policy import load_policy

            if alarm_policy is None and alerting is not None:
                alarm_policy = alerting.policy
            # The policy configured now is in force, also over a state saved under another.
            alarm_policy = alarm_policy or load_policy()
            self.alarms = AlarmService(
                self, outbox, alarm_policy, on_events=self._alarm_events_recorded, clock=clock
            )
            self._on_alarm_events = on_events
            # After the score and signal stages: a bed is evaluated on their fresh results.
            self.router.subscribe(self.alarms)
            # Acknowledgements reach the alarm state machine from every side: the remote ICU over
            # MQTT, and a page's recipient through the dispatcher (the dashboard calls the
            # service itself); the service's event then stops the escalation.
            self.ingest.on_alarm_ack = self.alarms.acknowledge_remote
            self.ingest.on_alarm_command = self._alarm_command
            if self.dispatcher is not None:
                self.dispatcher.on_acknowledged = self.alarms.acknowledge_page
        # The beds' state for dashboards of their own processes, and answers to their commands.
        if state_period_s:
            from ingest.live import StatePublisher

            self.state = StatePublisher(self, mqtt.for_state(), state_period_s, clock=clock)
        # The central copy of the outbox (audit trail and receipts), kept up to date while the
        # engine runs and caught up when the database comes back.
        self.alarm_store = alarm_store if self.alarms is not None else None
        self._tasks: list[asyncio.Task[None]] = []
        # True once start() has warmed the kernels and resumed sequence tracking.
        self.warmed = False
        self._stopped = False
        self.ingest.on_partition_gained = self._partition_gained
        self.ingest.on_partition_lost = self._partition_lost
        self.ingest.on_partition_released = self._partition_released

    def running(self, name: str) -> bool:
        """Whether the engine's task ``name`` (``ingest``, ``store-writer``, ``alarms``, ...)
        runs."""
        return any(t.get_name() == name and not t.done() for t in self._tasks)

    def add_health_checks(self, health: Health) -> None:
        """The engine's readiness (eicu.health): the broker connected and subscribed, the
        kernels warmed, the store open or its spool accepting, the alarm service running."""
        url = self.ingest.url

        def broker() -> tuple[bool, str]:
            if self.ingest.connected.is_set():
                return True, f"subscribed on {url}"
            return False, f"not connected to {url}"

        def kernels() -> tuple[bool, str]:
            return self.warmed, "warmed" if self.warmed else "warming up"

        health.add_check("broker", broker)
        ownership = self.ownership
        if ownership is not None:

            def partitions() -> tuple[bool, str]:
                if not ownership.settled.is_set():
                    return False, "claiming partitions"
                return True, f"{len(ownership.owned)} of {ownership.partitions} partitions"

            health.add_check("partitions", partitions)
        health.add_check("kernels", kernels)
        health.add_check("store", self.writer.health)
        if self.alarms is not None:

            def alarms() -> tuple[bool, str]:
                if self.running("alarms"):
                    return True, "running"
                return False, "not running" if self.warmed else "not started"

            health.add_check("alarms", alarms)

    async def _partition_gained(self, k: int) -> None:
        """Before a taken-over partition's messages are read: sequence tracking of its beds goes
        on from what the store holds (what the last owner stored is not taken twice), their
        live alarms are adopted, and their recent data replayed (:meth:`replay_recent`)."""
        beds = await self._resume_sequences(partition=k)
        await self._take_over_alarms(beds)
        await self.replay_recent(beds)

    async def replay_recent(self, beds: set[BedKey], window_s: float = REPLAY_S) -> int:
        """Rebuild beds taken over from another worker from what the store holds, before their
        live messages are read: their newest values (NEWS2 inputs measured minutes apart, like
        temperature or a cuff pressure, are there at once) and the last ``window_s`` of their
        analysed signals through the signal pipeline (a rhythm under way is known at once, its
        onset at its data time, rather than after the pipeline's warm-up). The alarm stage then
        judges the rebuilt beds at its next pass, the adopted alarms keeping their ids. Best
        effort within REPLAY_WAIT_S: a bed not replayed starts from its live data. Returns the
        samples replayed."""
        if not beds:
            return 0
        from eicu.signal.pipeline import ANALYSED

        now_us = self._clock.now_us()
        start_us = now_us - int(window_s * 1e6)
        pushed = 0
        try:
            async with asyncio.timeout(REPLAY_WAIT_S):
                latest = await self.store.latest(max_age_s=LATEST_LOOKBACK_S)
                for bed in beds:
                    state = self.router.bed(bed)
                    for key, v in latest.get(bed, {}).items():
                        held = state.latest.get(key)
                        if held is None or held[1] < v.ts_us:
                            state.latest[key] = (v.value, v.ts_us)
                    newest = max((v.ts_us for v in latest.get(bed, {}).values()), default=0)
                    if newest < start_us - RECENT_MARGIN_US:
                        continue  # nothing lately: nothing under way (a worker's start is quick)
                    if self.alarms is not None:
                        # limit conditions under way keep their onset
                        recent = await self.store.numerics(
                            now_us - LIMIT_REPLAY_US, now_us + 1, bed=bed
                        )
                        self.alarms.replay_limits(bed, recent)
                    if not self._analyse:
                        continue
                    windows = {}
                    for signal in ANALYSED:
                        w = await self.store.waveform(bed, signal, start_us, now_us + 1)
                        if w.t_us.shape[0]:
                            windows[signal] = (w.fs_hz, w.t_us, w.values)
                    if windows:
                        pushed += await asyncio.to_thread(self.signals.replay, bed, windows)
        except (StorageUnavailable, TimeoutError) as exc:
            log.warning("replay of %d beds taken over cut short: %s", len(beds), exc)
        except Exception:
            log.exception(
                "replay of %d beds taken over failed; they start from live data", len(beds)
            )
        log.info("replayed %d beds taken over: %d samples", len(beds), pushed)
        return pushed

    async def _take_over_alarms(self, beds: set[BedKey]) -> None:
        """The live alarms of beds taken over go on here (``AlarmService.adopt``), and their
        escalations where the last owner left them (``Dispatcher.take_over``), before the beds'
        messages are read: a condition still present is not raised again, one that ended ends
        its alarm. Without the alarm tables (or with no answer in time) the beds start with no
        alarm, and a condition still present is raised again after its delay."""
        alarms, store = self.alarms, self.alarm_store
        if alarms is None or store is None or not beds:
            return
        now_us = self._clock.now_us()
        try:
            stored = await asyncio.wait_for(
                store.alarm_events(
                    now_us - ALARM_TAKEOVER_LOOKBACK_US, now_us + 600_000_000, beds=beds
                ),
                ALARM_STORE_WAIT_S,
            )
        except (StorageUnavailable, TimeoutError) as exc:
            log.warning("alarms of %d beds taken over not read (%s): none adopted", len(beds), exc)
            return
        except Exception:
            # Best effort, like the sequence tracking: a takeover must never stop on it.
            log.exception("alarms of %d beds taken over not read: none adopted", len(beds))
            return
        trails: dict[BedKey, list[AlarmEvent]] = {}
        for row in stored:
            trails.setdefault(row.event.bed, []).append(row.event)
        for bed, trail in trails.items():
            adopted = alarms.adopt(bed, trail)
            if self.dispatcher is None:
                continue
            latest = {e.alarm_id: e for e in trail}  # oldest first: the last one stays
            for alarm in adopted:
                try:
                    receipts = await asyncio.wait_for(
                        store.alarm_deliveries(alarm.alarm_id), ALARM_STORE_WAIT_S
                    )
                except Exception as exc:  # its escalation then starts again at the first step
                    log.warning("receipts of %s not read (%r)", alarm.alarm_id, exc)
                    receipts = []
                await self.dispatcher.take_over(latest[alarm.alarm_id], receipts)

    async def _partition_released(self, k: int) -> None:
        """Before a partition's key is let go: the alarm events of its beds are in the store,
        where the next owner reads them."""
        if self.alarms is None or self.alarm_store is None:
            return
        try:
            await asyncio.wait_for(
                self.alarms.outbox.copy_to_store(self.alarm_store), ALARM_STORE_WAIT_S
            )
        except (StorageUnavailable, TimeoutError) as exc:
            log.warning("partition %d handed over before its alarm events were copied: %s", k, exc)

    def _partition_lost(self, k: int) -> None:
        """A partition moved to another engine: its beds are no longer held or judged here."""
        from eicu.bus.partitioned import partition_of

        assert self.ownership is not None
        n = self.ownership.partitions
        gone = [b for b in self.router.beds if partition_of(b.site, b.bed, n) == k]
        self.writer.hand_over(gone)
        for bed in gone:
            self.router.forget(bed)
            self.scores.forget(bed)
            self.signals.forget(bed)
            if self.alarms is not None:
                self.alarms.hand_over(bed)
            if self.dispatcher is not None:
                self.dispatcher.hand_over(bed)
        log.info("partition %d handed over (%d beds)", k, len(gone))

    def _dispatcher(
        self,
        mqtt: MqttSettings,
        alerting: AlertingSettings,
        rota_path: Path | None,
        outbox: Outbox,
    ) -> Dispatcher:
        from alerting.channels import (
            EmailChannel,
            MllpChannel,
            MqttChannel,
            WebhookChannel,
            patients_from,
        )
        from alerting.escalation import DeliveryMetrics, Dispatcher, Rota

        rota = Rota.from_file(rota_path) if rota_path is not None else Rota(sites={})
        # Pages go back to the site over the engine's broker, on a connection of their own.
        clock = self._clock
        self._channels = {
            "mqtt": MqttChannel(mqtt.for_alarms(), clock=clock),
            "webhook": WebhookChannel(clock=clock),
        }
        if alerting.smtp is not None:
            self._channels["email"] = EmailChannel(alerting.smtp, clock=clock)
        if alerting.pcd04:
            patient_of = patients_from(self.store)
            tls = mllp_client_context(alerting.mllp_tls)
            self._channels["mllp"] = MllpChannel(patient_of=patient_of, clock=clock, tls=tls)
        metrics = DeliveryMetrics(self.metrics.registry)
        return Dispatcher(
            rota, outbox, self._channels, metrics=metrics, clock=clock, pcd04=alerting.pcd04
        )

    def _alarm_events_recorded(self, events: list[AlarmEvent]) -> None:
        """Alarm events are recorded: to the dispatcher, and the beds' state published soon."""
        if self._on_alarm_events is not None:
            self._on_alarm_events(events)
        if self.state is not None:
            self.state.alarms_changed({e.bed for e in events})

    def _alarm_command(self, cmd: AlarmCommand) -> None:
        """A dashboard's change to a bed's alarms: made, and answered on its reply topic."""
        assert self.alarms is not None
        events, error, why = self.alarms.command(cmd)
        if self.state is None:
            log.warning("alarm command from %s applied but not answered: no state publishing",
                        cmd.user)  # fmt: skip
            return
        self.state.reply(cmd.reply_to, wire.encode_command_answer(cmd.cmd_id, events, error, why))

    def _to_dispatcher(self, events: list[AlarmEvent]) -> None:
        for event in events:  # unbounded: alarm events are few, and none may be dropped
            self._alarm_events.put_nowait(event)

    async def start(self) -> None:
        # The subscriptions come first, so the broker keeps what is published from now on; the
        # ingest takes messages once the kernels are compiled (or loaded from cache) and the
        # sequence tracking is resumed.
        if self._sources is not None:
            reading = self.ingest.run_sources(self._sources)
        elif self.ownership is None:
            reading = self.ingest.run()
        else:
            reading = self.ingest.run_owned(self.ownership)  # resumed partition by partition
        self._tasks = [
            asyncio.create_task(self.writer.run(), name="store-writer"),
            asyncio.create_task(reading, name="ingest"),
            asyncio.create_task(self.ingest.run_dead_letters(), name="dead-letters"),
        ]
        await asyncio.to_thread(warm_up, self._analyse)
        if self.ownership is None:
            await self._resume_sequences()
        self.warmed = True
        self.ingest.accepting.set()
        if self.alarms is not None:
            self._tasks.append(asyncio.create_task(self.alarms.run(), name="alarms"))
        if self.alarms is not None and self.alarm_store is not None:
            from alerting.outbox import run_copy

            self._tasks.append(
                asyncio.create_task(
                    run_copy(self.alarms.outbox, self.alarm_store, clock=self._clock),
                    name="alarms-copy",
                )
            )
        if self.alarms is not None and self._publish_events is not None:
            from alerting.feed import run_publish

            publish_to, partitions = self._publish_events
            self._tasks.append(
                asyncio.create_task(
                    run_publish(self.alarms.outbox, publish_to, partitions, clock=self._clock),
                    name="alarms-publish",
                )
            )
        if self.dispatcher is not None:
            # run() first resumes the escalations and deliveries pending from before.
            self._tasks.append(
                asyncio.create_task(self.dispatcher.run(self._alarm_events), name="alarms-dispatch")
            )
        if self.state is not None:
            self._tasks.append(asyncio.create_task(self.state.run(), name="state"))

    async def _resume_sequences(
        self, timeout_s: float = 2.0, partition: int | None = None
    ) -> set[BedKey]:
        """Sequence tracking goes on from the newest frames stored (the last day), so frames
        lost while the engine was down or killed count as gaps, and those the broker sends again
        (stored or spooled, not acknowledged) as duplicates. Without the database it goes on
        from the spool alone rather than wait. With ``partition``: only that partition's beds
        that this engine does not hold yet."""
        import time

        # The spool holds what was written after the store's newest frames.
        spooled = self.writer.spooled_sequences()
        now_us = time.time_ns() // 1000
        try:
            last = await asyncio.wait_for(
                self.store.last_sequences(now_us - SEQUENCE_LOOKBACK_US, now_us + 600_000_000),
                timeout_s,
            )
        except (StorageUnavailable, TimeoutError) as exc:
            log.warning("sequence tracking from the spool only (the store did not answer: %s)", exc)
            last = {}
        except Exception:
            # Best effort: a store that cannot say must never keep the engine from starting.
            log.exception("sequence tracking from the spool only (the store's answer failed)")
            last = {}
        last.update(spooled)
        if partition is not None and self.ownership is not None:
            from eicu.bus.partitioned import partition_of

            n = self.ownership.partitions
            last = {
                key: seq
                for key, seq in last.items()
                if key[0] not in self.router.beds
                and partition_of(key[0].site, key[0].bed, n) == partition
            }
            # They streamed to the last owner: admitted and confirmed already.
            self.admission.adopt({key[0] for key in last})
            # Which recent messages the last owner stored: only those are repeats (it may have
            # taken one after a newer one, and died before storing it).
            stored = await self._stored_sequences({key[0] for key in last}, now_us, timeout_s)
        else:
            stored = None
        self.router.resume_sequences(last, stored)
        log.info("sequence tracking resumed for %d streams", len(last))
        return {key[0] for key in last}

    async def _stored_sequences(
        self, beds: set[BedKey], now_us: int, timeout_s: float
    ) -> dict[tuple[BedKey, str], frozenset[int]] | None:
        """The numbers the store holds of the beds' recent messages; None when it cannot say in
        time (every number near the newest stored is then taken as a repeat)."""
        if not beds:
            return {}
        try:
            return await asyncio.wait_for(
                self.store.stored_sequences(
                    now_us - STORED_LOOKBACK_US, now_us + 600_000_000, beds
                ),
                timeout_s,
            )
        except (StorageUnavailable, TimeoutError) as exc:
            log.warning("stored sequence numbers not read (%s): repeats judged by the newest", exc)
        except Exception:
            log.exception("stored sequence numbers not read: repeats judged by the newest")
        return None

    async def wait_connected(self, timeout_s: float = 10.0) -> None:
        await asyncio.wait_for(self.ingest.connected.wait(), timeout_s)

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Stop taking messages, then write (or spool) everything received. Once: stopping a
        stopped engine does nothing."""
        if self._stopped:
            return
        self._stopped = True
        ingest_task = self._tasks[1] if len(self._tasks) > 1 else None
        writer_task = self._tasks[0] if self._tasks else None
        for task in (*self._tasks[2:], ingest_task, writer_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.ingest.dead_letters.flush()
        self.ingest.flush_counts()
        await self.writer.close(drain_timeout_s)
        await self.ingest.close()  # what the writer stored or spooled is acknowledged
        for channel in self._channels.values():
            await channel.close()
        if self.alarms is not None and self.alarm_store is not None:
            # One last copy; what the database does not take now is copied at the next start.
            try:
                await asyncio.wait_for(self.alarms.outbox.copy_to_store(self.alarm_store), 5.0)
            except (StorageUnavailable, TimeoutError) as exc:
                log.warning("alarm events left in the outbox for the next start: %s", exc)
        if self.alarms is not None:
            self.alarms.outbox.close()
        self._tasks = []

    async def run_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                [waiter, *self._tasks], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not waiter and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            waiter.cancel()
        finally:
            await self.stop()
