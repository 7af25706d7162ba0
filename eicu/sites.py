"""Names of a remote site's pieces on the bus (docs/remote-sites.md), derived from its id.

A site id is also a topic level (``eicu/v1/<site>/...``), part of a JetStream domain
(``site-<id>``) and of a stream name (``SITE_<id>``), so it is kept to what all three accept:
lower-case letters, digits and inner hyphens, at most 32 characters.
"""

from __future__ import annotations

import re
from typing import Final

from eicu.errors import ConfigError

__all__ = [
    "GATEWAY_SUBJECTS",
    "HUB_DOMAIN",
    "LEAF_DENY_EXPORTS",
    "SITE_STREAM",
    "check_site_id",
    "hub_stream",
    "site_domain",
    "site_feed_user",
    "site_leaf_user",
    "site_stream_api",
]

# The hub's JetStream domain.
HUB_DOMAIN: Final = "hub"
# The stream at each site that captures everything its gateways and its engine publish: the
# site's store-and-forward buffer, sourced by the hub.
SITE_STREAM: Final = "EICU_SITE"
# The NATS subjects of the gateways' topics ``eicu/v1/...`` and of the alarms sent back to them.
GATEWAY_SUBJECTS: Final = "eicu.v1.>"
# What a site's leaf node never exports to the hub as plain messages: all of eicu's subjects.
# The hub takes the site's data from its stream only (a plain copy would reach the hub's
# partitions and workers a second time).
LEAF_DENY_EXPORTS: Final = "eicu.>"

_SITE_ID: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")


def check_site_id(site_id: str, key: str = "EICU_SITE_ID") -> str:
    """``site_id`` if it is a valid site id; :class:`ConfigError` naming ``key`` otherwise."""
    if not _SITE_ID.fullmatch(site_id):
        raise ConfigError(
            key,
            f"{site_id!r} is not a site id: lower-case letters, digits and inner hyphens, "
            "1 to 32 characters (it names a topic level, a JetStream domain and a stream)",
        )
    return site_id


def site_domain(site_id: str) -> str:
    """The JetStream domain of a site's leaf node: ``site-<id>``."""
    return f"site-{check_site_id(site_id)}"


def site_stream_api(site_id: str) -> str:
    """The prefix under which the hub reaches the site's JetStream API across the leaf link."""
    return f"$JS.{site_domain(site_id)}.API"


def site_leaf_user(site_id: str) -> str:
    """The user a site's leaf node connects to the hub as: ``leaf-<id>``."""
    return f"leaf-{check_site_id(site_id)}"


def site_feed_user(site_id: str) -> str:
    """The user the hub's feed reads a site's stream as: ``feed-<id>``."""
    return f"feed-{check_site_id(site_id)}"


def hub_stream(site_id: str) -> str:
    """The hub's stream that sources the site's :data:`SITE_STREAM`: ``SITE_<id>``."""
    return f"SITE_{check_site_id(site_id)}"
