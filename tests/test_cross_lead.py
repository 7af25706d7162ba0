"""Ventricular beats judged on two ECG leads: the cross-lead rule and the pipeline that applies it.

A ventricular beat starts in the ventricle and spreads through the myocardium instead of the
conduction system: its activation runs in another direction (a changed shape on some lead) and
slowly (a slurred, less steep complex on some lead). Where it projects onto one lead much like
the dominant beat, another lead shows it (AAMI EC57 scores the beats, not the leads; de Chazal
et al. 2004 and Llamedo & Martinez 2011 use both MIT-BIH leads for this reason).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eicu.cli import main
from eicu.kernels import vclass as k
from eicu.signal.alarms import gather
from eicu.signal.classify import DEFAULT_CLASSIFIER, cross_lead_ventricular
from eicu.signal.events import Beat, Event
from eicu.signal.pipeline import BedSignalPipeline
from tests.synthetic import ecg_from_rr
from tests.test_cli_signal import write_record
from tests.test_pipeline import _called

FS = 250.0
NAN = float("nan")
N, V, P, Q, U = k.C_N, k.C_V, k.C_P, k.C_Q, k.C_UNKNOWN


@pytest.mark.parametrize(
    ("cls", "corr0", "steep0", "corr1", "steep1", "want"),
    [
        (N, 0.95, 0.6, 0.1, 1.0, V),  # like the dominant beat but slurred; inverted on the other
        (N, 0.1, 1.0, 0.95, 0.6, V),  # strongly unlike on lead 0, slurred on lead 1
        (N, 0.95, 0.9, 0.1, 1.0, N),  # unlike on one lead, slurred on neither: aberrancy, noise
        (N, 0.95, 0.6, 0.5, 1.0, N),  # slurred, but not strongly unlike the dominant beat
        (N, 0.1, 1.0, 0.1, 1.0, N),  # unlike on both leads, steep on both
        (N, -0.5, 1.0, -0.4, 1.1, V),  # inverted on both leads: activation the other way
        (N, -0.5, 1.0, -0.2, 1.0, N),  # inverted on one lead only, steep on both
        (N, -0.2, 1.0, -0.2, 1.0, N),  # weakly anticorrelated on both: not inverted
        (N, -0.5, 1.0, NAN, NAN, N),  # the other lead not at hand
        (V, 0.95, 1.0, 0.95, 1.0, V),  # lead 0's own call stands
        (P, 0.1, 0.5, 0.1, 0.5, P),  # a paced beat stays paced
        (Q, 0.1, 0.5, 0.1, 0.5, Q),  # unclassifiable stays so
        (U, 0.1, 0.5, 0.1, 0.5, U),  # templates still learnt
        (N, NAN, NAN, 0.1, 0.5, N),  # a feature not at hand never makes a beat ventricular
        (N, 0.95, 0.6, NAN, NAN, N),
    ],
)
def test_cross_lead_rule_from_its_definition(
    cls: int, corr0: float, steep0: float, corr1: float, steep1: float, want: int
) -> None:
    got = cross_lead_ventricular(
        np.array([cls]), np.array([corr0]), np.array([steep0]), np.array([corr1]),
        np.array([steep1]),
    )  # fmt: skip
    assert got.tolist() == [want]


def test_cross_lead_rule_refuses_arrays_of_unequal_length() -> None:
    one, two = np.zeros(1), np.zeros(2)
    with pytest.raises(ValueError, match="one length"):
        cross_lead_ventricular(np.zeros(2, dtype=np.int64), two, two, one, two)
    assert DEFAULT_CLASSIFIER.cross_corr < DEFAULT_CLASSIFIER.v_corr_mild


def _two_leads(
    n_beats: int = 120, seed: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two leads of sinus rhythm with a premature ventricular beat every fourth beat. On lead
    II the ventricular beat is as narrow and steep as the sinus QRS but inverted (activation in
    the other direction, no P wave); on lead V it is upright and wide (slow myocardial
    conduction). Returns (lead II, lead V, the R peaks, whether each is ventricular)."""
    vent = np.zeros(n_beats + 1, dtype=bool)  # beat 0 opens the record
    vent[12::4] = True
    # the interval before each beat: premature before a ventricular beat and short after it
    # (the beat reset the sinus node, e.g. by retrograde conduction): the two add up to far
    # less than a full compensatory pause, so its timing does not make it ventricular either
    rr = np.where(vent[1:], 0.55, np.where(vent[:-1], 0.7, 0.85))
    sinus, r_idx = ecg_from_rr(rr, FS, noise_mv=0.01, seed=seed)
    no_p, _ = ecg_from_rr(rr, FS, p_wave=False, noise_mv=0.01, seed=seed + 1)
    wide, _ = ecg_from_rr(rr, FS, qrs_width_s=0.16 * 2.5 / 6.0, p_wave=False, seed=seed + 2)
    lead_ii, lead_v = sinus.copy(), 0.8 * sinus
    half = round(0.3 * FS)
    for r in r_idx[vent[: r_idx.shape[0]]].tolist():
        lead_ii[r - half : r + half] = -no_p[r - half : r + half]
        lead_v[r - half : r + half] = 0.8 * wide[r - half : r + half]
    n = (lead_ii.shape[0] // 250) * 250
    return lead_ii[:n], lead_v[:n], r_idx[r_idx < n - half], vent[: int((r_idx < n - half).sum())]


def _run(leads: dict[str, np.ndarray], chunk_s: float, order: tuple[str, ...]) -> list[Event]:
    p = BedSignalPipeline({key: FS for key in leads})
    n = round(chunk_s * FS)
    total = next(iter(leads.values())).shape[0]
    events: list[Event] = []
    for i in range(0, total, n):
        for key in order:
            events.extend(p.push(key, leads[key][i : i + n], i))
    return events


def test_a_beat_normal_looking_on_one_lead_is_ventricular_when_the_other_shows_it() -> None:
    lead_ii, lead_v, r_idx, vent = _two_leads()
    judged = slice(20, None)  # after the templates are learnt
    alone = _called(_run({"ECG_II": lead_ii}, 0.5, ("ECG_II",)), r_idx, "ECG_II")
    # lead II alone cannot tell: the beat is as narrow and as steep as the dominant one, and
    # no full compensatory pause follows it
    assert [c for c, v in zip(alone[judged], vent[judged], strict=True) if v].count("V") == 0
    both = _called(
        _run({"ECG_II": lead_ii, "ECG_V": lead_v}, 0.5, ("ECG_II", "ECG_V")), r_idx, "ECG_II"
    )
    on_v = [c for c, v in zip(both[judged], vent[judged], strict=True) if v]
    on_n = [c for c, v in zip(both[judged], vent[judged], strict=True) if not v]
    assert on_v.count("V") == len(on_v) > 20
    assert on_n.count("N") == len(on_n)


def test_a_beat_inverted_on_both_leads_is_ventricular_where_the_patients_qrs_is_already_wide() -> (
    None
):
    """A patient whose own QRS is wide (bundle-branch block: about 130 ms here) shows no wider
    ventricular beat; its ventricular beats stand out by their direction. A premature beat
    inverted against the dominant beat on both leads, and as wide and steep as it, is `V`."""
    n_beats = 120
    vent = np.zeros(n_beats + 1, dtype=bool)
    vent[12::5] = True
    rr = np.where(vent[1:], 0.6, np.where(vent[:-1], 1.1, 0.85))
    wide = 0.16 * 2.5 / 6.0  # a QRS as wide as a bundle-branch block's
    sinus, r_idx = ecg_from_rr(rr, FS, qrs_width_s=wide, noise_mv=0.01, seed=7)
    ectopic, _ = ecg_from_rr(rr, FS, qrs_width_s=wide, p_wave=False, noise_mv=0.01, seed=8)
    lead_ii, lead_v = sinus.copy(), 0.7 * sinus
    half = round(0.3 * FS)
    for r in r_idx[vent[: r_idx.shape[0]]].tolist():
        lead_ii[r - half : r + half] = -ectopic[r - half : r + half]
        lead_v[r - half : r + half] = -0.7 * ectopic[r - half : r + half]
    n = (lead_ii.shape[0] // 250) * 250
    keep = r_idx < n - half
    r_idx, vent = r_idx[keep], vent[: int(keep.sum())]
    both = _called(
        _run({"ECG_II": lead_ii[:n], "ECG_V": lead_v[:n]}, 0.5, ("ECG_II", "ECG_V")),
        r_idx,
        "ECG_II",
    )
    judged = slice(20, None)
    on_v = [c for c, v in zip(both[judged], vent[judged], strict=True) if v]
    on_n = [c for c, v in zip(both[judged], vent[judged], strict=True) if not v]
    # (one may be unclassifiable where the splice of the synthetic beat leaves an edge)
    assert len(on_v) > 15 and "N" not in on_v and on_v.count("V") >= len(on_v) - 1, on_v
    assert on_n.count("N") == len(on_n), on_n


@pytest.mark.parametrize(("chunk_s", "order"), [(0.2, ("ECG_V", "ECG_II")), (1.0, ("ECG_II",
                         "ECG_V")), (2.6, ("ECG_II", "ECG_V"))])  # fmt: skip
def test_two_lead_calls_do_not_depend_on_chunks_or_on_which_lead_comes_first(
    chunk_s: float, order: tuple[str, ...]
) -> None:
    lead_ii, lead_v, _, _ = _two_leads(60)
    leads = {"ECG_II": lead_ii, "ECG_V": lead_v}
    want = _run(leads, 0.5, ("ECG_II", "ECG_V"))
    got = _run(leads, chunk_s, order)

    def key(events: list[Event]) -> list[str]:
        return sorted(repr(e) for e in events)  # repr: NaN-safe

    assert key(got) == key(want)


def test_noise_on_the_other_lead_makes_no_sinus_beat_ventricular() -> None:
    rr = np.full(90, 0.8)
    lead_ii, r_idx = ecg_from_rr(rr, FS, noise_mv=0.01)
    n = (lead_ii.shape[0] // 250) * 250
    lead_ii = lead_ii[:n]
    lead_v = 0.8 * lead_ii
    rng = np.random.default_rng(1)
    for start in range(10 * 250, n - 500, 7 * 250):  # bursts of muscle artefact, 1.5 s each
        lead_v[start : start + 375] += rng.normal(0.0, 0.6, 375)
    events = _run({"ECG_II": lead_ii, "ECG_V": lead_v}, 0.5, ("ECG_II", "ECG_V"))
    calls = _called(events, r_idx[r_idx < n - 75], "ECG_II")[12:]
    assert "V" not in calls
    assert calls.count("N") >= len(calls) - 1


def test_a_lead_that_stops_arriving_holds_the_other_back_one_second_at_most() -> None:
    lead_ii, lead_v, r_idx, _ = _two_leads(40)
    p = BedSignalPipeline({"ECG_II": FS, "ECG_V": FS})
    p.push("ECG_V", lead_v[:2500], 0)  # lead V for the first 10 s, then nothing
    events: list[Event] = []
    for i in range(0, lead_ii.shape[0], 125):
        events.extend(p.push("ECG_II", lead_ii[i : i + 125], i))
    last = max(e.sample for e in events if isinstance(e, Beat) and e.signal == "ECG_II")
    beats_due = r_idx[r_idx + round(0.19 * FS) <= lead_ii.shape[0] - round(1.0 * FS)]
    assert last >= beats_due[-1] - 1
    # the beats of the first 10 s carry lead V's features, the later ones do not
    mine = [e for e in events if isinstance(e, Beat) and e.signal == "ECG_II"]
    early = [b for b in mine if 3 * 250 < b.sample < 9 * 250]
    late = [b for b in mine if b.sample > 11 * 250]
    assert all(b.other_corr is not None for b in early)
    assert all(b.other_corr is None for b in late)


def test_eicu_analyze_takes_the_records_second_ecg_channel_as_the_second_lead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lead_ii, lead_v, r_idx, vent = _two_leads(80)
    rec = write_record(tmp_path, "two", {"II": lead_ii, "V1": lead_v}, FS, [])
    pvcs = r_idx[20:][vent[20:]]
    found: dict[bool, int] = {}
    for one_lead in (False, True):
        assert main(["analyze", str(rec), "--json", *(["--one-lead"] if one_lead else [])]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["second_lead"] == (None if one_lead else "V1")
        called = np.array(out["ventricular"], dtype=np.int64)
        near = np.abs(pvcs[:, None] - called[None, :]).min(axis=1, initial=10**9)
        found[one_lead] = int((near <= round(0.05 * FS)).sum())
    assert found[False] == pvcs.shape[0] and found[True] == 0


@pytest.mark.parametrize("behind_s", [0.0, 0.25, 0.6, 1.0])
@pytest.mark.parametrize("lagging", ["ECG_II", "ECG_V"])
def test_leads_processed_to_different_points_agree_on_the_same_beats(
    behind_s: float, lagging: str
) -> None:
    """Two leads see the same beats; one has come further than the other (its chunks arrive
    first, or a beat on it is held back for its pause). Their beat agreement, which decides
    whether the ECG is reliable enough for alarm verification, compares the beats both leads
    have judged, on one time base: a lead that is behind does not disagree."""
    x, _ = ecg_from_rr(np.full(40, 0.8), FS, noise_mv=0.01)
    n = (x.shape[0] // 250) * 250
    lag = round(behind_s * FS)
    p = BedSignalPipeline({"ECG_II": FS, "ECG_V": FS})
    for i in range(0, n, 125):
        for key, gain in (("ECG_II", 1.0), ("ECG_V", 0.8)):
            if key != lagging or i + 125 <= n - lag:
                p.push(key, gain * x[i : i + 125], i)
    ends = {k: st.processed_to for k, st in p._sig.items()}
    if lagging == "ECG_II" and lag:  # the second lead has been judged further
        assert ends["ECG_II"] < ends["ECG_V"]
    leads, _ = gather(p)
    assert [ld.agreement for ld in leads] == [1.0, 1.0], leads


def test_alarm_verification_judges_the_primary_lead_up_to_where_it_has_been_processed() -> None:
    """A second lead that stopped arriving holds the primary lead's beats back up to 1 s: the
    verification looks at the window ending there, so it sees no interval that is not there
    (a regular 75/min rhythm is no bradycardia, whatever the second lead does); a signal that
    stopped arriving is judged on the bed's newest window."""
    x, _ = ecg_from_rr(np.full(40, 0.8), FS, noise_mv=0.01)
    n = (x.shape[0] // 250) * 250
    p = BedSignalPipeline({"ECG_II": FS, "ECG_V": FS})
    p.push("ECG_V", 0.8 * x[:2500], 0)  # lead V for the first 10 s only
    for i in range(0, n, 125):
        p.push("ECG_II", x[i : i + 125], i)
    decision = p.verify_alarm("BRADY")
    assert decision is not None and not decision.true_alarm, decision
    (ii,) = (ld for ld in decision.leads if ld.signal == "ECG_II")
    assert ii.max_rr_s < 1.0
    # the lead that stopped is judged on the bed's window, where it has nothing: not on the
    # good quality of its last samples, 10 s old
    (v,) = (ld for ld in decision.leads if ld.signal == "ECG_V")
    assert v.n_beats == 0 and v.good_frac == 0.0


def test_beats_on_a_noisy_primary_lead_take_the_call_of_a_good_second_lead() -> None:
    """Where the primary lead is judged noisy and the second lead good, a beat the two leads
    call differently (normal against ventricular) takes the second lead's call: a lead's
    classification is only as good as its signal (IEC 60601-2-27 asks for noise to be
    detected; multi-lead monitors judge beats on the leads that are not noisy). The artefact's
    odd shapes make no sinus beat ventricular or unclassifiable, and no ventricular beat is
    called normal; one both leads call ventricular stays ventricular, or unclassifiable where
    its shape on the noisy lead is a lone one (the noisy-lead rule of the pipeline)."""
    lead_ii, lead_v, r_idx, vent = _two_leads(160, seed=5)
    rng = np.random.default_rng(2)
    bursts = [(s, s + 4 * 250) for s in range(30 * 250, lead_ii.shape[0] - 6 * 250, 9 * 250)]
    for a, b in bursts:  # muscle artefact on lead II only, 4 s at a time
        lead_ii[a:b] += rng.normal(0.0, 0.35, b - a)
    events = _run({"ECG_II": lead_ii, "ECG_V": lead_v}, 0.5, ("ECG_II", "ECG_V"))
    calls = _called(events, r_idx, "ECG_II")
    inside = np.array([any(a + 250 <= r < b for a, b in bursts) for r in r_idx.tolist()])
    noisy_n = [c for c, v, i in zip(calls, vent, inside, strict=True) if i and not v]
    noisy_v = [c for c, v, i in zip(calls, vent, inside, strict=True) if i and v]
    assert len(noisy_n) > 30 and len(noisy_v) > 8
    assert noisy_n.count("N") >= len(noisy_n) - 1, noisy_n
    assert "N" not in noisy_v and noisy_v.count("V") + noisy_v.count("Q") == len(noisy_v)
