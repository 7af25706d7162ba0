"""What several benchmarks share: simulator processes publishing standard beds, the CPU time and
memory of processes, percentiles."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` counts that differ by one at most (the larger first)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def start_simulators(
    mqtt_urls: Sequence[str],
    site: str,
    beds: int,
    procs: int,
    duration_s: float,
    *,
    frame_s: float = 0.25,
    scenario: str = "stable",
    first_bed: int = 1,
    events_at_s: float | None = None,
    summary: bool = True,
    env: dict[str, str] | None = None,
) -> list[subprocess.Popen[str]]:
    """``eicu simulate`` in ``procs`` processes publishing ``beds`` beds of ``site`` between them
    (bed numbers from ``first_bed`` on) in real time for ``duration_s``, process ``i`` to
    ``mqtt_urls[i % len(mqtt_urls)]``. With ``summary`` each prints its JSON summary at the end
    (read by :func:`collect_simulators`); without, its output is discarded."""
    sims = []
    first = first_bed
    for i, n in enumerate(split(beds, procs)):
        if n == 0:
            continue
        cmd = [
            sys.executable,
            "-m",
            "eicu.cli",
            "simulate",
            "--mqtt",
            mqtt_urls[i % len(mqtt_urls)],
        ]
        cmd += ["--site", site, "--beds", str(n), "--first-bed", str(first)]
        cmd += ["--duration", str(duration_s), "--scenario", scenario, "--frame", str(frame_s)]
        if events_at_s is not None:
            cmd += ["--events-at", str(events_at_s)]
        if summary:
            cmd.append("--json")
        sims.append(
            subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE if summary else subprocess.DEVNULL,
                text=True,
                cwd=ROOT,
                env=env,
            )
        )
        first += n
    return sims


@dataclass
class Published:
    """What the simulators' broker acknowledged, per bed (``{"site/bed": {"messages",
    "samples"}}``, as :meth:`eicu.store.Store.stats` counts what is stored), how many messages
    they did not publish or saw unacknowledged (``behind``), and each process's start (device
    time, µs)."""

    beds: dict[str, dict[str, int]]
    behind: int
    starts_us: list[int]

    @property
    def messages(self) -> int:
        return sum(b["messages"] for b in self.beds.values())

    @property
    def samples(self) -> int:
        return sum(b["samples"] for b in self.beds.values())


def collect_simulators(sims: Sequence[subprocess.Popen[str]]) -> Published:
    """Waits for the simulators started with ``summary`` and adds up their summaries."""
    published = Published({}, 0, [])
    for s in sims:
        out, _ = s.communicate()
        if s.returncode != 0 or not out.strip():
            raise RuntimeError(f"a simulator failed (exit {s.returncode})")
        doc = json.loads(out.strip().splitlines()[-1])
        published.beds.update(doc["beds"])
        published.behind += int(doc.get("unsent", 0)) + int(doc.get("dropped", 0))
        published.starts_us.append(int(doc["start_us"]))
    return published


def cpu_seconds(pids: Sequence[int], children: bool = False) -> float:
    """User and system CPU seconds of the processes so far (``/proc/<pid>/stat``), with
    ``children`` those of all their descendants too; a process gone counts nothing."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *(proc.children(recursive=True) if children else [])]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def rss_mb(pid: int) -> float:
    """The resident memory of a process now, in MiB (0 if it is gone)."""
    import psutil

    try:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


def postmaster_pid(pg: object) -> int:
    """The PostgreSQL server process of a :class:`eicu.devservices.Postgres`."""
    data = getattr(pg, "data")  # noqa: B009
    return int((Path(data) / "postmaster.pid").read_text().splitlines()[0])


def percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")
