"""The benchmark scripts still run (at a size of seconds): a script that no longer runs
measures nothing, and nothing else would notice."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_data

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
         "--repeat", "1", "--frame", "0.25", "--breakdown", "--worker"],
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
    # the alarm rules and the dashboards' snapshots an engine adds, each timed
    added = out.stdout.split("the stages an engine adds")[1].split("the signal stage's parts")[0]
    ms = {line[:30].strip(): float(line[30:]) for line in added.splitlines()[1:] if line.strip()}
    assert set(ms) == {"alarm rules", "state snapshots"} and all(v > 0 for v in ms.values()), ms


def test_the_simulated_rhythms_benchmark_counts_the_primary_leads_ventricular_beats() -> None:
    """The primary lead's beats come out of the pipeline when the second lead's samples arrive
    (it waits for both): the benchmark must count them by the beat's lead, not by the chunk
    being pushed, or every share is "nan" of 0 beats."""
    out = subprocess.run(
        [sys.executable, "benchmarks/synth_rhythms.py", "--seeds", "1", "--seconds", "40"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    shares = {
        line.split()[0]: (float(line.split()[3]), int(line.split("(of ")[1].split()[0]))
        for line in out.stdout.splitlines()
        if line.split()[1:2] == ["V"] and "(of " in line
    }
    vt_share, vt_beats = shares["vt"]
    assert vt_beats > 20 and vt_share > 0.9, out.stdout
    big_share, _ = shares["bigeminy"]
    assert 0.4 < big_share < 0.6, out.stdout


def test_the_wan_benchmark_drains_a_backlog_across_a_capped_link() -> None:
    from tests.netns import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    out = subprocess.run(
        [sys.executable, "benchmarks/wan.py", "--beds", "10", "--minutes", "0.3",
         "--rate-mbit", "2", "--synth"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["link"] == "netns veth, tbf 2.0 Mbit/s"
    # The whole backlog crossed the WAN (the benchmark returns only once every message is at
    # the hub), within the cap. How many bytes it took depends on whether NATS compressed the
    # link while it drained: it does once the round trip it measures reaches 10 ms (s2_auto),
    # which the capped link's own queue can bring about, so fewer bytes than the backlog's may
    # cross.
    assert result["wan_bytes_up"] > 0, result
    assert result["wan_up_mbit_per_s_while_draining"] <= 2.0 * 1.1, result


def test_the_wan_benchmark_sends_coded_waveforms_in_fewer_bytes() -> None:
    from tests.netns import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    out = subprocess.run(
        [sys.executable, "benchmarks/wan.py", "--beds", "4", "--minutes", "0.2", "--synth",
         "--coded", "--netns"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["waveform_samples"] == "coded (eicu.kernels.codec)"
    # The same beds' messages with int16 samples, as the benchmark builds them uncoded.
    spec = importlib.util.spec_from_file_location("wan_benchmark", ROOT / "benchmarks" / "wan.py")
    assert spec is not None and spec.loader is not None
    wan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wan)
    raw = wan.synthetic_backlog(4, 0.2 + 1 / 60, 1_764_302_400_000_000)
    raw_bytes = sum(len(p) for _, p in raw[4 * 5 :])  # after the first second, sent before the cut
    assert result["messages"] == len(raw) - 4 * 5
    assert result["bytes"] < 0.6 * raw_bytes, (result["bytes"], raw_bytes)
    # and every coded byte crossed the link
    assert result["wan_bytes_up"] >= result["bytes"]


def test_the_wire_coding_benchmark_measures_real_records_losslessly() -> None:
    from eicu.datasets import data_dir

    if not any((data_dir() / "challenge2015").glob("*.hea")):
        pytest.skip(f"no PhysioNet/CinC 2015 records under {data_dir()} (EICU_DATA_DIR)")
    out = subprocess.run(
        [sys.executable, "benchmarks/wire_coding.py", "--records", "2", "--seconds", "20",
         "--repeats", "1"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    row = next(line.split() for line in out.stdout.splitlines() if line.startswith("challenge"))
    raw_mb, coded_mb = float(row[3]), float(row[4])
    assert row[1] == "2" and int(row[2]) == 2 * 80  # 20 s of 0.25-s frames from each record
    assert 0 < coded_mb < raw_mb


def test_the_accuracy_benchmark_scores_the_2015_vt_alarms_and_eicus_own_vt_call() -> None:
    """The VT section verifies every 2015 VT alarm and says how often eicu's own VTACH or VFIB
    flag was up before the alarm, for true and for false alarms apart."""
    require_data("challenge2015/ALARMS.csv", "mitdb/RECORDS")
    out = subprocess.run(
        [sys.executable, "benchmarks/accuracy.py", "--no-peers",
         "--skip", "qrs,rhythm,v,leads,pulse,speed"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    alarms = [line for line in out.stdout.splitlines() if line.startswith("eicu, shipped")]
    assert alarms, out.stdout[-2000:]
    fields = alarms[0].split()
    tp, tn, fp, fn = (int(fields[fields.index(k) + 1]) for k in ("TP", "TN", "FP", "FN"))
    own = [line for line in out.stdout.splitlines() if line.startswith("eicu's own VTACH")]
    assert [line.split(" within ")[1].split(" s ")[0] for line in own] == ["8", "16"]
    for line in own:
        true_part = line.split("true alarms ")[1].split(" ")[0]
        false_part = line.split("false alarms ")[1].split(" ")[0]
        assert true_part.split("/")[1] == str(tp + fn)
        assert false_part.split("/")[1] == str(tn + fp)
        assert 0 <= int(true_part.split("/")[0]) <= tp + fn
