"""The dashboard's visual alarm signals in a real headless Chromium, against IEC 60601-1-8
(Table 2, characteristics of alarm indicator lights): high priority red, flashing at 1.4-2.8 Hz;
medium priority yellow, flashing at 0.4-0.8 Hz; both with a duty cycle of 20-60 % on; low
priority cyan (or yellow), constant. Acknowledged or paused alarms are steady. Red, yellow and
cyan mean alarms only: the NEWS2 bands are drawn in other colours."""

from __future__ import annotations

import asyncio
import colorsys
import contextlib
import functools
import http.server
import itertools
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chromium import CHROMIUM, playwright_or_skip

pytestmark = pytest.mark.browser

playwright_api = playwright_or_skip()

CSS = (Path(__file__).resolve().parent.parent / "dashboards" / "static" / "app.css").read_text()
PAGE = f"""<!doctype html><html><head><style>{CSS}</style></head><body>
<span id="high" class="alarm alarm-high">VTACH</span>
<span id="medium" class="alarm alarm-medium">SPO2_LOW</span>
<span id="low" class="alarm alarm-low">LEAD_OFF</span>
<span id="high-acked" class="alarm alarm-high acked">VTACH</span>
<span id="medium-paused" class="alarm alarm-medium paused">HR_HIGH</span>
<span id="news-high" class="band band-high">7 high</span>
<span id="news-medium" class="band band-medium">5 medium</span>
<span id="news-low-medium" class="band band-low-medium">3 low-medium</span>
<span id="news-low" class="band band-low">0 low</span>
</body></html>"""

STYLE_JS = """(id) => {
  const s = getComputedStyle(document.getElementById(id));
  return { background: s.backgroundColor, color: s.color, name: s.animationName,
           duration: s.animationDuration, iterations: s.animationIterationCount };
}"""
# opacity of the flashing keyframes sampled over one period: the share of the period at full
KEYFRAMES_JS = """() => {
  for (const sheet of document.styleSheets) for (const rule of sheet.cssRules) {
    if (rule.type === CSSRule.KEYFRAMES_RULE && rule.name === "iec-flash") {
      return [...rule.cssRules].map((k) => [k.keyText, k.style.opacity]);
    }
  }
  return null;
}"""


def rgb(css: str) -> tuple[int, int, int]:
    inner = css[css.index("(") + 1 : css.index(")")]
    r, g, b = (int(float(v)) for v in inner.split(",")[:3])
    return r, g, b


def hue(css: str) -> float:
    r, g, b = rgb(css)
    h, _l, s = colorsys.rgb_to_hls(r / 255, g / 255, b / 255)
    assert s > 0.5, f"{css} is not a saturated colour"
    return h * 360


async def test_alarm_colours_and_flashing_follow_iec_60601_1_8() -> None:
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"]
        )
        page = await browser.new_page()
        await page.set_content(PAGE)
        style = {
            i: await page.evaluate(STYLE_JS, i)
            for i in ("high", "medium", "low", "high-acked", "medium-paused", "news-high",
                      "news-medium", "news-low-medium", "news-low")
        }  # fmt: skip
        frames = await page.evaluate(KEYFRAMES_JS)
        await browser.close()
    # colours: red, yellow, cyan (hue in degrees)
    assert hue(style["high"]["background"]) < 15 or hue(style["high"]["background"]) > 345
    assert 45 <= hue(style["medium"]["background"]) <= 65
    assert 175 <= hue(style["low"]["background"]) <= 195
    # flashing: high 1.4-2.8 Hz, medium 0.4-0.8 Hz, low constant
    high_s = float(style["high"]["duration"].rstrip("s"))
    medium_s = float(style["medium"]["duration"].rstrip("s"))
    assert style["high"]["name"] == style["medium"]["name"] == "iec-flash"
    assert style["high"]["iterations"] == style["medium"]["iterations"] == "infinite"
    assert 1.4 <= 1 / high_s <= 2.8 and 0.4 <= 1 / medium_s <= 0.8
    assert style["low"]["name"] == "none"
    # duty cycle: the share of the period at full opacity is 20-60 %
    assert frames is not None
    on_until = max(float(k.rstrip("%")) for key, op in frames if op == "1" for k in key.split(","))
    assert 20 <= on_until <= 60
    # acknowledged or paused: steady
    assert style["high-acked"]["name"] == style["medium-paused"]["name"] == "none"
    # NEWS2 bands are neither red, yellow nor cyan
    alarm_hues = [hue(style[i]["background"]) for i in ("high", "medium", "low")]
    for band in ("news-high", "news-medium", "news-low-medium", "news-low"):
        r, g, b = rgb(style[band]["background"])
        h, _l, s = colorsys.rgb_to_hls(r / 255, g / 255, b / 255)
        if s > 0.25:  # a colour at all (not grey)
            assert all(min(abs(h * 360 - a), 360 - abs(h * 360 - a)) > 40 for a in alarm_hues)


STATIC = Path(__file__).resolve().parent.parent / "dashboards" / "static"
TONE_PAGE = """<!doctype html><html><head><script src="common.js"></script>
<script src="alarms.js"></script></head><body style="height: 400px">
<button id="sound" class="sound-off" aria-pressed="false">SOUND OFF</button>
<script>eicu.me = { name: "ida", permissions: [] }; eicuAlarms.PERIOD_MS = 1e9;
eicu.api = async () => ({ ok: true, json: async () => ({ alarms: [] }) });
eicuAlarms.poll({});</script></body></html>"""


@contextlib.contextmanager
def served(folder: Path) -> Iterator[str]:
    """``folder`` over HTTP on a free port (a real origin: the page keeps localStorage)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_tones_follow_iec_60601_1_8_and_sound_off_is_always_shown(tmp_path: Path) -> None:
    for name in ("common.js", "alarms.js"):
        shutil.copy(STATIC / name, tmp_path / name)
    (tmp_path / "index.html").write_text(TONE_PAGE)
    asyncio.run(_tones(tmp_path))


async def _tones(folder: Path) -> None:
    with served(folder) as url:
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"]
            )
            page = await browser.new_page()
            await page.goto(url + "/index.html")
            patterns = await page.evaluate("() => eicuTone.PATTERNS")
            # IEC 60601-1-8 Table 3: pulses per burst, pulse duration, fundamental, repetition
            high, medium, low = patterns["high"], patterns["medium"], patterns["low"]
            assert len(high["at_s"]) == 10 and len(medium["at_s"]) == 3
            assert len(low["at_s"]) in (1, 2)
            assert 0.075 <= high["pulse_s"] <= 0.2
            assert 0.125 <= medium["pulse_s"] <= 0.25 and 0.125 <= low["pulse_s"] <= 0.25
            for pattern in (high, medium, low):
                assert 150 <= pattern["hz"] <= 1000
            # high: 3 + 2, a pause, 3 + 2 (the gaps after the 3rd and 8th pulse are longer)
            gaps = [b - a for a, b in itertools.pairwise(high["at_s"])]
            assert gaps[2] > gaps[0] and gaps[4] > gaps[2] and gaps[7] > gaps[5]
            for pattern, lo, hi in ((high, 2.5, 15.0), (medium, 2.5, 30.0), (low, 15.0, 1e9)):
                between = pattern["every_s"] - pattern["at_s"][-1] - pattern["pulse_s"]
                assert lo <= between <= hi or (pattern is low and between > 15.0)
            # muted is always shown; turned on, the tone follows the most urgent alarm
            assert await page.text_content("#sound") == "SOUND OFF"
            await page.click("#sound")
            await page.wait_for_function("() => window.eicuAlarmTone.enabled === true")
            assert await page.text_content("#sound") == "sound on"
            for priority in ("medium", "low", "high"):
                await page.evaluate(
                    "(p) => eicuTone.set({bed: 'w/b1', kind: 'X', priority: p})", priority
                )
                tone = await page.evaluate("() => window.eicuAlarmTone")
                assert tone["playing"] and tone["pattern"] == priority
            await page.evaluate("() => eicuTone.set(null)")
            assert (await page.evaluate("() => window.eicuAlarmTone"))["playing"] is False
            # a new page: the user's choice is remembered and their first gesture restores it
            await page.reload()
            assert await page.text_content("#sound") == "SOUND OFF: click anywhere to resume"
            assert (await page.evaluate("() => window.eicuAlarmTone"))["enabled"] is False
            await page.mouse.click(200, 200)
            await page.wait_for_function("() => window.eicuAlarmTone.enabled === true")
            # turned off, it stays off on the next page
            await page.click("#sound")
            await page.reload()
            assert await page.text_content("#sound") == "SOUND OFF"
            await page.mouse.click(200, 200)
            assert (await page.evaluate("() => window.eicuAlarmTone"))["enabled"] is False
            await browser.close()
