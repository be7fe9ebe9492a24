"""Work shared by the nodes of one catalog: leased work items and single-holder leases.

A work item (a storage commitment report to send, a repair to run) is claimed by one
node for a lease; a node that dies simply stops renewing, and when the lease runs out
the item is due again for any node. On PostgreSQL the claim skips rows another node
is claiming at that moment (``FOR UPDATE SKIP LOCKED``), so nodes never wait on each
other nor take the same item; on SQLite the write lock serializes claims.

A lease (``Leases``) names one holder at a time for a job only one node should run
(advancing the index's outbox cursor), with a little state that moves with it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import uuid
from typing import Any

from archive.catalog.database import Database

#: The kind of the item a delete leaves for its instance's bytes in a bucket (archive/storage/removals.py).
STORAGE_REMOVAL = "storage-removal"


def node_id() -> str:
    """This process, as lease owners are named: host, pid and a random part (pids get reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclasses.dataclass(frozen=True)
class WorkItem:
    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int


class WorkQueue:
    def __init__(self, db: Database, owner: str | None = None):
        self.db = db
        self.owner = owner or node_id()

    def add(self, kind: str, payload: dict[str, Any], delay: float = 0.0, lease: float | None = None) -> WorkItem:
        """A new item, due after ``delay`` seconds. With ``lease`` it starts out held by this node
        (which works on it at once); another node takes it only when that lease runs out."""
        now = time.time()
        owner, until = (self.owner, now + lease) if lease else (None, None)
        row = self.db.execute("INSERT INTO work_item(kind, payload, due, owner, lease_until, attempts, created) "
                              "VALUES (?,?,?,?,?,?,?) RETURNING id",
                              (kind, json.dumps(payload), now + delay, owner, until, int(bool(lease)), now)).fetchone()
        return WorkItem(row[0], kind, payload, int(bool(lease)))

    def claim(self, kind: str, limit: int = 10, lease: float = 60.0) -> list[WorkItem]:
        """Up to ``limit`` due items of ``kind`` nobody holds (or whose holder's lease ran out), now ours."""
        now = time.time()
        with self.db.transaction() as db:
            rows = db.execute(
                "UPDATE work_item SET owner=?, lease_until=?, attempts=attempts+1 WHERE id IN "
                "(SELECT id FROM work_item WHERE kind=? AND due<=? AND (lease_until IS NULL OR lease_until<?) "
                f"ORDER BY due, id LIMIT ?{self.db.dialect.skip_locked}) RETURNING id, kind, payload, attempts",
                (self.owner, now + lease, kind, now, now, limit)).fetchall()
        return sorted((WorkItem(r[0], r[1], json.loads(r[2]), r[3]) for r in rows), key=lambda w: w.id)

    def done(self, item: WorkItem) -> bool:
        """Remove a finished item; False when our lease ran out and another node took it over."""
        return self.db.execute("DELETE FROM work_item WHERE id=? AND owner=?", (item.id, self.owner)).rowcount == 1

    def retry(self, item: WorkItem, delay: float | None = None) -> None:
        """Give an item back, due again after ``delay`` seconds (by default 30 s, doubling with each
        attempt, at most an hour)."""
        if delay is None:
            delay = min(3600.0, 30.0 * 2 ** min(item.attempts, 7))
        self.db.execute("UPDATE work_item SET owner=NULL, lease_until=NULL, due=? WHERE id=? AND owner=?",
                        (time.time() + delay, item.id, self.owner))

    def extend(self, item: WorkItem, lease: float = 60.0) -> bool:
        """Keep holding a long-running item; False when it is no longer ours."""
        return self.db.execute("UPDATE work_item SET lease_until=? WHERE id=? AND owner=?",
                               (time.time() + lease, item.id, self.owner)).rowcount == 1

    def pending(self, kind: str) -> int:
        return self.db.execute("SELECT count(*) FROM work_item WHERE kind=?", (kind,)).fetchone()[0]


class Leases:
    def __init__(self, db: Database, owner: str | None = None):
        self.db = db
        self.owner = owner or node_id()

    def acquire(self, name: str, ttl: float = 30.0) -> tuple[bool, Any]:
        """Take or renew ``name`` for ``ttl`` seconds: (held, its state). Held when it was free,
        ours already, or its holder's lease ran out (a dead node)."""
        now = time.time()
        row = self.db.execute(
            "INSERT INTO lease(name, owner, lease_until) VALUES (?,?,?) ON CONFLICT (name) DO UPDATE SET "
            "owner=excluded.owner, lease_until=excluded.lease_until "
            "WHERE lease.owner=excluded.owner OR lease.lease_until<? RETURNING state",
            (name, self.owner, now + ttl, now)).fetchone()
        if row is None:
            return False, None
        return True, json.loads(row[0]) if row[0] else None

    def save(self, name: str, state: Any, expected: Any = ...) -> bool:
        """Store the holder's state; False when the lease is no longer ours, or (given ``expected``)
        when its state is no longer what the holder read (another process changed it): nothing written."""
        if expected is ...:
            return self.db.execute("UPDATE lease SET state=? WHERE name=? AND owner=?",
                                   (json.dumps(state), name, self.owner)).rowcount == 1
        return self.db.execute("UPDATE lease SET state=? WHERE name=? AND owner=? AND coalesce(state, '')=?",
                               (json.dumps(state), name, self.owner,
                                "" if expected is None else json.dumps(expected))).rowcount == 1

    def release(self, name: str) -> None:
        self.db.execute("UPDATE lease SET owner=NULL, lease_until=0 WHERE name=? AND owner=?", (name, self.owner))

    def holder(self, name: str) -> str | None:
        row = self.db.execute("SELECT owner, lease_until FROM lease WHERE name=?", (name,)).fetchone()
        return row[0] if row and row[0] and row[1] >= time.time() else None
