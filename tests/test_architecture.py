"""The dependency directions of docs/architecture.md, read from the imports of every module.

Layers (by module path, as the code is laid out today):

- kernels (``eicu.kernels``, ``simulators._synth_kernels``): numpy, numba and the standard
  library only, plus ``eicu.errors``;
- pure computation (``eicu.signal``, ``eicu.scores``, ``eicu.alarms``): no I/O library, no
  adapter, no service;
- the core (``eicu`` models, wire, codes, errors, config, metrics, clock, ...): no service, no
  command, no adapter, no client library;
- services (``ingest``, ``alerting``, ``dashboards``, ``eicu.video``): never another service;
- simulators: never a service;
- client libraries only in their adapter: MQTT/NATS clients in ``eicu.bus``, the PostgreSQL
  driver in ``eicu.store`` (and the test servers of ``eicu.devservices``);
- commands (``eicu.cli``, ``eicu.commands``) are the composition roots: only they import them.

Every import counts, also one inside a function or under ``TYPE_CHECKING``: each is a
dependency. What breaks these rules today is listed once, in :data:`KNOWN`, each with the step of
the move (docs/architecture.md, "The move") that removes it. A new violation fails the test; a
removed one fails it too until its line is deleted here, so the list is always the work left.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("eicu", "ingest", "alerting", "dashboards", "simulators")

KERNELS = ("eicu.kernels", "simulators._synth_kernels")
KERNEL_LIBS = frozenset({"numpy", "numba"})
PURE = ("eicu.signal", "eicu.scores", "eicu.alarms")
ADAPTERS = (
    "eicu.bus",
    "eicu.store",
    "eicu.exposition",
    "eicu.devservices",
    "eicu.brokerauth",
)
SERVICES = {
    "ingest": ("ingest",),
    "alerting": ("alerting",),
    "dashboards": ("dashboards",),
    "video": ("eicu.video",),
}
COMMANDS = ("eicu.cli", "eicu.commands")
SIMULATORS = ("simulators",)
# Libraries that talk to the outside: never in pure computation or the core.
CLIENT_LIBS = frozenset(
    {
        "aiomqtt",
        "paho",
        "gmqtt",
        "nats",
        "amqtt",
        "psycopg",
        "psycopg_pool",
        "aiohttp",
        "fastapi",
        "starlette",
        "uvicorn",
        "aiortc",
        "aioice",
        "av",
        "wfdb",
    }
)
# In pure computation also the standard library's I/O, processes and command lines.
PURE_FORBIDDEN = CLIENT_LIBS | {
    "asyncio",
    "socket",
    "ssl",
    "sqlite3",
    "smtplib",
    "subprocess",
    "argparse",
    "prometheus_client",
}
# Each client library and the only modules that may import it.
ADAPTER_OF = {
    "aiomqtt": ("eicu.bus",),
    "paho": ("eicu.bus",),
    "gmqtt": ("eicu.bus",),
    "nats": ("eicu.bus",),
    "psycopg": ("eicu.store", "eicu.devservices"),
    "psycopg_pool": ("eicu.store",),
}

# Today's violations: (rule, importing module, imported module or library) -> the step of the
# move that removes it. Delete a line when its step lands.
KNOWN: dict[tuple[str, str, str], str] = {
    # Pure computation: record reading and command lines inside the signal and score packages.
    ("pure", "eicu.signal.records", "wfdb"): "step 7",
    ("pure", "eicu.signal.cli_analyze", "argparse"): "step 7",
    ("pure", "eicu.signal.cli_verify", "argparse"): "step 7",
    ("pure", "eicu.scores.cli", "argparse"): "step 7",
    # The engine no longer builds the alarm service.
    ("service", "ingest.engine", "alerting.channels"): "step 5",
    ("service", "ingest.engine", "alerting.feed"): "step 5",
    ("service", "ingest.engine", "alerting.escalation"): "step 5",
    ("service", "ingest.engine", "alerting.outbox"): "step 5",
    ("service", "ingest.engine", "alerting.service"): "step 5",
    # The dashboard reading the engine's memory and the alarm service's objects.
    # The alarm service reads the engine's router, signal and score stages through Any.
    ("any", "alerting.service", "engine: Any"): "step 5",
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    """Every module or library ``name`` imports: a module of this project by its full name,
    anything else by its top-level name."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join([*parts[:keep], *([node.module] if node.module else [])])
            # ``from eicu import bus`` imports the module eicu.bus.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                while target not in MODULES and "." in target:
                    target = target.rsplit(".", 1)[0]
                yield target
            else:
                yield target.split(".")[0]


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _service(name: str) -> str | None:
    for service, prefixes in SERVICES.items():
        if _in(name, prefixes):
            return service
    return None


def _is_stdlib(name: str) -> bool:
    return name in sys.stdlib_module_names or name == "__future__"


def _violations_of(name: str, target: str) -> Iterator[str]:
    """The rules ``name`` breaks by importing ``target``."""
    local = target.split(".")[0] in PACKAGES
    if _in(name, KERNELS):
        allowed = _is_stdlib(target) or target in KERNEL_LIBS
        allowed = allowed or _in(target, (*KERNELS, "eicu.errors"))
        if not allowed:
            yield "kernels"
    # A service, an adapter, a command or a simulator: what computation and the core never use.
    outward = local and (
        _service(target) is not None or _in(target, (*ADAPTERS, *COMMANDS, *SIMULATORS))
    )
    if _in(name, PURE) and (target in PURE_FORBIDDEN or outward):
        yield "pure"
    core = name.startswith("eicu") and not _in(
        name, (*KERNELS, *PURE, *ADAPTERS, *COMMANDS, *SERVICES["video"])
    )
    if core and (target in CLIENT_LIBS or outward):
        yield "core"
    own = _service(name)
    if own is not None and local:
        other = _service(target)
        if (other is not None and other != own) or _in(target, COMMANDS):
            yield "service"
    if _in(name, SIMULATORS) and local and (_service(target) or _in(target, COMMANDS)):
        yield "simulators"
    if target in ADAPTER_OF and not _in(name, ADAPTER_OF[target]):
        yield "adapter"
    if local and _in(target, COMMANDS) and not _in(name, COMMANDS):
        yield "commands"


def _any_engines(name: str, path: Path) -> Iterator[str]:
    """Another process's object taken through ``Any`` (a dependency no import shows)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.arg)
            and node.arg == "engine"
            and isinstance(node.annotation, ast.Name)
            and node.annotation.id == "Any"
        ):
            yield "engine: Any"


def violations() -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    for name, path in MODULES.items():
        for target in set(_imports(name, path)):
            for rule in _violations_of(name, target):
                found.add((rule, name, target))
        if _service(name) is not None:
            found.update(("any", name, what) for what in _any_engines(name, path))
    return found


def test_the_dependency_directions_hold_but_for_the_listed_steps_of_the_move() -> None:
    found = violations()
    new = sorted(found - KNOWN.keys())
    gone = sorted(KNOWN.keys() - found)
    assert not new, f"new dependencies against docs/architecture.md: {new}"
    assert not gone, f"removed: delete these lines from KNOWN in {Path(__file__).name}: {gone}"


def test_every_known_violation_names_a_step_of_the_move() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for key, step in KNOWN.items():
        number = step.removeprefix("step ")
        assert number.isdigit(), (key, step)
        assert f"\n{number}. " in doc, f"{key}: {step} is not in docs/architecture.md"


def test_the_imports_are_read_the_way_the_rules_assume() -> None:
    """The reader finds imports inside functions and under TYPE_CHECKING, resolves
    ``from package import module`` and relative imports, and the rules catch what they
    should."""
    engine = set(_imports("ingest.engine", MODULES["ingest.engine"]))
    assert {"alerting.service", "alerting.escalation", "eicu.kernels.codec", "numpy"} <= engine
    assert "eicu.bus" in set(_imports("alerting.channels", MODULES["alerting.channels"]))
    assert set(_violations_of("eicu.kernels.beats", "scipy")) == {"kernels"}
    assert set(_violations_of("eicu.kernels.codec", "eicu.errors")) == set()
    assert set(_violations_of("eicu.signal.beats", "socket")) == {"pure"}
    assert set(_violations_of("eicu.alarms.state", "alerting.outbox")) == {"pure"}
    assert set(_violations_of("dashboards.views", "eicu.alarms.ranking")) == set()
    assert set(_violations_of("eicu.models", "alerting.model")) == {"core"}
    assert set(_violations_of("eicu.clock", "aiomqtt")) == {"core", "adapter"}
    assert set(_violations_of("alerting.rules", "dashboards.views")) == {"service"}
    assert set(_violations_of("simulators.run", "ingest.engine")) == {"simulators"}
    assert set(_violations_of("eicu.commands.serve", "ingest.engine")) == set()
    assert set(_violations_of("dashboards.app", "eicu.commands.serve")) == {"service", "commands"}
    assert set(_violations_of("eicu.video.cart", "eicu.bus")) == set()


def test_relative_imports_are_read_as_the_modules_they_name(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text(
        "from . import events\nfrom .beats import BeatDetector\nfrom .. import codes\n"
    )
    assert set(_imports("eicu.signal.x", source)) == {
        "eicu.signal.events",
        "eicu.signal.beats",
        "eicu.codes",
    }
