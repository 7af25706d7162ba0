"""`eicu analyze` and `eicu verify-alarm` on written and real WFDB records."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from eicu.cli import main
from eicu.signal.records import quiet_wfdb, wfdb_module
from tests.conftest import require_data
from tests.synthetic import ecg_from_rr, pulse_from_beats


def write_record(
    folder: Path, name: str, signals: dict[str, np.ndarray], fs: float, comments: list[str]
) -> Path:
    wfdb = wfdb_module()
    units = ["mmHg" if k == "ABP" else "NU" if k == "PLETH" else "mV" for k in signals]
    with quiet_wfdb():
        wfdb.wrsamp(
            name,
            fs=fs,
            units=units,
            sig_name=list(signals),
            p_signal=np.column_stack(list(signals.values())),
            fmt=["16"] * len(signals),
            comments=comments,
            write_dir=str(folder),
        )
    return folder / name


def test_analyze_json_and_annotations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x, truth = ecg_from_rr(np.full(60, 0.8), 250.0)
    rec = write_record(tmp_path, "syn", {"II": x}, 250.0, [])
    assert main(["analyze", str(rec), "--json", "--annotate", "tst"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fs"] == 250.0
    beats = np.array(out["beats"])
    assert beats.shape[0] >= truth.shape[0] - 2
    assert np.abs(beats[:, None] - truth[None, :]).min(axis=1).max() <= 10
    assert out["rhythms"] == []
    with quiet_wfdb():
        ann = wfdb_module().rdann(str(rec), "tst")
    np.testing.assert_array_equal(ann.sample, beats)


def test_analyze_refuses_a_read_only_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, _ = ecg_from_rr(np.full(20, 0.8), 250.0)
    folder = tmp_path / "ro"
    folder.mkdir()
    rec = write_record(folder, "syn", {"II": x}, 250.0, [])
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        assert main(["analyze", str(rec), "--annotate", "tst"]) == 2
        err = capsys.readouterr().err
        assert str(folder) in err and "--out-dir" in err
        out_dir = tmp_path / "out"
        out_dir.mkdir()
        assert main(["analyze", str(rec), "--annotate", "tst", "--out-dir", str(out_dir)]) == 0
        assert (out_dir / "syn.tst").exists()
        assert not os.path.exists(folder / "syn.tst")
    finally:
        folder.chmod(stat.S_IRWXU)


def test_analyze_errors_name_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", str(tmp_path / "nothing")]) == 2
    assert "nothing.hea" in capsys.readouterr().err
    x, _ = ecg_from_rr(np.full(20, 0.8), 250.0)
    rec = write_record(tmp_path, "syn", {"II": x}, 250.0, [])
    assert main(["analyze", str(rec), "--channel", "3"]) == 2
    assert "channels 0-0" in capsys.readouterr().err


def _challenge_like(tmp_path: Path, name: str, after: str) -> Path:
    """A 330 s bed (II, ABP) with regular pulses; what comes after 300 s is chosen."""
    fs = 250.0
    x, truth = ecg_from_rr(np.full(420, 0.8), fs, noise_mv=0.01)
    n = round(330 * fs)
    x = x[:n]
    abp = pulse_from_beats(truth, n, fs)
    if after == "chaos":
        rng = np.random.default_rng(0)
        x[round(300 * fs) :] = rng.normal(0, 2.0, n - round(300 * fs))
        abp[round(300 * fs) :] = 0.0
    comments = ["Ventricular_Tachycardia", "False alarm"]
    return write_record(tmp_path, name, {"II": x, "ABP": abp}, fs, comments)


def test_verify_alarm_uses_nothing_after_300_s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = []
    for after in ("same", "chaos"):
        rec = _challenge_like(tmp_path, f"v{after}", after)
        assert main(["verify-alarm", str(rec), "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["alarm"] == "VTACH"
    assert results[0]["true_alarm"] is False  # regular pulses throughout
    assert results[0]["true_alarm"] == results[1]["true_alarm"]
    assert results[0]["reason"] == results[1]["reason"]


def test_verify_alarm_needs_an_alarm_in_the_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, _ = ecg_from_rr(np.full(400, 0.8), 250.0)
    rec = write_record(tmp_path, "plain", {"II": x[: 250 * 301]}, 250.0, [])
    assert main(["verify-alarm", str(rec)]) == 2
    assert "no alarm type" in capsys.readouterr().err


@pytest.mark.realdata
def test_analyze_and_verify_real_records(capsys: pytest.CaptureFixture[str]) -> None:
    root = require_data("mitdb/101.hea", "challenge2015/v131l.hea")
    assert main(["analyze", str(root / "mitdb" / "101"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fs"] == 360.0 and 1850 <= len(out["beats"]) <= 1880
    assert main(["verify-alarm", str(root / "challenge2015" / "v131l"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["record"] == "v131l" and res["alarm"] == "VTACH"
    assert isinstance(res["true_alarm"], bool) and res["reference"] is True


@pytest.mark.realdata
def test_analyze_a_multi_rate_record(capsys: pytest.CaptureFixture[str]) -> None:
    root = require_data("mimic/mixedsignals.hea")
    rec = str(root / "mimic" / "mixedsignals")
    assert main(["analyze", rec, "--channel", "0", "--json"]) == 0
    ecg = json.loads(capsys.readouterr().out)
    assert ecg["fs"] == pytest.approx(249.89, abs=0.01)  # 4 samples a frame at 62.47 Hz
    assert main(["analyze", rec, "--channel", "3", "--json"]) == 0
    abp = json.loads(capsys.readouterr().out)
    assert abp["fs"] == pytest.approx(124.945, abs=0.01)
    # the same heart, seen as QRS complexes and as pressure pulses over the same 230 s
    assert abs(len(ecg["beats"]) - len(abp["beats"])) <= 0.05 * len(ecg["beats"])
