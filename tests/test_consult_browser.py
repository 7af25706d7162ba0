"""A video consult end to end: a real ``eicu demo``, a real ``eicu cart`` (its test pattern) for
the demo's VT bed, and a headless Chromium with a fake camera and microphone calling it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.chromium import CHROMIUM, playwright_or_skip

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # a camera and microphone of test patterns, allowed without asking
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    # offer 127.0.0.1 candidates too, so the call connects on a machine with loopback only
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip
SITE, VT_BED = "demo", "bed004"  # the demo's fourth bed goes into VT 60 s after it starts
PATTERN_WIDTH = 640  # the cart's test pattern (VideoSettings' default size)
USERS = {  # name: (role, sites, password)
    "ida": ("intensivist", None, "intensivist-password-1"),
    "otto": ("intensivist", "elsewhere", "intensivist-password-2"),
    "cart-demo-bed004": ("cart", SITE, "cart-password-for-bed4"),
}

playwright_api = playwright_or_skip("playwright.sync_api")
expect = playwright_api.expect


@dataclass
class Process:
    """A child process whose stderr lines are collected as they come."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.reader is not None:
            self.reader.join(10)
        assert self.process.stderr is not None
        self.process.stderr.close()
        return self.process.returncode


def start(args: list[str], env: dict[str, str]) -> Process:
    process = subprocess.Popen(
        [sys.executable, "-m", "eicu.cli", *args], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    proc = Process(process)
    proc.reader = threading.Thread(target=proc.read, daemon=True)
    proc.reader.start()
    return proc


def wait_for(what: str, proc: Process, done: object, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():  # type: ignore[operator]
        if proc.process.poll() is not None or time.monotonic() > deadline:
            proc.process.kill()
            proc.stop()
            pytest.fail(f"{what}:\n" + "".join(proc.lines[-30:]))
        time.sleep(0.2)


@dataclass
class Consult:
    url: str
    data: Path
    cart: Process

    def metrics(self) -> str:
        return scrape(self.url)

    def calls(self) -> list[sqlite3.Row]:
        """The audit, read from the demo's store on disk."""
        with contextlib.closing(sqlite3.connect(self.data / "eicu.sqlite")) as db:
            db.row_factory = sqlite3.Row
            return db.execute("SELECT * FROM consult_calls ORDER BY started").fetchall()


def ended_calls(consult: Consult, n: int, timeout_s: float = 20.0) -> list[sqlite3.Row]:
    """The first ``n`` calls of the audit once each has its outcome: the page shows "ended" as
    soon as it hangs up, the server writes the outcome when it sees the hang-up."""
    deadline = time.monotonic() + timeout_s
    calls = consult.calls()
    while (len(calls) < n or any(c["outcome"] is None for c in calls[:n])) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
        calls = consult.calls()
    return calls[:n]


def scrape(url: str) -> str:
    """The Prometheus metrics at ``url``/metrics; empty while nothing listens there yet."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def consult(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consult]:
    """``eicu demo`` with 4 beds, its users, and ``eicu cart`` registered for the VT bed."""
    data = tmp_path_factory.mktemp("consult")
    # bed labels on /metrics, to read each call's quality per bed (docs/dashboard.md, Metrics)
    env = {**os.environ, "EICU_MQTT_URL": "", "EICU_DATABASE_URL": "", "EICU_NO_CLEAR": "1",
           "EICU_ICE_SERVERS": "", "EICU_METRICS_BED_LABELS": "1"}  # fmt: skip
    # every bed's scenario event 8 s in: the VT bed's VTACH is up (and latched, after its 30 s)
    # by the time the first call has ended
    demo = start(
        ["demo", "--beds", "4", "--duration", "400", "--events-at", "8", "--data-dir", str(data)],
        env,
    )
    cart: Process | None = None
    try:
        url = demo_started(demo)
        add_users(data / "users.json", env)
        password_file = data / "cart-password"
        password_file.write_text(USERS["cart-demo-bed004"][2] + "\n")
        cart_env = {**env, "EICU_DASHBOARD_URL": url, "EICU_VIDEO_ALLOW_LOOPBACK": "1",
                    "EICU_VIDEO_CAMERA": "none", "EICU_VIDEO_MICROPHONE": "none"}  # fmt: skip
        port = free_port()
        cart = start(
            ["cart", "--site", SITE, "--bed", VT_BED, "--user", "cart-demo-bed004",
             "--password-file", str(password_file), "--metrics-port", str(port)],
            cart_env,
        )  # fmt: skip
        running = Consult(url, data, cart)
        registered = f'eicu_cart_registered{{bed="{VT_BED}",site="{SITE}"}} 1.0'
        wait_for("the cart did not register", cart,
                 lambda: registered in scrape(f"http://127.0.0.1:{port}"), 60)  # fmt: skip
        # registered: ready, on the same port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
            ready = json.loads(r.read())
        assert ready["status"] == "ready" and ready["checks"]["dashboard"]["ok"], ready
        yield running
    finally:
        cart_rc = cart.stop() if cart is not None else 0
        demo_rc = demo.stop()
    assert cart is not None and cart_rc == 0, "".join(cart.lines[-20:])
    assert demo_rc == 0, "".join(demo.lines[-20:])


def demo_started(demo: Process) -> str:
    """The demo's dashboard address, once it serves and its engine has subscribed."""
    pattern = r"\| +dashboard +(http://\S+)/ "  # in the demo's login box

    def started() -> bool:
        return any(re.search(pattern, line) for line in demo.lines) and any(
            "subscribed" in line for line in demo.lines
        )

    wait_for("eicu demo did not start", demo, started)
    return next(m[1] for line in demo.lines if (m := re.search(pattern, line)))


def add_users(users_file: Path, env: dict[str, str]) -> None:
    for name, (role, sites, password) in USERS.items():
        added = subprocess.run(
            [sys.executable, "-m", "eicu.cli", "users", "add", name, "--role", role,
             *((["--bed", f"{sites}/{VT_BED}"] if role == "cart" else ["--sites", sites])
               if sites else [])],
            input=password + "\n", capture_output=True, text=True, cwd=ROOT, timeout=60,
            env={**env, "EICU_USERS_FILE": str(users_file)}, check=False,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def log_in(browser: object, url: str, name: str) -> object:
    page = browser.new_page(viewport={"width": 1400, "height": 950})  # type: ignore[attr-defined]
    page.add_init_script(CSP_WATCH)
    page.goto(url + "/census")
    page.wait_for_url(re.compile(r"/login\?next="))
    page.fill("#name", name)
    page.fill("#password", USERS[name][2])
    page.click("#submit")
    page.wait_for_url(re.compile(r"^[^?]*/census$"))
    return page


# every Content-Security-Policy violation on a page, to show the consult needs no loosening
CSP_WATCH = """window.cspViolations = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));"""
CALL = "() => ({...window.eicuConsult, videoWidth: document.getElementById('remote').videoWidth})"


def wait_for_frames(page: object, more_than: int, timeout_s: float = 30.0) -> dict[str, object]:
    """The call's state once the browser has decoded more than ``more_than`` frames."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = page.evaluate(CALL)  # type: ignore[attr-defined]
        if state["framesDecoded"] > more_than:
            return state  # type: ignore[no-any-return]
        if state["state"] in ("failed", "ended", "refused", "busy"):
            raise AssertionError(f"the call ended: {state}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no frames decoded: {state}")
        time.sleep(0.5)


def test_a_call_from_the_bed_view_and_from_an_alarm(consult: Consult, browser: object) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page = log_in(browser, consult.url, "ida")
    # a bed without a cart offers no video (the demo's cart serves bed001, this test's bed004)
    page.goto(f"{consult.url}/bed?bed={SITE}%2Fbed002")
    # drawn from the bed's detail, with which the page also decides on the video link
    expect(page.locator("#news2 .band")).to_be_visible(timeout=10_000)
    assert page.locator("a.video-link").count() == 0
    page.goto(f"{consult.url}/bed?bed={SITE}%2F{VT_BED}")
    # one click from the bed view to its video
    page.click("#video a.video-link")
    page.wait_for_url(re.compile(rf"/consult/{SITE}/{VT_BED}$"))
    expect(page.locator("#call-state")).to_have_text("connected", timeout=30_000)
    first = wait_for_frames(page, 0)
    later = wait_for_frames(page, int(first["framesDecoded"]) + 10)  # type: ignore[call-overload]
    assert later["videoWidth"] == PATTERN_WIDTH
    # the quality of both sides, on the page and on the engine's /metrics
    expect(page.locator("#quality tr[data-key=resolution] td").nth(2)).to_have_text(
        re.compile(r"\d+×\d+"), timeout=10_000
    )
    metrics = consult.metrics()
    assert "eicu_consult_active_calls 1.0" in metrics
    for side in ("browser", "cart"):
        assert f'eicu_consult_video_width_pixels{{bed="{VT_BED}",side="{side}",site="{SITE}"}}' in (
            metrics
        )
    expect(page.locator("#strips canvas[data-signal=ECG_II]")).to_be_visible(timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "consult.png"), full_page=True)
    assert page.evaluate("() => window.cspViolations") == []
    page.click("#hangup")
    expect(page.locator("#call-state")).to_have_text("ended")
    [call] = ended_calls(consult, 1)
    assert (call["caller"], call["site"], call["bed"], call["cart"]) == (
        "ida", SITE, VT_BED, "cart-demo-bed004",
    )  # fmt: skip
    assert call["outcome"] == "completed" and call["ended_by"] == "ida"
    assert call["started"] <= call["answered"] <= call["ended"]

    # the VT alarm: its Video link opens the call with the alarm beside it
    page.goto(f"{consult.url}/bed?bed={SITE}%2F{VT_BED}")
    alarm = page.locator("#alarm-list li", has_text="VTACH")
    expect(alarm.locator("a.video-link")).to_be_visible(timeout=150_000)
    alarm_id = alarm.get_attribute("data-alarm-id")
    page.screenshot(path=str(ARTIFACTS / "bed-video-links.png"))
    alarm.locator("a.video-link").click()
    page.wait_for_url(re.compile(rf"/consult/{SITE}/{VT_BED}\?alarm="))
    expect(page.locator("#the-alarm", has_text="VTACH")).to_be_visible(timeout=10_000)
    expect(page.locator("#call-state")).to_have_text("connected", timeout=30_000)
    assert wait_for_frames(page, 10)["videoWidth"] == PATTERN_WIDTH
    page.screenshot(path=str(ARTIFACTS / "consult-alarm.png"), full_page=True)
    assert page.evaluate("() => window.cspViolations") == []
    page.close()  # leaving the page ends the call
    deadline = time.monotonic() + 10
    while consult.calls()[-1]["ended"] is None and time.monotonic() < deadline:
        time.sleep(0.2)
    second = consult.calls()[-1]
    assert second["alarm_id"] == alarm_id and second["outcome"] == "completed"
    assert second["ended"] is not None and second["end_reason"] in (
        "the caller hung up", "the browser closed the connection",
    )  # fmt: skip


def test_a_bed_of_another_site_cannot_be_called(consult: Consult, browser: object) -> None:
    page = log_in(browser, consult.url, "otto")
    expect(page.locator("#empty")).to_be_visible(timeout=10_000)  # no beds of his site
    page.goto(f"{consult.url}/consult/{SITE}/{VT_BED}")
    expect(page.locator("#call-state")).to_have_text("refused", timeout=10_000)
    expect(page.locator("#call-message")).to_have_text("this bed is not in your sites")
    assert page.locator("#strips canvas").count() == 0
    page.close()
    refused = [c for c in consult.calls() if c["caller"] == "otto"]
    assert [(c["outcome"], c["bed"]) for c in refused] == [("refused", VT_BED)]


def test_anonymous_and_cart_sessions_get_no_call_and_no_patient_data(
    consult: Consult, browser: object
) -> None:
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(f"{consult.url}/consult/{SITE}/{VT_BED}")
    assert "/login" in page.url
    probe = """async ([path, login]) => {
      if (login) {
        await fetch('/api/login', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                   body: JSON.stringify(login)});
      }
      const census = await fetch('/api/census');
      const closed = await new Promise((resolve) => {
        const ws = new WebSocket(`ws://${location.host}${path}`);
        const got = [];
        ws.onmessage = (e) => got.push(e.data);
        ws.onclose = (e) => resolve({code: e.code, reason: e.reason, got});
        setTimeout(() => resolve({code: null, got}), 5000);
      });
      return {census: census.status, closed};
    }"""
    anonymous = page.evaluate(probe, [f"/ws/consult/{SITE}/{VT_BED}", None])
    assert anonymous == {
        "census": 401, "closed": {"code": 4401, "reason": "log in first", "got": []},
    }  # fmt: skip
    login = {"name": "cart-demo-bed004", "password": USERS["cart-demo-bed004"][2]}
    cart = page.evaluate(probe, [f"/ws/consult/{SITE}/{VT_BED}", login])
    assert cart["census"] == 403
    assert cart["closed"]["code"] == 4403 and cart["closed"]["got"] == []
    context.close()


def test_the_demo_serves_a_cart_for_its_first_bed(consult: Consult, browser: object) -> None:
    page = log_in(browser, consult.url, "ida")
    page.goto(f"{consult.url}/bed?bed={SITE}%2Fbed001")
    page.click("#video a.video-link")
    expect(page.locator("#call-state")).to_have_text("connected", timeout=30_000)
    assert wait_for_frames(page, 10)["videoWidth"] == PATTERN_WIDTH
    page.click("#hangup")
    expect(page.locator("#call-state")).to_have_text("ended")
    page.close()
    last = ended_calls(consult, len(consult.calls()))[-1]
    assert (last["bed"], last["cart"], last["outcome"]) == ("bed001", "cart-demo", "completed")
