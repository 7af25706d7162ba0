"""The dashboard in a real headless Chromium, served by a real ``eicu demo`` process."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from eicu.alarms.policy import DEFAULT_PATH
from eicu.devservices import DemoProcess, ServiceError
from tests.chromium import CHROMIUM, playwright_or_skip

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
VIEWER_PASSWORD = "viewer-password-1"
INTENSIVIST_PASSWORD = "intensivist-password-1"
EVENTS_AT_S = 8

playwright_api = playwright_or_skip("playwright.sync_api")
expect = playwright_api.expect


@dataclass
class Demo:
    url: str
    password: str
    process: subprocess.Popen[str]


@contextlib.contextmanager
def run_demo(data: Path, *args: str, policy: Path | None = None) -> Iterator[Demo]:
    """``eicu demo`` with ``args`` (and the alarm policy file ``policy``); a viewer and an
    intensivist added with ``eicu users add`` while it runs."""
    running = DemoProcess(
        data, *args, env={"EICU_ALARM_POLICY_FILE": str(policy) if policy is not None else ""}
    )
    try:
        running.wait_ready()
    except ServiceError as exc:
        pytest.fail(str(exc))
    for name, role, password in (
        ("val", "viewer", VIEWER_PASSWORD), ("ida", "intensivist", INTENSIVIST_PASSWORD)
    ):  # fmt: skip
        added = subprocess.run(
            [sys.executable, "-m", "eicu.cli", "users", "add", name, "--role", role],
            input=password + "\n", capture_output=True, text=True, cwd=ROOT,
            env={**running.env, "EICU_USERS_FILE": str(data / "users.json")}, timeout=60,
            check=False,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
    try:
        yield Demo(running.url, running.password, running.process)
    finally:
        status = running.stop()
    assert status == 0, "".join(running.lines[-20:])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """4 beds (stable, sepsis, AF, VT) whose events happen 8 s after the start."""
    args = ("--beds", "4", "--duration", "300", "--events-at", str(EVENTS_AT_S))
    with run_demo(tmp_path_factory.mktemp("demo"), *args) as running:
        yield running


# The NEWS2_HIGH condition delay of the sepsis demo's policy (the default policy's is 30 s): the
# test is about what the census shows once the alarm starts, not about how long the delay is.
NEWS2_HIGH_DELAY_S = 3.0


@pytest.fixture
def sepsis_demo(tmp_path: Path) -> Iterator[Demo]:
    """2 beds: stable, and sepsis whose 6 h course starts 8 s in and, at 2880 times the speed
    of the slow trends, takes 7.5 s; the default alarm policy but for a NEWS2_HIGH delay of
    :data:`NEWS2_HIGH_DELAY_S` (``EICU_ALARM_POLICY_FILE``)."""
    raw = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    raw["name"], raw["version"] = "browser-test", 100
    raw["conditions"]["NEWS2_HIGH"]["delay_s"] = NEWS2_HIGH_DELAY_S
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(raw), encoding="utf-8")
    args = ("--beds", "2", "--duration", "120", "--events-at", "8", "--time-scale", "2880")
    with run_demo(tmp_path / "demo", *args, policy=policy) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def log_in(browser: object, demo: Demo, name: str, password: str) -> object:
    page = browser.new_page(viewport={"width": 1400, "height": 900})  # type: ignore[attr-defined]
    page.goto(demo.url + "/census")
    page.wait_for_url(re.compile(r"/login\?next="))
    page.fill("#name", name)
    page.fill("#password", password)
    page.click("#submit")
    page.wait_for_url(re.compile(r"^[^?]*/census$"))  # not /login?next=/census: logged in
    return page


CANVAS_INK = """(sel) => {
  const c = document.querySelector(sel);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let ink = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 120) ink++;
  return {ink, url: c.toDataURL()};
}"""


MIN_INK = 1500
SET_REVIEW_TIME = (
    "(ms) => { document.getElementById('review-at').value = localInput(Date.now() - ms); }"
)


def wait_for_ink(
    page: object, selector: str, timeout_s: float = 20.0, min_ink: int = MIN_INK
) -> dict[str, object]:
    """The canvas once its trace covers more than ``min_ink`` pixels (labels alone cover a few
    hundred; a fresh bed's ring takes a moment to fill)."""
    deadline = time.monotonic() + timeout_s
    while True:
        drawn = page.evaluate(CANVAS_INK, selector)  # type: ignore[attr-defined]
        if drawn["ink"] > min_ink:
            return drawn  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector} drew only {drawn['ink']} pixels")
        time.sleep(0.25)


BED004_VTACH = """async () => (await (await fetch('/api/alarms?bed=demo/bed004')).json()).alarms
  .filter((a) => a.kind === 'VTACH')"""
REVIEW_ALARMS = """async () => {
  const at = new Date(document.getElementById('review-at').value).getTime() * 1000;
  const r = await fetch(`/api/beds/demo/bed004/waveform?signal=ECG_II&start_us=${at}&seconds=10`);
  return (await r.json()).alarms.map((a) => a.kind);
}"""
TONE_PLAYING = "() => window.eicuAlarmTone.playing === true"
ACKED_OR_GONE = """() => {
  const row = document.querySelector("#census tr[data-bed='demo/bed004']");
  if (row === null) return false;
  const chip = row.querySelector('.alarm');
  return chip === null || !chip.textContent.startsWith('VTACH') || chip.classList.contains('acked');
}"""
# no high-priority tone: silence, or the tone of a medium or low priority alarm still sounding
TONE_NOT_HIGH = "() => window.eicuAlarmTone.pattern !== 'high'"
TONE_FOR_VTACH = """() => {
  const a = window.eicuAlarmTone.alarm;
  return a !== null && a.bed === 'demo/bed004' && a.kind === 'VTACH';
}"""
SOUNDING_HIGH = """async () => (await (await fetch('/api/alarms')).json()).alarms
  .filter((a) => a.sounding && a.priority === 'high').map((a) => `${a.bed} ${a.kind}`)"""


def test_a_deteriorating_bed_turns_red_and_the_tone_starts(
    browser: object, sepsis_demo: Demo
) -> None:
    """Runs first, on its own demo: bed002's sepsis course takes its NEWS2 from low to high
    within about 8 s; the census row turns red and rises to the top, and once the high band
    has held for the alarm's condition delay (the demo's policy file makes it 3 s), the tone
    starts."""
    ARTIFACTS.mkdir(exist_ok=True)
    page = log_in(browser, sepsis_demo, "demo", sepsis_demo.password)
    row = page.locator("#census tr[data-bed='demo/bed002']")
    expect(row.locator(".band:not(.band-none)")).to_be_visible(timeout=20_000)
    assert "acute" not in (row.get_attribute("class") or "")  # not red yet
    assert row.locator(".band-high").count() == 0
    page.click("#sound")
    page.wait_for_function("() => window.eicuAlarmTone.enabled === true", timeout=5_000)
    assert page.evaluate(SOUNDING_HIGH) == []
    assert page.evaluate(TONE_NOT_HIGH)
    page.screenshot(path=str(ARTIFACTS / "census-before-deterioration.png"), full_page=True)

    expect(row).to_have_class(re.compile(r"\bacute\b"), timeout=60_000)
    expect(row.locator(".band-high")).to_be_visible(timeout=10_000)
    # the NEWS2_HIGH alarm starts once the high band has held for the policy's delay
    expect(row.locator(".alarm-high", has_text="NEWS2_HIGH")).to_be_visible(timeout=60_000)
    assert "demo/bed002 NEWS2_HIGH" in page.evaluate(SOUNDING_HIGH)
    page.wait_for_function("() => window.eicuAlarmTone.pattern === 'high'", timeout=5_000)
    assert page.locator("#census tbody tr").first.get_attribute("data-bed") == "demo/bed002"
    page.screenshot(path=str(ARTIFACTS / "census-deteriorated.png"), full_page=True)
    page.close()


def test_vt_alarm_sounds_until_an_intensivist_acknowledges_it(browser: object, demo: Demo) -> None:
    """The demo's VT bed (bed004) goes into VT 8 s after it starts, for 30 s."""
    page = log_in(browser, demo, "ida", INTENSIVIST_PASSWORD)
    vt = page.locator("#census tr[data-bed='demo/bed004'] .alarm-high", has_text="VTACH")
    expect(vt).to_be_visible(timeout=60_000)
    vt_seen_ms = time.time() * 1000  # the VTACH alarm is on at this moment
    assert page.locator("#census tbody tr").first.get_attribute("data-alarm") in (
        "high active", "high latched",
    )  # fmt: skip
    # the tone is for the most urgent sounding alarm, silent until sound is turned on
    page.wait_for_function(TONE_FOR_VTACH, timeout=5_000)
    tone = page.evaluate("() => window.eicuAlarmTone")
    assert (tone["enabled"], tone["playing"]) == (False, False)
    page.click("#sound")
    page.wait_for_function(TONE_PLAYING, timeout=5_000)
    assert page.evaluate("() => window.eicuAlarmTone.pattern") == "high"
    # the header counts the live alarms per priority, the unacknowledged high ones flashing red
    high = page.locator("#alarm-counts .alarm-count[data-priority='high']")
    expect(high).to_have_attribute("data-unacknowledged", re.compile(r"^[1-9]"), timeout=5_000)
    assert "acked" not in (high.get_attribute("class") or "")
    assert {
        page.locator(f"#alarm-counts [data-priority='{p}']").count() for p in ("medium", "low")
    } == {1}
    page.screenshot(path=str(ARTIFACTS / "census-alarm.png"), full_page=True)

    # a viewer sees the same alarm on the bed view, with no acknowledge or pause buttons
    viewer = log_in(browser, demo, "val", VIEWER_PASSWORD)
    viewer.goto(demo.url + "/bed?bed=demo%2Fbed004")
    expect(viewer.locator("#alarm-list li", has_text="VTACH")).to_be_visible(timeout=10_000)
    assert viewer.locator("#alarm-list button").count() == 0
    assert viewer.locator("#pause-bed").is_hidden()
    viewer.close()

    page.click("a[href='/bed?bed=demo%2Fbed004']")
    page.wait_for_url(re.compile(r"/bed\?bed=demo%2Fbed004$"))
    # the trends carry a time axis on the 24-hour clock and the bed's alarms over their span
    page.wait_for_function(
        "() => Number(document.getElementById('trend-HR')?.dataset.alarms) >= 1", timeout=10_000
    )
    assert int(page.locator("#trend-HR").get_attribute("data-ticks") or 0) >= 3
    item = page.locator("#alarm-list li", has_text="VTACH")
    expect(item.locator("button.ack")).to_be_visible(timeout=10_000)
    expect(page.locator("#alarm-history li", has_text="VTACH").first).to_be_visible()
    page.click("#sound")  # a new page needs its own gesture before it may sound
    page.wait_for_function(TONE_PLAYING, timeout=5_000)
    acked_while = item.get_attribute("data-state")
    item.locator("button.ack").click()
    expect(page.locator("#alarm-history li", has_text="— ida").first).to_be_visible(timeout=5_000)
    # VT is also a tachycardia: acknowledge whatever else of the bed still sounds
    for _ in range(5):
        others = [a.split()[1] for a in page.evaluate(SOUNDING_HIGH) if a.startswith("demo/bed004")]
        if not others:
            break
        page.locator("#alarm-list li", has_text=others[0]).locator("button.ack").click()
        page.wait_for_timeout(500)
    assert page.evaluate(SOUNDING_HIGH) == []
    page.wait_for_function(TONE_NOT_HIGH, timeout=5_000)
    page.screenshot(path=str(ARTIFACTS / "bed-alarm-acknowledged.png"), full_page=True)
    # full disclosure over the VT onset: its beats, the VTACH rhythm and the alarms on it
    page.select_option("#review-signal", "ECG_II")
    # the paper holds span_s seconds at 25 mm/s: a window ending 2 s after the moment VTACH was
    # seen (the alarm is on in it, however long the steps above took)
    span_s = float(page.locator("#review-s").inner_text().split()[0])
    assert span_s > 4
    while time.time() * 1000 < vt_seen_ms + 3_000:
        page.wait_for_timeout(200)
    page.evaluate(SET_REVIEW_TIME, time.time() * 1000 - vt_seen_ms + (2 * span_s - 2) * 1000)
    page.click("#review-next")  # a window later: ends 2 s after VTACH was seen
    expect(page.locator("#review-info")).to_contain_text("samples at 250 Hz", timeout=10_000)
    review = page.locator("#review")
    assert int(review.get_attribute("data-beats") or 0) >= 10
    assert int(review.get_attribute("data-alarms") or 0) >= 1
    spans = page.evaluate(REVIEW_ALARMS)
    assert "VTACH" in spans, spans
    page.screenshot(path=str(ARTIFACTS / "bed-review-vt.png"), full_page=True)

    page.goto(demo.url + "/census")
    # While VT lasts its alarm shows as acknowledged, unless a newer alarm of the bed that
    # nobody has acknowledged yet (the low pressure of VT, say) heads the row; once VT is over
    # the acknowledged alarm has cleared and left the census. Acknowledged while latched (VT
    # already over), it cleared at once.
    assert acked_while in ("active", "latched")
    page.wait_for_function(ACKED_OR_GONE, timeout=5_000)
    vt = page.evaluate(BED004_VTACH)
    if vt and vt[0]["state"] != "cleared":
        assert acked_while == "active" and vt[0]["acknowledged_by"] == "ida"
    page.close()


def test_census_and_bed_view_draw_live_data(browser: object, demo: Demo) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page = log_in(browser, demo, "demo", demo.password)
    rows = page.locator("#census tbody tr")
    expect(rows).to_have_count(4, timeout=20_000)
    names = sorted(rows.nth(i).get_attribute("data-bed") for i in range(4))
    assert names == [f"demo/bed00{i}" for i in range(1, 5)]
    # the patient behind every bed (the demo's, MRNs DEMO-...)
    for i in range(4):
        expect(rows.nth(i).locator(".pt-name")).not_to_be_empty()
        assert "DEMO-" in rows.nth(i).locator(".pt-meta").inner_text()
    page.wait_for_selector("#census .band:not(.band-none)")
    # it updates live: the stream brings a new census every second
    updated = page.locator("#updated").inner_text()
    expect(page.locator("#updated")).not_to_have_text(updated, timeout=5_000)
    assert page.locator("#who").inner_text() == "demo (admin)"
    page.screenshot(path=str(ARTIFACTS / "census.png"), full_page=True)

    page.click("a[href='/bed?bed=demo%2Fbed001']")
    page.wait_for_url(re.compile(r"/bed\?bed=demo%2Fbed001$"))
    expect(page.locator("#patient-head .pt-name")).not_to_be_empty()
    expect(page.locator("#patient .pt-card")).to_be_visible()
    for signal_name in ("ECG_II", "PLETH", "ABP"):
        page.wait_for_selector(f"canvas[data-signal={signal_name}]")
    page.wait_for_selector("#news2-components tr")
    page.wait_for_selector("#tiles [data-key=HR]")
    # the traces are drawn (their label text alone is a few hundred pixels) and they move
    first = wait_for_ink(page, "canvas[data-signal=ECG_II]")
    page.wait_for_timeout(1000)
    second = page.evaluate(CANVAS_INK, "canvas[data-signal=ECG_II]")
    assert second["ink"] > MIN_INK and first["url"] != second["url"]
    wait_for_ink(page, "canvas[data-signal=PLETH]")
    wait_for_ink(page, "canvas[data-signal=ABP]")
    # the engine's beats are marked on the live ECG
    page.wait_for_function(
        "() => Number(document.querySelector('canvas[data-signal=ECG_II]').dataset.marks) >= 3",
        timeout=10_000,
    )
    # trends: 24 h in 5-minute buckets, 7 d in 30-minute buckets
    page.click("#trend-spans button[data-minutes='1440']")
    expect(page.locator("#trends")).to_have_attribute("data-bucket-s", "300", timeout=10_000)
    expect(page.locator("#trends-title")).to_contain_text("last 24 hours")
    page.click("#trend-spans button[data-minutes='10080']")
    expect(page.locator("#trends")).to_have_attribute("data-bucket-s", "1800", timeout=10_000)
    wait_for_ink(page, "#trend-HR", timeout_s=5, min_ink=20)
    # full disclosure: a stored window of ECG drawn from the store
    page.select_option("#review-signal", "ECG_II")
    info = page.locator("#review-info")
    deadline = time.monotonic() + 40
    while True:  # a bed that just started has little stored yet: ask again until it has some
        page.evaluate(SET_REVIEW_TIME, 6000)
        page.click("#review-show")
        expect(info).to_contain_text(re.compile("samples|no stored"), timeout=10_000)
        text = info.inner_text()
        if "samples at 250 Hz" in text and int(text.split()[0]) >= 500:
            break  # at least 2 s of ECG stored in the window
        if time.monotonic() > deadline:
            break
        page.evaluate("() => { document.getElementById('review-info').textContent = ''; }")
        page.wait_for_timeout(1000)
    expect(info).to_contain_text("samples at 250 Hz")
    assert int(info.inner_text().split()[0]) >= 500
    wait_for_ink(page, "#review", timeout_s=2, min_ink=500)
    assert int(page.locator("#review").get_attribute("data-beats") or 0) >= 2  # 4 s of ECG
    page.screenshot(path=str(ARTIFACTS / "bed.png"), full_page=True)
    # the strip saved as a PNG: the strip under its caption (bed, lead, time, scale)
    caption = page.locator("#review-caption").inner_text()
    assert caption.startswith("demo/bed001 · II · ") and "25 mm/s · 10 mm/mV" in caption
    with page.expect_download() as download:
        page.click("#review-png")
    saved = Path(download.value.path())
    png = saved.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    strip = page.evaluate(
        "() => [document.getElementById('review').width, document.getElementById('review').height]"
    )
    assert width == strip[0] and height > strip[1]
    assert download.value.suggested_filename.startswith("demo-bed001-ECG_II-")
    # printed: the strip and its caption, nothing else of the page
    page.emulate_media(media="print")
    assert page.is_visible("#review") and page.is_visible("#review-caption")
    assert not page.is_visible("#waves") and not page.is_visible("#tiles")
    page.emulate_media(media="screen")
    page.close()


def test_anonymous_browser_gets_nothing(browser: object, demo: Demo) -> None:
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(demo.url + "/bed?bed=demo/bed001")
    assert "/login" in page.url
    result = page.evaluate(
        """async () => {
          const api = await fetch('/api/census');
          const text = await api.text();
          const ws = await new Promise((resolve) => {
            const s = new WebSocket(`ws://${location.host}/ws/beds/demo/bed001`);
            let got = 0;
            s.onmessage = () => { got++; };
            s.onclose = () => resolve({opened: false, got});
            setTimeout(() => resolve({opened: s.readyState === 1, got}), 3000);
          });
          return {status: api.status, text, ws};
        }"""
    )
    assert result["status"] == 401 and "bed001" not in result["text"]
    assert result["ws"] == {"opened": False, "got": 0}
    context.close()


def test_viewer_sees_but_cannot_change_anything(browser: object, demo: Demo) -> None:
    page = log_in(browser, demo, "val", VIEWER_PASSWORD)
    expect(page.locator("#census tbody tr")).to_have_count(4, timeout=20_000)
    assert page.locator("#who").inner_text() == "val (viewer)"
    page.goto(demo.url + "/admin")
    page.wait_for_selector("text=Only an admin may manage users.")
    status = page.evaluate(
        """async () => {
          const me = await (await fetch('/api/me')).json();
          const r = await fetch('/api/users', {method: 'POST',
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': me.csrf},
            body: JSON.stringify({name: 'mallory', role: 'admin', password: 'mallory-password'})});
          return r.status;
        }"""
    )
    assert status == 403
    page.close()
