"""The benchmark scripts still run (at a size of seconds): a script that no longer runs
measures nothing, and nothing else would notice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_dashboard_benchmark_runs_and_prints_its_figures() -> None:
    out = subprocess.run(
        [sys.executable, "benchmarks/dashboard.py", "--beds", "20", "--seconds", "4",
         "--live", "3", "--no-browser"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "census of 20 beds" in out.stdout
    assert "kB/s per page" in out.stdout and "one open bed view" in out.stdout


def test_the_stages_benchmark_runs_and_times_the_pipeline_parts() -> None:
    out = subprocess.run(
        [sys.executable, "benchmarks/stages.py", "--beds", "4", "--seconds", "12",
         "--repeat", "1", "--frame", "0.25", "--breakdown"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "router+signals+scores" in out.stdout
    rows = {
        line[:30].strip(): line[30:].split()
        for line in out.stdout.split("the signal stage's parts")[1].splitlines()[2:]
        if line.strip()
    }
    # every part was called, and the whole took longer than any part of it
    assert rows and all(float(calls) > 0 for _ms, _us, calls in rows.values()), rows
    whole = float(rows["router + signal stage"][0])
    assert all(float(ms) <= whole for ms, _us, _calls in rows.values())
