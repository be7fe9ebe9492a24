"""Long-lived API keys for scanners, pipelines and administrators.

A key reads ``sa_<id>_<secret>``: the id names it in ``keys list`` and ``keys revoke``,
the secret (32 random bytes) is shown once, when it is created, and stored only as
its SHA-256 (a random 256-bit secret needs no slow hash: there is nothing to guess).
The store is its own SQLite file under ``<data_dir>/secrets``, apart from the catalog,
so a copy of the catalog carries no credentials; when nodes share a PostgreSQL catalog
the keys are a table of that database (every node must accept every key).
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from pathlib import Path

from archive.auth.access import ROLES, Principal
from archive.catalog.database import Database, open_database
from archive.catalog.sqlite import SqliteDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_key (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, secret_sha256 TEXT NOT NULL,
    roles TEXT NOT NULL, admin INTEGER NOT NULL, created REAL NOT NULL, revoked REAL
)
"""
_KEY = re.compile(r"sa_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


@dataclasses.dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    roles: dict[str, frozenset[str]]
    admin: bool
    created: float
    revoked: float | None

    def principal(self) -> Principal:
        return Principal(f"apikey:{self.id}:{self.name}", "apikey", self.roles, self.admin)


def looks_like_key(text: str) -> bool:
    return _KEY.fullmatch(text) is not None


class KeyStore:
    def __init__(self, secrets_dir: Path, database: Database | None = None):
        """Keys in ``secrets_dir``'s SQLite file, or in ``database`` (a shared catalog's) when given."""
        if database is None:
            secrets_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(secrets_dir, 0o700)
            path = secrets_dir / "apikeys.sqlite"
            fresh = not path.exists()
            database = SqliteDatabase(path)
            database.execute(SCHEMA)
            if fresh:
                os.chmod(path, 0o600)
        else:
            database.execute(database.dialect.ddl(SCHEMA))
        self._db = database

    @classmethod
    def open(cls, settings) -> "KeyStore":
        """The store ``settings`` name: the shared catalog's when ``[catalog] url`` is set."""
        if settings.catalog.url:
            return cls(settings.secrets_dir, open_database(settings.catalog.url, pool_size=2,
                                                           pool_timeout=settings.catalog.pool_timeout))
        return cls(settings.secrets_dir)

    def create(self, name: str, roles: dict[str, frozenset[str]], admin: bool = False) -> tuple[ApiKey, str]:
        """A new key; returns it and its full text (shown once, never stored)."""
        for collection, granted in roles.items():
            if not collection or set(granted) - set(ROLES):
                raise ValueError(f"roles must be within {', '.join(ROLES)}")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        with self._db.transaction() as db:
            db.execute("INSERT INTO api_key(id, name, secret_sha256, roles, admin, created) VALUES (?,?,?,?,?,?)",
                       (key_id, name, _digest(secret), _roles_json(roles), int(admin), now))
        return ApiKey(key_id, name, roles, admin, now, None), f"sa_{key_id}_{secret}"

    def verify(self, text: str) -> ApiKey | None:
        """The key for this text when it exists and is not revoked, else None (constant-time compare)."""
        m = _KEY.fullmatch(text.strip())
        if m is None:
            return None
        row = self._db.execute(
            "SELECT id, name, secret_sha256, roles, admin, created, revoked FROM api_key WHERE id=?",
            (m.group(1),)).fetchone()
        if row is None or not hmac.compare_digest(row[2], _digest(m.group(2))) or row[6] is not None:
            return None
        return _key(row)

    def list(self) -> list[ApiKey]:
        rows = self._db.execute(
            "SELECT id, name, secret_sha256, roles, admin, created, revoked FROM api_key ORDER BY created").fetchall()
        return [_key(r) for r in rows]

    def revoke(self, key_id: str) -> bool:
        with self._db.transaction() as db:
            cur = db.execute("UPDATE api_key SET revoked=? WHERE id=? AND revoked IS NULL", (time.time(), key_id))
        return cur.rowcount == 1

    def has_admin(self) -> bool:
        return self._db.execute(
            "SELECT 1 FROM api_key WHERE admin=1 AND revoked IS NULL LIMIT 1").fetchone() is not None

    def is_empty(self) -> bool:
        return self._db.execute("SELECT 1 FROM api_key LIMIT 1").fetchone() is None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _roles_json(roles: dict[str, frozenset[str]]) -> str:
    return json.dumps({c: sorted(r) for c, r in sorted(roles.items())})


def _key(row) -> ApiKey:
    roles = {c: frozenset(r) for c, r in json.loads(row[3]).items()}
    return ApiKey(row[0], row[1], roles, bool(row[4]), row[5], row[6])
