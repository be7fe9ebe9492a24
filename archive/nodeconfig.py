"""The configuration the nodes sharing one catalog must have alike, compared between them.

C-MOVE destinations and storage commitment remotes (``[[dimse.remote]]``), the DICOM peers
(``[[dimse.peer]]``) and the AE title are configuration, like the rest of a node's file:
a deployment gives every node the same file (docs/deployment.md). They must agree,
because work one node accepted may be finished by another (a storage commitment report
is sent by whichever node claims it; a C-MOVE retried through the load balancer reaches
any node). So each node publishes a digest of these tables in the catalog, as a lease
named ``node:<node>`` that runs out when the node dies; ``/health/ready`` reports the live
nodes whose digest differs (degraded, still ready), and the node logs it when it starts
and whenever that changes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import socket
import time
from typing import Any

from archive.catalog.work import Leases, node_id

log = logging.getLogger(__name__)
#: Seconds a node's published digest lives without renewal, and how often it is renewed.
TTL = 60.0
INTERVAL = 10.0
PREFIX = "node:"


def digest(settings) -> str:
    """SHA-256 of the AE title and the remote and peer tables, in a canonical order."""
    d = settings.dimse
    tables = {"ae_title": d.ae_title,
              "remotes": sorted(dataclasses.astuple(r) for r in d.remotes),
              "peers": sorted((p.ae_title, sorted(p.allow), list(p.collections)) for p in d.peers)}
    return hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()[:16]


class ConfigCheck:
    """Publishes this node's digest and finds the live nodes that differ (run by the heartbeat)."""

    def __init__(self, settings, catalog=None):
        """``catalog``: the shared catalog, else opened at the first check (one connection)."""
        self.settings, self.catalog = settings, catalog
        self.digest = digest(settings)
        self.owner = node_id()
        self.name = PREFIX + self.owner
        self.differing: list[str] = []
        self.error: str | None = None
        self._next = 0.0

    def check(self) -> dict[str, Any]:
        """What the heartbeat reports; reaches the catalog at most every INTERVAL seconds."""
        now = time.monotonic()
        if now >= self._next:
            self._next = now + INTERVAL
            try:
                self._compare()
                self.error = None
            except Exception as e:  # noqa: BLE001 - a busy catalog must not stop the heartbeat
                self.error = type(e).__name__
        return {"digest": self.digest, "differing": self.differing, "error": self.error}

    def _compare(self) -> None:
        if self.catalog is None:
            from archive.catalog import Catalog

            self.catalog = Catalog(self.settings.catalog_location, pool_size=1,
                                   pool_timeout=self.settings.catalog.pool_timeout)
        leases = Leases(self.catalog.db, self.owner)
        leases.acquire(self.name, TTL)
        leases.save(self.name, {"digest": self.digest, "host": socket.gethostname()})
        now = time.time()
        db = self.catalog.db
        rows = db.execute("SELECT name, state FROM lease WHERE name LIKE ? AND lease_until >= ?",
                          (PREFIX + "%", now)).fetchall()
        differing = sorted(r[0][len(PREFIX):] for r in rows
                           if r[0] != self.name and r[1] and json.loads(r[1]).get("digest") != self.digest)
        if differing != self.differing and differing:
            log.warning("%d other node(s) sharing this catalog have a different AE title or [[dimse.remote]] / "
                        "[[dimse.peer]] tables (%s): C-MOVE and storage commitment may fail on some nodes; give "
                        "every node the same configuration", len(differing), ", ".join(differing))
        self.differing = differing
        db.execute("DELETE FROM lease WHERE name LIKE ? AND lease_until < ?", (PREFIX + "%", now - 3600))


    def stop(self) -> None:
        """Withdraw this node's digest (a stopping node no longer counts as disagreeing)."""
        self._next = float("inf")  # the last heartbeats do not publish it again
        if self.catalog is not None:
            try:
                Leases(self.catalog.db, self.owner).release(self.name)
            except Exception:  # noqa: BLE001 - it runs out by itself
                pass
            self.catalog.close()


def start(settings) -> ConfigCheck | None:
    """The check of a node whose catalog is shared (a PostgreSQL URL); None for a SQLite archive."""
    from archive.catalog.database import is_url

    return ConfigCheck(settings) if is_url(settings.catalog_location) else None
