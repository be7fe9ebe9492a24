"""The honest broker's link table: pseudonym -> original identifiers, sealed to the broker.

The archive can write links but never read them: each record is encrypted to the
broker's X25519 public key (ECIES: ephemeral X25519, HKDF-SHA256, AES-256-GCM, with
kind and pseudonym as associated data). Only the broker's private key opens it, and
every reveal is appended to an audit log (who, when, which pseudonym; never the
revealed values). Storage is one SQLite file under the archive's data directory, or,
when nodes share a PostgreSQL catalog, that catalog's ``deid_link`` table
(``CatalogLinkVault``): every node then writes to the one vault the broker opens.
"""
from __future__ import annotations

import getpass
import json
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_INFO = b"slidearchive deid link v1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS links (
    kind TEXT NOT NULL,
    pseudonym TEXT NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (kind, pseudonym)
)
"""

PublicKeyLike = X25519PublicKey | bytes | str | Path
PrivateKeyLike = X25519PrivateKey | bytes | str | Path


def generate_keypair() -> tuple[bytes, bytes]:
    """A new broker key pair as (private PEM, public PEM)."""
    private = X25519PrivateKey.generate()
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    return private_pem, public_pem


def _pem(value: bytes | str | Path) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    return Path(value).read_bytes()


def load_public_key(value: PublicKeyLike) -> X25519PublicKey:
    """Accept a key object, PEM bytes/text, or a path to a PEM file."""
    if isinstance(value, X25519PublicKey):
        return value
    key = serialization.load_pem_public_key(_pem(value))
    if not isinstance(key, X25519PublicKey):
        raise ValueError("broker public key must be an X25519 key")
    return key


def load_private_key(value: PrivateKeyLike) -> X25519PrivateKey:
    """Accept a key object, PEM bytes/text, or a path to a PEM file."""
    if isinstance(value, X25519PrivateKey):
        return value
    key = serialization.load_pem_private_key(_pem(value), password=None)
    if not isinstance(key, X25519PrivateKey):
        raise ValueError("broker private key must be an X25519 key")
    return key


def _derive(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=_INFO + ephemeral + recipient).derive(shared)


def _raw(pub: X25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def seal(data: bytes, public_key: X25519PublicKey, aad: bytes) -> bytes:
    """ECIES-encrypt `data` to `public_key`: ephemeral public (32) | nonce (12) | ciphertext."""
    ephemeral = X25519PrivateKey.generate()
    eph_raw = _raw(ephemeral.public_key())
    key = _derive(ephemeral.exchange(public_key), eph_raw, _raw(public_key))
    nonce = os.urandom(12)
    return eph_raw + nonce + AESGCM(key).encrypt(nonce, data, aad)


def unseal(blob: bytes, private_key: X25519PrivateKey, aad: bytes) -> bytes:
    """Inverse of seal; raises cryptography's InvalidTag for a wrong key or tampered record."""
    eph_raw, nonce, ct = blob[:32], blob[32:44], blob[44:]
    ephemeral = X25519PublicKey.from_public_bytes(eph_raw)
    key = _derive(private_key.exchange(ephemeral), eph_raw, _raw(private_key.public_key()))
    return AESGCM(key).decrypt(nonce, ct, aad)


class LinkVault:
    """Append-only store of sealed links, one SQLite file (created 0600 on first write)."""

    def __init__(self, path: Path | str, audit_log: Path | str | None = None) -> None:
        self.path = Path(path)
        self.audit_log = Path(audit_log) if audit_log else self.path.with_name("audit.log")

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        conn = sqlite3.connect(self.path, timeout=30)
        conn.execute(_SCHEMA)
        return conn

    def record(self, pseudonym_kind: str, pseudonym: str, originals_dict: Mapping[str, str],
               public_key: PublicKeyLike) -> None:
        """Seal and store the originals behind a pseudonym; the first record for it wins."""
        self.record_many([(pseudonym_kind, pseudonym, originals_dict)], public_key)

    def record_many(self, entries: Iterable[tuple[str, str, Mapping[str, str]]],
                    public_key: PublicKeyLike) -> None:
        """record() for several pseudonyms of one instance, in one transaction."""
        key = load_public_key(public_key)
        rows = []
        for kind, pseudonym, originals in entries:
            data = json.dumps(dict(originals), sort_keys=True, ensure_ascii=False).encode("utf-8")
            rows.append((kind, pseudonym, seal(data, key, _aad(kind, pseudonym))))
        if rows:
            self._insert(rows)

    def _insert(self, rows: list[tuple[str, str, bytes]]) -> None:
        conn = self._connect()
        try:
            with conn:
                conn.executemany("INSERT OR IGNORE INTO links (kind, pseudonym, sealed) VALUES (?, ?, ?)", rows)
        finally:
            conn.close()

    def count(self) -> int:
        """Number of links (0 when the vault file does not exist)."""
        if not self.path.exists():
            return 0
        conn = self._connect()
        try:
            return int(conn.execute("SELECT COUNT(*) FROM links").fetchone()[0])
        finally:
            conn.close()

    def _sealed(self, pseudonym: str) -> list[tuple[str, bytes]]:
        if not self.path.exists():
            return []
        conn = self._connect()
        try:
            return conn.execute("SELECT kind, sealed FROM links WHERE pseudonym = ? ORDER BY kind",
                                (pseudonym,)).fetchall()
        finally:
            conn.close()

    def reveal(self, pseudonym: str, private_key: PrivateKeyLike, who: str | None = None) -> dict:
        """Open the link(s) of a pseudonym with the broker's key; audit the attempt.

        Returns the originals (merged over kinds if the same pseudonym was recorded
        under several). Raises KeyError when nothing is recorded for it.
        """
        key = load_private_key(private_key)
        rows = self._sealed(pseudonym)
        self._audit(pseudonym, [kind for kind, _ in rows], who, found=bool(rows))
        if not rows:
            raise KeyError("no link recorded for this pseudonym")
        result: dict = {}
        for kind, sealed in rows:
            result.update(json.loads(unseal(sealed, key, _aad(kind, pseudonym)).decode("utf-8")))
        return result

    def _audit(self, pseudonym: str, kinds: list[str], who: str | None, found: bool) -> None:
        entry = {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "who": who or _current_user(),
            "action": "reveal",
            "pseudonym": pseudonym,
            "kinds": kinds,
            "found": found,
        }
        self.audit_log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.audit_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")


class CatalogLinkVault(LinkVault):
    """The vault in a shared catalog's ``deid_link`` table (``db``: an archive.catalog Database);
    the reveal audit log stays a local file of the broker's."""

    def __init__(self, db, audit_log: Path | str) -> None:
        self.db = db
        self.path = Path(db.location)
        self.audit_log = Path(audit_log)

    def _insert(self, rows: list[tuple[str, str, bytes]]) -> None:
        with self.db.transaction() as session:
            session.executemany("INSERT INTO deid_link (kind, pseudonym, sealed) VALUES (?, ?, ?) "
                                "ON CONFLICT DO NOTHING", rows)

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM deid_link").fetchone()[0])

    def _sealed(self, pseudonym: str) -> list[tuple[str, bytes]]:
        return [(r[0], bytes(r[1])) for r in self.db.execute(
            "SELECT kind, sealed FROM deid_link WHERE pseudonym = ? ORDER BY kind", (pseudonym,))]


def _aad(kind: str, pseudonym: str) -> bytes:
    return kind.encode() + b"\x00" + pseudonym.encode()


def _current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return f"uid:{os.getuid()}"
