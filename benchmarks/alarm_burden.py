"""Alarm burden of a policy on simulated beds: alarms that page someone for nothing, and how
soon true deterioration still alarms.

    python benchmarks/alarm_burden.py [--beds 100] [--minutes 30] [--sepsis-beds 20]
        [--policy FILE ...]

Each policy (default: the shipped ``default-v1`` and ``default-v2``) runs the same beds:

* ``--beds`` beds of the simulator's ``stable`` scenario for ``--minutes`` of simulated time:
  every physiological alarm they raise is a false one (their vital signs wander inside the
  normal ranges, with the second-to-second noise of a monitor);
* ``--sepsis-beds`` beds of the ``sepsis`` scenario, its 6 h course run 12 times faster
  (30 min), where NEWS2 climbs from low to high: when each bed's first alarm of each kind
  starts.

The beds' numerics (one frame a second) are routed straight into a real engine (no broker,
signal pipeline off) and its alarm service is evaluated once a simulated second, so the figures
are those of the rules and the state machine alone. Prints alarms started per bed-hour by kind,
and per kind the beds that alarmed and the median time of their first alarm.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eicu.alarms.policy import AlarmPolicy, load_policy
from eicu.models import BedKey
from ingest.offline import physiological_alarm_starts
from simulators.beds import SynthGroup

POLICIES = Path(__file__).resolve().parent.parent / "alerting" / "policies"
T0_US = 1_800_000_000_000_000


@dataclasses.dataclass
class Run:
    started: collections.Counter[str]  # alarms started (raised), by kind
    first_s: dict[str, list[float]]  # kind -> each bed's first alarm, seconds from the start


async def simulate(
    policy: AlarmPolicy, scenario: str, beds: int, minutes: float, time_scale: float
) -> Run:
    keys = [BedKey("sim", f"bed{i:03d}") for i in range(beds)]
    seeds = list(range(1, beds + 1))
    group = SynthGroup(keys, [scenario] * beds, seeds, T0_US, time_scale=time_scale)
    started: collections.Counter[str] = collections.Counter()
    first: dict[tuple[BedKey, str], float] = {}
    seen: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        events = physiological_alarm_starts(policy, group, T0_US, int(minutes * 60), Path(tmp))
        async for second, event in events:
            if event.alarm_id not in seen:  # an escalation repeats the alarm's id
                seen.add(event.alarm_id)
                started[event.kind] += 1
            first.setdefault((event.bed, event.kind), float(second))
    first_s: dict[str, list[float]] = collections.defaultdict(list)
    for (_bed, kind), s in first.items():
        first_s[kind].append(s)
    return Run(started, dict(first_s))


def report(name: str, stable: Run, sepsis: Run, args: argparse.Namespace) -> None:
    bed_hours = args.beds * args.minutes / 60
    total = sum(stable.started.values())
    print(f"\n{name}")
    print(
        f"  stable beds ({args.beds} x {args.minutes:g} min): {total} physiological alarms, "
        f"{total / bed_hours:.2f} per bed-hour"
    )
    for kind, n in stable.started.most_common():
        print(f"    {kind:<14} {n:6d}  {n / bed_hours:7.2f} per bed-hour")
    print(f"  sepsis beds ({args.sepsis_beds}, the 6 h course in 30 min): first alarm per kind")
    for kind in sorted(sepsis.first_s, key=lambda k: statistics.median(sepsis.first_s[k])):
        times = sepsis.first_s[kind]
        print(
            f"    {kind:<14} {len(times):3d}/{args.sepsis_beds} beds, "
            f"median {statistics.median(times):6.0f} s, alarms started {sepsis.started[kind]}"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beds", type=int, default=100, help="stable beds (default 100)")
    parser.add_argument("--minutes", type=float, default=30.0, help="simulated minutes")
    parser.add_argument("--sepsis-beds", type=int, default=20, help="beds on the sepsis course")
    parser.add_argument(
        "--policy",
        type=Path,
        nargs="*",
        default=[POLICIES / "default-v1.json", POLICIES / "default-v2.json"],
        help="alarm policy files to compare",
    )
    args = parser.parse_args()
    for path in args.policy:
        policy = load_policy(path)
        t0 = time.perf_counter()
        stable = await simulate(policy, "stable", args.beds, args.minutes, 1.0)
        sepsis = await simulate(policy, "sepsis", args.sepsis_beds, 30.0, 12.0)
        report(f"{policy.name} v{policy.version} ({path.name})", stable, sepsis, args)
        print(f"  ({time.perf_counter() - t0:.0f} s to simulate)")


if __name__ == "__main__":
    asyncio.run(main())
