"""The live waveforms drawn as a clinical monitor draws them, measured on the canvas's pixels in
a real headless Chromium: a 25 mm/s sweep and an ECG gain of 10 mm/mV at the screen's real scale
(CSS pixels per mm, a setting), a 1 mm / 5 mm grid, a 1 mV calibration pulse 0.2 s wide
(IEC 60601-2-27: standard sweep speed 25 mm/s, sensitivity 10 mm/mV, a 1 mV calibration pulse),
arterial pressure on a mmHg scale, and human labels (II, Pleth, ABP, Resp; °C, mmHg)."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
from pathlib import Path
from typing import Any

import pytest

from tests.chromium import CHROMIUM, playwright_or_skip

pytestmark = pytest.mark.browser

playwright_api = playwright_or_skip()

STATIC = Path(__file__).resolve().parent.parent / "dashboards" / "static"
PX_PER_MM = 4.0  # the screen's scale as the calibration setting gives it
WIDTH, HEIGHT = 800, 160
PAGE = f"""<!doctype html><html><body style="margin:0">
<canvas id="c" width="{WIDTH}" height="{HEIGHT}" style="width:{WIDTH}px;height:{HEIGHT}px"></canvas>
<script>{(STATIC / "common.js").read_text()}</script>
<script>{(STATIC / "waves.js").read_text()}</script></body></html>"""

# Draw one trace of ``signal`` from samples made by ``make(i)`` and return the canvas as a PNG
# and what the trace says of itself.
DRAW_JS = """([signal, fs, seconds, make, pxPerMm]) => {
  const canvas = document.getElementById("c");
  const trace = new Trace(canvas, signal, fs, { pxPerMm, dpr: 1 });
  const f = new Function("i", "fs", make);
  const values = [];
  for (let i = 0; i < Math.round(seconds * fs); i++) values.push(f(i, fs));
  trace.push(values, false, 0);
  trace.play = trace.recv;
  trace.draw(0);
  const png = canvas.toDataURL("image/png");
  return { png, data: { ...canvas.dataset }, origin: trace.sweepX0() };
}"""


def pixels(data_url: str) -> list[list[list[int]]]:
    """A canvas's PNG (a data: URL) as [r, g, b] per pixel, row by row."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB")
    raw, w = image.tobytes(), image.width
    return [
        [list(raw[(y * w + x) * 3 : (y * w + x) * 3 + 3]) for x in range(w)]
        for y in range(image.height)
    ]


async def draw_all(cases: list[tuple[str, float, float, str]]) -> list[dict[str, Any]]:
    """Each (signal, rate, seconds, sample maker) drawn on the page in turn (one browser)."""
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"]
        )
        page = await browser.new_page(viewport={"width": 1000, "height": 400})
        await page.set_content(PAGE)
        out: list[dict[str, Any]] = []
        for signal, fs, seconds, make in cases:
            got = await page.evaluate(DRAW_JS, [signal, fs, seconds, make, PX_PER_MM])
            got["rows"] = pixels(got.pop("png"))
            out.append(got)
        labels = await page.evaluate(
            """() => ["ECG_II", "ECG_V", "ECG_AVR", "PLETH", "ABP", "RESP", "CVP"]
                  .map((s) => signalLabel(s))
                  .concat(["Cel", "mm[Hg]", "/min", "%", "{breaths}/min"].map(eicu.unitText))"""
        )
        out[-1]["labels"] = labels
        await browser.close()
    return out


# An ECG of 0 mV with a 1 mV square pulse 0.1 s long at the start of every second.
PULSES = "return (i % fs) < fs / 10 ? 1.0 : 0.0;"


@pytest.fixture(scope="module")
def drawn() -> dict[str, dict[str, Any]]:
    """The three traces the tests read, drawn once in one browser."""
    cases = [
        ("ECG_II", 250.0, 20.0, PULSES),
        ("ABP", 125.0, 10.0, "return 100.0;"),
        ("PLETH", 125.0, 2.0, "return Math.sin(i / 20);"),
    ]
    return dict(zip(("ecg", "abp", "pleth"), asyncio.run(draw_all(cases)), strict=True))


def ink(pixel: list[int]) -> bool:
    """A pixel of the ECG trace's green (brighter than any grid line)."""
    r, g, b = pixel
    return g > 110 and g - r > 50 and g - b > 40


def white(pixel: list[int]) -> bool:
    return min(pixel) > 140


def test_ecg_sweeps_at_25_mm_per_s_with_10_mm_per_mv_on_a_1_and_5_mm_grid(
    drawn: dict[str, dict[str, Any]],
) -> None:
    out = drawn["ecg"]
    rows, data, x0 = out["rows"], out["data"], out["origin"]
    assert data["label"] == "II" and data["speed"] == "25 mm/s" and data["gain"] == "10 mm/mV"
    assert float(data["pxPerMm"]) == PX_PER_MM
    # The trace's columns: where the pulses rise, one second apart, are 25 mm apart.
    columns = [x for x in range(x0, WIDTH) if any(ink(rows[y][x]) for y in range(HEIGHT))]
    tops = {x: min(y for y in range(HEIGHT) if ink(rows[y][x])) for x in columns}
    bottoms = {x: max(y for y in range(HEIGHT) if ink(rows[y][x])) for x in columns}
    high = [x for x in columns if tops[x] < min(tops.values()) + 3]
    starts = [x for x in high if x - 1 not in high]
    assert len(starts) >= 5
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(abs(g - 25 * PX_PER_MM) <= 2 for g in gaps), gaps
    # Each pulse is 0.1 s wide (2.5 mm) and 1 mV high (10 mm) above the baseline.
    widths = []
    for s in starts:
        run = s
        while run + 1 in high:
            run += 1
        widths.append(run - s + 1)
    assert all(abs(w - 2.5 * PX_PER_MM) <= 2 for w in widths), widths
    baseline = max(bottoms.values())
    assert abs((baseline - min(tops.values())) - 10 * PX_PER_MM) <= 3
    # The calibration pulse left of the sweep: 1 mV (10 mm) high, 0.2 s (5 mm) wide.
    cal = [(x, y) for y in range(HEIGHT) for x in range(x0) if white(rows[y][x])]
    heights: dict[int, list[int]] = {}
    for x, y in cal:
        heights.setdefault(x, []).append(y)
    tall = [x for x, ys in heights.items() if max(ys) - min(ys) >= 10 * PX_PER_MM - 3]
    assert len(tall) >= 2, "the calibration pulse's two edges"
    assert abs((max(tall) - min(tall)) - 5 * PX_PER_MM) <= 2
    step = max(max(ys) - min(ys) for ys in heights.values())
    assert abs(step - 10 * PX_PER_MM) <= 3
    # The grid, on a row the trace does not cross: a line every 1 mm, a stronger one every 5 mm.
    y = HEIGHT - 3
    row = [rows[y][x] for x in range(x0, x0 + int(20 * PX_PER_MM))]
    lines = [i for i, p in enumerate(row) if sum(p) > 30]
    assert len(lines) >= 18, "a line every millimetre"
    major = [i for i in lines if sum(row[i]) == max(sum(p) for p in row)]
    assert all(i % int(5 * PX_PER_MM) == 0 for i in major) and len(major) >= 3


def test_arterial_pressure_is_drawn_on_a_mmhg_scale(drawn: dict[str, dict[str, Any]]) -> None:
    out = drawn["abp"]
    rows, data = out["rows"], out["data"]
    assert data["label"] == "ABP" and data["gain"] == "0–160 mmHg"
    top, bottom = float(data["scaleTop"]), float(data["scaleBottom"])  # canvas rows of 160, 0
    expected = bottom - (bottom - top) * 100 / 160
    red = [
        y
        for y in range(HEIGHT)
        if any(rows[y][x][0] > 150 and rows[y][x][1] < 120 for x in range(WIDTH // 2, WIDTH))
    ]
    assert red and abs(sum(red) / len(red) - expected) <= 2


def test_labels_and_units_are_the_ones_clinicians_read(drawn: dict[str, dict[str, Any]]) -> None:
    out = drawn["pleth"]
    assert out["data"]["label"] == "Pleth"
    assert out["labels"] == [
        "II", "V", "aVR", "Pleth", "ABP", "Resp", "CVP", "°C", "mmHg", "/min", "%", "/min",
    ]  # fmt: skip
