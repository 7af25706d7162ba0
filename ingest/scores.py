"""The score stage: every bed carries a live NEWS2 and a deterioration signal.

On each numerics message the bed's NEWS2 is assembled from the latest value of each parameter
within its maximum age (incomplete, naming what is missing, when a value is absent or stale) and
fed, with heart and respiration rate, to the bed's deterioration tracker: inputs for the alarm
engine and the dashboard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from eicu.errors import ScoreInputError
from eicu.models import BedKey, Frame, NumericsFrame
from eicu.scores import AssemblyPolicy, DeteriorationTracker, assemble_news2
from eicu.scores.deterioration import DeteriorationSignal
from eicu.scores.evaluate import ScoreResult
from ingest.state import BedState

log = logging.getLogger(__name__)


@dataclass
class BedScores:
    news2: ScoreResult | None = None
    news2_us: int | None = None  # device time of the numerics the NEWS2 score was assembled at
    deterioration: DeteriorationSignal | None = None
    tracker: DeteriorationTracker | None = None
    invalid: str | None = None  # why the last assembly failed, if it did


class ScoreStage:
    """A router consumer (see ingest.state.BedRouter.subscribe)."""

    def __init__(self, policy: AssemblyPolicy | None = None) -> None:
        self.policy = policy or AssemblyPolicy()
        self.beds: dict[BedKey, BedScores] = {}

    def forget(self, bed: BedKey) -> None:
        """Drop a bed's scores (another worker holds it now)."""
        self.beds.pop(bed, None)

    def __call__(self, frame: Frame, state: BedState | None) -> None:
        if not isinstance(frame, NumericsFrame) or state is None:
            return
        scores = self.beds.get(frame.bed)
        if scores is None:
            scores = self.beds[frame.bed] = BedScores()
        if scores.tracker is None:
            scores.tracker = DeteriorationTracker()
        try:
            result = assemble_news2(state.latest, frame.ts_us, self.policy)
        except ScoreInputError as exc:
            scores.invalid = str(exc)
            return
        scores.news2 = result
        scores.news2_us = frame.ts_us
        scores.invalid = None
        try:
            scores.tracker.add_one(frame.ts_us, frame.values)
            scores.deterioration = scores.tracker.feed_score(frame.ts_us, result)
        except ValueError as exc:  # a message older than one already scored: not re-scored
            log.debug("deterioration of %s not updated: %s", frame.bed, exc)
