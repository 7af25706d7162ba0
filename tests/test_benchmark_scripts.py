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
