#!/usr/bin/env python3
"""Regenerate the dashboard screenshots in docs/img from a running ``eicu demo``.

Starts ``eicu demo`` (12 beds, their events 8 s in) in a temporary folder, logs in to it in
headless Chromium (Debian's, ``/usr/bin/chromium``), and saves:

* docs/img/census.png: the census once the VT bed's alarm is on;
* docs/img/bed.png: that bed's view, the alarm acknowledged, its full disclosure at the onset;
* docs/img/alarms.png: the unit's alarm list.

    python scripts/screenshots.py [--out docs/img] [--chromium /usr/bin/chromium]

docs/img/consult.png (a video consult) needs a bedside cart and is made by hand
(docs/video.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VT_BED = "demo/bed004"  # the demo's scenarios in turn: the fourth is VT


def shoot(url: str, password: str, out: Path, chromium: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url + "/login?next=/census")
        page.fill("#name", "demo")
        page.fill("#password", password)
        page.click("#submit")
        vt = page.locator(f"#census tr[data-bed='{VT_BED}'] .alarm-high", has_text="VTACH")
        expect(vt).to_be_visible(timeout=90_000)
        page.wait_for_timeout(3000)  # a few updates: ages and trends settle
        page.screenshot(path=str(out / "census.png"))
        page.goto(url + "/alarms")
        page.wait_for_selector("#live-alarms[data-count]")
        page.screenshot(path=str(out / "alarms.png"))
        page.goto(f"{url}/bed?bed={VT_BED.replace('/', '%2F')}")
        item = page.locator("#alarm-list li", has_text="VTACH")
        expect(item.locator("button.ack")).to_be_visible(timeout=20_000)
        item.locator("button.ack").click()
        page.wait_for_timeout(4000)  # the live traces fill their paper
        page.select_option("#review-signal", "ECG_II")
        span_s = float(page.locator("#review-s").inner_text().split()[0])
        start_ms = time.time() * 1000 - span_s * 1000 - 1000
        page.evaluate("(ms) => { document.getElementById('review-at').value = localInput(ms); }",
                      start_ms)  # fmt: skip
        page.click("#review-show")
        expect(page.locator("#review-info")).to_contain_text("samples", timeout=10_000)
        page.screenshot(path=str(out / "bed.png"), full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from eicu.devservices import DemoProcess

    with tempfile.TemporaryDirectory(prefix="eicu-shots-") as folder:
        demo = DemoProcess(Path(folder), "--beds", "12", "--duration", "600", "--events-at", "8")
        try:
            demo.wait_ready(timeout_s=180)
            shoot(demo.url, demo.password, args.out, args.chromium)
        finally:
            demo.stop()
    for name in ("census.png", "alarms.png", "bed.png"):
        print(args.out / name)


if __name__ == "__main__":
    main()
