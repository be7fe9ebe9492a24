"""The bytes of deleted instances in a bucket: removed a grace period after the delete, by any node.

A DELETE commits the catalog first and removes the bytes after. From a bucket, removing them
at once broke a whole-instance retrieve already streaming them (each MB of it is another
ranged GET, refused once the object has gone), and a crash or an unreachable bucket between
the commit and the removal left an orphan that only ``verify --repair`` found. So the delete's
own transaction adds one ``storage-removal`` work item per instance (archive/catalog/work.py),
due ``[storage] removal_delay`` seconds later; the background process of every node removes
the bytes of due items (``Sweeper``), each item claimed by one node, and tries again later
while the bucket cannot be reached. ``verify`` counts those bytes as awaiting removal, not
as orphans.

Local files are removed at once, as before: a file already open stays readable after unlink.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Any

from archive.catalog.work import STORAGE_REMOVAL, WorkQueue
from archive.errors import StorageUnavailable
from archive.logs import failure_site

log = logging.getLogger(__name__)

#: Seconds between a node's looks for due removals (one claiming UPDATE, through the work_item_due index).
INTERVAL = 5.0
#: How long a node holds the items it claimed before another node may take them (seconds).
LEASE = 120.0


def awaiting(db: Any) -> set[str]:
    """The storage ids whose instances were deleted and whose bytes are still to be removed."""
    return {json.loads(payload)["storage_id"]
            for (payload,) in db.execute("SELECT payload FROM work_item WHERE kind=?", (STORAGE_REMOVAL,)).fetchall()}


def sweep(db: Any, storage: Any, limit: int = 100) -> int:
    """Remove the bytes of up to ``limit`` due items; returns how many were removed."""
    queue = WorkQueue(db)
    removed = 0
    for item in queue.claim(STORAGE_REMOVAL, limit, lease=LEASE):
        try:
            storage.remove(item.payload["storage_id"])  # already gone is fine: a retry after a crash
        except StorageUnavailable:
            queue.retry(item)
            continue
        queue.done(item)
        removed += 1
    return removed


class Sweeper:
    """A thread of the background process that runs ``sweep`` every ``INTERVAL`` seconds."""

    def __init__(self, db: Any, storage: Any, interval: float = INTERVAL) -> None:
        self.db, self.storage, self.interval = db, storage, interval
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="storage-removals", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                while sweep(self.db, self.storage) and not self._stop.is_set():
                    pass
            except Exception as e:  # noqa: BLE001 - a catalog outage must not end the sweeps; the next one retries
                log.warning("removing deleted instances' bytes failed: %s at %s; retried in %g s",
                            type(e).__name__, failure_site(e), self.interval)

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self.thread.join(timeout)
