"""eicu: a real-time tele-ICU monitoring and alerting engine.

The core package. Every other package (ingest, alerting, dashboards, simulators) imports it;
it imports none of them, except in :mod:`eicu.cli`, the composition root.
"""

__version__ = "0.1.0"
