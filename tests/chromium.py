"""Debian's Chromium and Playwright for the browser tests: one place that finds them and skips
a test module, saying why, where they are missing."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

CHROMIUM = Path("/usr/bin/chromium")


def playwright_or_skip(api: str = "playwright.async_api") -> ModuleType:
    """Playwright's ``api`` module (async or sync); skips the calling test module when Chromium
    or Playwright is not installed. Call it at module level."""
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is absent: run scripts/setup-system (installs Debian's chromium)",
            allow_module_level=True,
        )
    return pytest.importorskip(api, reason="pip install -e '.[dev]'")
