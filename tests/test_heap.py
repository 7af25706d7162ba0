"""The collector settings a command applies once at start-up (eicu.heap)."""

from __future__ import annotations

import subprocess
import sys


def test_settle_freezes_start_up_objects_and_collects_young_ones_less_often() -> None:
    """In a process of its own: the setting is the whole process's."""
    code = (
        "import gc\n"
        "from eicu import heap\n"
        "assert gc.get_freeze_count() == 0\n"
        "heap.settle()\n"
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()\n"
        "assert gc.get_threshold() == (heap.YOUNG, heap.MIDDLE, heap.OLD)\n"
        "class Node:\n"
        "    pass\n"
        "a, b = Node(), Node()\n"
        "a.other, b.other = b, a\n"
        "import weakref\n"
        "gone = weakref.ref(a)\n"
        "del a, b\n"
        "gc.collect()\n"
        "assert gone() is None  # cycles are still collected\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
