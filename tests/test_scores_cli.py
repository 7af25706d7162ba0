"""``eicu score``: JSON lines in, one JSON line out per input, bad lines reported in-stream."""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from eicu import cli
from eicu.scores.definitions import MEWS_SUBBE_2001

REPO = Path(__file__).resolve().parent.parent

BRIEF_LINE = {
    "rr": 22, "spo2": 95, "on_oxygen": False, "sbp": 105, "hr": 112, "acvpu": "A",
    "temp_c": 38.4, "spo2_scale": 1,
}  # fmt: skip


def run_cli(argv, stdin_text, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin_text))
    rc = cli.main(argv)
    out = capsys.readouterr().out
    return rc, [json.loads(line) for line in out.splitlines()]


def test_news2_jsonl_in_a_subprocess():
    text = json.dumps(BRIEF_LINE) + "\n" + json.dumps({**BRIEF_LINE, "spo2": 120}) + "\n"
    proc = subprocess.run(
        [sys.executable, "-m", "eicu.cli", "score", "news2", "--jsonl"],
        input=text,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert proc.returncode == 1  # one bad line
    assert lines[0]["total"] == 7
    assert lines[0]["band"] == "high"
    assert lines[0]["components"] == {
        "rr": 2, "spo2": 1, "on_oxygen": 0, "sbp": 1, "hr": 2, "acvpu": 0, "temp_c": 1,
    }  # fmt: skip
    assert lines[1] == {
        "line": 2,
        "error": {"field": "spo2", "message": "120 % is impossible: outside 0..100"},
    }


def test_the_stream_goes_on_after_bad_lines(monkeypatch, capsys):
    text = "\n".join(
        [
            "not json",
            json.dumps({"rr": "fast"}),
            json.dumps({"rr": 12, "heart": 70}),
            "[1, 2]",
            json.dumps({"hr": {"value": 70}}),
            json.dumps({"acvpu": "Q"}),
            "",
            json.dumps({"id": "bed-3", **BRIEF_LINE}),
        ]
    )
    rc, lines = run_cli(["score", "news2", "--jsonl"], text, monkeypatch, capsys)
    assert rc == 1
    assert [x.get("error", {}).get("field") for x in lines] == [
        None, "rr", "heart", None, "hr", "acvpu", None,
    ]  # fmt: skip
    assert [x.get("line") for x in lines[:6]] == [1, 2, 3, 4, 5, 6]
    assert "not valid JSON" in lines[0]["error"]["message"]
    assert lines[6]["id"] == "bed-3" and lines[6]["total"] == 7


def test_missing_inputs_are_reported_not_scored(monkeypatch, capsys):
    rc, lines = run_cli(
        ["score", "news2", "--jsonl"], json.dumps({"rr": 30, "sbp": 88}) + "\n", monkeypatch,
        capsys,
    )  # fmt: skip
    assert rc == 0
    (r,) = lines
    assert r["total"] is None and r["band"] is None and r["complete"] is False
    assert r["partial_total"] == 6
    assert r["min_band"] == "medium"
    assert r["missing"] == ["spo2", "on_oxygen", "hr", "acvpu", "temp_c"]


def test_mews_and_qsofa(monkeypatch, capsys):
    line = json.dumps({"rr": 22, "sbp": 100, "hr": 105, "temp_c": 37.0, "acvpu": "A"})
    rc, (m,) = run_cli(["score", "mews", "--jsonl"], line, monkeypatch, capsys)
    assert rc == 0 and m["total"] == 4 and m["definition"] == "mews/subbe-2001"
    line = json.dumps({"rr": 22, "sbp": 100, "acvpu": "A"})
    rc, (q,) = run_cli(["score", "qsofa", "--jsonl"], line, monkeypatch, capsys)
    assert rc == 0 and q["total"] == 2 and q["band"] == "positive"
    rc, (bad,) = run_cli(["score", "qsofa"], json.dumps({"hr": 80}), monkeypatch, capsys)
    assert rc == 1 and bad["error"]["field"] == "hr"


def test_local_definition_and_input_file(tmp_path, monkeypatch, capsys):
    local = copy.deepcopy(MEWS_SUBBE_2001)
    local["version"] = "ward-7"
    local["risk"][0]["min_total"] = 3
    dpath = tmp_path / "mews.json"
    dpath.write_text(json.dumps(local))
    ipath = tmp_path / "in.jsonl"
    ipath.write_text(json.dumps({"rr": 16, "sbp": 95, "hr": 105, "temp_c": 37, "acvpu": "A"}))
    rc, (r,) = run_cli(
        ["score", "mews", "--definition", str(dpath), "--input", str(ipath)], "", monkeypatch,
        capsys,
    )  # fmt: skip
    assert rc == 0
    assert (r["definition"], r["total"], r["band"]) == ("mews/ward-7", 3, "high")
    # a definition for another score is refused
    rc = cli.main(["score", "news2", "--definition", str(dpath)])
    assert rc == 2
    assert "defines 'mews'" in capsys.readouterr().err


def test_show_definition_round_trips(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert cli.main(["score", "news2", "--show-definition"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == "news2" and shown["version"] == "rcp-2017"


def test_unreadable_input_file(tmp_path, capsys):
    assert cli.main(["score", "news2", "--input", str(tmp_path / "absent.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("score", ["news2", "mews", "qsofa"])
def test_empty_input_is_fine(score, monkeypatch, capsys):
    rc, lines = run_cli(["score", score], "", monkeypatch, capsys)
    assert rc == 0 and lines == []
