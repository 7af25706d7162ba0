"""The Prometheus exposition of a registry, as the dashboard's ``/metrics`` and the
``EICU_METRICS_PORT`` server give it: without bed labels unless asked, behind a bearer token
when one is set (docs/dashboard.md). The ``EICU_METRICS_PORT`` server also answers ``/healthz``
and ``/readyz`` (:mod:`eicu.health`; no token needed, nothing about patients in them), so a
process without the dashboard has them too.

Without bed labels, a metric family with a ``bed`` (or patient) label is merged over it: the
series that differ only in that label are summed (a counter, a histogram, or a gauge that
counts things, such as alarms of the last 24 h per site and kind). A gauge that measures
something (its name ends in a unit: ``_seconds``, ``_ratio``, ``_pixels``, ``_per_second``,
``_bytes``) means nothing summed over beds and is left out.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST, ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from eicu.health import CONTENT_TYPE as HEALTH_CONTENT_TYPE
from eicu.health import PATHS as HEALTH_PATHS
from eicu.health import Health

log = logging.getLogger(__name__)

PRIVATE_LABELS = frozenset({"bed", "patient", "patient_id", "mrn"})
MEASURE_SUFFIXES = ("_seconds", "_ratio", "_pixels", "_per_second", "_bytes")


def _merged(family: Metric) -> Metric | None:
    """``family`` summed over its private labels; None when it cannot be (a measured gauge)."""
    if not any(PRIVATE_LABELS & sample.labels.keys() for sample in family.samples):
        return family
    if family.type == "gauge" and family.name.endswith(MEASURE_SUFFIXES):
        return None
    sums: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for sample in family.samples:
        if sample.name.endswith("_created"):
            continue  # a creation time of one bed's series: no meaning once merged
        labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in PRIVATE_LABELS))
        key = (sample.name, labels)
        sums[key] = sums.get(key, 0.0) + sample.value
    out = Metric(family.name, family.documentation, family.type, family.unit)
    for (name, labels), value in sums.items():
        out.add_sample(name, dict(labels), value)
    return out


class PublicView:
    """A collector showing ``registry`` without its private labels."""

    def __init__(self, registry: Collector) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():
            merged = _merged(family)
            if merged is not None:
                yield merged


def exposition(registry: Collector, *, bed_labels: bool = False) -> bytes:
    """The text exposition of ``registry``; private labels merged away unless ``bed_labels``."""
    return generate_latest(registry if bed_labels else PublicView(registry))


def bearer_ok(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (compared in constant
    time)."""
    if not authorization:
        return False
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterator[bytes]]


def metrics_app(
    registry: Collector, *, token: str | None, bed_labels: bool, health: Health | None = None
) -> WsgiApp:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        path = environ.get("PATH_INFO")
        if health is not None and path in HEALTH_PATHS:
            code, body = health.answer(path)
            status = "200 OK" if code == 200 else "503 Service Unavailable"
            start_response(
                status, [("Content-Type", HEALTH_CONTENT_TYPE), ("Cache-Control", "no-store")]
            )
            return iter([body])
        if path not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return iter([b"not found\n"])
        if token is not None and not bearer_ok(environ.get("HTTP_AUTHORIZATION"), token):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="metrics"')],
            )
            return iter([b"a bearer token is needed\n"])
        body = exposition(registry, bed_labels=bed_labels)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return iter([body])

    return app


class MetricsServer:
    """``/metrics`` on its own port, in a daemon thread (as ``prometheus_client`` serves it),
    with the same token and label rules as the dashboard's; with ``health``, ``/healthz`` and
    ``/readyz`` too (their checks run on the health's event loop, not in this thread)."""

    def __init__(
        self,
        port: int,
        addr: str,
        registry: Collector,
        *,
        token: str | None = None,
        bed_labels: bool = False,
        health: Health | None = None,
    ) -> None:
        app = metrics_app(registry, token=token, bed_labels=bed_labels, health=health)
        self._httpd = make_server(addr, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
        self.port: int = self._httpd.server_port
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
