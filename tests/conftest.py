"""Shared fixtures. Service fixtures (Mosquitto, PostgreSQL) live in tests/services.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from eicu.datasets import data_dir, missing_reason


@pytest.fixture(scope="session")
def physionet() -> Path:
    """The PhysioNet data folder; skips the test when it is absent."""
    reason = missing_reason(".")
    if reason:
        pytest.skip(reason)
    return data_dir()


def require_data(*relative: str) -> Path:
    """Skip the calling test unless every path exists under the data folder."""
    reason = missing_reason(*relative)
    if reason:
        pytest.skip(reason)
    return data_dir()
