"""Replaying stored numerics under two policies: the alarm load moves the way a longer delay or
a higher limit says it must, with the counts this recording gives by construction."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from alerting.replay import Replay, replay, replay_store
from eicu import cli
from eicu.alarms.policy import DEFAULT_PATH, load_policy
from eicu.models import Batch, BedKey, NumericsFrame
from eicu.store.sqlite import SqliteStore

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
T0_US = int(T0.timestamp() * 1e6)
BED = BedKey("karamay", "bed-03")
QUIET = BedKey("karamay", "bed-04")
MINUTES = 10


def _hr(t_s: int) -> float:
    """70 bpm, and in each minute a run to 135 bpm from second 20: 8 s long in the first five
    minutes, 15 s long in the next five."""
    minute, second = divmod(t_s, 60)
    run_s = 8 if minute < 5 else 15
    return 135.0 if 20 <= second < 20 + run_s else 70.0


def _policy(tmp_path: Path, name: str, **hr_high: Any) -> Path:
    doc = json.loads(DEFAULT_PATH.read_text())
    doc["name"] = name
    doc["conditions"]["HR_HIGH"].update(hr_high)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    path = tmp_path / "eicu.sqlite"
    store = SqliteStore(path)
    await store.open()
    frames = [
        NumericsFrame(BED, t, T0_US + t * 1_000_000, {"HR": _hr(t), "SPO2": 97.0})
        for t in range(MINUTES * 60)
    ] + [NumericsFrame(QUIET, t, T0_US + t * 1_000_000, {"HR": 72.0}) for t in range(MINUTES * 60)]
    await store.write(Batch(numerics=frames))
    await store.close()
    return path


async def _load(db: Path, policy: Path) -> dict[tuple[str, str], int]:
    store = SqliteStore(db)
    await store.open()
    try:
        # 50 s chunks: some runs straddle a chunk's end (at 200 s and 450 s) and count once.
        (load,) = await replay_store(
            store, [load_policy(policy)], T0_US, T0_US + MINUTES * 60_000_000, chunk_s=50
        )
    finally:
        await store.close()
    return {(kind, p.value): n for (kind, p), n in load.counts.items()}


async def test_a_shorter_delay_raises_more_alarms_a_higher_limit_fewer(
    tmp_path: Path, db: Path
) -> None:
    # The default HR_HIGH: above 130 bpm for 10 s. Only the five 15 s runs last long enough.
    default = await _load(db, DEFAULT_PATH)
    assert default == {("HR_HIGH", "medium"): 5}
    # A 5 s delay lets the 8 s runs through too.
    shorter = await _load(db, _policy(tmp_path, "short-delay", delay_s=5))
    assert shorter == {("HR_HIGH", "medium"): 10}
    # A 140 bpm limit: no run crosses it.
    higher = await _load(db, _policy(tmp_path, "high-limit", limit=140))
    assert higher == {}
    # A 20 s delay: no run lasts that long.
    longer = await _load(db, _policy(tmp_path, "long-delay", delay_s=20))
    assert sum(longer.values()) < sum(default.values())


async def test_a_replay_read_in_chunks_gives_the_events_of_one_read(db: Path) -> None:
    store = SqliteStore(db)
    await store.open()
    try:
        end_us = T0_US + MINUTES * 60_000_000
        samples = await store.numerics(T0_US, end_us)
    finally:
        await store.close()
    policy = load_policy()
    whole = replay(samples, policy, T0_US, end_us)
    run = Replay(policy)
    for a in range(0, len(samples), 37):  # pieces that cut through one second's values
        run.feed(samples[a : a + 37])
        run.run()
    run.run(final=True)
    assert run.events == whole and len(whole) == 10  # five alarms, each started and cleared
    with pytest.raises(ValueError, match="time order"):
        run.feed(samples[:1])


def test_cli_replay_compares_with_the_default_policy(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = _policy(tmp_path, "short-delay", delay_s=5)
    window = ["--from", T0.isoformat(), "--to", "2026-11-27T10:10:00Z"]
    argv = ["alarms", "replay", "--database", f"sqlite:///{db}", *window, "--policy", str(policy)]
    assert cli.main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["policy"]["policy"] == "short-delay v2" and doc["policy"]["alarms"] == 10
    assert doc["default"]["alarms"] == 5
    assert doc["policy"]["by_kind"] == [{"kind": "HR_HIGH", "priority": "medium", "alarms": 10}]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["HR_HIGH", "medium", "5", "10", "+5"]
    assert lines[-1].split() == ["all", "5", "10", "+5"]


def test_cli_replay_rejects_a_window_that_ends_before_it_starts(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["alarms", "replay", "--database", f"sqlite:///{db}", "--from", "2026-11-27T11:00"]
    assert cli.main([*argv, "--to", "2026-11-27T10:00", "--policy", str(DEFAULT_PATH)]) == 2
    assert "--to" in capsys.readouterr().err


SICK = BedKey("karamay", "bed-05")


def _sick_values(t_s: int, *, with_temp: bool) -> dict[str, float | None]:
    """Normal vitals, then from minute 2 to minute 4 NEWS2 8 (RR 25: 3, SpO2 93: 2, temperature
    39.5: 2, HR 95: 1), or 6 without a temperature."""
    worse = 120 <= t_s < 240
    values: dict[str, float | None] = {
        "RR": 25.0 if worse else 16.0,
        "SPO2": 93.0 if worse else 97.0,
        "HR": 95.0 if worse else 72.0,
        "NIBP_SYS": 120.0,
        "ACVPU": 0.0,  # A
        "O2": 0.0,  # air
    }
    if with_temp:
        values["TEMP"] = 39.5 if worse else 37.0
    return values


@pytest.mark.parametrize("with_temp", [True, False])
async def test_news2_bands_are_replayed_from_the_stored_numerics(
    tmp_path: Path, with_temp: bool
) -> None:
    path = tmp_path / "sick.sqlite"
    store = SqliteStore(path)
    await store.open()
    try:
        frames = [
            NumericsFrame(SICK, t, T0_US + t * 1_000_000, _sick_values(t, with_temp=with_temp))
            for t in range(6 * 60)
        ]
        await store.write(Batch(numerics=frames))
        (load,) = await replay_store(store, [load_policy()], T0_US, T0_US + 6 * 60_000_000)
    finally:
        await store.close()
    counts = {(kind, p.value): n for (kind, p), n in load.counts.items()}
    if with_temp:
        # NEWS2 8: the high band, which is also at least medium; and the temperature limit.
        assert counts == {
            ("NEWS2_HIGH", "high"): 1,
            ("NEWS2_MEDIUM", "medium"): 1,
            ("TEMP_HIGH", "low"): 1,
        }
    else:
        # Without a temperature the score is incomplete: at least 6 proves the medium band,
        # not the high one, and the missing value is not taken as normal.
        assert counts == {("NEWS2_MEDIUM", "medium"): 1}
