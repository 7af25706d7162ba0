"""Ventricular rhythm calls from classified beats, written from their definitions; EC57 scoring."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from eicu.signal import ec57
from eicu.signal.ectopy import VentricularTracker
from eicu.signal.events import RhythmFlag, VentricularRun
from eicu.signal.pipeline import BedSignalPipeline
from eicu.signal.rhythm import RhythmTracker, af_features

FS = 100.0


def _tracker() -> RhythmTracker:
    return RhythmTracker("ECG_II", FS, lambda _s: "good", lambda _s, _n: None)


def feed(
    classes: str, rr_s: float | list[float] = 0.8, skip: tuple[int, ...] = ()
) -> tuple[list[RhythmFlag], list[VentricularRun], RhythmTracker]:
    """Beats of the given classes ("N", "V", "Q") at intervals ``rr_s``; beats whose index is in
    ``skip`` are not given (missed by the detector)."""
    tr = _tracker()
    rr = [rr_s] * len(classes) if isinstance(rr_s, float) else rr_s
    t = 1.0
    flags: list[RhythmFlag] = []
    runs: list[VentricularRun] = []
    for i, c in enumerate(classes):
        t += rr[i]
        s = round(t * FS)
        if i in skip:
            continue
        flags.extend(tr.advance(s))
        for ev in tr.beat(s, None if c == "Q" else c == "V", beat_class=c):
            if isinstance(ev, RhythmFlag):
                flags.append(ev)
            elif isinstance(ev, VentricularRun):
                runs.append(ev)
    return flags, runs, tr


def episodes(flags: list[RhythmFlag], label: str) -> list[tuple[float, float | None]]:
    out: list[tuple[float, float | None]] = []
    for f in flags:
        if f.label != label:
            continue
        if f.state == "start":
            out.append((f.time_s, None))
        else:
            out[-1] = (out[-1][0], f.time_s)
    return out


def test_couplet_and_runs_are_reported_when_they_end() -> None:
    _, runs, _ = feed("NNNNVVNNNNVVVNNNNVVVVVVNN")
    assert [(r.label, r.n_beats) for r in runs] == [("COUPLET", 2), ("RUN", 3), ("RUN", 6)]
    assert all(r.end_sample > r.sample for r in runs)


def test_vt_needs_five_beats_at_100_per_minute_and_lasts_as_long_as_the_run() -> None:
    # 4 fast V beats: a run, not VT
    flags, _, _ = feed("NNNN" + "VVVV" + "NNNN", [0.8] * 4 + [0.4] * 4 + [0.8] * 4)
    assert episodes(flags, "VTACH") == []
    # 5 slow V beats (75/min): an idioventricular run, not VT
    flags, _, _ = feed("NNNN" + "V" * 5 + "NN", 0.8)
    assert episodes(flags, "VTACH") == []
    # 40 V beats at 150/min, one of them missed by the detector: one VT from the first to the end
    rr = [0.8] * 4 + [0.4] * 40 + [0.8] * 3
    flags, _, _ = feed("NNNN" + "V" * 40 + "NNN", rr, skip=(20,))
    ((start, end),) = episodes(flags, "VTACH")
    assert start == pytest.approx(1.0 + 3.2 + 0.4, abs=0.02)  # the run's first beat
    assert end == pytest.approx(1.0 + 3.2 + 16.0 + 0.8, abs=0.02)  # the first N beat after it
    assert episodes(flags, "VT_SUSTAINED") == []


def test_vt_whose_rate_dips_for_fewer_beats_than_its_window_is_one_episode() -> None:
    """VT lasts as long as the run does at its rate, judged over the last 5 beats. Two long
    intervals inside a run of ventricular beats take the 5-beat rate below 100/min for a few
    beats; once the window is fast again and still reaches back to where it slowed, it is the
    same VT: one alarm, not one that clears and sounds again, and never an episode that starts
    before the previous one ended."""
    rr = [0.8] * 4 + [0.4] * 12 + [1.0, 1.0] + [0.4] * 16 + [0.8] * 3
    flags, _, _ = feed("NNNN" + "V" * 30 + "NNN", rr)
    ((start, end),) = episodes(flags, "VTACH")
    assert start == pytest.approx(1.0 + 3.2 + 0.4, abs=0.02)  # the run's first beat
    assert end == pytest.approx(1.0 + 3.2 + 4.8 + 2.0 + 6.4 + 0.8, abs=0.02)  # the first N beat


def test_vt_whose_run_slows_for_longer_than_its_window_is_two_episodes_in_order() -> None:
    """A run that slows below 100/min for longer than the 5-beat window and speeds up again holds
    two VTs: the first ends at the beat where its rate fell below 100/min (reported once the
    window has passed it), the second starts at the first beat of its fast window, after it."""
    rr = [0.8] * 4 + [0.4] * 10 + [0.9] * 8 + [0.4] * 10 + [0.8] * 3
    flags, _, _ = feed("NNNN" + "V" * 28 + "NNN", rr)
    (first, second) = episodes(flags, "VTACH")
    assert first[1] is not None and second[1] is not None
    # the first window below 100/min: 0.4, 0.4, 0.9, 0.9 s (92/min), at the second slow beat
    assert first[1] == pytest.approx(1.0 + 3.2 + 4.0 + 1.8, abs=0.02)
    # the second at the first beat of its fast window (0.9, 0.4, 0.4, 0.4 s: 114/min), the
    # beat before the last slow one
    assert second[0] == pytest.approx(1.0 + 3.2 + 4.0 + 6.3, abs=0.02)
    assert first[1] < second[0]


def test_a_run_of_three_at_100_per_minute_is_a_vt_episode_the_way_ec57_counts_them() -> None:
    # the rate of a run: 60 over the mean of the intervals ending at its beats (the first V
    # beat's coupling interval included)
    _, runs, _ = feed("NNNN" + "VVV" + "NNNN", [0.8] * 4 + [0.5, 0.6, 0.7] + [0.8] * 4)
    (r,) = runs
    assert r.label == "RUN" and r.n_beats == 3 and r.vt
    assert r.rate_bpm == pytest.approx(100.0, abs=0.5)
    # a slow run (idioventricular, 75/min), a couplet and a run whose rate is below 100/min
    # only because of its late first beat are not VT episodes
    _, runs, _ = feed("NNNN" + "VVVVV" + "NN" + "VV" + "NNNN" + "VVV" + "NN", 0.8)
    assert [(r.n_beats, r.vt) for r in runs] == [(5, False), (2, False), (3, False)]
    _, runs, _ = feed("NNNN" + "VVV" + "NNNN", [0.8] * 4 + [1.2, 0.45, 0.45] + [0.8] * 4)
    assert [(r.n_beats, r.vt) for r in runs] == [(3, False)]
    # 3 fast beats within a longer, slower run make it a VT episode
    _, runs, _ = feed("NNNN" + "V" * 7 + "NN", [0.8] * 4 + [0.5] * 3 + [1.0] * 4 + [0.8] * 2)
    (r,) = runs
    assert r.vt and r.rate_bpm < 100.0


def test_an_unclassifiable_beat_neither_breaks_nor_extends_a_run() -> None:
    flags, runs, _ = feed("NNNN" + "VVVQVVV" + "NN", [0.8] * 4 + [0.4] * 7 + [0.8] * 2)
    assert len(episodes(flags, "VTACH")) == 1
    assert [r.n_beats for r in runs] == [6]


def test_sustained_vt_from_30_s() -> None:
    rr = [0.8] * 4 + [0.4] * 90 + [0.8] * 3
    flags, _, _ = feed("NNNN" + "V" * 90 + "NNN", rr)
    ((vt_start, vt_end),) = episodes(flags, "VTACH")
    ((s_start, s_end),) = episodes(flags, "VT_SUSTAINED")
    assert s_start == pytest.approx(vt_start + 30.0, abs=0.41)
    assert s_end == vt_end


def test_bigeminy_and_trigeminy() -> None:
    flags, _, _ = feed("NNNN" + "NV" * 2 + "NNNN")
    assert episodes(flags, "BIGEMINY") == []  # two cycles are not enough
    flags, _, _ = feed("NNNN" + "NV" * 6 + "NNNN")
    ((start, end),) = episodes(flags, "BIGEMINY")
    assert start == pytest.approx(1.0 + 0.8 * 5, abs=0.01)  # the first N of the pattern
    assert end == pytest.approx(1.0 + 0.8 * 18, abs=0.01)  # the second N in a row
    assert episodes(flags, "TRIGEMINY") == []
    flags, _, _ = feed("NNNN" + "NNV" * 5 + "NNNN")
    ((start, end),) = episodes(flags, "TRIGEMINY")
    assert end == pytest.approx(1.0 + 0.8 * 22, abs=0.01)
    assert episodes(flags, "BIGEMINY") == []


def test_pvcs_per_minute() -> None:
    _, _, tr = feed("NNNNV" * 20, 0.75)  # 100 beats in 75 s, one in five ventricular
    assert tr.pvc_per_min() == pytest.approx(16.0, abs=1.0)


def test_tracker_refuses_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="vt_beats"):
        VentricularTracker("ECG_II", FS, lambda *_: None, dict, vt_beats=2, vt_bpm=100.0)  # type: ignore[arg-type,return-value]


def test_pipeline_reports_pvcs_per_minute_nan_without_ecg() -> None:
    assert np.isnan(BedSignalPipeline({"PLETH": 125.0}).pvc_per_min())


# -- EC57 scoring -------------------------------------------------------------------------------


def test_ec57_beat_matching_and_veb_counts() -> None:
    ref = np.array([100, 200, 300, 400, 500, 600])
    cls = np.array(["N", "V", "V", "F", "Q", "S"])
    det = np.array([105, 190, 350, 402, 498, 700, 800])
    det_v = np.array([True, True, False, True, True, True, False])
    c = ec57.veb_counts(ref, cls, det, det_v, tol=20)
    # 300 has no detection within 20 (350 is 50 away): missed; 600 has none either
    assert (c.vv, c.vx, c.nv, c.sv, c.fv, c.qv, c.ov) == (1, 1, 1, 0, 1, 1, 1)
    assert c.se == 50.0 and c.ppv == 50.0  # F and Q calls are not counted against +P
    assert c.ppv_with_extra == pytest.approx(100 / 3)
    later = ec57.veb_counts(ref, cls, det, det_v, tol=20, from_sample=250)
    assert (later.vv, later.vx, later.nv) == (0, 1, 0)


def test_ec57_each_detection_matches_one_beat() -> None:
    m = ec57.match_beats(np.array([100, 110]), np.array([105]), tol=10)
    assert m.tolist() == [0, -1]
    with pytest.raises(ValueError, match="sorted"):
        ec57.match_beats(np.array([2, 1]), np.array([1]), 5)


def test_ec57_runs_by_kind() -> None:
    s = np.arange(20) * 100
    v = np.array([c == "V" for c in "NVVNVVVNVVVVVVNNVNNN"])
    runs = ec57.v_runs(s, v)
    assert [(r[2], ec57.run_kind(r[2])) for r in runs] == [
        (2, "couplet"),
        (3, "short run"),
        (6, "long run"),
    ]
    det = [(100, 200, 2), (400, 500, 2), (800, 1300, 6)]
    c = ec57.run_counts(runs, det, tol=10)
    assert c.ref_found == {"couplet": 1, "short run": 0, "long run": 1}
    assert c.det_true == {"couplet": 1, "short run": 0, "long run": 1}
    assert c.det_all["couplet"] == 2


def test_paced_beats_break_runs_and_are_not_ventricular() -> None:
    # a fast run cut by paced beats: two couplets, no VT; paced beats alone make nothing
    flags, runs, tr = feed("PPPP" + "VV" + "P" + "VV" + "PPPP", 0.45)
    assert [(r.label, r.n_beats) for r in runs] == [("COUPLET", 2), ("COUPLET", 2)]
    assert episodes(flags, "VTACH") == []
    flags, runs, tr = feed("P" * 80, 0.45)
    assert flags == [] and runs == [] and tr.pvc_per_min() == 0.0
    # and a run of 5 fast V beats among paced ones is VT
    flags, _, _ = feed("PPPP" + "V" * 6 + "PPPP", 0.45)
    assert len(episodes(flags, "VTACH")) == 1


def test_an_irregular_paced_rhythm_is_not_af_and_the_same_intervals_unpaced_are() -> None:
    rr = np.random.default_rng(3).uniform(0.45, 1.1, size=200).tolist()
    flags, _, _ = feed("N" * 200, rr)
    assert episodes(flags, "AFIB")  # irregularly irregular, no P waves given: AF
    flags, _, _ = feed("P" * 200, rr)
    assert episodes(flags, "AFIB") == []  # the pacemaker sets the intervals: not AF
    # half paced or more: not AF; fewer: AF
    flags, _, _ = feed("NP" * 100, rr)
    assert episodes(flags, "AFIB") == []
    flags, _, _ = feed("NNNP" * 50, rr)
    assert episodes(flags, "AFIB")


def _fib_windows(tr: RhythmTracker, beats: list[tuple[float, str]], until_s: float) -> list[str]:
    """Beats (time s, class) and a fibrillatory 4 s window judged every second, in the order in
    which each becomes known; the VFIB flags' states."""
    out: list[str] = []
    todo = sorted(beats)
    for end in range(4, int(until_s) + 1):
        while todo and todo[0][0] < end:
            t, c = todo.pop(0)
            s = round(t * FS)
            out.extend(f.state for f in tr.advance(s) if f.label == "VFIB")
            evs = tr.beat(s, c == "V", beat_class=c)
            out.extend(e.state for e in evs if isinstance(e, RhythmFlag) and e.label == "VFIB")
        e = round(end * FS)
        out.extend(f.state for f in tr.fibrillation(e - round(4 * FS), e, True))
    return out


def test_fibrillatory_windows_with_no_organised_qrs_are_vf() -> None:
    """VF: no organised QRS complex, only fibrillatory waves (which the beat detector may pick
    up as beats it cannot match to the patient's dominant beat)."""
    beats = [(0.5 + 0.25 * i, "V") for i in range(40)]
    assert _fib_windows(_tracker(), beats, 10) == ["start"]


def test_conducted_beats_inside_a_fibrillatory_window_rule_out_vf() -> None:
    """A fast run of ventricular beats between conducted ones concentrates the spectrum as VF
    does, but the conducted beats (class N: like the dominant beat) are organised QRS
    complexes, so the window is not VF; a paced capture (P) is organised too."""
    for conducted in ("N", "P"):
        beats = [(0.5 + 0.35 * i, conducted if i % 7 < 3 else "V") for i in range(40)]
        assert "start" not in _fib_windows(_tracker(), beats, 14), conducted
    # one conducted beat in a window is not enough to rule VF out
    lone = [(0.5 + 0.25 * i, "N" if i == 10 else "V") for i in range(40)]
    assert _fib_windows(_tracker(), lone, 10) == ["start"]


def test_beats_matching_the_dominant_template_do_not_end_vf_once_it_runs() -> None:
    """Once VF runs, only the waveform (its windows no longer fibrillatory) ends it: deflections
    of the fibrillation that happen to match the dominant template must not silence it."""
    beats = [(0.5 + 0.25 * i, "V") for i in range(16)]
    beats += [(4.5 + 0.3 * i, "N") for i in range(30)]
    assert _fib_windows(_tracker(), beats, 12) == ["start"]


def _af_flags(rr: list[float], classes: list[str]) -> list[RhythmFlag]:
    """AFIB flags of beats at the given intervals and classes; no P-wave evidence is given, so
    only the intervals decide."""
    tr = _tracker()
    t = 1.0
    out: list[RhythmFlag] = []
    for r, c in zip(rr, classes, strict=True):
        t += r
        s = round(t * FS)
        out.extend(tr.advance(s))
        out.extend(e for e in tr.beat(s, c == "V", beat_class=c) if isinstance(e, RhythmFlag))
    return [f for f in out if f.label == "AFIB"]


def _with_pvcs(
    rng: np.random.Generator, conducted: Callable[[], float], single: float, couplet: float
) -> tuple[list[float], list[str]]:
    """200 beats or groups: a PVC (share ``single``) followed by the next conducted beat early
    (interpolated) or late (a pause), a couplet and its pause (share ``couplet``), or a
    conducted beat at the interval ``conducted()``."""
    rr: list[float] = []
    classes: list[str] = []
    for _ in range(200):
        u = rng.random()
        if u < single:
            rr += [float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 1.3))]
            classes += ["V", "N"]
        elif u < single + couplet:
            rr += [float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7))]
            rr.append(float(rng.uniform(0.5, 1.4)))
            classes += ["V", "V", "N"]
        else:
            rr.append(conducted())
            classes.append("N")
    return rr, classes


def test_af_is_judged_on_the_intervals_between_conducted_beats() -> None:
    """AF is an irregularly irregular ventricular response to the atria. A regular sinus rhythm
    with frequent PVCs at varying coupling intervals (interpolated ones, couplets and their
    pauses) is irregular beat to beat, but its conducted beats keep their rhythm: no AF. AF
    with PVCs among its beats stays AF."""
    rng = np.random.default_rng(1)
    sinus = _with_pvcs(rng, lambda: float(rng.normal(0.8, 0.01)), 0.25, 0.15)
    assert _af_flags(*sinus) == []
    af = _with_pvcs(rng, lambda: float(rng.uniform(0.4, 1.1)), 0.1, 0.05)
    assert [f.state for f in _af_flags(*af)][:1] == ["start"]


def test_a_window_mostly_of_ventricular_beats_is_not_judged_af() -> None:
    rng = np.random.default_rng(5)
    rr = rng.uniform(0.4, 1.1, 64)
    vent = rng.random(64) < 0.7  # intervals that a ventricular beat begins or ends
    assert af_features(rr).irregular
    assert af_features(rr, np.zeros(64, dtype=bool)).irregular
    assert (64 - vent.sum()) < 24
    assert not af_features(rr, vent).irregular
    with pytest.raises(ValueError, match="ventricular must be booleans"):
        af_features(rr, vent[:10])


def _af_with_p_waves_for(p_beats: range, n: int = 400) -> tuple[list[RhythmFlag], list[int]]:
    """Irregularly irregular intervals throughout; the beats in ``p_beats`` carry P waves (their
    P-wave windows alike, as flutter waves or sinus beats would), the others none. Returns the
    AF flags and, for each, the beat index at which it was reported."""
    rr = np.random.default_rng(5).uniform(0.45, 1.1, size=n)
    tr = _tracker()
    t = 1.0
    out: list[RhythmFlag] = []
    reported: list[int] = []
    for i in range(n):
        t += float(rr[i])
        s = round(t * FS)
        evs = [*tr.advance(s), *tr.beat(s, False, 0.9 if i in p_beats else 0.0, beat_class="N")]
        for ev in evs:
            if isinstance(ev, RhythmFlag) and ev.label == "AFIB":
                out.append(ev)
                reported.append(i)
    return out, reported


def test_af_that_resumes_within_its_window_is_one_episode_not_an_end_and_a_new_start() -> None:
    """P waves seen for a stretch shorter than the AF window (64 intervals) end the AF call,
    but the intervals in the window are still those of the episode: AF judged again continues
    it. Without that, the flag ended and started again at the same sample, and the AF alarm
    cleared and sounded again."""
    flags, _ = _af_with_p_waves_for(range(150, 190))
    (episode,) = episodes(flags, "AFIB")
    assert episode[1] is None  # still AF at the end
    # the same stretch of P waves at the end: AF ends, reported once the window has passed it
    flags, reported = _af_with_p_waves_for(range(250, 400))
    ((start, end),) = episodes(flags, "AFIB")
    assert end is not None and start < end
    ends = [i for f, i in zip(flags, reported, strict=True) if f.state == "end"]
    assert ends and ends[0] <= 250 + 16 + 2 * 64


def test_af_that_stops_for_longer_than_its_window_is_two_episodes() -> None:
    """A stretch with P waves longer than the window: two AF episodes, the first ending before
    the stretch is over, the second starting after it."""
    flags, _ = _af_with_p_waves_for(range(150, 260))
    eps = episodes(flags, "AFIB")
    assert len(eps) == 2
    (_, end0), (start1, _) = eps
    assert end0 is not None and end0 < start1
