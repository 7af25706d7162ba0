"""Liveness and readiness of a process, as ``/healthz`` and ``/readyz`` give them.

*Alive* (``/healthz``): the process's event loop answers (a callback scheduled on it runs
within :attr:`Health.answer_timeout_s`). *Ready* (``/readyz``): every named check passes, e.g.
the broker subscribed, the store open or its spool accepting, the kernels warmed, the alarm
service running. A check is a function of no arguments returning ``bool`` or ``(bool, detail)``;
one that raises fails, its exception the detail. Checks read the state of objects that live on
the event loop, so they run on it: called from another thread (the metrics server's), they are
scheduled on the loop and waited for, and a loop that does not answer is not ready either.

The bodies are JSON about the process only: check names and their details, never patient data.
No HTTP library here: the dashboard's and the metrics server's routes call
:meth:`Health.answer`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, Final, Protocol

Check = Callable[[], "bool | tuple[bool, str]"]
PATHS: Final = ("/healthz", "/readyz")
CONTENT_TYPE: Final = "application/json"


class Loop(Protocol):
    """What :class:`Health` needs of an event loop (an ``asyncio`` loop has it)."""

    def call_soon_threadsafe(self, callback: Callable[[], object], /) -> Any: ...

    def is_running(self) -> bool: ...

    def is_closed(self) -> bool: ...


class Health:
    """A process's liveness and its named readiness checks (see the module's docstring)."""

    def __init__(self, answer_timeout_s: float = 2.0) -> None:
        self.answer_timeout_s = answer_timeout_s
        self._checks: dict[str, Check] = {}
        self._loop: Loop | None = None
        self._loop_thread: int | None = None

    def bind(self, loop: Loop) -> None:
        """The event loop whose answer is the liveness and on which the checks run. Call it
        from that loop's thread."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def add_check(self, name: str, fn: Check) -> None:
        if not name or name in self._checks:
            raise ValueError(f"health check {name!r}: a name must be given once")
        self._checks[name] = fn

    @property
    def checks(self) -> tuple[str, ...]:
        return tuple(self._checks)

    def _on_loop(self, fn: Callable[[], Any]) -> tuple[bool, Any]:
        """``fn()`` run on the bound loop: (True, its result), or (False, why not)."""
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            return True, fn()
        if loop.is_closed() or not loop.is_running():
            return False, "the event loop is not running"
        done = threading.Event()
        out: list[Any] = []

        def call() -> None:
            try:
                out.append(fn())
            finally:
                done.set()

        try:
            loop.call_soon_threadsafe(call)
        except RuntimeError:  # closed meanwhile
            return False, "the event loop is not running"
        if not done.wait(self.answer_timeout_s):
            return False, f"the event loop did not answer within {self.answer_timeout_s:g} s"
        return True, out[0]

    def live(self) -> tuple[bool, str]:
        """Whether the event loop answers (always, with no loop bound)."""
        answered, detail = self._on_loop(lambda: "the event loop answers")
        return answered, detail

    def ready(self) -> tuple[bool, dict[str, str]]:
        """(every check passed, each check's detail)."""
        results = self.results()
        ok = all(passed for passed, _ in results.values())
        return ok, {name: detail for name, (_, detail) in results.items()}

    def results(self) -> dict[str, tuple[bool, str]]:
        """Each check's (passed, detail); a loop that does not answer as a failed check
        ``event_loop``."""
        answered, results = self._on_loop(self._run_checks)
        if not answered:
            return {"event_loop": (False, str(results))}
        return dict(results)

    def _run_checks(self) -> dict[str, tuple[bool, str]]:
        results: dict[str, tuple[bool, str]] = {}
        for name, fn in self._checks.items():
            try:
                out = fn()
            except Exception as exc:
                results[name] = (False, f"check failed: {type(exc).__name__}: {exc}")
                continue
            if isinstance(out, tuple):
                passed, detail = bool(out[0]), str(out[1])
            else:
                passed, detail = bool(out), "ok" if out else "failing"
            results[name] = (passed, detail)
        return results

    def answer(self, path: str) -> tuple[int, bytes]:
        """The status code (200 or 503) and JSON body of ``/healthz`` or ``/readyz``."""
        if path == "/healthz":
            ok, detail = self.live()
            body: dict[str, object] = {"status": "ok" if ok else "failing", "detail": detail}
        elif path == "/readyz":
            results = self.results()
            ok = all(passed for passed, _ in results.values())
            body = {
                "status": "ready" if ok else "not ready",
                "checks": {n: {"ok": p, "detail": d} for n, (p, d) in results.items()},
            }
        else:
            raise ValueError(f"not a health path: {path!r} (expected one of {', '.join(PATHS)})")
        return (200 if ok else 503), json.dumps(body, sort_keys=True).encode() + b"\n"
