"""The cyclic garbage collector of a long-running process, set for streaming work.

A worker makes a few small objects for every message, frame and beat, nearly all freed at once by
their reference counts. CPython's collector still walks the young objects every 700 net
allocations and, now and then, every object the process holds: the modules, the compiled kernels
and each bed's state. Measured with ``benchmarks/ingest.py`` (200 beds, 0.25 s frames, full
pipeline), collections took about 15 % of the engine's CPU; with young objects collected after
20,000 net allocations, 7 % of it at 1,000 beds, and 4 % after 100,000 (docs/capacity.md).

:func:`settle` is called once by a command's composition root, after its imports and before its
loop: the objects made so far (modules, kernels, configuration) are frozen out of the collector
(``gc.freeze``), and young objects are collected after ``YOUNG`` net allocations rather than 700.
Reference cycles are still collected, only less often; nothing else changes. Library code and
tests never call it: it changes the whole process.
"""

from __future__ import annotations

import gc
from typing import Final

YOUNG: Final = 100_000  # net allocations between collections of the youngest generation
MIDDLE: Final = 50  # young collections between collections of the middle generation
OLD: Final = 100  # middle collections between full collections (CPython also waits for growth)


def settle() -> None:
    """Freeze what start-up made and collect young objects less often (see the module)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, MIDDLE, OLD)
