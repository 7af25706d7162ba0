"""The fastmath policy shared by every kernel.

nnan and ninf are left out on purpose: NaN marks a missing sample and must propagate, and a
kernel tests for it with ``math.isnan``, which those flags would let LLVM fold away.
"""

from __future__ import annotations

from typing import Final

FASTMATH: Final[set[str]] = {"nsz", "arcp", "contract", "afn", "reassoc"}
